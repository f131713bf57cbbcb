"""``raysl data prepare``: sources -> Parquet shards + ``manifest.json`` (:mod:`raysl.data.prepare.write`)."""

from raysl.data.prepare.write import SOURCES, prepare

__all__ = ["SOURCES", "prepare"]
