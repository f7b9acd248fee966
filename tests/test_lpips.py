"""LPIPS-VGG: metric properties, a float64 numpy reference, the PyTorch converter, loading."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from vq3d_jax.models import lpips, pretrained

# torchvision vgg16().features: (index, out, in) of each 3×3 conv, written out by hand.
TORCH_CONVS = [
    (0, 64, 3), (2, 64, 64),
    (5, 128, 64), (7, 128, 128),
    (10, 256, 128), (12, 256, 256), (14, 256, 256),
    (17, 512, 256), (19, 512, 512), (21, 512, 512),
    (24, 512, 512), (26, 512, 512), (28, 512, 512),
]
CONV_NAMES = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
              "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"]
LIN_CHANNELS = [64, 128, 256, 512, 512]  # LPIPS lin{l}.model.1.weight: (1, C, 1, 1)
# One image size for every test (one compile): 24 → 12 → 6 → 3 → 1 through VGG's four
# pools, so the 3 → 1 pool also checks torch's floor rounding of odd sizes.
SIZE = 24
CLASSIFIER_SHAPES = {  # ignored by the converter; broadcast views, so no memory is spent
    "classifier.0.weight": (4096, 25088), "classifier.0.bias": (4096,),
    "classifier.3.weight": (4096, 4096), "classifier.3.bias": (4096,),
    "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,),
}


def _torch_state_dicts():
    """Synthetic torchvision VGG16 + LPIPS v0.1 state dicts with the real keys and shapes."""
    # One draw of each kind, sliced: one compiled sampler instead of one per shape.
    sizes = [out * inp * 9 + out for _, out, inp in TORCH_CONVS]
    k_conv, k_lin = jax.random.split(jax.random.key(0))
    normal = np.asarray(jax.random.normal(k_conv, (sum(sizes),)), np.float32)
    uniform = np.asarray(jax.random.uniform(k_lin, (sum(LIN_CHANNELS),)), np.float32)
    vgg, start = {}, 0
    for index, out, inp in TORCH_CONVS:
        std = np.sqrt(2.0 / (9 * inp))  # He init: activations neither vanish nor explode
        w = (normal[start:start + out * inp * 9].reshape(out, inp, 3, 3) * std).astype(np.float32)
        b = normal[start + out * inp * 9:start + out * inp * 9 + out] * np.float32(0.05)
        vgg[f"features.{index}.weight"], vgg[f"features.{index}.bias"] = w, b
        start += out * inp * 9 + out
    for name, shape in CLASSIFIER_SHAPES.items():
        vgg[name] = np.broadcast_to(np.float32(0.0), shape)
    lin, start = {}, 0
    for t, c in enumerate(LIN_CHANNELS):  # non-negative, as the released heads are
        lin[f"lin{t}.model.1.weight"] = uniform[start:start + c].reshape(1, c, 1, 1) / c
        start += c
    return vgg, lin


@pytest.fixture(scope="module")
def torch_dicts():
    return _torch_state_dicts()


@pytest.fixture(scope="module")
def params(torch_dicts):
    return lpips.params_from_torch(*torch_dicts)


@pytest.fixture(scope="module")
def apply_fn():
    return jax.jit(lpips.LPIPS().apply)


def _images(n, size, seed):
    return jax.random.uniform(jax.random.fold_in(jax.random.key(0), seed), (n, size, size, 3),
                              minval=-1.0, maxval=1.0)


# --- 1. metric properties ---------------------------------------------------------------

def test_identity_symmetry_positivity(params, apply_fn):
    x, y = _images(2, SIZE, 1), _images(2, SIZE, 2)
    variables = {"params": params}
    d_xx = np.asarray(apply_fn(variables, x, x))
    d_xy = np.asarray(apply_fn(variables, x, y))
    d_yx = np.asarray(apply_fn(variables, y, x))
    assert d_xy.shape == (2,) and d_xy.dtype == np.float32
    # Zero up to rounding: XLA may fuse the two sides' passes differently.
    assert np.all(np.abs(d_xx) < 1e-9 * d_xy)
    np.testing.assert_allclose(d_xy, d_yx, rtol=1e-6)
    assert np.all(d_xy > 0)
    # Continuous at the identity: a slightly perturbed x is slightly away, not 0 or far.
    near = np.asarray(apply_fn(variables, x, x + 1e-3 * _images(2, SIZE, 7)))
    assert np.all(near > 0) and np.all(near < 1e-2 * d_xy)


# --- 2. independent float64 numpy reference ---------------------------------------------

def _np_conv3x3_relu(h, kernel, bias):
    """'Same' 3×3 cross-correlation as a sum of 9 shifted matrix products, then ReLU."""
    n, height, width, _ = h.shape
    padded = np.zeros((n, height + 2, width + 2, h.shape[3]))
    padded[:, 1:-1, 1:-1] = h
    out = np.zeros((n, height, width, kernel.shape[3])) + bias
    for dy in range(3):
        for dx in range(3):
            out += padded[:, dy:dy + height, dx:dx + width] @ kernel[dy, dx]
    return np.maximum(out, 0.0)


def _np_maxpool2(h):
    n, height, width, c = h.shape
    h = h[:, : height // 2 * 2, : width // 2 * 2]
    return h.reshape(n, height // 2, 2, width // 2, 2, c).max(axis=(2, 4))


def _np_lpips(params, x, y):
    """LPIPS straight from the definition, in float64, torchvision's cfg-D loop style."""
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
    shift = np.array([-0.030, -0.088, -0.188])
    scale = np.array([0.458, 0.448, 0.450])

    def taps(img):
        h = (np.asarray(img, np.float64) - shift) / scale
        out, names = [], iter(CONV_NAMES)
        for i, item in enumerate(cfg):
            if item == "M":
                h = _np_maxpool2(h)
                continue
            p = params["vgg"][next(names)]
            h = _np_conv3x3_relu(h, np.float64(p["kernel"]), np.float64(p["bias"]))
            if i + 1 == len(cfg) or cfg[i + 1] == "M":
                out.append(h)
        return out

    total = np.zeros(x.shape[0])
    for t, (a, b) in enumerate(zip(taps(x), taps(y))):
        a = a / (np.linalg.norm(a, axis=-1, keepdims=True) + 1e-10)
        b = b / (np.linalg.norm(b, axis=-1, keepdims=True) + 1e-10)
        w = np.float64(params["lin"][f"lin{t}"]["kernel"][:, 0])
        total += np.einsum("nhwc,c->nhw", (a - b) ** 2, w).mean(axis=(1, 2))
    return total


def test_matches_numpy_float64_reference(params, apply_fn):
    x, y = _images(2, SIZE, 3), _images(2, SIZE, 4)
    got = np.asarray(apply_fn({"params": params}, x, y))
    want = _np_lpips(params, np.asarray(x), np.asarray(y))
    assert np.all(want > 0)
    np.testing.assert_allclose(got, want, rtol=1e-4)


# --- 3. the PyTorch converter -----------------------------------------------------------

def test_converter_paths_shapes_and_values(torch_dicts, params):
    vgg, lin = torch_dicts
    flat = traverse_util.flatten_dict(params, sep="/")
    want = traverse_util.flatten_dict(lpips.abstract_params(), sep="/")
    assert {k: tuple(v.shape) for k, v in flat.items()} == {
        k: tuple(v.shape) for k, v in want.items()}
    assert len(flat) == 13 * 2 + 5
    for name, (index, out, inp) in zip(CONV_NAMES, TORCH_CONVS):
        kernel = params["vgg"][name]["kernel"]
        assert kernel.shape == (3, 3, inp, out) and kernel.dtype == np.float32
        np.testing.assert_array_equal(params["vgg"][name]["bias"], vgg[f"features.{index}.bias"])
    # One element by hand: kernel[dy, dx, i, o] == weight[o, i, dy, dx] (no flip, no swap).
    w = vgg["features.5.weight"]  # conv2_1, (128, 64, 3, 3)
    assert params["vgg"]["conv2_1"]["kernel"][0, 2, 7, 11] == w[11, 7, 0, 2]
    assert params["vgg"]["conv2_1"]["kernel"][2, 1, 63, 0] == w[0, 63, 2, 1]
    np.testing.assert_array_equal(params["vgg"]["conv2_1"]["kernel"],
                                  np.einsum("oiyx->yxio", w))
    for t, c in enumerate(LIN_CHANNELS):
        np.testing.assert_array_equal(params["lin"][f"lin{t}"]["kernel"],
                                      lin[f"lin{t}.model.1.weight"].reshape(c, 1))


@pytest.mark.parametrize("which, edit, message", [
    ("vgg", lambda d: d.pop("features.12.weight"), "features.12.weight"),
    ("vgg", lambda d: d.pop("features.28.bias"), "features.28.bias"),
    ("vgg", lambda d: d.__setitem__("features.30.weight", np.zeros((3,))), "features.30.weight"),
    ("vgg", lambda d: d.__setitem__("features.0.weight", np.zeros((64, 3, 5, 5))),
     "features.0.weight"),
    ("vgg", lambda d: d.__setitem__("features.2.bias", np.zeros((128,))), "features.2.bias"),
    ("lin", lambda d: d.pop("lin3.model.1.weight"), "lin3.model.1.weight"),
    ("lin", lambda d: d.__setitem__("lin5.model.1.weight", np.zeros((1, 8, 1, 1))),
     "lin5.model.1.weight"),
    ("lin", lambda d: d.__setitem__("lin0.model.1.weight", np.zeros((1, 128, 1, 1))),
     "lin0.model.1.weight"),
])
def test_converter_rejects_bad_state_dicts(torch_dicts, which, edit, message):
    vgg, lin = dict(torch_dicts[0]), dict(torch_dicts[1])
    edit(vgg if which == "vgg" else lin)
    source = "vgg16-397923af.pth" if which == "vgg" else "vgg.pth"
    with pytest.raises(pretrained.WeightsError) as info:
        lpips.params_from_torch(vgg, lin)
    assert message in str(info.value) and source in str(info.value)


# --- 4. loading ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["", "/nonexistent/lpips_vgg.npz"])
def test_missing_weights_error_says_what_to_do(path):
    with pytest.raises(pretrained.MissingWeightsError) as info:
        lpips.load_params(path)
    text = str(info.value)
    for needle in ["loss.lpips_weights", "vgg16-397923af.pth", "lpips/weights/v0.1/vgg.pth",
                   lpips.SPEC.convert_command]:
        assert needle in text


@pytest.fixture(scope="module")
def weights_file(params, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("lpips") / "lpips_vgg.npz")
    pretrained.save(path, params, network=lpips.SPEC.network,
                    source_name="vgg16-397923af.pth+vgg.pth", source_sha256="0" * 64)
    return path


def test_save_load_round_trip(params, weights_file, tmp_path):
    loaded = lpips.load_params(weights_file)
    got, want = (traverse_util.flatten_dict(p, sep="/") for p in (loaded, params))
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    # A file of another network, or one missing a tensor, is refused.
    other = str(tmp_path / "other.npz")
    pretrained.save(other, params, network="inception_fid", source_name="x", source_sha256="0")
    with pytest.raises(pretrained.WeightsError, match="inception_fid"):
        lpips.load_params(other)
    partial = {"vgg": params["vgg"], "lin": dict(params["lin"])}
    del partial["lin"]["lin4"]
    pretrained.save(other, partial, network=lpips.SPEC.network, source_name="x",
                    source_sha256="0")
    with pytest.raises(pretrained.WeightsError, match="lin/lin4/kernel"):
        lpips.load_params(other)


# --- 5. the loss function -----------------------------------------------------------------

def test_make_lpips_fn_value_and_gradient(params, weights_file, apply_fn):
    fn = lpips.make_lpips_fn(weights_file)
    x, y = _images(2, SIZE, 5), _images(2, SIZE, 6)
    x = x.at[0].set(y[0])  # image 0: x == y, the distance's minimum
    value, (gx, gy) = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(x, y)
    want = jnp.mean(apply_fn({"params": params}, x, y))
    np.testing.assert_allclose(value, want, rtol=1e-6)
    assert value.shape == () and value.dtype == jnp.float32 and value > 0
    assert np.all(np.isfinite(gx)) and np.any(gx[1] != 0)
    # At the minimum the gradient vanishes (up to rounding).
    assert np.max(np.abs(gx[0])) < 1e-6 * np.max(np.abs(gx[1]))
    assert not np.any(gy)  # y is the target: no gradient reaches it


def test_unit_normalize_value_and_gradient_at_zero_pixel():
    """An all-zero (post-ReLU) pixel stays 0 and has a finite gradient; others are unit."""
    f = jnp.zeros((1, 2, 1, 4)).at[0, 1, 0].set(jnp.array([1.0, 2.0, 0.0, 3.0]))
    value, g = jax.jit(jax.value_and_grad(
        lambda f: jnp.sum(lpips.unit_normalize(f) * jnp.arange(1.0, 5.0))))(f)
    assert np.all(np.isfinite(g)) and np.any(g[0, 1] != 0)
    np.testing.assert_allclose(value, (1 + 4 + 12) / np.sqrt(14.0), rtol=1e-6)
    np.testing.assert_array_equal(lpips.unit_normalize(f)[0, 0], 0.0)


def test_configured_weights_add_lpips_to_the_generator_loss(params, weights_file, apply_fn):
    """loss.lpips_weights set → total = L2 + VQ + adversarial terms + λ·LPIPS(recon, image)."""
    import flax.linen as nn
    from conftest import tiny_task_config

    from vq3d_jax.tasks import get_task
    from vq3d_jax.tasks.common import DISCRIMINATOR

    config = tiny_task_config()
    config.loss.update(lpips=0.5, lpips_weights=weights_file)
    task = get_task(config)
    batch = {"image": jax.random.randint(jax.random.key(1), (2, 32, 32, 3), 0, 256, jnp.uint8)}

    @jax.jit
    def loss():
        rng = jax.random.key(0, impl="rbg")
        g_params = nn.meta.unbox(task.init_generator(rng, batch["image"][:1] * 0.0))
        d_params = nn.meta.unbox(task.discriminator.init(rng, batch["image"][:1] * 0.0))
        return task.generator_loss(g_params, {DISCRIMINATOR: d_params["params"]}, batch, None,
                                   1.0)

    total, (fakes, _, terms) = loss()
    images = batch["image"].astype(jnp.float32) / 127.5 - 1.0
    expected = jnp.mean(apply_fn({"params": params}, fakes[DISCRIMINATOR], images))
    np.testing.assert_allclose(terms["loss/lpips"], expected, rtol=1e-5)
    cfg = config.loss
    rest = cfg.l2 * terms["loss/l2"] + cfg.vq * terms["loss/vq"] + cfg.adversarial * terms[
        "loss/g_adv"]
    np.testing.assert_allclose(total, rest + 0.5 * expected, rtol=1e-5)
