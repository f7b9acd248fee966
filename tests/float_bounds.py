"""How far apart two float32 runs of the same training step may be, from an error model.

The invariance tests (sharded vs one device, accumulated vs whole batch, two processes vs
one, resumed vs straight) compute the same steps with their sums taken in other orders.
What they may differ by:

* **Gradients: rounding.** A gradient element is a sum of many float32 products taken in
  an order that the layout decides. By the probabilistic rounding-error analysis of
  Higham & Mary ("A new approach to probabilistic rounding error analysis", SIAM J.
  Sci. Comput. 41(5), 2019, §2-3), a float32 evaluation with N rounded operations per
  output is off by at most λ·√N·u times the magnitude of the terms it sums, with
  probability at least 1 − 2N·exp(−λ²(1−u)²/2) (u = 2⁻²⁴). Two evaluations differ by
  at most twice that. The magnitude of the terms is not the magnitude of the result
  where terms cancel (a weight whose true gradient is ~0), so each element is held to
  its own value plus the network's root-mean-square gradient:
  |δgᵢ| ≤ 2λ√N·u·(|gᵢ| + rms(g)), tested tensor by tensor in the 2-norm.
  λ = 10: the bound fails with probability < N·4e-22 per output. N = 2²⁰ is the
  longest chain of roundings in the steps these tests compile (a weight's gradient sums
  up to ~25k terms, e.g. 8 images × 256 rays × 12 samples, through ~40 layers): the
  tolerance is 1.2e-3 of the gradient's scale. Measured on this suite's steps: at most
  ~110 u (GMNR's depth embedding), ~190× inside; a wrong batch row moves the gradient
  by ~1/batch of it, ≥ 20× outside (tests prove their checks catch one).
* **Weights: Adam's bounded step.** Adam amplifies rounding: a weight whose gradient is
  near zero moves by lr·sign(noise). But each Adam step moves a weight by at most
  lr_t·R_t, R_t = √(Σₛ aₛ²/cₛ) with aₛ, cₛ the bias-corrected weights of g_s in m̂_t and
  v̂_t (Cauchy–Schwarz; R_1 = 1), so after k steps from one state two runs are at most
  2·Σ lr_t·R_t apart, whatever the rounding. This catches nothing subtle on its own,
  so the tests compare Adam's moments (mu, nu: the gradients, before the optimizer's
  division) with the rounding bound, at steps whose weights entered bitwise equal.
"""

from __future__ import annotations

import math

import jax
import numpy as np

UNIT_ROUNDOFF = 2.0**-24
LAMBDA = 10.0
OPERATIONS = 2**20
# Two float32 evaluations of one quantity, relative to the magnitude of its terms.
RELATIVE_ROUNDING = 2 * LAMBDA * math.sqrt(OPERATIONS) * UNIT_ROUNDOFF


def assert_close_up_to_rounding(got: dict, want: dict, *, keys=None,
                                relative: float = RELATIVE_ROUNDING) -> None:
    """Scalar metrics (losses, norms) of two evaluations of one step: |δ| ≤ bound·|value|.
    `keys`: the ones to compare (default all of `want`'s)."""
    for key in keys or want:
        a, b = float(np.asarray(got[key])), float(np.asarray(want[key]))
        assert abs(a - b) <= relative * abs(b) + 1e-30, (key, a, b, abs(a - b) / abs(b))


def gradient_mismatches(got, want, *, relative: float = RELATIVE_ROUNDING,
                        skip: tuple[str, ...] = ()) -> list[tuple[str, float]]:
    """Leaves of two gradient-like trees (e.g. Adam's mu) outside the rounding bound:
    [(path, ‖δ‖₂ / (‖g‖₂ + √n·rms(g)) in units of `relative`)]; empty when all agree.
    `skip`: path substrings left out (their values differ for a reason the caller names)."""
    want_leaves = [(jax.tree_util.keystr(p), np.asarray(v, np.float64))
                   for p, v in jax.tree_util.tree_leaves_with_path(want)]
    got_leaves = {jax.tree_util.keystr(p): np.asarray(v, np.float64)
                  for p, v in jax.tree_util.tree_leaves_with_path(got)}
    assert set(got_leaves) == {p for p, _ in want_leaves}, "the trees differ in structure"
    size = sum(v.size for _, v in want_leaves)
    rms = math.sqrt(sum(float(np.sum(v**2)) for _, v in want_leaves) / max(size, 1))
    bad = []
    for path, value in want_leaves:
        if any(s in path for s in skip):
            continue
        scale = np.linalg.norm(value) + math.sqrt(value.size) * rms
        ratio = np.linalg.norm(got_leaves[path] - value) / (relative * scale + 1e-300)
        if not ratio <= 1.0:  # NaN fails too
            bad.append((path, float(ratio)))
    return bad


def adam_moments(opt_state) -> dict[str, tuple]:
    """{where: (mu, nu, count)} of every Adam state in an optimizer state tree, as optax
    keeps it (namedtuples) or as a checkpoint restores it (dicts)."""
    found = {}

    def walk(node, where):
        fields = node._asdict() if hasattr(node, "_asdict") else node
        if isinstance(fields, dict) and {"mu", "nu", "count"} <= set(fields):
            found[where] = (fields["mu"], fields["nu"], int(np.asarray(fields["count"])))
        elif isinstance(fields, dict):
            for key, child in fields.items():
                walk(child, f"{where}/{key}")
        elif isinstance(fields, list | tuple):
            for i, child in enumerate(fields):
                walk(child, f"{where}/{i}")

    walk(opt_state, "")
    return found


def assert_same_gradients(opt_state, expected_opt_state, *, skip: tuple[str, ...] = ()):
    """Two runs' Adam moments after the same steps from one state, with bitwise-equal
    weights entering each step: mu (and √nu, the gradients' RMS) agree to the rounding
    bound, the step counts exactly."""
    got, want = adam_moments(opt_state), adam_moments(expected_opt_state)
    assert want and set(got) == set(want), (sorted(got), sorted(want))
    for where, (mu, nu, count) in want.items():
        got_mu, got_nu, got_count = got[where]
        assert got_count == count, (where, got_count, count)
        bad = gradient_mismatches(got_mu, mu, skip=skip)
        bad += gradient_mismatches(jax.tree.map(np.sqrt, got_nu), jax.tree.map(np.sqrt, nu),
                                   skip=skip)
        assert not bad, f"{where}: gradients beyond float rounding: {bad[:5]}"


def adam_step_bound(learning_rates, b1: float, b2: float, weight_decay: float = 0.0) -> float:
    """The most two runs' weights can differ after Adam(W) steps with these learning rates
    (one per step, bias correction from step 1) from one state: 2·Σ lr_t·R_t, plus what
    decoupled weight decay makes of the difference already there."""
    bound = 0.0
    for t, lr in enumerate(learning_rates, start=1):
        s = np.arange(1, t + 1)
        a = (1 - b1) * b1 ** (t - s) / (1 - b1**t)  # m̂_t = Σ aₛ gₛ
        c = (1 - b2) * b2 ** (t - s) / (1 - b2**t)  # v̂_t = Σ cₛ gₛ²
        bound = bound * (1 + lr * weight_decay) + 2 * lr * math.sqrt(float(np.sum(a**2 / c)))
    return bound


def _learning_rates(config, steps: int) -> list[tuple]:
    """[(optimizer block, its learning rates of steps 1..steps)], as the tasks schedule them."""
    from vq3d_jax.tasks.common import learning_rate_schedule

    optim = config.optim
    blocks = [optim] if "learning_rate" in optim else [optim[k] for k in optim]
    return [(block, [float(learning_rate_schedule(block, config.total_steps)(t))
                     for t in range(steps)]) for block in blocks]


def weight_bound(config, steps: int) -> float:
    """`adam_step_bound` of the config's first `steps` steps, for its most mobile optimizer."""
    return max(adam_step_bound(rates, block.b1, block.b2, block.weight_decay)
               for block, rates in _learning_rates(config, steps))


def assert_weights_within(params, expected, bound: float) -> None:
    """No weight further than `bound` from the expected one, beyond the rounding bound
    relative to the weight (weights a step sets from the data, not by Adam: a quantizer's
    restarted codes)."""
    flat = dict(jax.tree_util.tree_leaves_with_path(params))
    for path, value in jax.tree_util.tree_leaves_with_path(expected):
        value = np.asarray(value, np.float64)
        diff = np.abs(np.asarray(flat[path], np.float64) - value)
        limit = bound * (1 + 4 * UNIT_ROUNDOFF) + RELATIVE_ROUNDING * np.abs(value)
        assert np.all(diff <= limit), (jax.tree_util.keystr(path), float(diff.max()), bound)


def _field(state, name: str):
    """A TrainState's field, or a restored checkpoint's (a dict)."""
    return state[name] if isinstance(state, dict) else getattr(state, name)


def assert_same_steps(state, expected, config, steps: int, *, skip: tuple[str, ...] = ()):
    """Two runs of `steps` train steps of `config` from one state: the same gradients up to
    rounding, weights within Adam's bound. The gradients are comparable only if the
    weights entered the last step bitwise equal: every earlier learning rate must be 0
    (as in a linear warm-up's first step)."""
    for _, rates in _learning_rates(config, steps):
        assert not any(rates[:-1]), f"steps before the last move the weights: {rates}"
    assert_same_gradients(_field(state, "opt_state"), _field(expected, "opt_state"), skip=skip)
    assert_weights_within(_field(state, "params"), _field(expected, "params"),
                          weight_bound(config, steps))
