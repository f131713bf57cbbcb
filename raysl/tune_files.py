"""What Ray Tune wrote into an experiment folder, read as it is (:mod:`raysl.results` makes trials of it).

Tune's own layout: ``<storage>/<name>/<trial>/params.json``, ``result.json`` one JSON object per
report, ``progress.csv``, ``error.txt`` and the ``experiment_state-*.json`` Tune keeps next to the
trials (plus raysl's PBT lineage file in a trial's folder). A half-written last line of ``result.json``
is skipped.

Local folders and URIs (``s3://``, ``gs://``, ``file://``) are read through
``pyarrow.fs``, so a results bucket needs no download step.
"""

from __future__ import annotations

import io
import json
import math
import re
from typing import Any

import pandas as pd

from raysl.errors import RayslError

RESULT_FILE = "result.json"
PARAMS_FILE = "params.json"

# Ray Tune's trial ids: "a1b2c_00003" (default) or 8 hex digits (raysl tune's folder names)
_TRIAL_ID = re.compile(r"_([0-9a-f]{5}_\d{5}|[0-9a-f]{8})(?:_|$)")
# Tune's bookkeeping keys in result.json: never searched parameters or metrics.
TUNE_KEYS = {
    "timestamp", "checkpoint_dir_name", "done", "training_iteration", "trial_id", "date", "time_this_iter_s",
    "time_total_s", "pid", "hostname", "node_ip", "config", "time_since_restore", "iterations_since_restore",
    "should_checkpoint", "episodes_total", "timesteps_total", "experiment_tag", "logdir", "warmup_time",
}


class ResultsError(RayslError):
    """An experiment folder cannot be read as a Ray Tune experiment written by raysl."""


# --------------------------------------------------------------------------
# storage: one small interface over local folders and pyarrow.fs URIs


class Storage:
    """Read-only access to one experiment folder, local or remote, through :mod:`raysl.storage`."""

    def __init__(self, location: str):
        from raysl import storage
        from raysl.errors import ConfigError

        self.location = location
        try:
            self._loc = storage.resolve(location)
        except ConfigError as exc:
            raise ResultsError(str(exc)) from None
        self.fs, self.root = self._loc.fs, self._loc.path

    def _at(self, path: str):
        from raysl import storage

        return storage.Location(self.fs, path, path)

    def join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts]) if self.root else "/".join(parts)

    def info(self, path: str):
        return self.fs.get_file_info(path)

    def is_dir(self, path: str) -> bool:
        from raysl import storage

        return storage.is_dir(self._at(path))

    def is_file(self, path: str) -> bool:
        from raysl import storage

        return storage.is_file(self._at(path))

    def listdir(self, path: str) -> list[tuple[str, bool]]:
        """(base name, is a folder) of each entry directly under ``path``."""
        from raysl import storage

        try:
            return storage.list_dir(self._at(path))
        except RayslError:
            return []

    def read_text(self, path: str) -> str | None:
        from raysl import storage

        try:
            return storage.read_text(self._at(path), missing_ok=True)
        except RayslError:
            return None


def parse_result_lines(text: str) -> list[dict]:
    """Every complete JSON object of a ``result.json``; a half-written line is skipped."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _rows_from_progress_csv(text: str) -> list[dict]:
    try:
        frame = pd.read_csv(io.StringIO(text))
    except Exception:  # noqa: BLE001 - an empty or half-written CSV is "no rows"
        return []
    rows = []
    for record in frame.to_dict("records"):
        rows.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()
                     if not str(k).startswith("config/")})
    return rows


def tune_statuses(storage: Storage, root: str, entries: list[tuple[str, bool]]) -> dict[str, str]:
    """trial folder name -> Tune's own status (RUNNING, TERMINATED, ERROR, PENDING) from the newest
    ``experiment_state-*.json``; empty when there is none or it cannot be read."""
    states = sorted(name for name, is_dir in entries if not is_dir and name.startswith("experiment_state"))
    if not states:
        return {}
    text = storage.read_text(f"{root}/{states[-1]}")
    out: dict[str, str] = {}
    try:
        for item in json.loads(text or "{}").get("trial_data", []):
            trial = json.loads(item[0]) if isinstance(item, list) else item
            if isinstance(trial, dict) and trial.get("relative_logdir"):
                out[str(trial["relative_logdir"])] = str(trial.get("status", ""))
    except (ValueError, TypeError, AttributeError, IndexError):
        return {}
    return out


# --------------------------------------------------------------------------
# the experiment folders and their trials


def no_trials_message(location: str) -> str:
    """What a folder without Ray Tune trials is told (one line)."""
    return (f"{location} has no Ray Tune trials (expected trial folders with {PARAMS_FILE} and {RESULT_FILE}); "
            "run `raysl tune SPACE.yaml --storage DIR --name NAME` first and pass DIR/NAME")


def is_trial_dir(storage: Storage, path: str) -> bool:
    """Whether ``path`` is a Tune trial's folder (it holds a result.json or params.json)."""
    names = {name for name, _ in storage.listdir(path)}
    return RESULT_FILE in names or PARAMS_FILE in names


def find_experiments(location: str) -> list[tuple[Storage, str]]:
    """The experiment folder(s) at ``location``: the folder itself, or (for a ``--storage``
    folder) each sub-folder holding trials."""
    storage = Storage(location)
    info = storage.info(storage.root)
    import pyarrow.fs as pafs

    if info.type == pafs.FileType.NotFound:
        raise ResultsError(f"{location} does not exist; pass the folder `raysl tune --storage DIR --name NAME` "
                           "wrote (DIR/NAME)")
    if info.type != pafs.FileType.Directory:
        raise ResultsError(f"{location} is a file, not a folder; pass the experiment folder (DIR/NAME) "
                           "that `raysl tune --storage DIR --name NAME` wrote")
    entries = storage.listdir(storage.root)
    if any(is_dir and is_trial_dir(storage, f"{storage.root}/{name}") for name, is_dir in entries):
        return [(storage, storage.root)]
    found = []
    for name, is_dir in entries:
        sub = f"{storage.root}/{name}"
        if is_dir and any(d and is_trial_dir(storage, f"{sub}/{n}") for n, d in storage.listdir(sub)):
            found.append((storage, sub))
    if not found:
        if is_trial_dir(storage, storage.root):
            raise ResultsError(f"{location} is one trial's folder; pass the experiment folder that holds it "
                               f"({location.rstrip('/').rsplit('/', 1)[0] or '..'})")
        raise ResultsError(no_trials_message(location))
    return found


def read_trial(storage: Storage, path: str, dirname: str, tune_status: str) -> dict:
    """One trial folder as Tune left it: ``dir``, ``trial_id``, ``rows`` (its reports, from result.json or else
    progress.csv), ``config`` (params.json), ``error`` and ``error_time`` (error.txt), ``tune_status`` (as given)
    and ``lineage`` (its PBT clones)."""
    text = storage.read_text(f"{path}/{RESULT_FILE}")
    rows = parse_result_lines(text or "")
    if not rows:
        csv = storage.read_text(f"{path}/progress.csv")
        rows = _rows_from_progress_csv(csv) if csv else []
    config: Any = None
    params_text = storage.read_text(f"{path}/{PARAMS_FILE}")
    if params_text:
        try:
            config = json.loads(params_text)
        except json.JSONDecodeError:
            config = None
    if not isinstance(config, dict):
        config = next((r["config"] for r in rows if isinstance(r.get("config"), dict)), {})
    error = storage.read_text(f"{path}/error.txt")
    error_time = None
    if error is not None:
        mtime = getattr(storage.info(f"{path}/error.txt"), "mtime", None)
        error_time = mtime.timestamp() if mtime is not None else None
    trial_id = next((str(r["trial_id"]) for r in rows if r.get("trial_id")), None)
    if trial_id is None:
        match = _TRIAL_ID.search(dirname)
        trial_id = match.group(1) if match else dirname
    from raysl.pbt import LINEAGE_FILE, parse_lineage

    lineage = [{**e, "trial_id": str(e.get("trial_id") or trial_id)}
               for e in parse_lineage(storage.read_text(f"{path}/{LINEAGE_FILE}") or "")]
    return {"dir": dirname, "trial_id": trial_id, "rows": rows, "config": config,
            "error": error.strip() if error else None, "error_time": error_time, "tune_status": tune_status,
            "lineage": lineage}
