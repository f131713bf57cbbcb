"""Worker scaling: images/s per number of data-parallel workers, the speed-up and the parallel efficiency."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def worker_scaling(workers: Sequence[int], rates: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Throughput per number of data-parallel workers, the speed-up and the parallel efficiency.

    One entry per run: ``workers[i]`` workers and ``rates[i]`` its images/s per epoch, in epoch
    order. The first epoch of each run is left out (it includes start-up: Ray Data's first read,
    the data put on the device, the process group); a run with one epoch only keeps it, and the
    row says so (``first_epoch_only``). Per worker count the median over the pooled epochs is its
    throughput ``T(w)``; against the fewest workers ``w0`` (1 when a 1-worker run exists)::

        speedup(w) = T(w) / T(w0),   efficiency(w) = speedup(w) / (w / w0)

    so a perfectly parallel job has efficiency 1 at every ``w``. Returns ``{"reference_workers":
    w0, "rows": [{"num_workers", "images_per_s", "epochs", "runs", "first_epoch_only", "speedup",
    "efficiency"}, ...]}`` (rows by worker count); raises ValueError without a usable run.
    """
    if len(workers) != len(rates):
        raise ValueError(f"workers and rates differ in length ({len(workers)} vs {len(rates)})")
    pooled: dict[int, list[float]] = {}
    runs: dict[int, int] = {}
    first_only: dict[int, bool] = {}
    for w, per_epoch in zip(workers, rates):
        values = [float(v) for v in per_epoch if v is not None and math.isfinite(float(v)) and float(v) > 0]
        if int(w) < 1 or not values:
            continue
        kept = values[1:] if len(values) > 1 else values
        pooled.setdefault(int(w), []).extend(kept)
        runs[int(w)] = runs.get(int(w), 0) + 1
        first_only[int(w)] = first_only.get(int(w), False) or len(values) == 1
    if not pooled:
        raise ValueError("no run reported images_per_s")
    ref = min(pooled)
    t_ref = float(np.median(pooled[ref]))
    rows = []
    for w in sorted(pooled):
        t = float(np.median(pooled[w]))
        speedup = t / t_ref
        rows.append({"num_workers": w, "images_per_s": t, "epochs": len(pooled[w]), "runs": runs[w],
                     "first_epoch_only": first_only[w], "speedup": speedup, "efficiency": speedup / (w / ref)})
    return {"reference_workers": ref, "rows": rows}
