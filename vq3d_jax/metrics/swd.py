"""Multi-scale sliced Wasserstein distance (Karras et al. 2018, ProGAN §5 and App. D).

A quality metric that needs no downloaded network: per level of a Laplacian pyramid
(full resolution down to 16²), `nhoods_per_image` random 7×7 neighbourhoods of every
image become descriptors (7·7·C values), normalised per colour channel over the set
(the i-th images of both sets share their patch positions [choice], so identical sets
score exactly 0);
the distance between two sets of descriptors is the 1D Wasserstein-1 distance of their
projections on random unit directions (sorted projections, mean absolute difference),
averaged over `dir_repeats` × `dirs_per_repeat` directions. Reported ×10³ per level
and averaged, as in ProGAN's tables.

Pyramid: ProGAN's [1, 4, 6, 4, 1]² / 256 Gaussian with mirrored borders; down = filter
then every second pixel; up = zeros between pixels then the filter × 4; level k is the
image at that scale minus the upsampled next one, the last level the coarsest image.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

GAUSSIAN = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _filter(x: jax.Array) -> jax.Array:
    """Separable 5-tap Gaussian of NHWC ``x`` with mirrored ('reflect') borders."""
    x = jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    h, w = x.shape[1] - 4, x.shape[2] - 4
    x = sum(float(GAUSSIAN[i]) * x[:, i:i + h] for i in range(5))
    return sum(float(GAUSSIAN[i]) * x[:, :, i:i + w] for i in range(5))


def _down(x: jax.Array) -> jax.Array:
    return _filter(x)[:, ::2, ::2]


def _up(x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    grid = jnp.zeros((b, h, 2, w, 2, c), x.dtype).at[:, :, 0, :, 0].set(x)
    return _filter(grid.reshape(b, 2 * h, 2 * w, c)) * 4.0


def laplacian_pyramid(images: jax.Array, num_levels: int) -> list[jax.Array]:
    """float NHWC → `num_levels` bands, finest first; the last is the coarsest image."""
    levels, current = [], images
    for _ in range(num_levels - 1):
        smaller = _down(current)
        levels.append(current - _up(smaller))
        current = smaller
    return levels + [current]


def patch_corners(rng: np.random.Generator, shape: tuple[int, ...], nhoods_per_image: int,
                  nhood_size: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Random top-left corners (rows, cols) [N, k] of nhood_size² patches in [N, h, w, C]."""
    n, h, w = shape[:3]
    return (rng.integers(0, h - nhood_size + 1, (n, nhoods_per_image)),
            rng.integers(0, w - nhood_size + 1, (n, nhoods_per_image)))


def patch_descriptors(level: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                      nhood_size: int = 7) -> np.ndarray:
    """The neighbourhoods at `patch_corners` of every image [N, h, w, C] → [N·k, s, s, C]."""
    n, nhoods_per_image = rows.shape
    offsets = np.arange(nhood_size)
    r = rows[..., None, None] + offsets[:, None]  # [N, k, s, 1]
    c = cols[..., None, None] + offsets[None, :]  # [N, k, 1, s]
    images = np.arange(n)[:, None, None, None]
    return level[images, r, c].reshape((n * nhoods_per_image, nhood_size, nhood_size, -1))


def normalize_descriptors(desc: np.ndarray) -> np.ndarray:
    """[M, s, s, C] → [M, s·s·C], each channel zero-mean, unit-std over the whole set."""
    desc = desc - desc.mean(axis=(0, 1, 2), keepdims=True)
    desc = desc / desc.std(axis=(0, 1, 2), keepdims=True)
    return desc.reshape(desc.shape[0], -1)


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, rng: np.random.Generator,
                       dir_repeats: int = 4, dirs_per_repeat: int = 128) -> float:
    """Mean over random unit directions of W1(a·d, b·d); a, b [M, D] with equal M."""
    if a.shape != b.shape:
        raise ValueError(f"descriptor sets of shapes {a.shape} and {b.shape}: SWD compares "
                         "equally many descriptors of one size.")
    distances = []
    for _ in range(dir_repeats):
        dirs = rng.standard_normal((a.shape[1], dirs_per_repeat))
        dirs = dirs / np.sqrt(np.sum(np.square(dirs), axis=0, keepdims=True))
        pa, pb = _sorted_projections(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32),
                                     jnp.asarray(dirs, jnp.float32))
        distances.append(float(jnp.mean(jnp.abs(pa - pb))))
    return float(np.mean(distances))


@jax.jit
def _sorted_projections(a, b, dirs):
    return jnp.sort(a @ dirs, axis=0), jnp.sort(b @ dirs, axis=0)


def swd(real: np.ndarray, fake: np.ndarray, *, seed: int = 0, min_resolution: int = 16,
        nhoods_per_image: int = 128, dir_repeats: int = 4,
        dirs_per_repeat: int = 128) -> dict[str, float]:
    """SWD ×10³ between two equally large image sets (uint8 or float NHWC, square):
    {'swd_<res>': per pyramid level, 'swd_avg': their mean}."""
    if real.shape != fake.shape:
        raise ValueError(f"SWD compares equally many images of one size: {real.shape} vs "
                         f"{fake.shape}.")
    size = real.shape[1]
    num_levels = int(np.log2(size // min_resolution)) + 1
    if size // 2 ** (num_levels - 1) < min_resolution or num_levels < 1:
        raise ValueError(f"{size}² images are below the {min_resolution}² coarsest level.")
    rng = np.random.default_rng(seed)
    pyramids = [laplacian_pyramid(jnp.asarray(x, jnp.float32), num_levels) for x in (real, fake)]
    scores = {}
    for level, (a, b) in enumerate(zip(*pyramids)):
        # The same patch positions in both sets: identical sets are at distance 0.
        rows, cols = patch_corners(rng, a.shape, nhoods_per_image)
        desc = [normalize_descriptors(patch_descriptors(np.asarray(x), rows, cols))
                for x in (a, b)]
        scores[f"swd_{size >> level}"] = 1e3 * sliced_wasserstein(
            desc[0], desc[1], rng, dir_repeats, dirs_per_repeat)
    scores["swd_avg"] = float(np.mean(list(scores.values())))
    return scores


class SWDEvaluator:
    """SWD of a task's `fid_images` against the eval split's real images, in the eval
    pass (`begin` → `add` per global batch → `finish`), on the first `num_images`."""

    def __init__(self, task, num_images: int, state_shardings, mesh):
        from vq3d_jax.train import sharding as sharding_lib

        self.num_images = int(num_images)
        batch = sharding_lib.batch_sharding(mesh)
        self.task_images = jax.jit(task.fid_images, in_shardings=(state_shardings, batch),
                                    out_shardings=sharding_lib.replicated(mesh))

    def begin(self) -> _SWDPass:
        return _SWDPass(self)


class _SWDPass:
    def __init__(self, evaluator: SWDEvaluator):
        self.ev = evaluator
        self.real: list[np.ndarray] = []
        self.fake: list[np.ndarray] = []
        self.count = 0

    def add(self, state, global_batch: dict) -> None:
        if self.count < self.ev.num_images:
            self.add_images(self.ev.task_images(state, global_batch), global_batch)

    def add_images(self, images, global_batch: dict) -> None:
        if self.count >= self.ev.num_images:
            return
        keep = np.asarray(jax.device_get(global_batch["mask"]), bool)
        fake = np.asarray(jax.device_get(images))[keep]
        real = np.asarray(jax.device_get(global_batch["image"]))[keep]
        self.real.append(real)
        self.fake.append(fake)
        self.count += len(real)

    def finish(self) -> dict[str, float]:
        n = min(self.count, self.ev.num_images)
        real, fake = (np.concatenate(x)[:n] for x in (self.real, self.fake))
        scores = swd(real, fake)
        scores["swd_num_examples"] = float(n)
        return scores
