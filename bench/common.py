"""What every benchmark shares: timing a jitted call, printing and saving its JSON."""

from __future__ import annotations

import json
import time

import numpy as np


def median_seconds(fn, *args, repeats: int) -> float:
    """Median seconds of `fn(*args)` over `repeats` calls, after compile + one warm-up."""
    import jax  # here, so that the numpy-only benchmarks do not load jax

    jax.block_until_ready(fn(*args))
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def time_train_steps(rt, state, batch, steps: int, warmup: int = 3) -> dict:
    """A loop train step on one global batch: compile, warm up, time `steps` (donated state).

    Returns {'state', 'times' (seconds per step), 'compile_s', 'xla_flops' (XLA's
    cost analysis of the compiled step; 0 when it reports none)}.
    """
    import jax

    from vq3d_jax.train import runtime

    with rt.scope():
        start = time.perf_counter()
        compiled = runtime.compile_train_step(rt).lower(state, batch).compile()
        compile_s = time.perf_counter() - start
        xla = compiled.cost_analysis()
        xla = xla[0] if isinstance(xla, list) else xla
        xla_flops = float(xla.get("flops", 0.0)) if xla else 0.0
        for _ in range(warmup):
            state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
    return {"state": state, "times": times, "compile_s": compile_s, "xla_flops": xla_flops,
            "metrics": metrics}


def jaxpr_flops_per_step(config, model_key: str, state_shapes, batch_shapes) -> float:
    """Matmul FLOPs of the task's train-step jaxpr, traced for the CPU backend.

    A fused attention kernel (cuDNN) is one opaque call in the jaxpr; the same maths
    through XLA's attention shows its matmuls, so `config[model_key].attention_impl`
    is cleared for the count.
    """
    import copy

    import jax

    from vq3d_jax.tasks import get_task
    from vq3d_jax.train.flops import count_flops

    config = copy.deepcopy(config)
    config[model_key].attention_impl = ""
    with jax.default_device(jax.devices("cpu")[0]):
        return count_flops(get_task(config).train_step, state_shapes, batch_shapes)


def emit(result: dict, out: str = "", indent: int | None = 1) -> None:
    """Prints the benchmark's JSON object and, with `out`, writes it there too."""
    text = json.dumps(result, indent=indent)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
