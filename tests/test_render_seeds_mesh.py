"""`--mode=render --seeds --mesh` for the GAN heads: a seed's field is the sample it renders,
over the tri-plane box; a head without a density field declines before compiling."""

import itertools
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import override
from test_triplane_step import SMALL

from configs import eg3d, gmpi
from vq3d_jax import render_mode, visualize
from vq3d_jax.tasks import get_task
from vq3d_jax.tasks.gan import GENERATOR_EMA
from vq3d_jax.train.task import CapabilityError, MeshesSamples


def test_sample_density_is_the_field_of_the_planes_generate_renders(monkeypatch):
    """EG3D: σ and colour at points of the box, per seed, are the head's field on the very
    planes `generate` renders that seed from (captured in its `head.render`, which draws
    them itself from its noise key, as before meshes shared them); another seed is another
    field."""
    task = get_task(override(eg3d.get_config("tiny"), SMALL))
    state = jax.jit(lambda rng: nn.meta.unbox(task.init_state(rng)))(jax.random.PRNGKey(0))
    # The noise strengths start at 0: made non-zero, a wrong noise key changes the field.
    ema = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.5 if "noise_strength" in jax.tree_util.keystr(path) else x,
        state.model_state[GENERATOR_EMA])
    state = state.replace(model_state={**state.model_state, GENERATOR_EMA: ema})
    index = jnp.asarray([0, 1], jnp.int32)
    points = visualize.grid_points(task.sample_mesh_bounds(), 4).reshape(-1, 3)
    points = jnp.broadcast_to(points, (2,) + points.shape)
    captured = []
    render = task.head.render

    def spy(params, ws, cameras, noise_rng, planes):
        out = render(params, ws, cameras, noise_rng)
        captured.append((planes, out["planes"]))
        return out

    monkeypatch.setattr(task.head, "render", spy)

    @jax.jit
    def expected(state):
        cameras = jnp.broadcast_to(task.poses.reference_camera(), (2, 1, 4, 4))
        task.generate(state, index, cameras, float(task.config.sample.psi))
        given, drawn = captured[-1]
        g = task.inference_generator(state)
        field = jax.vmap(lambda planes, p: task.head.field(g, planes, "coarse")(p))(
            drawn, points)
        return given, drawn, field

    given, drawn, (sigma, feats) = expected(state)
    np.testing.assert_array_equal(given["coarse"], drawn["coarse"])
    got = jax.jit(task.sample_density)(state, {"index": index, "points": points})
    np.testing.assert_allclose(got["density"], sigma, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["color"], feats[..., :3], rtol=1e-5, atol=1e-6)
    assert got["density"].shape == (2, 64) and got["color"].shape == (2, 64, 3)
    assert np.max(np.abs(got["density"][0] - got["density"][1])) > 1e-4


def test_mesh_bounds_are_the_triplane_box_in_our_frame():
    """The bounds' 8 corners map onto EG3D's ±box/2 corners (a pivot off every axis, so
    the flip and the shift both matter)."""
    config = override(eg3d.get_config("tiny"), {**SMALL, "model.triplane.pivot": (0.1, 0.3,
                                                                                    -0.2)})
    task = get_task(config)
    assert isinstance(task, MeshesSamples)
    lo, hi = task.sample_mesh_bounds()
    corners = np.asarray([np.where(c, hi, lo) for c in itertools.product((0, 1), repeat=3)])
    eg3d_corners = corners @ task.head.to_eg3d[:3, :3].T + task.head.to_eg3d[:3, 3]
    half = 0.5 * config.model.triplane.box_size
    np.testing.assert_allclose(eg3d_corners.min(0), [-half] * 3, atol=1e-5)
    np.testing.assert_allclose(eg3d_corners.max(0), [half] * 3, atol=1e-5)
    np.testing.assert_allclose(hi - lo, [2 * half] * 3, atol=1e-5)


def test_mesh_of_a_multiplane_sample_is_refused_before_compiling(tmp_path):
    """The refusal needs no runtime, state or compile: the task alone says why."""
    runtime = types.SimpleNamespace(task=get_task(gmpi.get_config("tiny")))
    out = tmp_path / "render"
    with pytest.raises(CapabilityError, match="model.head='gmpi'.*no density field"):
        render_mode.render_seeds(runtime, None, [0], str(out),
                                 mesh=render_mode.MeshOptions(16))
    assert not out.exists()
