"""Data, in two packages that do not import each other, over two shared modules:

- ``prepare/``: ``raysl data prepare``, sources -> Parquet shards + ``manifest.json`` (array sources in
  ``arrays``, image folders in ``imagefolder*``, the --out folder's rules in ``layout``);
- ``read/``: a run's side: the shards checked and read (``shards``), the run's one dataset object
  (``dataset.RunData``, with its rows' strategy from ``encodings``), the worker's stream (``stream``), JPEG
  crops cut by Ray Data (``decode``) or on the GPU (``gpu_decode``), ``data.fraction`` (``subset``);
- shared: the manifest (``manifest``), image bytes <-> pixels (``codec``); above both, where a run's data is
  (``locate``, which prepares a bundled source on first use); and the batch augmentation on the device
  (``augment*``).
"""
