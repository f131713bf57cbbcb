"""Search bench: TPE + ASHA against random + FIFO at a fixed budget of trial-epochs,
and a label-free search (objective RankMe) against the kNN it could have had.

Real Fashion-MNIST (a seeded subset, prepared with `raysl data prepare idx`),
SimCLR with the small convnet, every search through the real `raysl tune` CLI
with ``tune.budget_epochs`` as the budget. Prints one line per search and the
ratio lines; see bench/README.md for recorded numbers.

    .venv/bin/python bench/search.py                     # ~5-10 min on 2 cores
    .venv/bin/python bench/search.py --budget 12 --epochs 3 --train-rows 2000   # a smoke run
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
RAYSL = str(Path(sys.executable).parent / "raysl")
FASHION = Path("/usr/share/datasets/fashion-mnist")


def subset_idx(src: Path, dst: Path, train_rows: int, val_rows: int, seed: int) -> None:
    """Seeded row subsets of the train and t10k IDX files (0 rows = all of them)."""
    dst.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, rows in (("train", train_rows), ("t10k", val_rows)):
        images = _read_idx(src / f"{prefix}-images-idx3-ubyte.gz")
        labels = _read_idx(src / f"{prefix}-labels-idx1-ubyte.gz")
        keep = np.sort(rng.choice(len(images), size=rows, replace=False)) if 0 < rows < len(images) else slice(None)
        _write_idx(dst / f"{prefix}-images-idx3-ubyte", images[keep])
        _write_idx(dst / f"{prefix}-labels-idx1-ubyte", labels[keep])


def _read_idx(path: Path) -> np.ndarray:
    raw = gzip.open(path).read()
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, np.uint8).tobytes())


def prepare(work: Path, args) -> Path:
    out = work / f"fmnist-{args.train_rows}-{args.val_rows}"
    if (out / "manifest.json").exists():
        return out
    subset = work / "idx-subset"
    subset_idx(Path(args.source), subset, args.train_rows, args.val_rows, args.seed)
    subprocess.run([RAYSL, "data", "prepare", "idx", str(subset), "--out", str(out)], check=True)
    return out


def space(data: Path, args, tune: dict) -> dict:
    view = {"crop_scale": [0.3, 1.0], "hflip_p": 0.5, "jitter_p": 0.8, "brightness": 0.4, "contrast": 0.4,
            "grayscale_p": 0.0}
    return {
        "base": {
            "method": {"name": "simclr", "temperature": args.base_temperature},
            "model": {"backbone": "small_convnet", "width": args.width, "projector_hidden_dim": 256,
                      "projector_dim": 64},
            "data": {"source": "idx", "path": str(data), "crop_size": args.crop, "augment": [view, view]},
            "optim": {"name": "adamw", "lr": args.base_lr, "weight_decay": 1e-4, "batch_size": 256,
                      "epochs": args.epochs},
            "schedule": {"lr": "warmup_cosine", "warmup": 0.1},
            "scale": {"num_workers": 1, "cpus_per_worker": 1},
            "eval": {"every_epochs": 1, "knn_k": [20], "max_train": 5000, "max_val": 2000},
        },
        "search": {
            "method.temperature": {"loguniform": [0.03, 1.0]},
            "optim.lr": {"loguniform": [1e-4, 2e-2]},
            "optim.weight_decay": {"loguniform": [1e-6, 1e-1]},
        },
        "tune": {"budget_epochs": args.budget, "max_concurrent": 2, "seed": args.seed, **tune},
    }


def run_search(work: Path, name: str, spec: dict) -> dict:
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    storage = work / "results"
    start = time.time()
    done = subprocess.run([RAYSL, "tune", str(path), "--storage", str(storage), "--name", name],
                          capture_output=True, text=True, cwd=work)
    wall = time.time() - start
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-5000:])
        raise SystemExit(f"raysl tune {name} failed with exit code {done.returncode}")
    summary = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    return {"name": name, "summary": summary, "wall_s": wall, "rows": _rows(storage / name)}


def _rows(experiment: Path) -> list[dict]:
    """Every evaluated epoch of every trial, in the order they were reported."""
    rows = []
    for trial in experiment.glob("raysl_trial_*"):
        results = trial / "result.json"
        if not results.exists():
            continue
        for line in results.read_text().splitlines():
            row = json.loads(line)
            row["trial"] = trial.name
            rows.append(row)
    return sorted(rows, key=lambda r: (r.get("timestamp", 0), r.get("time_total_s", 0)))


def best_knn(rows: list[dict]) -> float:
    return max((r["knn_acc"] for r in rows if r.get("eval_epoch") == r.get("epoch") and
                r.get("status") not in ("diverged", "collapsed")), default=0.0)


def budget_to(rows: list[dict], target: float) -> int | None:
    """Trial-epochs spent (in report order) until some trial's kNN first reached ``target``."""
    for spent, row in enumerate(rows, start=1):
        if row.get("eval_epoch") == row.get("epoch") and row.get("knn_acc", 0.0) >= target:
            return spent
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=str(FASHION), help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--work", default="/tmp/raysl_bench_search")
    parser.add_argument("--train-rows", type=int, default=4000)
    parser.add_argument("--val-rows", type=int, default=1000)
    parser.add_argument("--crop", type=int, default=16, help="crop side (Fashion-MNIST is 28)")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per trial (ASHA's max_t)")
    parser.add_argument("--budget", type=int, default=32, help="trial-epochs per search")
    # a deliberately weak base: every search evaluates the base first, and a strong one would
    # make both searches "reach the target" on their first trial
    parser.add_argument("--base-temperature", type=float, default=1.0)
    parser.add_argument("--base-lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0, help="data subset and samplers")
    parser.add_argument("--startup-trials", type=int, default=4, help="TPE's random trials before it models")
    args = parser.parse_args()

    work = Path(args.work)
    if (work / "results").exists():
        raise SystemExit(f"{work / 'results'} exists: pass another --work (results are never overwritten)")
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAYSL_CACHE", str(work / "cache"))
    data = prepare(work, args)
    started = time.time()
    many = args.budget  # the budget, not num_samples, ends the ASHA searches
    # TPE models after `startup_trials` random ones; raysl's default (num_samples // 3, at most 10)
    # would leave it random for most of a budget this small
    asha = {"scheduler": "asha", "num_samples": many, "grace_period": 1, "reduction_factor": 2,
            "startup_trials": args.startup_trials}
    tpe = run_search(work, "tpe_asha", space(data, args, {"sampler": "tpe", **asha}))
    rnd = run_search(work, "random_fifo", space(data, args, {"sampler": "random", "scheduler": "fifo",
                                                              "num_samples": max(1, args.budget // args.epochs)}))
    free = run_search(work, "rankme_tpe_asha", space(data, args, {"sampler": "tpe", "metric": "rankme", **asha}))

    print(f"Fashion-MNIST subset {args.train_rows} train / {args.val_rows} val (seed {args.seed}), crop {args.crop}, "
          f"SimCLR small_convnet width {args.width}, {args.epochs} epochs per trial, budget {args.budget} "
          f"trial-epochs, base temperature {args.base_temperature} lr {args.base_lr}; "
          "kNN: k=20, cosine, backbone features, 5000-row train bank, val split")
    for run in (tpe, rnd):
        s = run["summary"]
        print(f"{run['name']:<12} best kNN {best_knn(run['rows']):.4f}  trials {s['num_trials']}  "
              f"epochs {len(run['rows'])}  statuses {s['statuses']}  wall {run['wall_s']:.0f}s")
    target = min(best_knn(tpe["rows"]), best_knn(rnd["rows"]))
    spent_tpe, spent_rnd = budget_to(tpe["rows"], target), budget_to(rnd["rows"], target)
    print(f"target kNN {target:.4f} (the lower of the two bests): tpe+asha reached it after {spent_tpe} "
          f"trial-epochs, random+fifo after {spent_rnd}")
    print(f"ratio best kNN tpe+asha / random+fifo: {best_knn(tpe['rows']) / max(best_knn(rnd['rows']), 1e-9):.3f}")
    if spent_tpe and spent_rnd:
        print(f"ratio budget to target random+fifo / tpe+asha: {spent_rnd / spent_tpe:.2f}")

    s = free["summary"]
    rows_by_trial: dict[str, list[dict]] = {}
    for row in free["rows"]:
        rows_by_trial.setdefault(row["trial"], []).append(row)
    picked = rows_by_trial.get(f"raysl_trial_{s['best_trial']}", [])
    picked_knn = picked[-1]["knn_acc"] if picked else float("nan")
    found = best_knn(free["rows"])
    print(f"label-free (objective rankme): RankMe picked trial {s['best_trial']} (rankme {s['best_metric']:.2f}) "
          f"with kNN {picked_knn:.4f}; best kNN among its trials {found:.4f}; best kNN of any search "
          f"{max(found, best_knn(tpe['rows']), best_knn(rnd['rows'])):.4f}")
    print(f"ratio kNN of RankMe's pick / best kNN in that search: {picked_knn / max(found, 1e-9):.3f}")
    print(f"total wall {time.time() - started:.0f}s; results in {work / 'results'}")


if __name__ == "__main__":
    main()
