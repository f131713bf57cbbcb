"""Data: prepared Parquet shards (``shards``), their manifest (``manifest``),
streaming them through Ray Data (``stream``) and batch augmentation on the
device (``augment``)."""
