"""The journal that makes an image-folder prepare resumable: ``OUT/.prepare/``.

It holds the options of the prepare and one sidecar per finished shard (its
checksum, skipped files and statistics). A re-run with the same options keeps
the shards whose sidecar and bytes agree and builds the rest; different
options or a changed file list are refused.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from raysl import jsonio, storage
from raysl.data.prepare.layout import remove_stale_shards
from raysl.errors import DataError

JOURNAL = ".prepare"


class Journal:
    """``OUT/.prepare/``: the options of this prepare and one sidecar per finished shard."""

    def __init__(self, loc: storage.Location, out: str, options: dict[str, Any]) -> None:
        self.loc, self.out = loc, out
        self.folder = loc.join(JOURNAL)
        location = self.folder.join("options.json")
        text = storage.read_bytes(location, missing_ok=True)
        if text is not None:
            try:
                previous = json.loads(text)
            except json.JSONDecodeError:
                previous = None
            if previous != options:
                changed = _changed_keys(previous, options)
                raise DataError(
                    f"{out} holds an interrupted prepare with other options or files ({changed}); "
                    "re-run with the same options, or pick another --out or delete it"
                )
            storage.remove_temporaries(loc)
        else:
            storage.make_dirs(self.folder)
            remove_stale_shards(loc)
            storage.write_atomic(location, jsonio.dumps(options, indent=1))

    def finished(self, names: list[str]) -> dict[str, dict[str, Any]]:
        """Sidecars whose shard is present with the recorded size and sha256 (the others are rebuilt)."""
        kept = {}
        for name in names:
            text = storage.read_bytes(self.folder.join(f"{name}.json"), missing_ok=True)
            if text is None:
                continue
            try:
                entry = json.loads(text)
            except json.JSONDecodeError:
                continue
            shard = self.loc.join(name)
            if storage.size(shard) != entry.get("bytes"):
                continue
            digest = hashlib.sha256()
            with storage.guard(shard, "reading it"), shard.fs.open_input_stream(shard.path) as stream:
                while chunk := stream.read(1 << 24):
                    digest.update(chunk)
            if digest.hexdigest() == entry.get("sha256"):
                kept[name] = entry
        return kept

    def record(self, entry: dict[str, Any]) -> None:
        storage.write_atomic(self.folder.join(f"{entry['file']}.json"), jsonio.dumps(entry, indent=1))

    def remove(self) -> None:
        storage.remove(self.folder)


def _changed_keys(previous: Any, options: dict[str, Any]) -> str:
    if not isinstance(previous, dict):
        return "unreadable journal"
    keys = sorted(k for k in set(previous) | set(options) if previous.get(k) != options.get(k))
    return ", ".join("source files" if k == "files_sha256" else k for k in keys)

