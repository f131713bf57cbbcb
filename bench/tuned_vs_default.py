"""Tuned vs paper default: what a search of a fixed budget gains over a method's paper settings.

Real Fashion-MNIST (the seeded subset of bench/search.py), SimCLR, BYOL or Barlow Twins with the
small convnet.
For each seed: the paper default trained on its own (``raysl train``), one TPE + ASHA search
(``raysl tune``, the default as its first trial) at a fixed budget of trial-epochs, then the
search's best config re-trained with a fresh training seed next to the default with that same
seed, so that the comparison is not the maximum of many noisy trials against one run. Prints
a line per seed, the spread across seeds and the ratio lines; see bench/README.md.

    .venv/bin/python bench/tuned_vs_default.py --method simclr --seeds 0,1,2   # ~10 min per seed on 2 cores
    .venv/bin/python bench/tuned_vs_default.py --seeds 0 --budget 6 --epochs 2 --train-rows 1000  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search import FASHION, RAYSL, best_knn, prepare, run_search  # noqa: E402  (bench/search.py)

# Each method's paper default and searched ranges are the ones a user runs: search_spaces/fashion_<method>.yaml
# (the papers' settings where they carry over to this setup, the papers' own sweeps, and what
# bench/search.py and bench/selection.py measured; each file cites its sources). The papers' LARS/SGD
# learning rates do not carry over to AdamW: the default lr is raysl's AdamW default, 2e-3 x batch/256.
SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
METHODS = ("barlow", "byol", "simclr")


def paper_setup(method: str) -> dict:
    """``{"method", "weight_decay", "search"}`` from ``search_spaces/fashion_<method>.yaml``."""
    space = yaml.safe_load((SPACES / f"fashion_{method}.yaml").read_text())
    return {"method": space["base"]["method"], "weight_decay": space["base"]["optim"]["weight_decay"],
            "search": space["search"]}


def base(data: Path, args, seed: int) -> dict:
    view = {"crop_scale": [0.3, 1.0], "hflip_p": 0.5, "jitter_p": 0.8, "brightness": 0.4, "contrast": 0.4,
            "grayscale_p": 0.0}
    paper = paper_setup(args.method)
    return {
        "seed": seed,
        "method": dict(paper["method"]),
        "model": {"backbone": "small_convnet", "width": args.width, "projector_hidden_dim": 256, "projector_dim": 64,
                  "predictor_hidden_dim": 256},
        "data": {"source": "idx", "path": str(data), "crop_size": args.crop, "augment": [view, view]},
        "optim": {"name": "adamw", "lr": 2e-3, "batch_size": 256, "epochs": args.epochs,
                  "weight_decay": paper["weight_decay"]},
        "schedule": {"lr": "warmup_cosine", "warmup": 0.1},
        "scale": {"num_workers": 1, "cpus_per_worker": 1},
        "eval": {"every_epochs": 1, "knn_k": [20], "max_train": 5000, "max_val": 2000},
    }


def train(work: Path, name: str, config: dict) -> float:
    """kNN accuracy at the end of one ``raysl train`` run of ``config``."""
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    done = subprocess.run([RAYSL, "train", str(path), "--out", str(work / "runs" / name)],
                          capture_output=True, text=True, cwd=work)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-5000:])
        raise SystemExit(f"raysl train {name} failed with exit code {done.returncode}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["knn_acc"])


def one_seed(work: Path, data: Path, args, seed: int) -> dict:
    default = base(data, args, seed)
    default_knn = train(work, f"{args.method}_default_s{seed}", default)
    asha = {"scheduler": "asha", "sampler": "tpe", "num_samples": args.budget, "grace_period": 1,
            "reduction_factor": 2, "startup_trials": args.startup_trials, "budget_epochs": args.budget,
            "max_concurrent": 2, "seed": seed}
    space = paper_setup(args.method)["search"]
    search = run_search(work, f"{args.method}_tpe_asha_s{seed}", {"base": default, "search": space, "tune": asha})
    best = yaml.safe_load(Path(search["summary"]["best_config_path"]).read_text())
    # a fresh training seed for both: the retrained best against the default trained the same way
    fresh = seed + 1000
    best["seed"] = fresh
    retrained = train(work, f"{args.method}_best_s{seed}", best)
    default_fresh = train(work, f"{args.method}_default_s{fresh}", {**default, "seed": fresh})
    picked = {k: search["summary"]["best_config"].get(k) for k in space}
    return {"seed": seed, "default_knn": default_knn, "search_best_knn": best_knn(search["rows"]),
            "trials": search["summary"]["num_trials"], "picked": picked, "retrained_best_knn": retrained,
            "default_fresh_knn": default_fresh, "wall_s": search["wall_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=str(FASHION), help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--work", default="/tmp/raysl_bench_tuned")
    parser.add_argument("--method", choices=METHODS, default="simclr")
    parser.add_argument("--seeds", default="0,1,2", help="search and training seeds (the data subset is seed 0's)")
    parser.add_argument("--train-rows", type=int, default=4000)
    parser.add_argument("--val-rows", type=int, default=1000)
    parser.add_argument("--crop", type=int, default=16, help="crop side (Fashion-MNIST is 28)")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per trial and for the default")
    parser.add_argument("--budget", type=int, default=32, help="trial-epochs per search")
    parser.add_argument("--startup-trials", type=int, default=4, help="TPE's random trials before it models")
    args = parser.parse_args()
    args.seed = 0  # bench/search.py's prepare(): one data subset for every seed

    work = Path(args.work)
    if any((work / "results").glob(f"{args.method}_*")):
        raise SystemExit(f"{work / 'results'} has {args.method} searches: pass another --work (results are never "
                         "overwritten)")
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAYSL_CACHE", str(work / "cache"))
    data = prepare(work, args)
    started = time.time()
    paper = paper_setup(args.method)
    print(f"Fashion-MNIST subset {args.train_rows} train / {args.val_rows} val, crop {args.crop}, {args.method} "
          f"small_convnet width {args.width}, {args.epochs} epochs; paper default {paper['method']} weight decay "
          f"{paper['weight_decay']} lr 2e-3; TPE + ASHA budget {args.budget} trial-epochs over {paper['search']}",
          flush=True)
    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        r = one_seed(work, data, args, seed)
        results.append(r)
        print(json.dumps(r), flush=True)
        print(f"seed {seed}: default {r['default_knn']:.4f}  search best {r['search_best_knn']:.4f} "
              f"({r['trials']} trials, {r['wall_s']:.0f}s)  retrained best {r['retrained_best_knn']:.4f} vs "
              f"default {r['default_fresh_knn']:.4f} (training seed {seed + 1000})", flush=True)

    def spread(key: str) -> str:
        values = [r[key] for r in results]
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        return f"{statistics.mean(values):.4f} (sd {sd:.4f}, {min(values):.4f}-{max(values):.4f})"

    gains = [r["retrained_best_knn"] - r["default_fresh_knn"] for r in results]
    found = [r["search_best_knn"] - r["default_knn"] for r in results]
    print(f"default {spread('default_knn')}; search best {spread('search_best_knn')}; retrained best "
          f"{spread('retrained_best_knn')}; default at the fresh seeds {spread('default_fresh_knn')}")
    print(f"gain in kNN points, search best - default: {', '.join(f'{100 * g:+.1f}' for g in found)}; "
          f"retrained best - default (fresh seed): {', '.join(f'{100 * g:+.1f}' for g in gains)} "
          f"(target +2.0 on every seed)")
    mean_best = statistics.mean(r["retrained_best_knn"] for r in results)
    mean_default = statistics.mean(r["default_fresh_knn"] for r in results)
    print(f"ratio kNN retrained best / paper default: {mean_best / mean_default:.4f}; compute: the search "
          f"{args.budget} trial-epochs = {args.budget / args.epochs:.0f}x one default run")
    print(f"total wall {time.time() - started:.0f}s; results in {work}")


if __name__ == "__main__":
    main()
