"""Trial overhead: where a short `raysl train` run (what a search trial is) spends its wall time.

The real CLI in a subprocess, on Fashion-MNIST (10,000 train rows a run: a seeded subset, ``data.fraction``),
SimCLR on the small convnet (width 16, ``search_spaces/fashion_simclr.yaml``'s base at 28 px crops and the
default evaluation: kNN at k = 20 and 200 on a 10,000-row bank, 10,000 val images), batch 256, 4 epochs, with
evaluation every epoch (what ASHA needs) and at the end only. Each schedule runs twice in the same command:

- baseline: every evaluation switch on (``eval.view_metrics`` and ``eval.projector_metrics``), the metrics
  an evaluation computed before they had switches (LiDAR 500 images x 8 views, view agreement, agreed rank,
  and everything again on the projector);
- default: raysl's defaults (those off; a search still gets them when it ranks by one).

For each run it prints the wall time of the ``raysl train`` process, the sums of the per-epoch ``train_s``
and ``eval_s`` and the run's ``startup_s`` (from ``metrics.jsonl`` and the summary line), the rest (Ray's
start-up and teardown, checkpoints), the share of the wall time spent in training steps, the mean of one
evaluation, and the wall-clock ratio baseline / default of the same schedule; then one JSON line.

    .venv/bin/python bench/trial_overhead.py              # ~8 min on 2 quiet cores (4 runs)
    .venv/bin/python bench/trial_overhead.py --quick      # digits, 2 epochs: a smoke run of the same code
    .venv/bin/python bench/trial_overhead.py --joined     # every run joined to one `raysl up` cluster
    .venv/bin/python bench/trial_overhead.py --set scale.cpus_per_worker=2 --set scale.torch_threads=2

Measure it on a quiet machine: the figures are wall times (bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RAYSL = str(Path(sys.executable).parent / "raysl")
FASHION_IDX = Path("/usr/share/datasets/fashion-mnist")
# the evaluation an issue-25 trial had: EvalConfig's defaults (fashion_simclr.yaml trims them for its search)
DEFAULT_EVAL = ["eval.knn_k=[20, 200]", "eval.max_train=10000", "eval.max_val=10000"]
BASELINE = ["eval.view_metrics=true", "eval.projector_metrics=true"]


def prepared(data: Path) -> Path:
    """Fashion-MNIST as `raysl data prepare idx` writes it (docs/data.md), prepared once."""
    if not (data / "manifest.json").exists():
        if not FASHION_IDX.exists():
            raise SystemExit(f"needs Fashion-MNIST at {FASHION_IDX}: apt-get install dataset-fashion-mnist")
        subprocess.run([RAYSL, "data", "prepare", "idx", str(FASHION_IDX), "--out", str(data)], check=True)
    return data


def train(space: Path, overrides: list[str], out: Path) -> dict:
    """One `raysl train` process: its wall time, its summary line and its metrics.jsonl rows."""
    cmd = [RAYSL, "train", str(space), "--out", str(out)]
    for item in overrides:
        cmd += ["--set", item]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-5000:])
        raise SystemExit(f"raysl train failed with exit code {done.returncode}: {' '.join(cmd)}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    missing = [k for k in ("train_s", "eval_s", "startup_s") if k not in summary]
    if missing:
        raise SystemExit(f"the summary line of {out} lacks {missing}: not a raysl with the time split")
    train_s = sum(r["train_s"] for r in rows)
    eval_s = sum(r["eval_s"] for r in rows)
    evaluations = [r["eval_s"] for r in rows if r["eval_s"] > 0]
    return {
        "wall_s": wall, "train_s": train_s, "eval_s": eval_s, "startup_s": summary["startup_s"],
        "rest_s": wall - train_s - eval_s - summary["startup_s"], "steps_share": train_s / wall,
        "one_eval_s": sum(evaluations) / max(1, len(evaluations)), "evaluations": len(evaluations),
        "epochs": len(rows), "knn_acc": summary.get("knn_acc"), "images_per_s": summary.get("images_per_s"),
    }


def run_all(space: Path, common: list[str], epochs: int, work: Path) -> dict[str, dict[str, dict]]:
    """Both schedules, each with the baseline switches and raysl's defaults."""
    results: dict[str, dict[str, dict]] = {}
    for schedule, every in (("every epoch", 1), ("end only", epochs)):
        results[schedule] = {}
        for name, switches in (("baseline", BASELINE), ("default", [])):
            out = work / "runs" / f"{'every' if every == 1 else 'end'}_{name}"
            if out.exists():
                raise SystemExit(f"{out} exists: pass another --work (a second run would resume, not train)")
            results[schedule][name] = train(space, [*common, f"eval.every_epochs={every}", *switches], out)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="digits, 2 epochs: checks the bench runs")
    parser.add_argument("--work", default=None, help="folder for the data and the runs (default: a temporary one)")
    parser.add_argument("--data", default=None, help="prepared Fashion-MNIST shards (default: prepare into --work)")
    parser.add_argument("--rows", type=int, default=10_000, help="train rows a run sees per epoch")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--crop", type=int, default=28, help="crop side (Fashion-MNIST is 28)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="more KEY=VALUE for every run")
    parser.add_argument("--joined", action="store_true",
                        help="every run joins one cluster started by `raysl up` before them (stopped after): start-up "
                             "once (issue 25), instead of each run's own local cluster")
    parser.add_argument("--lightly", action="store_true",
                        help="also time bench/lightly_loop.py (the same trial in a lightly-style loop, no Ray) for "
                             "each schedule, and print raysl's wall-clock ratio against it (needs lightly installed)")
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="raysl-trial-overhead-"))
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    common = [f"model.width={args.width}", f"optim.batch_size={args.batch}"]
    if args.quick:
        epochs = 2
        space = REPO / "search_spaces" / "quickstart.yaml"  # digits, prepared into raysl's cache on first use
        setup = f"digits (quickstart.yaml), {epochs} epochs"
    else:
        epochs = args.epochs
        data = prepared(Path(args.data) if args.data else work / "fashion")
        train_rows = json.loads((data / "manifest.json").read_text())["splits"]["train"]["rows"]
        space = REPO / "search_spaces" / "fashion_simclr.yaml"
        common += [f"data.path={data}", f"data.fraction={min(1.0, args.rows / train_rows):.6g}",
                   f"data.crop_size={args.crop}", *DEFAULT_EVAL]
        setup = (f"Fashion-MNIST ({min(args.rows, train_rows)} of {train_rows} train rows), {args.crop} px crops, "
                 f"{epochs} epochs")
    common += [f"optim.epochs={epochs}", *args.overrides]

    if not args.joined:  # each run must start its own cluster: not join a `raysl up` one (raysl.local_cluster)
        from raysl.local_cluster import running

        if running() is not None:
            raise SystemExit("bench: a `raysl up` cluster is running and every run would join it; `raysl down` "
                             "first, or pass --joined")
    if args.joined:  # a private record (RAYSL_CACHE): a user's own `raysl up` cluster is not touched
        os.environ["RAYSL_CACHE"] = str(work / "cache")
        os.environ.pop("RAY_ADDRESS", None)
        subprocess.run([RAYSL, "up"], check=True, capture_output=True, text=True)
    try:
        results = run_all(space, common, epochs, work)
    finally:
        if args.joined:
            subprocess.run([RAYSL, "down"], check=False, capture_output=True, text=True)
    setup += "; every run joined to `raysl up`'s cluster" if args.joined else "; each run on its own local cluster"

    lightly: dict[str, dict] = {}
    if args.lightly and not args.quick:
        for schedule, every in (("every epoch", 1), ("end only", epochs)):
            cmd = [sys.executable, str(REPO / "bench" / "lightly_loop.py"), f"--rows={args.rows}",
                   f"--epochs={epochs}", f"--eval-every={every}", f"--width={args.width}", f"--batch={args.batch}",
                   f"--crop={args.crop}"]
            start = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.stderr.write(done.stderr[-3000:])
                raise SystemExit(f"bench/lightly_loop.py failed with exit code {done.returncode}")
            lightly[schedule] = {**json.loads(done.stdout.strip().splitlines()[-1]),
                                 "process_wall_s": time.perf_counter() - start}

    print(f"trial overhead: raysl train, SimCLR small_convnet width {args.width}, batch {args.batch}, {setup}; "
          f"load {load:.1f} -> {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
    print(f"{'evaluation':<12} {'switches':<9} {'wall':>7} {'train_s':>8} {'eval_s':>7} {'startup':>8} {'rest':>6} "
          f"{'steps':>6} {'1 eval':>7} {'vs baseline':>11}")
    for schedule, runs in results.items():
        for name, r in runs.items():
            ratio = runs["baseline"]["wall_s"] / r["wall_s"]
            print(f"{schedule:<12} {name:<9} {r['wall_s']:6.1f}s {r['train_s']:7.1f}s {r['eval_s']:6.1f}s "
                  f"{r['startup_s']:7.1f}s {r['rest_s']:5.1f}s {r['steps_share']:6.0%} {r['one_eval_s']:6.2f}s "
                  f"{ratio:10.2f}x")
    print("wall: the raysl train process; steps: sum(train_s) / wall; rest: Ray's start-up and teardown, "
          "checkpoints and reports; vs baseline: the baseline's wall / this run's, same schedule")
    for schedule, r in lightly.items():
        ours = results[schedule]["default"]
        print(f"lightly-style loop, {schedule}: wall {r['process_wall_s']:.1f}s (train {r['train_s']:.1f}s, eval "
              f"{r['eval_s']:.1f}s, kNN {r['knn_acc']:.4f}); raysl default {ours['wall_s']:.1f}s (kNN "
              f"{ours['knn_acc']:.4f}): lightly / raysl wall = {r['process_wall_s'] / ours['wall_s']:.2f}x, "
              f"steps {r['train_s'] / ours['train_s']:.2f}x")
    print(json.dumps({"bench": "trial_overhead", "quick": args.quick, "joined": args.joined, "setup": setup,
                      "width": args.width,
                      "batch": args.batch, "epochs": epochs, "load_start": round(load, 1),
                      "load_end": round(os.getloadavg()[0], 1), "cpus": os.cpu_count(),
                      "runs": {s: {n: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                                   for n, r in runs.items()} for s, runs in results.items()},
                      "lightly": lightly,
                      "work": str(work)}))


if __name__ == "__main__":
    main()
