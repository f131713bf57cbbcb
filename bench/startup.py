"""Start-up of a short `raysl train` run: what a run costs beyond its training, before and after the cuts.

A 3-epoch quickstart run (digits, width 8: about a second of training) on a local cluster the run starts
itself, with 1 and then 2 Train workers, each twice, in alternating order:

- baseline: Ray's defaults and the Ray Data path of the small-image shards (``--set data.reader=ray_data``,
  ``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=1``, ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=2``): a split coordinator,
  a stats actor and read tasks per run, a preemption watcher, the controller polling every 2 s;
- default: raysl's (each worker reads its share of the shards, no preemption watcher on a one-machine
  cluster, the controller polling every 0.5 s; raysl.local_cluster.LOCAL_TRAIN_ENV).

Per run: the wall time of the process and the machine's busy CPU seconds meanwhile (all processes: Ray's
are not the driver's children; measure on a quiet machine), the ratio baseline / default of their means;
then one JSON line.

``--joined`` compares instead, with 1 worker: each run on a local cluster of its own (raysl's default without
``raysl up``) against the same run joined to the cluster ``raysl up`` started once before them (issue 25: start-up
once, not per run). 4 runs a side in alternating order; ``raysl up``'s own start (and ``raysl down``) is timed
apart and printed, and the ratio shows both with it left out (many runs share one cluster) and spread over the
4 joined runs.

    .venv/bin/python bench/startup.py           # 8 runs, ~6 min on 2 quiet cores
    .venv/bin/python bench/startup.py --joined  # 8 runs + raysl up/down, ~5 min on 2 quiet cores
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


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    cpu, start = busy_seconds(), time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall, cpu = time.perf_counter() - start, busy_seconds() - cpu
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:2])} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall, cpu


def joined(tmp: Path) -> dict:
    """1 worker: own cluster per run against runs joined to `raysl up`'s cluster (its own start timed apart)."""
    own_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    own_env["RAYSL_CACHE"] = str(tmp / "cache-own")  # no `raysl up` record there: each run starts its own
    up_env = {**own_env, "RAYSL_CACHE": str(tmp / "cache-up")}
    for name, env in (("own", own_env), ("up", up_env)):  # digits prepared into each cache before any timing
        timed([RAYSL, "train", QUICKSTART, *RUN, "--set", "optim.epochs=1", "--out", str(tmp / f"warm-{name}")], env)
    up = timed([RAYSL, "up"], up_env)
    got: dict[str, list[tuple[float, float]]] = {"own cluster": [], "joined": []}
    try:
        for repeat in range(4):
            order = ("own cluster", "joined") if repeat % 2 == 0 else ("joined", "own cluster")
            for name in order:
                env = own_env if name == "own cluster" else up_env
                wall, cpu = timed([RAYSL, "train", QUICKSTART, *RUN, "--out", str(tmp / f"{name[:3]}-{repeat}")], env)
                got[name].append((wall, cpu))
                print(f"1 worker {name:11s} wall {wall:5.1f} s  busy CPU {cpu:5.1f} s", flush=True)
    finally:
        down = timed([RAYSL, "down"], up_env)
    own = (statistics.mean(w for w, _ in got["own cluster"]), statistics.mean(c for _, c in got["own cluster"]))
    join = (statistics.mean(w for w, _ in got["joined"]), statistics.mean(c for _, c in got["joined"]))
    n = len(got["joined"])
    spread = ((join[0] * n + up[0] + down[0]) / n, (join[1] * n + up[1] + down[1]) / n)
    print(f"raysl up: wall {up[0]:.1f} s, busy CPU {up[1]:.1f} s; raysl down: wall {down[0]:.1f} s, "
          f"busy CPU {down[1]:.1f} s", flush=True)
    print(f"own / joined: wall {own[0] / join[0]:.2f}x, busy CPU {own[1] / join[1]:.2f}x (up/down left out); "
          f"wall {own[0] / spread[0]:.2f}x, busy CPU {own[1] / spread[1]:.2f}x (up/down spread over {n} runs)",
          flush=True)
    return {"own_wall_s": round(own[0], 1), "own_cpu_s": round(own[1], 1), "joined_wall_s": round(join[0], 1),
            "joined_cpu_s": round(join[1], 1), "up_wall_s": round(up[0], 1), "up_cpu_s": round(up[1], 1),
            "down_wall_s": round(down[0], 1), "ratio_wall": round(own[0] / join[0], 2),
            "ratio_cpu": round(own[1] / join[1], 2), "ratio_wall_with_up": round(own[0] / spread[0], 2),
            "ratio_cpu_with_up": round(own[1] / spread[1], 2)}


def run(workers: int, baseline: bool, out: Path) -> tuple[float, float]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    extra = ["--set", f"scale.num_workers={workers}"]
    if baseline:
        env.update(BASELINE_ENV)
        extra += ["--set", "data.reader=ray_data"]
    return timed([RAYSL, "train", QUICKSTART, *RUN, *extra, "--out", str(out)], env)


def refuse_a_running_up_cluster() -> None:
    """Runs meant to start their own cluster would join `raysl up`'s (raysl.local_cluster): say so and stop."""
    from raysl.local_cluster import running

    if running() is not None:
        raise SystemExit("bench: a `raysl up` cluster is running, and the runs meant to start their own would join "
                         "it; stop it with `raysl down` first")


def main() -> None:
    if "--joined" not in sys.argv[1:]:
        refuse_a_running_up_cluster()
    if "--joined" in sys.argv[1:]:
        with tempfile.TemporaryDirectory(prefix="raysl-startup-") as tmp:
            print(json.dumps({"joined": joined(Path(tmp))}))
        return
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
