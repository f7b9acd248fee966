"""Analytic ray–primitive intersections and surface normals for the numpy ray caster.

Rays are tuples of components (ox, oy, oz), (dx, dy, dz); each component broadcasts to
the ray batch shape, so one code path serves camera rays (origin per view) and shadow
rays (origin per point, one direction). A hit distance ``t`` is +inf where a ray misses;
with the ray directions of :func:`.cameras_np.pixel_rays` it is the hit's z-depth.
"""

from __future__ import annotations

import math

import numpy as np

from vq3d_jax.datasets.scenes import BOX, CONE, CYLINDER, SPHERE, Scene

_EPS = 1e-4  # minimum hit distance; keeps shadow rays off their own surface


def _solve_quadratic(a, b, c):
    """Roots of a t^2 + 2 b t + c = 0 (t1 <= t2 when a > 0); NaN where there are none."""
    with np.errstate(invalid="ignore", divide="ignore"):
        sq = np.sqrt(b * b - a * c)
        return (-b - sq) / a, (-b + sq) / a


def valid_hits(t, ok):
    """``t`` where ``ok`` and t > eps, else +inf."""
    return np.where(ok & (t > _EPS), t, np.inf)


def _intersect_sphere(o, d, centre, half):
    ox, oy, oz = o[0] - centre[0], o[1] - centre[1], o[2] - centre[2]
    a = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    b = ox * d[0] + oy * d[1] + oz * d[2]
    c = ox * ox + oy * oy + oz * oz - half[0] ** 2
    t1, _ = _solve_quadratic(a, b, c)
    return valid_hits(t1, np.isfinite(t1))


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
    return valid_hits(near, near <= far)


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
        t_best = np.minimum(t_best, valid_hits(t, x * x + z * z <= radius * radius))
    return t_best


def _intersect_cylinder(o, d, centre, half):
    r, hh = half[0], half[1]
    ox, oz = o[0] - centre[0], o[2] - centre[2]
    a = d[0] * d[0] + d[2] * d[2]
    t1, _ = _solve_quadratic(a, ox * d[0] + oz * d[2], ox * ox + oz * oz - r * r)
    y = o[1] + t1 * d[1] - centre[1]
    t = valid_hits(t1, np.abs(y) <= hh)
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
        t = np.minimum(t, valid_hits(root, (y >= 0.0) & (y <= 2.0 * hh)))
    return _intersect_caps(o, d, centre, r, ((centre[1] + hh, 1.0),), t)


def intersect(scene: Scene, i: int, o, d):
    """Nearest hit distance of rays ``o``, ``d`` with primitive ``i`` (+inf: a miss)."""
    # Python floats, not numpy float64 scalars: those would promote float32 rays to float64.
    kind, centre, half = scene.kinds[i], scene.centers[i].tolist(), scene.half_extents[i].tolist()
    if kind == SPHERE:
        return _intersect_sphere(o, d, centre, half)
    if kind == BOX:
        return _intersect_box(o, d, centre, half, float(scene.yaws[i]))
    if kind == CYLINDER:
        return _intersect_cylinder(o, d, centre, half)
    return _intersect_cone(o, d, centre, half)


def surface_normals(scene: Scene, i: int, p: np.ndarray) -> np.ndarray:
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
