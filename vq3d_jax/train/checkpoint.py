"""Orbax checkpointing: the train state and the grain iterator, saved together.

One `CheckpointManager` under `workdir/checkpoints/`, two items per step:
`state` (params, optimizer state, step, RNG key: a pytree of arrays) and
`data_iter` (each process's grain iterator state, a JSON file per process).
Saves are asynchronous; restores go against abstract targets that carry the
*current* mesh's shardings, so a run may resume on another device layout.
A finished checkpoint whose files are damaged is skipped for the previous one
(Orbax does not fall back by itself); a checkpoint of another model shape is a
clear error, never a silent partial restore.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

STATE = "state"
DATA_ITER = "data_iter"

# Orbax's default array handler splits the writing of replicated arrays across their
# replicas, which compiles a slicing program per array shape at a process's first save:
# 11 s for 200 small replicated arrays on 8 CPU devices, 0.6 s without. Large states
# here are fsdp-sharded, and every shard is written by the process that holds it anyway.
ocp.type_handlers.register_type_handler(
    jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True
)


def _path_name(path) -> str:
    """'opt_state/generator/0/mu/w': the same for attribute, dict and index keys.

    Orbax's metadata tree turns dataclass and namedtuple fields into dict keys.
    """
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return "/".join(parts)


class CheckpointShapeError(ValueError):
    """The checkpoint holds a state of another structure or shape than the model's."""


class Checkpointer:
    """Save every N steps (async), keep the last K, restore the newest readable one."""

    def __init__(self, directory: str, *, keep: int, save_every: int, async_save: bool = True,
                 read_only: bool = False):
        """`read_only`: for reading another run's checkpoints (eval, sample, stage 2 on a
        stage-1 run) while that run may still be saving: nothing is created or removed."""
        self.directory = os.path.abspath(directory)
        self.save_every = save_every
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=not read_only,
            enable_async_checkpointing=async_save,
            # Unfinished `*.orbax-checkpoint-tmp` folders from a killed save are removed
            # (never by a reader: the folder may be a live run's save in progress).
            cleanup_tmp_directories=not read_only,
            read_only=read_only,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                STATE: ocp.StandardCheckpointHandler(),
                DATA_ITER: grain.checkpoint.CheckpointHandler(),
            },
        )

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def should_save(self, step: int) -> bool:
        return step % self.save_every == 0

    def save(self, step: int, state, data_iter=None) -> None:
        """Starts an asynchronous save of `state` (and the iterator) at `step`."""
        if step in self._manager.all_steps():
            return
        items = {STATE: ocp.args.StandardSave(state)}
        if data_iter is not None:
            items[DATA_ITER] = grain.checkpoint.CheckpointSave(data_iter)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        logging.info("checkpoint: saving step %d to %s", step, self.directory)

    def restore_latest(self, abstract_state, data_iter=None) -> tuple[Any, int] | None:
        """Restores the newest readable checkpoint onto `abstract_state`'s shardings.

        `abstract_state` is a pytree of `jax.ShapeDtypeStruct` with `.sharding`
        set. Returns `(state, step)`, or None when there is no checkpoint.
        """
        for step in reversed(self.all_steps()):
            self._check_compatible(step, abstract_state)
            items = {STATE: ocp.args.StandardRestore(abstract_state)}
            if data_iter is not None:
                items[DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iter)
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(**items))
            except Exception as err:  # noqa: BLE001 - any read failure: fall back one step.
                logging.warning(
                    "checkpoint: step %d in %s is unreadable (%s: %s); trying the previous one.",
                    step, self.directory, type(err).__name__, err,
                )
                continue
            logging.info("checkpoint: restored step %d from %s", step, self.directory)
            return restored[STATE], step
        if self.all_steps():
            raise RuntimeError(
                f"No readable checkpoint in {self.directory} (steps {self.all_steps()} all "
                "failed to restore). Move the damaged folder away or use a new --workdir."
            )
        return None

    def _check_compatible(self, step: int, abstract_state) -> None:
        """Compares saved shapes with the model's before any array is read."""
        try:
            metadata = self._manager.item_metadata(step)[STATE]
        except Exception:  # noqa: BLE001 - unreadable metadata: let restore decide.
            return
        if metadata is None:
            return
        saved = {
            _path_name(p): tuple(m.shape)
            for p, m in jax.tree_util.tree_leaves_with_path(metadata)
            if hasattr(m, "shape")
        }
        wanted = {
            _path_name(p): tuple(a.shape)
            for p, a in jax.tree_util.tree_leaves_with_path(abstract_state)
        }
        if saved and saved != wanted:
            missing = sorted(set(wanted) - set(saved))[:3]
            extra = sorted(set(saved) - set(wanted))[:3]
            differ = [
                (k, saved[k], wanted[k])
                for k in wanted
                if k in saved and saved[k] != wanted[k]
            ]
            raise CheckpointShapeError(
                f"Checkpoint step {step} in {self.directory} does not match this model: "
                f"missing {missing}, unexpected {extra}, shape differences {differ[:3]} "
                "(saved vs model). Use the config it was trained with, or a new --workdir."
            )

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
