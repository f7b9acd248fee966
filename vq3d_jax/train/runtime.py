"""Building and restoring a run's state: the mesh, logical-axis rules and shardings shared
by all modes (`Runtime`), a fresh state with any pretrained runs loaded into it, the
compiled train step, the latest checkpoint for eval, samples and render, and a stand-in
run of random weights for tests and benchmarks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterable
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from absl import logging

from vq3d_jax.train import accumulation
from vq3d_jax.train import sharding as sharding_lib
from vq3d_jax.train.checkpoint import Checkpointer
from vq3d_jax.train.nonfinite import guarded, nonfinite_mode
from vq3d_jax.train.task import LoadsPretrained


@dataclasses.dataclass
class Runtime:
    """The mesh, rules, shardings and compiled functions shared by all modes."""

    task: Any
    config: Any
    mesh: jax.sharding.Mesh
    rules: tuple
    state_shardings: Any
    abstract_state: Any  # ShapeDtypeStructs carrying the current shardings

    _compiled: dict = dataclasses.field(default_factory=dict)

    def compiled(self, name: str, fn: Callable) -> Callable:
        """`fn(state, batch)` jitted once per runtime (replicated outputs), then reused."""
        if name not in self._compiled:
            self._compiled[name] = jax.jit(
                fn,
                in_shardings=(self.state_shardings, sharding_lib.batch_sharding(self.mesh)),
                out_shardings=sharding_lib.replicated(self.mesh),
            )
        return self._compiled[name]

    @contextlib.contextmanager
    def scope(self):
        """Mesh + logical rules: flax's `with_logical_constraint` reads both."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield


def build_runtime(task, config, devices=None) -> Runtime:
    mesh = sharding_lib.create_mesh(config.mesh, devices)
    rules = sharding_lib.rules_from_config(config.sharding.logical_axis_rules)
    check_batch_layout(config, mesh)
    boxed = jax.eval_shape(task.init_state, jax.random.PRNGKey(config.seed))
    shardings, abstract = abstract_state(boxed, mesh, rules, config.sharding.fallback_min_mb)
    _log_state_size(abstract, mesh)
    return Runtime(task, config, mesh, rules, shardings, abstract)


def check_batch_layout(config, mesh) -> int:
    """`config.grad_accum_steps`, once the global batch splits into that many micro-batches
    each spread evenly over the batch axes of `mesh` (a Mesh or an AbstractMesh)."""
    divisor = sharding_lib.batch_divisor(mesh)
    steps = accumulation.steps_of(config)
    if steps < 1:
        raise ValueError(f"grad_accum_steps={steps} must be ≥ 1.")
    if config.global_batch_size % (divisor * steps):
        raise ValueError(
            f"global_batch_size={config.global_batch_size} is not divisible by "
            f"grad_accum_steps={steps} × the batch axes data×fsdp={divisor} of mesh "
            f"{dict(mesh.shape)}."
        )
    return steps


def abstract_state(boxed, mesh, rules, fallback_min_mb: float):
    """A boxed abstract state (`jax.eval_shape` of an `init_state`, run outside the mesh
    context: inside, the activation constraints would demand concrete shardings of the
    abstract values) → (its shardings, ShapeDtypeStructs carrying them)."""
    shardings = sharding_lib.state_shardings(boxed, mesh, rules, fallback_min_mb)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        nn.meta.unbox(boxed),
        shardings,
    )
    return shardings, abstract


def _log_state_size(abstract, mesh) -> None:
    logging.info(
        "state: %.2f MB total, %.2f MB per device on mesh %s (activations not counted)",
        sharding_lib.tree_bytes(abstract, per_device=False) / 2**20,
        sharding_lib.tree_bytes(abstract) / 2**20, dict(mesh.shape),
    )


def init_state(rt: Runtime, *, pretrained: bool = True):
    """A fresh state; with `pretrained`, the task's `Pretrained` runs loaded into it."""
    init = jax.jit(
        lambda rng: nn.meta.unbox(rt.task.init_state(rng)), out_shardings=rt.state_shardings
    )
    with rt.scope():
        state = init(jax.random.PRNGKey(rt.config.seed))
    return load_pretrained(rt, state)[0] if pretrained else state


def load_pretrained(rt: Runtime, state) -> tuple[Any, dict[str, int]]:
    """Restores each `Pretrained` run of the task (train/task.py) into its sub-tree of
    `state`, from that run's newest checkpoint → (state, {name: step restored})."""
    if not isinstance(rt.task, LoadsPretrained):
        return state, {}
    steps = {}
    for spec in rt.task.pretrained():
        directory = os.path.join(spec.workdir, "checkpoints")
        if not os.path.isdir(directory):
            raise FileNotFoundError(
                f"{spec.name}: {spec.workdir!r} has no checkpoints/: train that run there "
                "first."
            )
        boxed = jax.eval_shape(spec.task.init_state, jax.random.PRNGKey(0))
        _, abstract = abstract_state(boxed, rt.mesh, rt.rules,
                                     rt.config.sharding.fallback_min_mb)
        ckpt = Checkpointer(directory, keep=1, save_every=1, read_only=True)
        try:
            restored = ckpt.restore_latest(abstract)
        finally:
            ckpt.close()
        if restored is None:
            raise FileNotFoundError(f"{spec.name}: no checkpoint under {directory}.")
        other, steps[spec.name] = restored
        if spec.merge is not None:
            state = jax.device_put(spec.merge(state, spec.select(other)), rt.state_shardings)
        else:
            value = jax.device_put(spec.select(other), _subtree(rt.state_shardings, spec.into))
            state = _with_subtree(state, spec.into, value)
        logging.info("%s: weights of step %d from %s", spec.name, steps[spec.name], directory)
    return state, steps


def _subtree(state, path: tuple[str, ...]):
    node = getattr(state, path[0])
    for key in path[1:]:
        node = node[key]
    return node


def _with_subtree(state, path: tuple[str, ...], value):
    def put(node, keys):
        if not keys:
            return value
        return {**node, keys[0]: put(node[keys[0]], keys[1:])}

    return state.replace(**{path[0]: put(getattr(state, path[0]), path[1:])})


def compile_train_step(rt: Runtime) -> Callable:
    """The task's step, jitted with the state donated; its metrics gain `nonfinite.FINITE`:
    whether the losses, the gradient norm and the updated state are all finite. With
    `config.nonfinite='skip'`, a step where they are not returns the state it was given."""
    skip = nonfinite_mode(rt.config) == "skip"
    return jax.jit(
        guarded(rt.task.train_step, skip=skip),
        in_shardings=(rt.state_shardings, sharding_lib.batch_sharding(rt.mesh)),
        out_shardings=(rt.state_shardings, sharding_lib.replicated(rt.mesh)),
        donate_argnums=(0,),
    )


def select(batch: dict, keys: Iterable[str]) -> dict:
    """The entries of `batch` named in `keys` (those it has): what a task's step takes."""
    return {k: batch[k] for k in keys if k in batch}


def write_random_run(task, config, workdir: str, *, scale: float = 0.1, seed: int = 0) -> None:
    """A stand-in run in `workdir`: config.json and a step-0 checkpoint of random params.

    Drawn with numpy in the state's shapes (N(0, scale²) floats, zero integers), so no
    init is compiled (~40 s for VQ3D stage 1 on a CPU): for tests and benchmarks that
    need a run to load, not a good model.
    """
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(config.to_json_best_effort())
    abstract = nn.meta.unbox(jax.eval_shape(task.init_state, jax.random.PRNGKey(0)))
    rng = np.random.default_rng(seed)

    def fill(a):
        if np.issubdtype(a.dtype, np.floating):
            return (scale * rng.standard_normal(a.shape)).astype(a.dtype)
        return np.zeros(a.shape, a.dtype)

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=1, save_every=1)
    try:
        ckpt.save(0, jax.tree.map(fill, abstract))
    finally:
        ckpt.close()


def restore_for_inference(rt: Runtime, workdir: str) -> tuple[Any, int]:
    """The latest checkpoint's state; an error when there is none (no random-weight metrics)."""
    ckpt = Checkpointer(
        os.path.join(workdir, "checkpoints"), keep=rt.config.keep_checkpoints, save_every=1,
        read_only=True,
    )
    try:
        restored = ckpt.restore_latest(rt.abstract_state)
    finally:
        ckpt.close()
    if restored is None:
        raise FileNotFoundError(
            f"No checkpoint under {os.path.join(workdir, 'checkpoints')}: train first "
            "(--mode=train); metrics of untrained weights are not reported."
        )
    return restored
