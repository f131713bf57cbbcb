"""Selection bench: how well each label-free metric picks the best trial, judged by kNN.

One search through the real `raysl tune` CLI on real Fashion-MNIST: two methods
(SimCLR with its temperature, BYOL with its EMA base), random learning rate and
weight decay, FIFO so that every trial runs to the end; then `raysl analyze` of
it. For each label-free metric (RankMe, alpha-ReQ, LiDAR, view kNN agreement, agreed rank =
RankMe x agreement, alignment, uniformity) it prints the Spearman correlation of the metric's selection score with kNN
accuracy over the finished trials and the regret: the best kNN minus the kNN of
the trial the metric picks (label-based selection has regret 0), over all the
trials and within each method. Then the ratio line and a JSON line; see
bench/README.md for recorded numbers.

    .venv/bin/python bench/selection.py --seed 0                 # ~10-15 min on 2 quiet cores
    .venv/bin/python bench/selection.py --trials 6 --epochs 1 --train-rows 1000   # a smoke run
    .venv/bin/python bench/selection.py --experiment /tmp/raysl_bench_selection/results/selection_s0  # re-read
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RAYSL = str(Path(sys.executable).parent / "raysl")
FASHION_IDX = Path("/usr/share/datasets/fashion-mnist")
TARGET_REGRET = 0.01  # the target: the best label-free selector within 1 kNN point


def prepared(args) -> Path:
    """The prepared Fashion-MNIST shards (``raysl data prepare idx``), prepared once if missing."""
    data = Path(args.data)
    if not (data / "manifest.json").exists():
        subprocess.run([RAYSL, "data", "prepare", "idx", str(FASHION_IDX), "--out", str(data)], check=True)
    return data


def space(data: Path, args) -> dict:
    with open(data / "manifest.json") as fh:
        train_rows = json.load(fh)["splits"]["train"]["rows"]
    view = {"crop_scale": [0.3, 1.0], "hflip_p": 0.5, "jitter_p": 0.8, "brightness": 0.4, "contrast": 0.4,
            "grayscale_p": 0.0}
    return {
        "base": {
            "method": {"name": "simclr", "temperature": 0.2},
            "model": {"backbone": "small_convnet", "width": args.width, "projector_hidden_dim": 256,
                      "projector_dim": 64, "predictor_hidden_dim": 256},
            "data": {"source": "idx", "path": str(data), "crop_size": args.crop, "augment": [view, view],
                     # a seeded subset of the train split, so that a trial takes seconds
                     "fraction": min(1.0, args.train_rows / train_rows)},
            "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "batch_size": 256, "epochs": args.epochs},
            "schedule": {"lr": "warmup_cosine", "warmup": 0.1},
            "scale": {"num_workers": 1, "cpus_per_worker": 1},
            # one evaluation, at the end (FIFO needs no earlier ones); the selectors LiDAR, view_agreement
            # and agreed_rank are asked for (they are off unless asked), LiDAR at its defaults (500 x 8)
            "eval": {"every_epochs": args.epochs, "knn_k": [20], "max_train": 5000, "max_val": 2000,
                     "view_metrics": True},
            "seed": args.seed,
        },
        "search": {
            "method.name": {"choice": ["simclr", "byol"],
                            "when": {"simclr": {"method.temperature": {"loguniform": [0.03, 1.0]}},
                                     "byol": {"method.ema_base": {"uniform": [0.9, 0.999]}}}},
            "optim.lr": {"loguniform": [1e-4, 3e-2]},
            "optim.weight_decay": {"loguniform": [1e-6, 1e-1]},
        },
        "tune": {"num_samples": args.trials, "metric": "knn_acc", "mode": "max", "scheduler": "fifo",
                 "sampler": "random", "max_concurrent": 2, "seed": args.seed},
    }


def run(cmd: list[str], cwd: Path) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-5000:])
        raise SystemExit(f"{' '.join(cmd[:2])} failed with exit code {done.returncode}")
    return done.stdout


def line(r: dict) -> str:
    rho = "n/a" if r["spearman"] is None else f"{r['spearman']:+.3f}"
    picked = "n/a" if r["picked_knn_acc"] is None else f"{r['picked_knn_acc']:.4f}"
    regret = "n/a" if r["regret"] is None else f"{r['regret']:.4f}"
    if not r["trials"]:  # no trial reported it (an evaluation switch was off): not measured, not an error
        return f"{r['metric']:<11} ({r['selects']:<12}) not measured"
    return (f"{r['metric']:<11} ({r['selects']:<12}) Spearman {rho:>6}  picks {r['picked_trial']} kNN {picked}  "
            f"regret {regret}  ({r['trials']} trials)")


def per_method(experiment: Path) -> dict[str, dict]:
    """The selector table within each method's trials (``raysl.selectors.label_free_selectors``)."""
    from raysl.results import load_experiments
    from raysl.selectors import label_free_selectors

    (exp,) = load_experiments(str(experiment))
    methods = exp.trials["method.name"] if "method.name" in exp.trials else None
    if methods is None:
        return {}
    return {str(m): label_free_selectors(dataclasses.replace(exp, trials=exp.trials[methods == m]))
            for m in sorted(methods.dropna().unique())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO / "data" / "fashion"), help="prepared Fashion-MNIST shards")
    parser.add_argument("--work", default="/tmp/raysl_bench_selection")
    parser.add_argument("--seed", type=int, default=0, help="sampler, model init and data subset")
    parser.add_argument("--trials", type=int, default=26, help="trials (the target needs >= 24 finished)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-rows", type=int, default=4000, help="train images per epoch (a seeded subset)")
    parser.add_argument("--crop", type=int, default=16, help="crop side (Fashion-MNIST is 28)")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--experiment", help="an experiment this script ran: analyze it again, train nothing")
    args = parser.parse_args()

    load = os.getloadavg()[0]
    started = time.time()
    if args.experiment:
        experiment = Path(args.experiment)
        work = experiment.parent.parent
    else:
        work = Path(args.work)
        name = f"selection_s{args.seed}"
        experiment = work / "results" / name
        if experiment.exists():
            raise SystemExit(f"{experiment} exists: pass another --work (results are never overwritten)")
        work.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("RAYSL_CACHE", str(work / "cache"))
        data = prepared(args)
        spec = work / f"{name}.yaml"
        spec.write_text(yaml.safe_dump(space(data, args), sort_keys=False))
        run([RAYSL, "tune", str(spec), "--storage", str(work / "results"), "--name", name], work)
    tune_s = None if args.experiment else time.time() - started
    report = experiment / "report"
    run([RAYSL, "analyze", str(experiment), "--out", str(report)], work)
    summary = json.loads((report / "summary.json").read_text())
    (exp,) = summary["experiments"]
    table = exp["label_free_selectors"]

    if args.experiment:
        print(f"{experiment} (re-read, nothing trained); statuses {exp['status_counts']}")
    else:
        print(f"Fashion-MNIST ({args.train_rows} train images per epoch, seed {args.seed}), crop {args.crop}, "
              f"small_convnet width {args.width}, simclr|byol, {args.epochs} epochs, {args.trials} random trials "
              f"(FIFO); kNN k=20 on backbone features, 5000-row bank, 2000 val; statuses {exp['status_counts']}; "
              f"load {load:.1f} -> {os.getloadavg()[0]:.1f}; tune wall {tune_s:.0f}s")
    if not table["rows"]:
        raise SystemExit(f"no selector table: {table['note']}")
    print(f"label-based (knn_acc): trial {table['best_trial']} kNN {table['best_knn_acc']:.4f} over "
          f"{table['trials']} finished trials")
    for r in table["rows"]:
        print(line(r))
    within = per_method(experiment)
    for method, sub in within.items():
        if sub["rows"]:
            print(f"within {method}: {sub['trials']} finished trials, best kNN {sub['best_knn_acc']:.4f}")
            for r in sub["rows"]:
                print("  " + line(r))
    scored = [r for r in table["rows"] if r["regret"] is not None]
    best = min(scored, key=lambda r: r["regret"])
    print(f"ratio kNN of the best label-free pick ({best['metric']}) / label-based pick: "
          f"{best['picked_knn_acc'] / table['best_knn_acc']:.4f}; regret {best['regret']:.4f} "
          f"({'within' if best['regret'] <= TARGET_REGRET else 'outside'} the 1-point target); "
          f"finished trials {table['trials']} ({'>=' if table['trials'] >= 24 else '<'} 24)")
    print(json.dumps({"seed": None if args.experiment else args.seed, "finished": table["trials"],
                      "best_knn_acc": table["best_knn_acc"],
                      "selectors": {r["metric"]: {"spearman": r["spearman"], "regret": r["regret"],
                                                  "picked_knn_acc": r["picked_knn_acc"]} for r in table["rows"]},
                      "within_method": {m: {r["metric"]: {"spearman": r["spearman"], "regret": r["regret"]}
                                            for r in sub["rows"]} for m, sub in within.items()},
                      "best_selector": best["metric"], "tune_wall_s": None if tune_s is None else round(tune_s),
                      "load_start": round(load, 1), "experiment": str(experiment)}))


if __name__ == "__main__":
    main()
