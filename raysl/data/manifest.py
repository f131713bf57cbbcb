"""The manifest: what ``raysl data prepare`` wrote, in one JSON file.

Training never looks at the raw source again; it trusts ``manifest.json`` for
the image shape, the byte encoding, the class names, the normalisation
statistics and the list of shards with their checksums. Keeping this a small
frozen value (serialised by hand, validated on load) means a stale or foreign
file fails loudly at load time instead of mid-training.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from raysl import jsonio
from raysl.errors import DataError

MANIFEST_FILE = "manifest.json"  # in a prepared folder, beside its shards
FORMAT_VERSION = 1
ENCODINGS = ("raw", "png", "encoded")
SPLIT_FROM = ("shuffle", "source")


class _ItemAccess:
    """Dict-style reads (``split["rows"]``) mirroring the JSON layout, for code
    that treats the manifest as the parsed JSON it is stored as."""

    def __getitem__(self, key: str) -> Any:
        if key not in {field.name for field in dataclasses.fields(self)}:  # type: ignore[arg-type]
            raise KeyError(key)
        return getattr(self, key)


@dataclass(frozen=True)
class ShardInfo(_ItemAccess):
    """One Parquet file of a split, with what is needed to detect tampering."""

    file: str
    rows: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class SkippedFile(_ItemAccess):
    """A source file ``raysl data prepare`` could not read, with why (path relative to the source)."""

    file: str
    reason: str


@dataclass(frozen=True)
class SplitInfo(_ItemAccess):
    """A split ("train" or "val"): its row count and its shards, in order."""

    rows: int
    shards: tuple[ShardInfo, ...]


@dataclass(frozen=True)
class Manifest:
    """Everything a reader needs to turn the shards back into images.

    ``mean``/``std`` are per channel, over the train split, on the [0, 1]
    scale. ``split_from`` is "source" when the source defines its own
    train/test split (then ``val_fraction`` was not used) and "shuffle" when
    ``val_fraction`` of the shuffled rows became "val".

    ``encoding`` is "raw" (uint8 HWC bytes, every row ``height`` x ``width``),
    "png" (one size, PNG bytes; older image-folder datasets) or "encoded"
    (each image's own JPEG bytes or PNG, any size; shards then also carry
    ``height``, ``width`` and ``orientation`` columns and ``height``/``width``
    here are the medians over the train split, for information only, and
    ``size_range`` says how the sizes vary: ``{"height": (min, max), "width":
    (min, max)}`` over the train split; None for one-size encodings).
    ``skipped`` lists the source files that could not be read.
    """

    source: str
    source_path: str | None
    height: int
    width: int
    channels: int
    encoding: str
    class_names: tuple[str, ...] | None
    num_classes: int
    labeled: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    seed: int
    val_fraction: float
    split_from: str
    splits: dict[str, SplitInfo]
    skipped: tuple[SkippedFile, ...] = ()
    size_range: dict[str, tuple[int, int]] | None = None
    created_by: str = "raysl data prepare"
    format_version: int = FORMAT_VERSION

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(height, width, channels): the shape of one decoded image (for "encoded": the median one)."""
        return (self.height, self.width, self.channels)

    @property
    def sizes_vary(self) -> bool:
        """Whether the images differ in size (then ``image_shape`` is no image's shape but the median)."""
        if self.encoding != "encoded":
            return False
        if self.size_range is None:  # written before raysl recorded the range: encoded images may differ
            return True
        return any(lo != hi for lo, hi in self.size_range.values())

    @property
    def total_rows(self) -> int:
        """Rows over every split: a row's index counts across the splits (it indexes the source data set),
        so per-image state (iSogCLR, DeepCluster-v2, SupCon's labels) has this many entries."""
        return sum(split["rows"] for split in self.splits.values())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict, ``format_version`` first so humans see it."""
        body = dataclasses.asdict(self)
        return {"format_version": body.pop("format_version"), **body}

    def to_json(self) -> str:
        # strict JSON: the mean/std of an empty split are NaN, written as null (read back, a DataError)
        return jsonio.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Validate and rebuild; raises DataError naming what is wrong."""
        if not isinstance(data, dict):
            raise DataError("manifest.json is not a JSON object; re-run raysl data prepare")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise DataError(
                f"manifest.json has format_version {version!r}, this raysl reads "
                f"{FORMAT_VERSION}; re-run raysl data prepare"
            )
        try:
            manifest = cls(
                source=str(data["source"]),
                source_path=data["source_path"],
                height=int(data["height"]),
                width=int(data["width"]),
                channels=int(data["channels"]),
                encoding=str(data["encoding"]),
                class_names=_optional_tuple(data["class_names"], str),
                num_classes=int(data["num_classes"]),
                labeled=bool(data["labeled"]),
                mean=tuple(float(m) for m in data["mean"]),
                std=tuple(float(s) for s in data["std"]),
                seed=int(data["seed"]),
                val_fraction=float(data["val_fraction"]),
                split_from=str(data["split_from"]),
                splits={name: _split_from_dict(s) for name, s in data["splits"].items()},
                skipped=tuple(
                    SkippedFile(file=str(s["file"]), reason=str(s["reason"])) for s in data.get("skipped", [])
                ),
                size_range=None if data.get("size_range") is None else {
                    str(k): (int(v[0]), int(v[1])) for k, v in data["size_range"].items()},
                created_by=str(data["created_by"]),
                format_version=version,
            )
        except KeyError as missing:
            raise DataError(
                f"manifest.json lacks field {missing}; re-run raysl data prepare"
            ) from None
        except (TypeError, ValueError, AttributeError) as bad:
            raise DataError(f"manifest.json is malformed ({bad}); re-run raysl data prepare") from None
        manifest._check()
        return manifest

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as bad:
            raise DataError(f"manifest.json is not valid JSON ({bad}); re-run raysl data prepare") from None
        return cls.from_dict(data)

    def _check(self) -> None:
        """Reject values no reader could honour, so errors surface at load time."""
        problems = []
        if self.encoding not in ENCODINGS:
            problems.append(f"encoding {self.encoding!r} (allowed: {', '.join(ENCODINGS)})")
        if self.channels not in (1, 3):
            problems.append(f"channels {self.channels} (allowed: 1, 3)")
        if min(self.height, self.width) < 1:
            problems.append(f"image size {self.height}x{self.width}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            problems.append("mean/std length differs from channels")
        if self.split_from not in SPLIT_FROM:
            problems.append(f"split_from {self.split_from!r}")
        if "train" not in self.splits:
            problems.append("no train split")
        if problems:
            raise DataError(f"manifest.json is invalid: {'; '.join(problems)}; re-run raysl data prepare")
        for name, split in self.splits.items():
            # prepare writes a split's rows as the sum of its shards' rows: a difference is an edited or
            # damaged file, which would otherwise surface as a wrong batch-size or step count
            in_shards = sum(shard.rows for shard in split.shards)
            if split.rows != in_shards:
                raise DataError(
                    f"manifest.json disagrees with its shards: the {name} split has {split.rows} rows but its "
                    f"{len(split.shards)} shard(s) list {in_shards}; the manifest was edited or damaged: re-run raysl "
                    "data prepare into a new --out"
                )

    def require_val_images(self, where: str, least: int = 2) -> None:
        """Refuse data whose val split cannot be evaluated on, before a run starts (else its first evaluation
        fails): the evaluation compares val images with each other (LiDAR, view agreement, the collapse
        check), and kNN accuracy on one image says nothing."""
        found = self.splits["val"].rows if "val" in self.splits else 0
        if found >= least:
            return
        if self.split_from == "source":  # the source's own test files: --val-fraction does not apply
            fix = "it is the source's own test split: prepare again from test files (t10k*, test_batch) that hold more"
        else:
            fix = "re-run raysl data prepare into a new --out with a larger --val-fraction (e.g. 0.2)"
        raise DataError(f"{where}: the val split has {found} image{'s' * (found != 1)} and a run's evaluation "
                        f"needs at least {least}; {fix}")


def _optional_tuple(values: list[Any] | None, kind: type) -> tuple[Any, ...] | None:
    return None if values is None else tuple(kind(v) for v in values)


def _split_from_dict(data: dict[str, Any]) -> SplitInfo:
    shards = tuple(
        ShardInfo(file=str(s["file"]), rows=int(s["rows"]), bytes=int(s["bytes"]), sha256=str(s["sha256"]))
        for s in data["shards"]
    )
    return SplitInfo(rows=int(data["rows"]), shards=shards)
