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


def emit(result: dict, out: str = "", indent: int | None = 1) -> None:
    """Prints the benchmark's JSON object and, with `out`, writes it there too."""
    text = json.dumps(result, indent=indent)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
