"""Model FLOPs from a function's jaxpr: 2·MACs of every matmul and convolution.

An independent count for MFU (PaLM App. B: model FLOPs, not hardware FLOPs) that
does not depend on XLA's cost analysis, which misses library calls on GPU.
Element-wise work is not counted. Trace on CPU so that attention appears as
plain dot_generals rather than a fused GPU kernel.
"""

from __future__ import annotations

import math

import jax
from jax.extend import core as jex_core


def _dot_flops(eqn) -> float:
    lhs = eqn.invars[0].aval.shape
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    contract = math.prod(lhs[d] for d in lhs_contract)
    out = math.prod(eqn.outvars[0].aval.shape)
    return 2.0 * out * contract


def _conv_flops(eqn) -> float:
    rhs = eqn.invars[1].aval.shape
    dims = eqn.params["dimension_numbers"]
    out = math.prod(eqn.outvars[0].aval.shape)
    in_features = rhs[dims.rhs_spec[1]]  # per feature group already
    window = math.prod(rhs[d] for d in dims.rhs_spec[2:])
    return 2.0 * out * in_features * window


def subjaxprs(eqn):
    """The programs inside `eqn` (pjit, remat, custom_vjp, scan, cond, ...)."""
    for value in eqn.params.values():
        values = value if isinstance(value, list | tuple) else [value]
        for v in values:
            if isinstance(v, jex_core.ClosedJaxpr):
                yield v.jaxpr
            elif isinstance(v, jex_core.Jaxpr):
                yield v


def jaxpr_flops(jaxpr, branch=max) -> float:
    """FLOPs of `jaxpr`, a `cond` counted by its costliest branch (`branch`=min: its
    cheapest, e.g. a step whose lazy regularisers are not due)."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "cond":
            total += branch(jaxpr_flops(b.jaxpr, branch) for b in eqn.params["branches"])
        elif name == "scan":
            total += eqn.params["length"] * jaxpr_flops(eqn.params["jaxpr"].jaxpr, branch)
        else:
            total += sum(jaxpr_flops(sub, branch) for sub in subjaxprs(eqn))
    return total


def count_flops(fn, *args, **kwargs) -> float:
    """Matmul + convolution FLOPs of one call of `fn(*args, **kwargs)`."""
    return jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)
