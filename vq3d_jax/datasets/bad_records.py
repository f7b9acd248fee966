"""Bad records: a failed record becomes a placeholder, skipped and counted by the iterators.

A preprocessing map returns :class:`BadRecord` instead of raising; :class:`SkipBadRecords`
drops those elements of a grain iterator (each kept element carries how many it followed),
and :class:`CountSkipped`, after batching, turns those per-element counts into the run's
cumulative ``num_skipped``, kept in the iterator state across checkpoint/restore.
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np
from absl import logging

from vq3d_jax.datasets.preprocess import Options, preprocess

# A source whose records all fail would otherwise spin forever on a repeated dataset.
MAX_CONSECUTIVE_BAD_RECORDS = 1000


@dataclasses.dataclass(frozen=True)
class BadRecord:
    """Placeholder a preprocessing map returns for a record to be skipped and counted."""

    reason: str


def preprocess_or_skip(record: dict, opts: Options, flip: bool = False) -> dict | BadRecord:
    """:func:`.preprocess.preprocess`, with any failure logged and returned as a BadRecord."""
    try:
        return preprocess(record, opts, flip)
    except Exception as e:  # noqa: BLE001 - any failure of one record is a counted skip
        logging.warning("Skipping a bad record: %s: %s", type(e).__name__, e)
        return BadRecord(f"{type(e).__name__}: {e}")


class _SkipBadIterator(grain.DatasetIterator):
    """Drops BadRecord elements; each kept element carries how many it followed."""

    def __next__(self) -> dict:
        skipped = 0
        while True:
            element = next(self._parent)
            if not isinstance(element, BadRecord):
                return {**element, "_skipped": np.int64(skipped)}
            skipped += 1
            if skipped >= MAX_CONSECUTIVE_BAD_RECORDS:
                raise RuntimeError(
                    f"{skipped} consecutive records failed to decode (last: {element.reason});"
                    " is the dataset corrupt?"
                )

    # The skip count of a kept element is settled before it is returned, so the
    # parent's state is the whole state.
    def get_state(self) -> dict:
        return self._parent.get_state()

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state)


class SkipBadRecords(grain.IterDataset):
    """The parent's elements without its BadRecords; each has ``_skipped`` (int64)."""

    def __iter__(self) -> _SkipBadIterator:
        return _SkipBadIterator(self._parent.__iter__())


class _CountSkippedIterator(grain.DatasetIterator):
    """Replaces the per-element ``_skipped`` counts of a batch by the run's total.

    Runs in the main process (after ``mp_prefetch``), so the total covers all workers,
    and keeps it in its state so that it survives checkpoint/restore.
    """

    def __init__(self, parent: grain.DatasetIterator):
        super().__init__(parent)
        self._num_skipped = 0

    def __next__(self) -> dict:
        batch = dict(next(self._parent))
        self._num_skipped += int(np.sum(batch.pop("_skipped")))
        batch["num_skipped"] = np.int64(self._num_skipped)
        return batch

    def get_state(self) -> dict:
        return {"parent": self._parent.get_state(), "num_skipped": self._num_skipped}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self._num_skipped = int(state["num_skipped"])


class CountSkipped(grain.IterDataset):
    """Batches with ``_skipped`` [B] replaced by ``num_skipped``: the total so far (int64)."""

    def __iter__(self) -> _CountSkippedIterator:
        return _CountSkippedIterator(self._parent.__iter__())
