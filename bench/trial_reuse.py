"""A search's per-trial start-up: a new process per trial (Tune's default) against one reused per slot.

A `raysl tune` of the quickstart space (digits, width 8, 2 epochs evaluated each epoch: about a second of
training a trial), ``--num-samples`` trials (default 6) two at a time, FIFO, on a local cluster the command
starts itself, twice in alternating order for each side:

- baseline: ``--set tune.reuse_actors=false``: every trial is a new Ray actor process that imports Ray Tune,
  torch and raysl and loads the data before its first step;
- default: ``tune.reuse_actors: true`` (raysl's default): a trial's process runs the next trial on the same
  resources (Ray Tune's ``TuneConfig(reuse_actors=True)``).

Per search: the wall time of the process and the machine's busy CPU seconds meanwhile (every process:
Ray's are not the driver's children; measure on a quiet machine), then the ratio baseline / default of the
means, the per-trial saving, and a JSON line. The searches sample the same configs (seeded), and the bench
checks that both sides report the same objective for each trial: reusing a process changes no result.

    .venv/bin/python bench/trial_reuse.py        # 4 searches, ~3 min on 2 quiet cores
"""

from __future__ import annotations

import argparse
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
SEARCH = ["--set", "optim.epochs=2", "--set", "model.width=8", "--set", "eval.every_epochs=1",
          "--set", "tune.scheduler=fifo", "--set", "tune.max_concurrent=2"]


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def objectives(experiment: Path) -> list[float]:
    """Each trial's last reported knn_acc, in trial-folder order (the searcher's order)."""
    found = []
    for result in sorted(experiment.glob("raysl_trial_*/result.json")):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        found.append(rows[-1]["knn_acc"])
    return found


def search(reuse: bool, samples: int, storage: Path) -> tuple[float, float, list[float]]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    args = [RAYSL, "tune", QUICKSTART, *SEARCH, "--set", f"tune.reuse_actors={str(reuse).lower()}",
            "--num-samples", str(samples), "--storage", str(storage), "--name", "reuse"]
    cpu, start = busy_seconds(), time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    wall, cpu = time.perf_counter() - start, busy_seconds() - cpu
    if done.returncode != 0:
        raise SystemExit(f"raysl tune failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall, cpu, objectives(storage / "reuse")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-samples", type=int, default=6)
    samples = parser.parse_args().num_samples
    got: dict[str, list[tuple[float, float]]] = {"baseline": [], "default": []}
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="raysl-reuse-") as tmp:
        for repeat in range(2):
            for name in (("baseline", "default") if repeat == 0 else ("default", "baseline")):
                wall, cpu, found = search(name == "default", samples, Path(tmp) / f"{name}-{repeat}")
                got[name].append((wall, cpu))
                results.setdefault(name, found)
                print(f"{name:8s} {samples} trials: wall {wall:5.1f} s  busy CPU {cpu:5.1f} s", flush=True)
    if sorted(results["baseline"]) != sorted(results["default"]):
        raise SystemExit(f"the two sides' trials reported different results: {results}")
    means = {name: (statistics.mean(w for w, _ in runs), statistics.mean(c for _, c in runs))
             for name, runs in got.items()}
    ratio_wall = means["baseline"][0] / means["default"][0]
    ratio_cpu = means["baseline"][1] / means["default"][1]
    saved = (means["baseline"][1] - means["default"][1]) / (samples - 2)  # 2 slots: the first 2 trials start anew
    print(f"baseline / default: wall {ratio_wall:.2f}x, busy CPU {ratio_cpu:.2f}x; "
          f"{saved:.1f} CPU-s saved per reused trial; the same {samples} results on both sides", flush=True)
    print(json.dumps({"num_samples": samples,
                      "baseline_wall_s": round(means["baseline"][0], 1), "default_wall_s": round(means["default"][0], 1),
                      "baseline_cpu_s": round(means["baseline"][1], 1), "default_cpu_s": round(means["default"][1], 1),
                      "ratio_wall": round(ratio_wall, 2), "ratio_cpu": round(ratio_cpu, 2),
                      "cpu_s_saved_per_reused_trial": round(saved, 1)}))


if __name__ == "__main__":
    main()
