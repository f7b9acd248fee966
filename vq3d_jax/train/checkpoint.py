"""Orbax checkpointing: the train state and the grain iterator, saved together.

One `CheckpointManager` under `workdir/checkpoints/`, up to three items per step:
`state` (params, optimizer state, step, RNG key: a pytree of arrays),
`data_iter` (each process's grain iterator state, a JSON file per process) and
`counters` (the loop's running totals, e.g. skipped updates: one JSON file).
Saves are asynchronous; restores go against abstract targets that carry the
*current* mesh's shardings, so a run may resume on another device layout.
A save that fails (disk full, unwritable directory) is a `CheckpointWriteError`
naming the directory, raised by the next save or by `close()`. Orbax writes each
step into a `*.orbax-checkpoint-tmp` folder and renames it only when complete, so a
failed save is never listed as a step, nothing older is deleted for it, and the next
writer removes the folder. A finished checkpoint whose files are damaged is skipped
for the previous one (Orbax does not fall back by itself) with one warning line; a
checkpoint of another model shape is a clear error, never a silent partial restore.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

STATE = "state"
DATA_ITER = "data_iter"
COUNTERS = "counters"

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


class CheckpointWriteError(RuntimeError):
    """A save failed (disk full, unwritable directory); the earlier checkpoints are intact."""


def _reason(err: BaseException) -> str:
    """The innermost cause of a failed read or write, on one line: TensorStore's own error
    names the file and what went wrong, where Orbax's wrapper adds a 60-line spec. A long
    one keeps its start (what failed) and its end (the OS's reason, e.g. the disk full)."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = " ".join(str(err).split())
    if len(text) > 400:
        text = f"{text[:200]} … {text[-200:]}"
    return f"{type(err).__name__}: {text}"


def _from_an_abandoned_operation(unraisable) -> bool:
    error, source = unraisable.exc_value, unraisable.object
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
        return True
    code = getattr(source, "cr_code", None)  # a read's coroutine, failing as it is collected
    return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


def _not_about_an_abandoned_operation(record: std_logging.LogRecord) -> bool:
    message = record.getMessage()
    return not (message.startswith(("Task exception was never retrieved",
                                    "Task was destroyed but it is pending"))
                and "orbax" in message)


class _AbandonedOperationReports:
    """Silences what Orbax's other reads or writes of a step report once one has failed.

    Orbax closes its event loop when the first read (or write) fails while the step's
    others are still in flight. Each of those then reports `RuntimeError: Event loop is
    closed` from its completion callback, a read's coroutine raises again when collected
    (both through `sys.unraisablehook`), and a finished one may log 'Task exception was
    never retrieved' (the asyncio logger): hundreds of tracebacks for the one damaged or
    unwritable step that our own warning or error already names. Only these reports are
    dropped: while any Checkpointer is open, and for the rest of the process after a
    failure, since the abandoned operations finish whenever their I/O does.
    """

    def __init__(self):
        self._open = 0
        self._failed = False
        self._previous_hook = sys.unraisablehook

    def open(self) -> None:
        if sys.unraisablehook != self._hook:  # first, or someone installed theirs since
            self._previous_hook = sys.unraisablehook
            sys.unraisablehook = self._hook
        std_logging.getLogger("asyncio").addFilter(_not_about_an_abandoned_operation)
        self._open += 1

    def failed(self) -> None:
        self._failed = True

    def close(self) -> None:
        self._open -= 1
        if self._open or self._failed:
            return
        if sys.unraisablehook == self._hook:
            sys.unraisablehook = self._previous_hook
        std_logging.getLogger("asyncio").removeFilter(_not_about_an_abandoned_operation)

    def _hook(self, unraisable) -> None:
        if not _from_an_abandoned_operation(unraisable):
            self._previous_hook(unraisable)


_ABANDONED = _AbandonedOperationReports()


class Checkpointer:
    """Save every N steps (async), keep the last K, restore the newest readable one."""

    def __init__(self, directory: str, *, keep: int, save_every: int, async_save: bool = True,
                 read_only: bool = False):
        """`read_only`: for reading another run's checkpoints (eval, sample, stage 2 on a
        stage-1 run) while that run may still be saving: nothing is created or removed."""
        self.directory = os.path.abspath(directory)
        self.save_every = save_every
        self._in_flight: int | None = None  # the step an asynchronous save is writing
        _ABANDONED.open()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=not read_only,
            enable_async_checkpointing=async_save,
            # Unfinished `*.orbax-checkpoint-tmp` folders from a killed or failed save are
            # removed (never by a reader: the folder may be a live run's save in progress).
            cleanup_tmp_directories=not read_only,
            read_only=read_only,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                STATE: ocp.StandardCheckpointHandler(),
                DATA_ITER: grain.checkpoint.CheckpointHandler(),
                COUNTERS: ocp.JsonCheckpointHandler(),
            },
        )

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def should_save(self, step: int) -> bool:
        return step % self.save_every == 0

    def save(self, step: int, state, data_iter=None, counters: dict | None = None) -> None:
        """Starts an asynchronous save of `state` (and the iterator, and `counters`: a dict of
        JSON numbers) at `step`, once the save before it has finished.

        A failure of either save is a `CheckpointWriteError` naming the directory.
        """
        if step in self._manager.all_steps():
            return
        self._finish_in_flight()
        items = {STATE: ocp.args.StandardSave(state)}
        if data_iter is not None:
            items[DATA_ITER] = grain.checkpoint.CheckpointSave(data_iter)
        if counters is not None:
            items[COUNTERS] = ocp.args.JsonSave(dict(counters))
        try:
            self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        except (OSError, ValueError) as err:  # TensorStore's I/O errors are ValueErrors
            raise self._write_error(step, err) from err
        self._in_flight = step
        logging.info("checkpoint: saving step %d to %s", step, self.directory)

    def _finish_in_flight(self) -> None:
        step, self._in_flight = self._in_flight, None
        try:
            self._manager.wait_until_finished()
        except (OSError, ValueError) as err:
            raise self._write_error(step, err) from err

    def _write_error(self, step: int | None, err: BaseException) -> CheckpointWriteError:
        _ABANDONED.failed()
        kept = [s for s in self.all_steps() if s != step]
        return CheckpointWriteError(
            f"Could not write checkpoint step {step} to {self.directory}: {_reason(err)}. "
            f"The checkpoints before it (steps {kept}) are intact; free space there (or "
            "make it writable) and run the same command again to resume."
        )

    def restore_latest(self, abstract_state, data_iter=None,
                       counters: dict | None = None) -> tuple[Any, int] | None:
        """Restores the newest readable checkpoint onto `abstract_state`'s shardings.

        `abstract_state` is a pytree of `jax.ShapeDtypeStruct` with `.sharding`
        set. `data_iter` is set to the saved position and `counters` updated in place with
        the saved ones (a step saved without counters leaves them as they are). Returns
        `(state, step)`, or None when there is no checkpoint. Damaged steps are skipped
        for older ones, with one warning line that names them.
        """
        damaged: list[tuple[int, str]] = []
        for step in reversed(self.all_steps()):
            items = self._restore_items(step, abstract_state, data_iter, counters)
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(**items))
            except Exception as err:  # noqa: BLE001 - any read failure: fall back one step.
                _ABANDONED.failed()
                damaged.append((step, _reason(err)))
                continue
            if damaged:
                logging.warning("checkpoint: %s; restored step %d instead.",
                                self._describe(damaged), step)
            logging.info("checkpoint: restored step %d from %s", step, self.directory)
            if COUNTERS in items:
                counters.update(restored[COUNTERS])
            return restored[STATE], step
        if damaged:
            raise RuntimeError(
                f"No readable checkpoint: {self._describe(damaged)}. Move the damaged "
                "folders away or use a new --workdir."
            )
        return None

    def _describe(self, damaged: list[tuple[int, str]]) -> str:
        (first, reason), *others = damaged
        if not others:
            return f"step {first} in {self.directory} is unreadable ({reason})"
        steps = ", ".join(str(s) for s, _ in damaged)
        return f"steps {steps} in {self.directory} are unreadable (step {first}: {reason})"

    def _restore_items(self, step: int, abstract_state, data_iter, counters) -> dict:
        """The Composite items to restore `step` with, after checking its shapes."""
        try:
            saved = self._manager.item_metadata(step)
        except Exception:  # noqa: BLE001 - unreadable metadata: let restore decide.
            saved = None
        if saved is not None:
            self._check_compatible(step, saved.get(STATE), abstract_state)
        items = {STATE: ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None:
            items[DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iter)
        if counters is not None and saved is not None and COUNTERS in saved:
            items[COUNTERS] = ocp.args.JsonRestore()
        return items

    def _check_compatible(self, step: int, metadata, abstract_state) -> None:
        """Compares saved shapes with the model's before any array is read."""
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
        """Waits for the save in flight (its failure: `CheckpointWriteError`), then closes."""
        try:
            self._finish_in_flight()
        finally:
            self._manager.close()
            _ABANDONED.close()
