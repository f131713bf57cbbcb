"""Start-up of a short `raysl train` run: what a run costs beyond its training, before and after the cuts.

A 3-epoch quickstart run (digits, width 8: about a second of training) on a local cluster the run starts
itself, with 1 and then 2 Train workers, each twice, in alternating order:

- baseline: Ray's defaults and the Ray Data path of the small-image shards (``--set data.reader=ray_data``,
  ``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=1``, ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=2``): a split coordinator,
  a stats actor and read tasks per run, a preemption watcher, the controller polling every 2 s;
- default: raysl's (each worker reads its share of the shards, no preemption watcher on a one-machine
  cluster, the controller polling every 0.5 s; raysl.launch.LOCAL_TRAIN_ENV).

Per run: the wall time of the process and the machine's busy CPU seconds meanwhile (all processes: Ray's
are not the driver's children; measure on a quiet machine), the ratio baseline / default of their means;
then one JSON line.

    .venv/bin/python bench/startup.py        # 8 runs, ~6 min on 2 quiet cores
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RAYSL = str(Path(sys.executable).parent / "raysl")
QUICKSTART = str(REPO / "search_spaces" / "quickstart.yaml")
RUN = ["--set", "optim.epochs=3", "--set", "model.width=8", "--set", "eval.every_epochs=1"]
BASELINE_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "2"}


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def run(workers: int, baseline: bool, out: Path) -> tuple[float, float]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    extra = ["--set", f"scale.num_workers={workers}"]
    if baseline:
        env.update(BASELINE_ENV)
        extra += ["--set", "data.reader=ray_data"]
    cpu, start = busy_seconds(), time.perf_counter()
    done = subprocess.run([RAYSL, "train", QUICKSTART, *RUN, *extra, "--out", str(out)], env=env,
                          capture_output=True, text=True, check=False)
    wall, cpu = time.perf_counter() - start, busy_seconds() - cpu
    if done.returncode != 0:
        raise SystemExit(f"raysl train failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall, cpu


def main() -> None:
    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="raysl-startup-") as tmp:
        for workers in (1, 2):
            got: dict[str, list[tuple[float, float]]] = {"baseline": [], "default": []}
            for repeat in range(2):
                order = ("baseline", "default") if repeat == 0 else ("default", "baseline")
                for name in order:
                    wall, cpu = run(workers, name == "baseline", Path(tmp) / f"w{workers}-{name}-{repeat}")
                    got[name].append((wall, cpu))
                    print(f"{workers} worker(s) {name:8s} wall {wall:5.1f} s  busy CPU {cpu:5.1f} s", flush=True)
            means = {name: (statistics.mean(w for w, _ in runs), statistics.mean(c for _, c in runs))
                     for name, runs in got.items()}
            ratio_wall = means["baseline"][0] / means["default"][0]
            ratio_cpu = means["baseline"][1] / means["default"][1]
            print(f"{workers} worker(s): baseline / default wall {ratio_wall:.2f}x, busy CPU {ratio_cpu:.2f}x",
                  flush=True)
            figures[f"workers_{workers}"] = {
                "baseline_wall_s": round(means["baseline"][0], 1), "default_wall_s": round(means["default"][0], 1),
                "baseline_cpu_s": round(means["baseline"][1], 1), "default_cpu_s": round(means["default"][1], 1),
                "ratio_wall": round(ratio_wall, 2), "ratio_cpu": round(ratio_cpu, 2)}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
