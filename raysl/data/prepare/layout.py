"""The folders of ``raysl data prepare`` that every source shares: a source's PATH, and the --out it writes.

Each source (:mod:`raysl.data.prepare`: digits, idx, cifar10; :mod:`raysl.data.prepare.imagefolder`) refuses an
--out that already holds a prepared dataset, drops what an interrupted earlier prepare left there, and
writes the manifest last.
"""

from __future__ import annotations

import re
from pathlib import Path

from raysl import storage
from raysl.data.manifest import MANIFEST_FILE, Manifest
from raysl.errors import ConfigError, DataError

SHARD_NAME = re.compile(r"^(train|val)-\d{5}\.parquet$")


def existing_dir(path: str | None, source: str) -> Path:
    folder = Path(path or "")
    if not folder.is_dir():
        raise DataError(f"{source} PATH {path} is not a folder; point it at the extracted dataset")
    return folder


def refuse_existing(loc: storage.Location, out: str) -> None:
    if storage.exists(loc.join(MANIFEST_FILE)):
        raise DataError(
            f"{out} already holds a prepared dataset ({MANIFEST_FILE}); pick another --out or delete it"
        )
    if storage.is_file(loc):
        raise ConfigError(f"--out {out} is a file; point it at a folder")


def remove_stale_shards(loc: storage.Location) -> None:
    """Drop shards (and temporaries) an interrupted earlier prepare left behind, so OUT holds exactly one dataset."""
    for name, is_dir in storage.list_dir(loc):
        if not is_dir and (SHARD_NAME.match(name) or name == f"{MANIFEST_FILE}.tmp"):
            storage.remove(loc.join(name))
    storage.remove_temporaries(loc)


def write_manifest(loc: storage.Location, manifest: Manifest) -> None:
    """Written last and atomically: readers see no manifest or a complete one."""
    storage.write_atomic(loc.join(MANIFEST_FILE), manifest.to_json())
