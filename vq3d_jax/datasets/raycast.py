"""Procedural 3D scenes and a vectorised numpy ray caster for the synthetic dataset.

Dataset-side code only (pure numpy, no TFDS, no jax): the library's differentiable
camera geometry belongs in ``vq3d_jax.geometry`` (jnp); the few camera helpers here are
kept small and exist so the dataset can be generated (and tested) on its own.

Conventions (``DESIGN.md``, "One camera convention"):

* camera frame OpenCV: +x right, +y down, +z forward;
* ``cam_to_world`` 4x4: rotation columns are the camera axes in world coordinates, the last
  column is the camera centre;
* intrinsics ``K`` 3x3 in pixels, principal point at the image centre, pixel centres at
  integer + 0.5;
* world frame OpenCV-like (as in GMPI): world up is **-y**, the ground is the plane y = 0
  and objects stand on it at y <= 0;
* depth is the **z-depth in the camera frame** (not the distance along the ray); the sky
  at infinity has depth +inf (disparity 0);
* yaw rotates about the world up axis (0, -1, 0), pitch about the camera's x axis, both in
  radians, right-hand rule about the axis. Positive pitch tilts the camera nose-up about
  its own x axis; orbiting the pivot this moves the camera *down*.

Every ray direction is scaled so that its camera-frame z component is 1, so the ray
parameter ``t`` of a hit *is* its z-depth; no conversion is needed anywhere.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

CLASS_NAMES = ("sphere", "box", "cylinder", "cone")
NUM_CLASSES = len(CLASS_NAMES)
SPHERE, BOX, CYLINDER, CONE = range(NUM_CLASSES)

# Ids in the per-pixel primitive map returned by `render` (primitives are 0..P-1).
SKY_ID = -1
GROUND_ID = -2

WORLD_UP = np.array([0.0, -1.0, 0.0])
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

_EPS = 1e-4  # minimum hit distance; keeps shadow rays off their own surface


# --------------------------------------------------------------------------- cameras


def intrinsics_from_fov(fov_deg: float, width: int, height: int) -> np.ndarray:
    """Pinhole K (pixels) for a horizontal FOV; square pixels, principal point at centre."""
    focal = 0.5 * width / np.tan(0.5 * np.deg2rad(fov_deg))
    return np.array(
        [[focal, 0.0, 0.5 * width], [0.0, focal, 0.5 * height], [0.0, 0.0, 1.0]], np.float64
    )


def rotation_about_axis(axis: np.ndarray, angle: float) -> np.ndarray:
    """3x3 rotation by ``angle`` radians about ``axis`` (right-hand rule, Rodrigues)."""
    a = np.asarray(axis, np.float64)
    a = a / np.linalg.norm(a)
    skew = np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])
    return np.eye(3) + np.sin(angle) * skew + (1.0 - np.cos(angle)) * (skew @ skew)


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = WORLD_UP) -> np.ndarray:
    """OpenCV-frame cam_to_world (4x4) at ``eye`` looking at ``target``, no roll."""
    eye = np.asarray(eye, np.float64)
    z = np.asarray(target, np.float64) - eye
    z /= np.linalg.norm(z)
    # x = y × z with y pointing "down" = -up gives a right-handed frame with +y down.
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


def orbit(c2w: np.ndarray, pivot: np.ndarray, yaw: float, pitch: float) -> np.ndarray:
    """Rotates a camera about ``pivot``: pitch about its own x axis, then yaw about world up.

    Both rotations act on the whole pose (orientation and centre), so a camera that looks
    at the pivot keeps looking at it, and pitch/yaw add no roll.
    """
    rot = rotation_about_axis(WORLD_UP, yaw) @ rotation_about_axis(c2w[:3, 0], pitch)
    out = np.eye(4)
    out[:3, :3] = rot @ c2w[:3, :3]
    out[:3, 3] = pivot + rot @ (c2w[:3, 3] - pivot)
    return out


def pixel_rays(
    intrinsics: np.ndarray, cam_to_world: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """World rays through the pixel centres of a batch of V cameras.

    Returns float32 origins (V, 3) and directions (3, V, H*W) (component-major, pixels
    row-major) scaled so that the camera-frame z component is 1: ``t`` along a ray is the
    z-depth of the point it reaches.
    """
    c2w = np.asarray(cam_to_world, np.float64).reshape(-1, 4, 4)
    k = np.broadcast_to(intrinsics, (len(c2w), 3, 3))
    v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    pix = np.stack([u.ravel(), v.ravel(), np.ones(height * width)])  # (3, N)
    # K^-1 [u, v, 1] has z = 1 for an upper-triangular K with K[2,2] = 1; fold R in first.
    m = (c2w[:, :3, :3] @ np.linalg.inv(k)).astype(np.float32)[..., None]  # (V, 3, 3, 1)
    pu, pv = pix[0].astype(np.float32), pix[1].astype(np.float32)
    # Three multiply-adds per component beat a batched 3x3 matmul plus a transpose.
    dirs = np.stack([m[:, j, 0] * pu + m[:, j, 1] * pv + m[:, j, 2] for j in range(3)])
    return c2w[:, :3, 3].astype(np.float32), dirs


def project(
    points: np.ndarray, intrinsics: np.ndarray, cam_to_world: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """World points (..., 3) → pixel coordinates (..., 2) and camera z-depth (...)."""
    rot, centre = cam_to_world[:3, :3], cam_to_world[:3, 3]
    cam = (np.asarray(points, np.float64) - centre) @ rot  # = R^T (X - c), row-wise
    uvw = cam @ np.asarray(intrinsics, np.float64).T
    return uvw[..., :2] / uvw[..., 2:3], cam[..., 2]


# --------------------------------------------------------------------------- scenes


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


# --------------------------------------------------------------------------- ray casting
# Rays are tuples of components (ox, oy, oz), (dx, dy, dz); each component broadcasts to
# the ray batch shape, so one code path serves camera rays (origin per view) and shadow
# rays (origin per point, one direction).


def _solve_quadratic(a, b, c):
    """Roots of a t^2 + 2 b t + c = 0 (t1 <= t2 when a > 0); NaN where there are none."""
    with np.errstate(invalid="ignore", divide="ignore"):
        sq = np.sqrt(b * b - a * c)
        return (-b - sq) / a, (-b + sq) / a


def _valid(t, ok):
    """``t`` where ``ok`` and t > eps, else +inf."""
    return np.where(ok & (t > _EPS), t, np.inf)


def _intersect_sphere(o, d, centre, half):
    ox, oy, oz = o[0] - centre[0], o[1] - centre[1], o[2] - centre[2]
    a = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    b = ox * d[0] + oy * d[1] + oz * d[2]
    c = ox * ox + oy * oy + oz * oz - half[0] ** 2
    t1, _ = _solve_quadratic(a, b, c)
    return _valid(t1, np.isfinite(t1))


def _to_box_frame(v, yaw):
    """World → box-local components (inverse yaw about world up)."""
    cy, sy = math.cos(yaw), math.sin(yaw)  # Python floats: no promotion of float32 rays
    # rotation_about_axis(WORLD_UP, yaw) = [[c,0,-s],[0,1,0],[s,0,c]]; apply its transpose.
    return cy * v[0] + sy * v[2], v[1], -sy * v[0] + cy * v[2]


def _intersect_box(o, d, centre, half, yaw):
    ol = _to_box_frame((o[0] - centre[0], o[1] - centre[1], o[2] - centre[2]), yaw)
    dl = _to_box_frame(d, yaw)
    near, far = -np.inf, np.inf
    with np.errstate(divide="ignore", invalid="ignore"):
        for axis in range(3):  # slab method; fmax/fmin skip the NaNs of 0 * inf
            inv = np.divide(1.0, dl[axis])  # inf, not ZeroDivisionError, for scalars
            ta, tb = (-half[axis] - ol[axis]) * inv, (half[axis] - ol[axis]) * inv
            near = np.fmax(near, np.minimum(ta, tb))
            far = np.fmin(far, np.maximum(ta, tb))
    return _valid(near, near <= far)


def _intersect_caps(o, d, centre, radius, ys, t_best):
    """Horizontal discs of ``radius`` about the vertical axis through ``centre`` at ``ys``.

    A disc can be the first hit only for rays starting on its outer side (from the inner
    side the solid's other surfaces come first), so discs no origin faces are skipped.
    """
    for y, outer_sign in ys:
        if not np.any((o[1] - y) * outer_sign > 0):
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (y - o[1]) / d[1]
        x, z = o[0] + t * d[0] - centre[0], o[2] + t * d[2] - centre[2]
        t_best = np.minimum(t_best, _valid(t, x * x + z * z <= radius * radius))
    return t_best


def _intersect_cylinder(o, d, centre, half):
    r, hh = half[0], half[1]
    ox, oz = o[0] - centre[0], o[2] - centre[2]
    a = d[0] * d[0] + d[2] * d[2]
    t1, _ = _solve_quadratic(a, ox * d[0] + oz * d[2], ox * ox + oz * oz - r * r)
    y = o[1] + t1 * d[1] - centre[1]
    t = _valid(t1, np.abs(y) <= hh)
    caps = ((centre[1] - hh, -1.0), (centre[1] + hh, 1.0))  # (plane y, outer side's sign)
    return _intersect_caps(o, d, centre, r, caps, t)


def _intersect_cone(o, d, centre, half):
    r, hh = half[0], half[1]
    k2 = (r / (2.0 * hh)) ** 2  # squared radius growth per unit of height below the apex
    ox, oy, oz = o[0] - centre[0], o[1] - (centre[1] - hh), o[2] - centre[2]  # apex origin
    a = d[0] * d[0] + d[2] * d[2] - k2 * d[1] * d[1]
    b = ox * d[0] + oz * d[2] - k2 * oy * d[1]
    c = ox * ox + oz * oz - k2 * oy * oy
    t = np.inf
    # The double cone has two nappes and a may be negative: test both roots on the height.
    for root in _solve_quadratic(a, b, c):
        y = oy + root * d[1]
        t = np.minimum(t, _valid(root, (y >= 0.0) & (y <= 2.0 * hh)))
    return _intersect_caps(o, d, centre, r, ((centre[1] + hh, 1.0),), t)


def _intersect(scene: Scene, i: int, o, d):
    # Python floats, not numpy float64 scalars: those would promote float32 rays to float64.
    kind, centre, half = scene.kinds[i], scene.centers[i].tolist(), scene.half_extents[i].tolist()
    if kind == SPHERE:
        return _intersect_sphere(o, d, centre, half)
    if kind == BOX:
        return _intersect_box(o, d, centre, half, float(scene.yaws[i]))
    if kind == CYLINDER:
        return _intersect_cylinder(o, d, centre, half)
    return _intersect_cone(o, d, centre, half)


def _normals(scene: Scene, i: int, p: np.ndarray) -> np.ndarray:
    """Outward unit normals (3, M) of primitive ``i`` at surface points ``p`` (3, M)."""
    kind, half = scene.kinds[i], scene.half_extents[i].tolist()
    q = p - scene.centers[i].astype(np.float32)[:, None]
    if kind == SPHERE:
        n = q
    elif kind == BOX:
        yaw = float(scene.yaws[i])
        ql = np.stack(_to_box_frame(q, yaw)) / np.array(half, np.float32)[:, None]
        axis = np.argmax(np.abs(ql), axis=0)  # the face whose slab the point lies on
        cols = np.arange(ql.shape[1])
        nl = np.zeros_like(ql)
        nl[axis, cols] = np.sign(ql[axis, cols])
        cy, sy = np.cos(yaw), np.sin(yaw)  # back to world: rotation_about_axis(WORLD_UP, yaw)
        n = np.stack([cy * nl[0] - sy * nl[2], nl[1], sy * nl[0] + cy * nl[2]])
    else:
        r, hh = half[0], half[1]
        n = q.copy()
        # Cone: gradient of x^2 + z^2 - k^2 (y - y_apex)^2; cylinder: radial.
        n[1] = -((r / (2.0 * hh)) ** 2) * (q[1] + hh) if kind == CONE else 0.0
        on_cap = np.abs(np.abs(q[1]) - hh) < 1e-3 * hh  # caps are the only flat parts
        n[:, on_cap] = np.array([0.0, 1.0, 0.0], np.float32)[:, None] * np.sign(q[1, on_cap])
    return n / np.maximum(np.sqrt(n[0] ** 2 + n[1] ** 2 + n[2] ** 2), 1e-12)


def _candidate_rays(
    scene: Scene, intrinsics: np.ndarray, c2w: np.ndarray, h: int, w: int
) -> list[np.ndarray]:
    """Per primitive, the flat ray indices (over V*H*W) whose pixels may see it.

    A primitive's bounding sphere has a camera-frame bounding cube whose projection lies
    inside the hull of its eight projected corners; the pixels of that rectangle (plus a
    pixel of margin) are kept. Views where the cube reaches behind the camera keep all.
    """
    radii = np.linalg.norm(scene.half_extents, axis=-1)[:, None]  # (P, 1)
    # Camera-frame centres (P, V, 3): R^T (C - o).
    c = np.einsum("vji,pvj->pvi", c2w[:, :3, :3], scene.centers[:, None] - c2w[:, :3, 3])
    z_near, z_far = c[..., 2] - radii, c[..., 2] + radii
    behind = z_near <= 1e-3
    bounds = []
    for axis, size in ((0, w), (1, h)):  # u from x, v from y
        f, pp = intrinsics[:, axis, axis], intrinsics[:, axis, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            corners = [
                f * (c[..., axis] + sx * radii) / z + pp
                for sx in (-1.0, 1.0)
                for z in (z_near, z_far)
            ]
        lo = np.where(behind, 0, np.floor(np.min(corners, axis=0) - 1.5))
        hi = np.where(behind, size, np.ceil(np.max(corners, axis=0) + 0.5))
        bounds.append((lo[..., None], hi[..., None]))  # (P, V, 1)
    cols, rows = np.arange(w), np.arange(h)
    in_u = (cols >= bounds[0][0]) & (cols <= bounds[0][1])  # (P, V, W)
    in_v = (rows >= bounds[1][0]) & (rows <= bounds[1][1])  # (P, V, H)
    return [np.flatnonzero(in_v[i][:, :, None] & in_u[i][:, None, :]) for i in range(len(c))]


def _light_frame(light: np.ndarray) -> np.ndarray:
    """Rows: two unit vectors orthogonal to ``light``, then ``light`` itself."""
    lx, ly, lz = (float(x) for x in light)
    # light × x̂ (or × ẑ when light is near x̂), then light × e1; np.cross is slow on 3-vectors.
    e1 = np.array([0.0, lz, -ly]) if abs(lx) < 0.9 else np.array([ly, -lx, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.array([ly * e1[2] - lz * e1[1], lz * e1[0] - lx * e1[2], lx * e1[1] - ly * e1[0]])
    return np.stack([e1, e2, np.array([lx, ly, lz])])


def _near_shadow_cylinder(q, centre, radius: float) -> np.ndarray:
    """Points (light frame: q[2] along the light) whose shadow ray may meet a sphere.

    A square prism around the sphere's shadow cylinder, cut at the sphere's far side.
    """
    return (
        (np.abs(q[0] - centre[0]) <= radius)
        & (np.abs(q[1] - centre[1]) <= radius)
        & (q[2] < centre[2] + radius)
    )


@dataclasses.dataclass(frozen=True)
class Rendering:
    rgb: np.ndarray  # (V, H, W, 3) uint8
    depth: np.ndarray  # (V, H, W) float32 camera z-depth, +inf for sky
    ids: np.ndarray  # (V, H, W) int32 primitive index, GROUND_ID or SKY_ID


def render(
    scene: Scene, intrinsics: np.ndarray, cam_to_world: np.ndarray, height: int, width: int
) -> Rendering:
    """Ray-casts V views at once (cam_to_world (V, 4, 4), intrinsics (3, 3) or (V, 3, 3)).

    Each primitive is intersected analytically with every ray of every view that its
    bounding sphere may cover; nearest hit wins. Lambertian shading from a directional
    light plus ambient, with hard shadows (one shadow ray per lit point).

    Arrays are kept as separate contiguous 1-D components: numpy gathers/scatters on
    1-D arrays are several times faster than on the axis of a (3, M) array.
    """
    f32 = np.float32
    c2w = np.asarray(cam_to_world, np.float64).reshape(-1, 4, 4)
    k = np.broadcast_to(np.asarray(intrinsics, np.float64), (len(c2w), 3, 3))
    origins, dirs = pixel_rays(k, c2w, height, width)
    num_views, num_pix = dirs.shape[1:]
    d = tuple(dirs.reshape(3, -1))
    o = tuple(np.repeat(origins[:, j], num_pix) for j in range(3))
    num_prims = len(scene.kinds)

    # Nearest hit: start from the ground plane y = 0, then a running minimum over
    # primitives, each intersected only with its candidate rays.
    if scene.ground:
        with np.errstate(divide="ignore"):
            depth = _valid(-o[1] / d[1], True).astype(f32)
    else:
        depth = np.full(d[0].shape, np.inf, f32)
    ids = np.where(np.isfinite(depth), GROUND_ID, SKY_ID).astype(np.int32)
    candidates = _candidate_rays(scene, k, c2w, height, width) if num_prims else []
    for i, idx in enumerate(candidates):
        if idx.size:
            t = _intersect(scene, i, tuple(x[idx] for x in o), tuple(x[idx] for x in d))
            closer = np.flatnonzero(t < depth[idx])
            depth[idx[closer]] = t[closer]
            ids[idx[closer]] = i

    # Surface points, normals and albedo, first as if everything were ground, then each
    # primitive's pixels overwritten by index.
    hit = ids != SKY_ID
    t0 = np.where(hit, depth, f32(0.0))
    p = [o[j] + t0 * d[j] for j in range(3)]
    normals = [np.zeros_like(t0), np.full_like(t0, -1.0), np.zeros_like(t0)]  # world up
    cell = 1.0 / scene.checker_size
    parity = (np.floor(p[0] * cell) + np.floor(p[2] * cell)).astype(np.int32) & 1
    sign = (2 * parity - 1).astype(f32)
    # Fade the checker with distance: far squares are sub-pixel and would only alias.
    contrast = sign * scene.checker_contrast / (1.0 + t0 * f32(1.0 / 15.0))
    albedo = [f32(g) * (1.0 + contrast) for g in scene.ground_color]
    for i in range(num_prims):
        sel = np.flatnonzero(ids[candidates[i]] == i) if candidates[i].size else None
        if sel is None or not sel.size:
            continue
        sel = candidates[i][sel]
        n = _normals(scene, i, np.stack([x[sel] for x in p]))
        for j in range(3):
            normals[j][sel] = n[j]
            albedo[j][sel] = scene.colors[i, j]
    light = scene.light_dir.astype(f32)
    lit = np.maximum(light[0] * normals[0] + light[1] * normals[1] + light[2] * normals[2], 0.0)

    if scene.shadows and num_prims:
        # A shadow ray can only meet a primitive if the point lies in the bounding
        # sphere's shadow cylinder: test that in a light-aligned frame first, cheaply.
        frame = _light_frame(scene.light_dir).astype(f32)
        q = [frame[r, 0] * p[0] + frame[r, 1] * p[1] + frame[r, 2] * p[2] for r in range(3)]
        qc = scene.centers @ frame.T.astype(np.float64)
        radii = (np.linalg.norm(scene.half_extents, axis=-1) + 2e-3).tolist()
        qc = qc.tolist()  # Python floats keep the comparisons in float32
        shadowed = np.zeros(lit.shape, bool)
        lit_pos = (lit > 0) & hit
        for i in range(num_prims):
            near = _near_shadow_cylinder(q, qc[i], radii[i])
            cand = np.flatnonzero(near & lit_pos & ~shadowed)
            if cand.size:
                # Step off the surface before casting towards the light.
                so = tuple(p[j][cand] + f32(1e-3) * normals[j][cand] for j in range(3))
                t_sh = _intersect(scene, i, so, tuple(light))  # float32 scalars
                shadowed[cand[np.isfinite(t_sh)]] = True
        lit[shadowed] = 0.0
    shade = scene.ambient + (1.0 - scene.ambient) * lit
    rgb = np.empty((lit.size, 3), f32)  # pixel-major, as the output image
    for j in range(3):
        np.multiply(albedo[j], shade, out=rgb[:, j])

    # Sky: gradient from the horizon colour to the zenith colour with ray elevation.
    rows = np.flatnonzero(~hit)
    if rows.size:
        ds = [x[rows] for x in d]
        elevation = np.clip(-ds[1] / np.sqrt(ds[0] ** 2 + ds[1] ** 2 + ds[2] ** 2), 0.0, 1.0)
        blend = np.sqrt(elevation)
        for j in range(3):
            hor, zen = scene.sky_horizon[j], scene.sky_zenith[j]
            rgb[rows, j] = f32(hor) + f32(zen - hor) * blend
    rgb *= 255.0
    rgb += 0.5
    np.clip(rgb, 0.0, 255.0, out=rgb)
    return Rendering(
        rgb=rgb.astype(np.uint8).reshape(num_views, height, width, 3),
        depth=depth.reshape(num_views, height, width),
        ids=ids.reshape(num_views, height, width),
    )


# --------------------------------------------------------------------------- examples


def scene_rng(split: str, index: int, seed: int = 0) -> np.random.Generator:
    """The generator of one scene: independent of resolution and of every other scene."""
    return np.random.default_rng([seed, SPLIT_IDS[split], index])


def generate_example(split: str, index: int, resolution: int, seed: int = 0) -> dict:
    """One scene rendered from its canonical camera and the NOVEL_VIEW_OFFSETS_DEG views.

    Returns numpy arrays: ``image`` (S, S, 3) uint8, ``depth`` (S, S) float32 z-depth,
    ``intrinsics`` (3, 3), ``cam_to_world`` (4, 4), ``scene_center`` (3,), ``label`` (the
    class of the primitive covering most canonical pixels), and ``novel_views`` with the
    same keys stacked over K views plus ``yaw_pitch`` (K, 2) radians. Scenes whose
    dominant primitive covers under 2 % of the canonical view are redrawn (same stream).
    """
    rng = scene_rng(split, index, seed)
    k = intrinsics_from_fov(FOV_DEG, resolution, resolution)
    offsets = np.deg2rad(np.array(NOVEL_VIEW_OFFSETS_DEG))
    while True:
        scene = sample_scene(rng)
        c2w = canonical_camera(scene, rng)
        cams = np.stack([c2w] + [orbit(c2w, scene.center, y, p) for y, p in offsets])
        out = render(scene, k, cams, resolution, resolution)
        counts = np.bincount(np.maximum(out.ids[0].ravel(), -1) + 1, minlength=1 + len(scene.kinds))
        dominant = int(np.argmax(counts[1:]))
        if counts[1 + dominant] >= 0.02 * resolution * resolution:
            break
    f32 = np.float32
    return {
        "image": out.rgb[0],
        "depth": out.depth[0],
        "intrinsics": k.astype(f32),
        "cam_to_world": c2w.astype(f32),
        "scene_center": scene.center.astype(f32),
        "label": int(scene.kinds[dominant]),
        "novel_views": {
            "image": out.rgb[1:],
            "depth": out.depth[1:],
            "intrinsics": np.broadcast_to(k, (len(offsets), 3, 3)).astype(f32),
            "cam_to_world": cams[1:].astype(f32),
            "yaw_pitch": offsets.astype(f32),
        },
    }
