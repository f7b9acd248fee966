"""FID InceptionV3 (models/inception.py): weight mapping, preprocessing, FID pools, forward."""

import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from vq3d_jax.models import inception, pretrained

_TENSORS_JSON = os.path.join(
    os.path.dirname(__file__), "data", "pytorch_fid_inception_tensors.json"
)


def _torch_tensor_specs() -> list[dict]:
    with open(_TENSORS_JSON) as f:
        return json.load(f)["tensors"]


@functools.cache
def _normal_pool() -> np.ndarray:
    """One float32 normal draw, as many values as the network has parameters.

    Every test's random data is cut from it: on CPU each distinct jax.random shape
    costs a compile, so one draw is much cheaper than one per tensor.
    """
    size = sum(math.prod(t["shape"]) for t in _torch_tensor_specs())
    return np.asarray(jax.random.normal(jax.random.key(0), (size,), jnp.float32))


def _normal_arrays(shapes, offset: int = 0) -> list[np.ndarray]:
    """Consecutive slices of the pool, reshaped to `shapes` (copies: callers may edit)."""
    pool = _normal_pool()
    out, start = [], offset
    for shape in shapes:
        size = math.prod(shape)
        out.append(pool[start:start + size].reshape(shape).copy())
        start += size
    assert start <= pool.size
    return out


def _normal(shape, offset: int = 0) -> np.ndarray:
    return _normal_arrays([shape], offset)[0]


def _uint8_images(shape, offset: int = 0) -> np.ndarray:
    return np.clip(np.round(127.5 + 70.0 * _normal(shape, offset)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def torch_state_dict():
    specs = _torch_tensor_specs()
    arrays = _normal_arrays([tuple(t["shape"]) for t in specs])
    state = {t["name"]: a for t, a in zip(specs, arrays)}
    state["Mixed_5b.branch1x1.bn.num_batches_tracked"] = np.array(7, np.int64)
    return state


@pytest.fixture(scope="module")
def expected_flat():
    return traverse_util.flatten_dict(inception.abstract_params(), sep="/")


# ----------------------------------------------------------------------------- 1, 2: mapping


def test_params_from_torch_matches_module_and_transposes(torch_state_dict, expected_flat):
    assert len(_torch_tensor_specs()) == 472
    params = inception.params_from_torch(torch_state_dict)
    flat = traverse_util.flatten_dict(params, sep="/")
    assert set(flat) == set(expected_flat)
    for path, value in flat.items():
        assert value.shape == tuple(expected_flat[path].shape), path
        assert value.dtype == np.float32, path

    # conv (O, I, H, W) → HWIO, on a non-square kernel so H/W swaps are caught.
    w = torch_state_dict["Mixed_6b.branch7x7_2.conv.weight"]  # (128, 128, 1, 7)
    k = params["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"]
    assert k.shape == (1, 7, 128, 128)
    o, i, x = 5, 9, 4
    assert k[0, x, i, o] == w[o, i, 0, x]
    np.testing.assert_array_equal(k, w.transpose(2, 3, 1, 0))

    fc_w = torch_state_dict["fc.weight"]  # (1008, 2048)
    np.testing.assert_array_equal(params["fc"]["kernel"], fc_w.T)
    np.testing.assert_array_equal(params["fc"]["bias"], torch_state_dict["fc.bias"])

    bn = params["Mixed_7c"]["branch_pool"]["bn"]
    for ours, theirs in [("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"),
                         ("var", "running_var")]:
        theirs = torch_state_dict[f"Mixed_7c.branch_pool.bn.{theirs}"]
        np.testing.assert_array_equal(bn[ours], theirs)


def test_params_from_torch_rejects_bad_state_dicts(torch_state_dict):
    missing = dict(torch_state_dict)
    del missing["Mixed_7b.branch3x3dbl_3a.conv.weight"]
    with pytest.raises(pretrained.WeightsError, match="1 missing"):
        inception.params_from_torch(missing)

    # A name with no known form (AuxLogits is not part of the FID network).
    extra = dict(torch_state_dict, **{"AuxLogits.fc.weight": np.zeros((1000, 768), np.float32)})
    with pytest.raises(pretrained.WeightsError, match="AuxLogits"):
        inception.params_from_torch(extra)

    # A well-formed name of a layer the network does not have.
    extra_layer = dict(torch_state_dict)
    extra_layer["Mixed_5b.branch9x9.conv.weight"] = np.zeros((64, 192, 1, 1), np.float32)
    with pytest.raises(pretrained.WeightsError, match="1 unexpected"):
        inception.params_from_torch(extra_layer)

    wrong = dict(torch_state_dict)
    wrong["fc.weight"] = np.zeros((1000, 2048), np.float32)  # torchvision's 1000 classes
    with pytest.raises(pretrained.WeightsError, match="1 of the wrong shape"):
        inception.params_from_torch(wrong)


# ----------------------------------------------------------------------------- 3: preprocess


def _torch_bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] float64 weights of F.interpolate(bilinear, align_corners=False)."""
    m = np.zeros((n_out, n_in))
    scale = n_in / n_out
    for i in range(n_out):
        src = max((i + 0.5) * scale - 0.5, 0.0)
        i0 = min(int(np.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        frac = src - i0
        m[i, i0] += 1.0 - frac
        m[i, i1] += frac
    return m


def _reference_preprocess(images_01: np.ndarray) -> np.ndarray:
    _, h, w, _ = images_01.shape
    rows = _torch_bilinear_matrix(h, 299)
    cols = _torch_bilinear_matrix(w, 299)
    resized = np.einsum("yh,bhwc->bywc", rows, images_01.astype(np.float64))
    resized = np.einsum("bywc,xw->byxc", resized, cols)
    return 2.0 * resized - 1.0


@pytest.mark.parametrize("size", [(7, 5), (600, 400)], ids=["upsample", "downsample"])
def test_preprocess_is_torch_bilinear_half_pixel_no_antialias(size):
    images_u8 = _uint8_images((1, *size, 3))
    images_01 = images_u8.astype(np.float32) / 255.0
    got_u8 = np.asarray(inception.preprocess(images_u8))
    got_float = np.asarray(inception.preprocess(images_01))
    assert got_u8.shape == (1, 299, 299, 3) and got_u8.dtype == np.float32
    np.testing.assert_allclose(got_u8, _reference_preprocess(images_01), rtol=0, atol=1e-5)
    np.testing.assert_allclose(got_u8, got_float, rtol=0, atol=1e-6)
    # The same filter as jax.image.resize without antialias (up to its float32
    # sample positions); an antialiased resize is a different filter when shrinking.
    def jax_resize(antialias):
        out = jax.image.resize(images_01, (1, 299, 299, 3), "linear", antialias=antialias)
        return 2.0 * np.asarray(out) - 1.0

    np.testing.assert_allclose(got_u8, jax_resize(False), rtol=0, atol=3e-4)
    if size[0] > 299:
        assert np.abs(got_u8 - jax_resize(True)).max() > 0.05


def test_preprocess_without_resize_only_rescales():
    images = np.array([[[[0, 128, 255]]]], np.uint8)
    np.testing.assert_allclose(
        inception.preprocess(images, resize=False), [[[[-1.0, 2 * 128 / 255 - 1, 1.0]]]],
        atol=1e-6,
    )


# ----------------------------------------------------------------------------- 4: FID pooling


def _np_pool3x3(x: np.ndarray, op: str) -> np.ndarray:
    """3x3 stride-1 pad-1 pool in float64: 'avg' counts only in-image pixels; 'max'."""
    b, h, w, c = x.shape
    out = np.zeros((b, h, w, c))
    for i in range(h):
        for j in range(w):
            window = x[:, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2, :].astype(np.float64)
            out[:, i, j] = window.mean((1, 2)) if op == "avg" else window.max((1, 2))
    return out


@pytest.mark.parametrize("shape", [(2, 5, 6, 3), (1, 1, 4, 2)])
def test_pool_helpers_match_numpy(shape):
    x = _normal(shape)
    avg = np.asarray(inception.avg_pool_3x3_exclude_pad(jnp.asarray(x)))
    np.testing.assert_allclose(avg, _np_pool3x3(x, "avg"), atol=1e-6)
    # The corner divides by 4 (2x2 in-image pixels), not 9 as count_include_pad would.
    if shape[1] > 1:
        np.testing.assert_allclose(avg[:, 0, 0], x[:, :2, :2].mean((1, 2)), atol=1e-6)
    mx = np.asarray(inception.max_pool_3x3_same(jnp.asarray(x)))
    np.testing.assert_allclose(mx, _np_pool3x3(x, "max"), atol=0)


@pytest.mark.parametrize(
    "block,pool_features,op",
    [("Mixed_5b", 32, "avg"), ("Mixed_6b", 192, "avg"), ("Mixed_7b", 192, "avg"),
     ("Mixed_7c", 192, "max")],
)
def test_network_blocks_use_fid_pool_branches(block, pool_features, op):
    """The branch_pool of each block, with an identity 1x1 conv, is the numpy pool.

    Mixed_7c (FIDInceptionE_2) must max-pool; the others average without the padding.
    """
    c = 4
    x = np.abs(_normal((1, 5, 5, c)))  # ≥ 0, so the branch's ReLU is the identity
    model = inception.InceptionV3FID(precision=jax.lax.Precision.HIGHEST)
    call = lambda m, x: getattr(m, block)(x)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, method=call), x)["params"]
    params = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes)
    branch = params[block]["branch_pool"]
    branch["conv"]["kernel"][0, 0, :, :c] = np.eye(c)
    branch["bn"]["scale"][:] = 1.0
    branch["bn"]["var"][:] = 1.0 - inception.BN_EPS
    out = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x, method=call))(params, x))
    assert out.shape[-1] % 8 == 0 and out.shape[:3] == (1, 5, 5)
    got = out[..., out.shape[-1] - pool_features:][..., :c]
    np.testing.assert_allclose(got, _np_pool3x3(x, op), atol=1e-5)


def test_basic_conv_folds_batchnorm_eps_1e3():
    """BasicConv2d = conv (torch padding) → BN(running stats, eps 1e-3) → ReLU."""
    x = _normal((1, 6, 9, 3)).astype(np.float64)
    layer = inception.BasicConv2d(4, (1, 7), padding=(0, 3),
                                  precision=jax.lax.Precision.HIGHEST)
    kernel, scale, bias, mean, var = _normal_arrays([(1, 7, 3, 4)] + [(4,)] * 4, offset=1000)
    var = np.abs(var) + 1e-3  # small variances make eps matter
    params = {"conv": {"kernel": kernel}, "bn": {"scale": scale, "bias": bias, "mean": mean,
                                                  "var": var}}
    got = np.asarray(jax.jit(layer.apply)({"params": params}, x.astype(np.float32)))
    padded = np.pad(x, ((0, 0), (0, 0), (3, 3), (0, 0)))
    conv = sum(
        np.einsum("bhwi,io->bhwo", padded[:, :, dx:dx + 9], kernel[0, dx]) for dx in range(7)
    )
    ref = np.maximum((conv - mean) / np.sqrt(var + 1e-3) * scale + bias, 0.0)
    assert got.shape == (1, 6, 9, 4)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- 5: forward, I/O


@pytest.fixture(scope="module")
def random_params(expected_flat):
    paths = sorted(expected_flat)
    arrays = _normal_arrays([tuple(expected_flat[p].shape) for p in paths])
    flat = {}
    for path, a in zip(paths, arrays):
        leaf = path.rsplit("/", 1)[1]
        if leaf == "kernel":  # He scaling keeps activations O(1) through 94 ReLU convs
            flat[path] = a * np.float32(math.sqrt(2.0 / math.prod(a.shape[:-1])))
        elif leaf in ("scale", "var"):
            flat[path] = np.ones_like(a)
        else:  # bn bias / mean, fc bias
            flat[path] = np.zeros_like(a)
    return traverse_util.unflatten_dict(flat, sep="/")


def test_forward_shapes_and_dtypes(random_params):
    model = inception.InceptionV3FID()
    images = _uint8_images((2, 32, 40, 3))
    out = jax.jit(lambda p, x: model.apply({"params": p}, x))(random_params, images)
    pool, logits = np.asarray(out["pool"]), np.asarray(out["logits"])
    assert pool.shape == (2, 2048) and pool.dtype == np.float32
    assert logits.shape == (2, 1008) and logits.dtype == np.float32
    assert np.isfinite(pool).all() and np.isfinite(logits).all()
    assert (pool >= 0).all() and pool.std() > 0  # post-ReLU averages, not all zero
    assert not np.allclose(pool[0], pool[1])
    fc = random_params["fc"]
    np.testing.assert_allclose(logits, pool @ fc["kernel"] + fc["bias"], rtol=1e-4, atol=1e-4)


def test_save_load_round_trip(random_params, tmp_path):
    path = str(tmp_path / "inception.npz")
    pretrained.save(path, random_params, network=inception.SPEC.network,
                    source_name="pt_inception-2015-12-05-6726825d.pth", source_sha256="0" * 64)
    loaded = inception.load_params(path)
    want = traverse_util.flatten_dict(random_params, sep="/")
    got = traverse_util.flatten_dict(loaded, sep="/")
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])

    with pytest.raises(pretrained.MissingWeightsError, match="convert_weights inception"):
        inception.load_params(str(tmp_path / "absent.npz"))
