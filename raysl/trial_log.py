"""A trial's ``result.json`` and ``progress.csv`` with each epoch once, across restarts and resumes.

Ray Tune's loggers append every report. A trial that starts again from a checkpoint (``raysl tune
--resume`` after an interruption, Tune retrying a trial whose process died, Ray Train restarting a worker
group from its last checkpoint) trains the epochs after that checkpoint again and reports them again, so
an epoch Tune had logged after the checkpoint appeared twice, the older copy from training that was thrown
away. :class:`EpochOnce` (a Tune callback that runs before Tune's loggers) cuts those rows off when the
first report of the retrained epoch arrives, as ``raysl train``'s ``metrics.jsonl`` does: a report of
epoch ``e`` replaces every row of epoch ``e`` or later. A trial's closing report on its last epoch
(diverged, collapsed, errored: :data:`raysl.outcome.BAD_STATUSES`) is added after that epoch's row, not
in its place.

The rows of later epochs are the end of the file (epochs only grow between restarts), so cutting them
off is one ``truncate`` of the file Tune keeps open for appending: Tune's next line follows the rows
kept, and a reader sees the old file or the shorter one, never a torn one. Where they are not the end
(a file raysl did not write), nothing is cut.

A PBT trial that continues from a checkpoint (a clone of another trial's, or its own after a resume)
says so in its first report (``resumed_weights``, raysl.pbt): nothing is cut for it, since with
asynchronous PBT the donor's epoch may be behind the clone's own and its rows are the trial's lineage.
Every later report of such a trial either follows its rows or finds them out of epoch order: nothing is
cut either. So a resumed PBT search may still log an epoch twice (``raysl analyze`` counts it once).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ray.air.constants import EXPR_PROGRESS_FILE, EXPR_RESULT_FILE
from ray.tune import Callback

from raysl import ray_compat
from raysl.outcome import BAD_STATUSES

__all__ = ["EpochOnce", "cut_from_epoch", "epoch_rows"]


def _epoch(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _json_rows(text: str) -> Iterator[tuple[int, int | None]]:
    offset = 0
    for line in text.splitlines(keepends=True):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None  # a half-written last line
        yield offset, _epoch(row.get("epoch")) if isinstance(row, dict) else None
        offset += len(line.encode())


def _csv_rows(text: str) -> Iterator[tuple[int, int | None]]:
    consumed = [0]

    def lines():
        for line in text.splitlines(keepends=True):
            consumed[0] += len(line.encode())
            yield line

    reader = csv.reader(lines())
    header = next(reader, None)
    if not header or "epoch" not in header:
        return
    at = header.index("epoch")
    start = consumed[0]
    for row in reader:  # a row may span lines (a quoted newline)
        yield start, _epoch(row[at]) if len(row) == len(header) else None
        start = consumed[0]


def epoch_rows(text: str, is_csv: bool = False) -> list[tuple[int, int | None]]:
    """(byte offset, epoch) of each row of a result.json (JSON lines) or progress.csv (after its header)."""
    return list(_csv_rows(text) if is_csv else _json_rows(text))


def cut_from_epoch(path: str | Path, epoch: int, is_csv: bool = False) -> int:
    """Cut ``path`` before its first row of ``epoch`` or later when every row from there on is such a row
    (or a half-written line); the number of rows cut (0: nothing cut)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return 0
    rows = epoch_rows(text, is_csv)
    first = next((i for i, (_, e) in enumerate(rows) if e is not None and e >= epoch), None)
    if first is None or any(e is not None and e < epoch for _, e in rows[first:]):
        return 0
    os.truncate(path, rows[first][0])
    return len(rows) - first


def _redoes(result: dict) -> int | None:
    """The epoch a report says was trained, or None for a report that adds to its epoch: a closing report
    (diverged, collapsed, errored, or any report with an ``error``, such as a trial stopped by a full disk)
    or a PBT trial's first report after a restore."""
    if "resumed_weights" in result or "error" in result or \
            str(result.get("status", "")) in {str(s) for s in BAD_STATUSES}:
        return None
    return _epoch(result.get("epoch"))


class EpochOnce(Callback):
    """Before Tune's loggers write a report of epoch ``e``, cut the trial's rows of ``e`` and later off
    ``result.json`` and ``progress.csv`` (module docstring). Tune runs the callbacks a run is given before
    the loggers it adds itself."""

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        """Before Tune's loggers start a trial again: they copy the trial's stored log files over the
        driver's copies when it restarts from a checkpoint, and the stored ones lag the driver's until
        Tune's next sync, so the rows logged since were lost (seen: a PBT trial's result.json kept epoch 2
        of 1, 2 while its progress.csv, restored later, kept both). Store the driver's copies first."""
        import pyarrow.fs

        filesystem = ray_compat.trial_storage_filesystem(trial)
        if filesystem is None:
            return  # a Ray that keeps it elsewhere: Tune's own behaviour (tests/test_ray_compat.py says so)
        for name in (EXPR_RESULT_FILE, EXPR_PROGRESS_FILE):
            local = Path(trial.local_path or "", name)
            if not trial.local_path or not trial.path or not local.is_file() or not local.stat().st_size:
                continue
            target = f"{trial.path.rstrip('/')}/{name}"
            if target != str(local):  # a staging copy apart from the stored one
                pyarrow.fs.copy_files(str(local), target, destination_filesystem=filesystem)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        epoch = _redoes(result)
        if epoch is None or not trial.local_path:
            return
        cut_from_epoch(Path(trial.local_path, EXPR_RESULT_FILE), epoch)
        cut_from_epoch(Path(trial.local_path, EXPR_PROGRESS_FILE), epoch, is_csv=True)
