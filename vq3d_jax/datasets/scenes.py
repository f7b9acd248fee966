"""Random scenes of the synthetic dataset: primitives on a ground plane, and their cameras.

A :class:`Scene` is drawn by :func:`sample_scene` from the generator of its split and index
(:func:`scene_rng`); :func:`canonical_camera` places the camera that sees it, and the
held-out views orbit that camera by ``NOVEL_VIEW_OFFSETS_DEG``. Conventions: see
:mod:`.cameras_np`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vq3d_jax.datasets.cameras_np import look_at

CLASS_NAMES = ("sphere", "box", "cylinder", "cone")
NUM_CLASSES = len(CLASS_NAMES)
SPHERE, BOX, CYLINDER, CONE = range(NUM_CLASSES)

FOV_DEG = 50.0  # full field of view (square images: horizontal = vertical)
CAMERA_DISTANCE = 6.0  # canonical distance from the scene centre, before jitter
CAMERA_ELEVATION_DEG = 18.0  # canonical camera height above the horizon, before jitter
# Held-out views: (yaw, pitch) offsets of the canonical camera about the scene centre.
NOVEL_VIEW_OFFSETS_DEG = (
    (-20.0, 0.0),
    (-10.0, 0.0),
    (10.0, 0.0),
    (20.0, 0.0),
    (0.0, -10.0),
    (0.0, 10.0),
)
NUM_NOVEL_VIEWS = len(NOVEL_VIEW_OFFSETS_DEG)
SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}


def scene_rng(split: str, index: int, seed: int = 0) -> np.random.Generator:
    """The generator of one scene: independent of resolution and of every other scene."""
    return np.random.default_rng([seed, SPLIT_IDS[split], index])


@dataclasses.dataclass(frozen=True)
class Scene:
    """Primitives standing on a ground plane under a directional light and a sky.

    ``half_extents``: sphere (r, r, r); box (hx, hy, hz) in its own yawed frame;
    cylinder and cone (r, h/2, r) with vertical axes (a cone's apex is at the top).
    ``centers`` are bounding-box centres; ``center`` is the scene pivot.
    """

    kinds: np.ndarray  # (P,) int, index into CLASS_NAMES
    centers: np.ndarray  # (P, 3)
    half_extents: np.ndarray  # (P, 3)
    yaws: np.ndarray  # (P,) rotation about world up (used by boxes)
    colors: np.ndarray  # (P, 3) albedo in [0, 1]
    center: np.ndarray  # (3,) scene pivot
    ground: bool = True  # plane y = 0; False leaves only primitives and sky (tests)
    ground_color: np.ndarray = dataclasses.field(default_factory=lambda: np.full(3, 0.6))
    checker_size: float = 0.75
    checker_contrast: float = 0.2
    light_dir: np.ndarray = dataclasses.field(
        default_factory=lambda: np.array([0.3, -0.8, -0.5]) / np.linalg.norm([0.3, -0.8, -0.5])
    )  # unit vector towards the light
    ambient: float = 0.35
    shadows: bool = True
    sky_horizon: np.ndarray = dataclasses.field(default_factory=lambda: np.array([0.9, 0.92, 0.95]))
    sky_zenith: np.ndarray = dataclasses.field(default_factory=lambda: np.array([0.4, 0.6, 0.9]))


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV → RGB, all in [0, 1]."""
    h, s, v = np.asarray(h), np.asarray(s), np.asarray(v)
    k = (np.array([5.0, 3.0, 1.0]) + h[..., None] * 6.0) % 6.0
    return v[..., None] - (v * s)[..., None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _primitive_shape(kind: int, scale: float, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Half extents and footprint radius of a primitive of roughly ``scale`` size."""
    if kind == SPHERE:
        h = np.array([scale, scale, scale])
    elif kind == BOX:
        hx, hz = rng.uniform(0.55, 0.9, 2) * scale
        h = np.array([hx, rng.uniform(0.5, 1.1) * scale, hz])
        return h, float(np.hypot(hx, hz))
    elif kind == CYLINDER:
        r = rng.uniform(0.5, 0.85) * scale
        h = np.array([r, rng.uniform(0.6, 1.3) * scale, r])
    else:  # cone
        r = rng.uniform(0.7, 1.0) * scale
        h = np.array([r, rng.uniform(0.8, 1.4) * scale, r])
    return h, float(h[0])


def sample_scene(rng: np.random.Generator) -> Scene:
    """A random scene: one larger 'hero' primitive near the origin and 1–4 smaller ones.

    The hero's class is uniform over ``CLASS_NAMES`` so labels (the dominant primitive)
    come out roughly balanced. Footprints never overlap; objects may occlude each other.
    """
    kinds, centers, halves, radii = [], [], [], []
    n_total = int(rng.integers(2, 6))
    for i in range(n_total):
        kind = int(rng.integers(NUM_CLASSES))
        half, radius = _primitive_shape(
            kind, rng.uniform(0.65, 0.95) if i == 0 else rng.uniform(0.3, 0.6), rng
        )
        for _ in range(20):  # rejection sampling of a free spot; give up quietly if none
            if i == 0:
                xz = rng.uniform(-0.4, 0.4, 2)
            else:
                rho, phi = rng.uniform(1.1, 2.4), rng.uniform(0.0, 2.0 * np.pi)
                xz = np.array([rho * np.cos(phi), rho * np.sin(phi)])
            if all(
                np.hypot(*(xz - c[[0, 2]])) > radius + r + 0.05
                for c, r in zip(centers, radii, strict=True)
            ):
                kinds.append(kind)
                centers.append(np.array([xz[0], -half[1], xz[1]]))  # resting on y = 0
                halves.append(half)
                radii.append(radius)
                break
    p = len(kinds)
    colors = _hsv_to_rgb(rng.uniform(0, 1, p), rng.uniform(0.45, 0.9, p), rng.uniform(0.6, 1, p))
    ground = _hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.05, 0.35), rng.uniform(0.45, 0.7))
    light_az, light_el = rng.uniform(0, 2 * np.pi), np.deg2rad(rng.uniform(35, 70))
    light = np.array(
        [
            np.cos(light_el) * np.cos(light_az),
            -np.sin(light_el),
            np.cos(light_el) * np.sin(light_az),
        ]
    )
    centers_a = np.array(centers)
    return Scene(
        kinds=np.array(kinds, np.int32),
        centers=centers_a,
        half_extents=np.array(halves),
        yaws=rng.uniform(0.0, 0.5 * np.pi, p),
        colors=colors,
        center=centers_a.mean(axis=0),
        ground_color=ground,
        checker_size=float(rng.uniform(0.5, 1.0)),
        checker_contrast=float(rng.uniform(0.12, 0.3)),
        light_dir=light,
        ambient=float(rng.uniform(0.25, 0.4)),
        sky_horizon=np.clip(np.array([0.88, 0.9, 0.94]) + rng.uniform(-0.06, 0.06, 3), 0, 1),
        sky_zenith=np.clip(np.array([0.35, 0.55, 0.88]) + rng.uniform(-0.1, 0.1, 3), 0, 1),
    )


def canonical_camera(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """cam_to_world looking at the scene pivot from ~CAMERA_DISTANCE with mild jitter."""
    dist = CAMERA_DISTANCE * rng.uniform(0.95, 1.05)
    yaw = np.deg2rad(rng.uniform(-10.0, 10.0))
    elev = np.deg2rad(CAMERA_ELEVATION_DEG + rng.uniform(-3.0, 3.0))
    # yaw = 0 puts the camera on the -z side of the pivot, looking along +z.
    offset = dist * np.array(
        [np.sin(yaw) * np.cos(elev), -np.sin(elev), -np.cos(yaw) * np.cos(elev)]
    )
    return look_at(scene.center + offset, scene.center)
