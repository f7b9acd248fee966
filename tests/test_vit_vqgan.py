"""ViT blocks, the ViT-VQGAN autoencoder, logical axis names and the FLOPs formula."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from vq3d_jax.models.vit_vqgan import (
    VitVQGAN,
    analytic_flops_per_image,
    decode_variant,
)
from vq3d_jax.nn.vit import sincos_2d_position_embedding

KW = dict(encoder_variant="mu", decoder_variant="mu", patch_size=8, image_size=32,
          codebook_size=32, code_dim=8)
PARAM_NAMES = {"embed", "mlp", "heads", "kv", "codebook", "code", "patch", "norm", None}
RULES = (("activation_batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"),
         ("heads", "tensor"), ("activation_heads", "tensor"), ("activation_mlp", "tensor"),
         ("codebook", "tensor"))


def _images(b=2):
    return jax.random.uniform(jax.random.key(3), (b, 32, 32, 3), minval=-1.0, maxval=1.0)


def _is_box(x):
    return isinstance(x, nn.LogicallyPartitioned)


def _dot_flops(jaxpr, by_dtype=None):
    """Sum 2·(output size)·(contracted size) over every dot_general, recursing into sub-jaxprs."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lc, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval
            flops = 2 * int(np.prod(eqn.outvars[0].aval.shape)) * int(
                np.prod([lhs.shape[i] for i in lc]))
            total += flops
            if by_dtype is not None:
                by_dtype[str(lhs.dtype)] = by_dtype.get(str(lhs.dtype), 0) + flops
        for v in eqn.params.values():
            for sub in v if isinstance(v, (tuple, list)) else (v,):
                if hasattr(sub, "eqns"):
                    total += _dot_flops(sub, by_dtype)
                elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                    total += _dot_flops(sub.jaxpr, by_dtype)
    return total


@pytest.fixture(scope="module")
def trained():
    """Float32 'mu' model at 32², patch 8: one init and one jitted forward."""
    model = VitVQGAN(**KW)
    x = _images()
    boxed = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x)
    params = nn.meta.unbox(boxed)

    @jax.jit
    def run(params):
        recon, aux = model.apply(params, x)
        tokens = model.apply(params, x, method=lambda m, im: m.encoder(im))
        from_codes = model.apply(params, aux["codes"], method=VitVQGAN.decode_codes)
        return recon, aux, tokens, from_codes

    return model, x, boxed, params, run(params)


def test_sincos_positions():
    pe = np.asarray(sincos_2d_position_embedding(4, 6, 16))
    assert pe.shape == (24, 16) and pe.dtype == np.float32
    # Position (0, 0): all sines 0, all cosines 1 (layout [sin x, cos x, sin y, cos y]).
    np.testing.assert_allclose(pe[0], np.repeat([0.0, 1.0, 0.0, 1.0], 4), atol=1e-7)
    assert len(np.unique(pe.round(5), axis=0)) == 24
    # Row-major order: row 1 is (y=0, x=1), so the y half equals row 0's.
    np.testing.assert_allclose(pe[1, 8:], pe[0, 8:])
    with pytest.raises(ValueError):
        sincos_2d_position_embedding(2, 2, 6)


def test_decode_variant():
    assert decode_variant("S") == dict(width=512, depth=8, heads=8, mlp_dim=2048)
    assert decode_variant("L") == dict(width=1280, depth=32, heads=16, mlp_dim=5120)
    with pytest.raises(ValueError, match="valid"):
        decode_variant("XL")


def test_shapes_and_decode_codes(trained):
    _, x, _, _, (recon, aux, tokens, from_codes) = trained
    assert tokens.shape == (2, 16, 64)
    assert recon.shape == x.shape and recon.dtype == jnp.float32
    assert aux["codes"].shape == (2, 16) and aux["codes"].dtype == jnp.int32
    for k in ("vq_loss", "perplexity", "codebook_usage"):
        assert aux[k].shape == () and aux[k].dtype == jnp.float32
    # Decoding the codes directly reproduces the straight-through forward.
    np.testing.assert_allclose(from_codes, recon, atol=1e-4)


def test_every_param_is_logically_partitioned(trained):
    _, _, boxed, _, _ = trained
    leaves = jax.tree_util.tree_leaves(boxed, is_leaf=_is_box)
    assert len(leaves) > 20
    for leaf in leaves:
        assert _is_box(leaf), type(leaf)
        assert len(leaf.names) == leaf.value.ndim, leaf.names
        assert set(leaf.names) <= PARAM_NAMES, leaf.names
    assert set(boxed["params"]) == {"encoder", "quantizer", "decoder"}


def test_bf16_compute_float32_params():
    model = VitVQGAN(**KW, dtype=jnp.bfloat16)
    x = _images()
    boxed = jax.eval_shape(model.init, jax.random.key(0), x)
    params = nn.meta.unbox(boxed)
    assert {p.dtype for p in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.float32)}
    recon, aux = jax.eval_shape(model.apply, params, x)
    assert recon.dtype == jnp.float32 and aux["vq_loss"].dtype == jnp.float32
    # The transformer matmuls run in bfloat16; only the code similarities are float32.
    by_dtype = {}
    _dot_flops(jax.make_jaxpr(model.apply)(params, x).jaxpr, by_dtype)
    assert by_dtype["bfloat16"] > 10 * by_dtype.get("float32", 0)


def test_analytic_flops_match_traced_matmuls(trained):
    model, x, _, params, _ = trained
    traced = _dot_flops(jax.make_jaxpr(model.apply)(params, x).jaxpr) / x.shape[0]
    assert traced == analytic_flops_per_image(
        "mu", "mu", patch_size=8, image_size=32, codebook_size=32, code_dim=8)
    # The paper's Small encoder + Large decoder at 256²: ~1.5 TFLOP, >90 % in the decoder.
    big = analytic_flops_per_image("S", "L", patch_size=8, image_size=256,
                                   codebook_size=8192, code_dim=32)
    decoder_l = 32 * 1024 * (2 * (4 * 1280**2 + 2 * 1280 * 5120) + 4 * 1024 * 1280)
    assert decoder_l < big < 1.1 * decoder_l


def test_shards_under_logical_rules():
    """Params and activations map onto a (data, fsdp, tensor) mesh of the 8 CPU devices."""
    model = VitVQGAN(**KW, remat=True)
    x = _images(8)
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    # Abstract init outside the mesh (the usual big_vision/MaxText order).
    abstract = jax.eval_shape(model.init, jax.random.key(0), x)
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, RULES)
    kernel = shardings["params"]["decoder"]["transformer"]["block_0"]["mlp"]["fc1"]["kernel"]
    assert kernel.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    params = nn.meta.unbox(abstract)
    with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
        # Lowering traces every logical constraint against the mesh (no compile).
        jax.jit(model.init, out_shardings=shardings).lower(jax.random.key(0), x)
        jax.jit(model.apply).lower(params, x)
