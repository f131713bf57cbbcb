"""Where a run's data is: the prepared shard folder a config names, or a bundled source prepared into the cache."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from raysl import storage

if TYPE_CHECKING:
    from raysl.config import RunConfig


def absolute_data_path(base: dict) -> dict:
    """A run config tree (``base:`` of a search or scaling file) with a relative ``data.path`` made absolute:
    trials run in their own folders, and where the data is must not depend on that."""
    path = (base.get("data") or {}).get("path")
    if isinstance(path, str) and not storage.is_uri(path) and not os.path.isabs(path):
        base = {**base, "data": {**base["data"], "path": str(Path(path).expanduser().resolve())}}
    return base


def resolve_data_dir(cfg: RunConfig) -> str:
    """The prepared shard folder of a run; a bundled source with no path is prepared into the cache."""
    from raysl.data.read import shards

    if cfg.data.path is not None:
        path = cfg.data.path
        if "://" not in path:
            path = str(Path(path).expanduser().resolve())
        shards.load_manifest(path)  # clear error if it is not a prepared folder
        return path
    target = storage.cache_root() / "data" / f"{cfg.data.source}-seed0"
    if not (target / "manifest.json").exists():
        from filelock import FileLock

        from raysl.data.prepare import prepare

        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock"):
            if not (target / "manifest.json").exists():
                prepare(cfg.data.source, None, str(target), seed=0)
    return str(target)
