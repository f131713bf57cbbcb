"""Every method on real Fashion-MNIST at one fixed short CPU budget: a markdown table of kNN and RankMe.

Protocol: each method trains from its own `search_spaces/<method>.yaml` base
(defaults from the papers) with the small convnet at the given width for the
given epochs on the 60,000 training images (one Ray Train worker, 2 threads);
kNN k = 20 (cosine, T = 0.07) on backbone features, bank = 10,000 seeded train
images, queries = the 10,000 official test images; RankMe on backbone features
of the train bank. Two reference rows use the same split and protocol: raw
pixels, and the same convnet at random initialisation (before any training).

    python bench/methods_table.py [--epochs 1] [--width 8] [--methods simclr,byol,...] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FASHION = "/usr/share/datasets/fashion-mnist"


# MAE runs on vit_tiny (the convnet's width does not apply): 4 px patches of the 28 px images (a 7 x 7
# grid, the ViT's position grid 28 px), and the linear probe beside kNN, which reads MAE's features poorly
# (He et al. 2022, sec. 4); its random-init ViT is its reference row
EXTRA = {"mae": ["model.patch_size=4", "model.vit_image_size=28", "eval.linear_probe=true"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--methods", default=None)
    parser.add_argument("--data", default=None, help="a prepared Fashion-MNIST folder (default: prepare one)")
    args = parser.parse_args()

    import ray

    from raysl.data.prepare import prepare
    from raysl.errors import RayslError
    from raysl.launch import train_run
    from raysl.methods import METHODS
    from raysl.run_config import load_config
    from raysl.run_eval import initial_metrics

    work = Path(tempfile.mkdtemp(prefix="raysl-methods-"))
    data = args.data or str(work / "fashion")
    if args.data is None:
        prepare("idx", FASHION, data, shard_rows=10_000)
    methods = args.methods.split(",") if args.methods else list(METHODS)
    overrides = [
        "data.source=idx", f"data.path={data}", "data.crop_size=28", f"model.width={args.width}",
        f"optim.epochs={args.epochs}", f"eval.every_epochs={args.epochs}",
        "scale.cpus_per_worker=2", "scale.torch_threads=2",
    ]
    rows = reference_rows(load_config(str(REPO / "search_spaces" / "simclr.yaml"), overrides), data)
    for row in rows:
        print(json.dumps(row), flush=True)
    for name in methods:
        cfg = load_config(str(REPO / "search_spaces" / f"{name}.yaml"), overrides + EXTRA.get(name, []))
        if cfg.model.backbone != "small_convnet":  # its own random-init reference, same bank and queries
            metrics = initial_metrics(cfg, data)
            reference = {"method": f"random-init {cfg.model.backbone} (reference)", "knn_acc": metrics["knn_acc"],
                         "rankme": metrics["rankme"], "status": "-", "minutes": 0.0}
            if "linear_acc" in metrics:
                reference["linear_acc"] = metrics["linear_acc"]
            rows.append(reference)
            print(json.dumps(reference), flush=True)
        start = time.perf_counter()
        try:
            summary = train_run(cfg, str(work / name))
        except RayslError as exc:
            summary = {"status": "failed", "error": str(exc)}
        minutes = (time.perf_counter() - start) / 60
        row = {"method": name, "knn_acc": summary.get("knn_acc"), "rankme": summary.get("rankme"),
               "status": summary.get("status"), "minutes": round(minutes, 1)}
        if "linear_acc" in summary:
            row["linear_acc"] = summary["linear_acc"]
        if "error" in summary:
            row["error"] = summary["error"]
        rows.append(row)
        print(json.dumps(row), flush=True)
        ray.shutdown()
    print("\n| method | kNN acc (k=20) | RankMe | linear probe | status | minutes |\n|---|---|---|---|---|---|")
    for r in rows:
        knn = f"{r['knn_acc']:.3f}" if r["knn_acc"] is not None else "-"
        rank = f"{r['rankme']:.1f}" if r["rankme"] is not None else "-"
        linear = f"{r['linear_acc']:.3f}" if r.get("linear_acc") is not None else "-"
        print(f"| {r['method']} | {knn} | {rank} | {linear} | {r['status']} | {r['minutes']} |")


def reference_rows(cfg, data: str) -> list[dict]:
    """Raw-pixel kNN and the random-init convnet's kNN and RankMe, with the same bank, queries and k."""
    import torch

    from raysl.data.read.shards import load_manifest
    from raysl.evaluate import knn_accuracy, rankme
    from raysl.data.read.dataset import RunData
    from raysl.run_eval import initial_metrics, load_eval_set

    manifest = load_manifest(data)
    eval_set = load_eval_set(RunData.load(cfg, data, manifest), torch.device("cpu"))
    pixels = lambda x: (x.float().flatten(1) / 255.0 - manifest.mean[0]) / manifest.std[0]  # noqa: E731
    train_px, val_px = pixels(eval_set.train_x), pixels(eval_set.val_x)
    raw = {"method": "raw pixels (reference)", "knn_acc": knn_accuracy(train_px, eval_set.train_y, val_px,
                                                                         eval_set.val_y, k=20),
           "rankme": float(rankme(train_px)), "status": "-", "minutes": 0.0}
    metrics = initial_metrics(cfg, data)
    untrained = {"method": "random-init convnet (reference)", "knn_acc": metrics["knn_acc"],
                 "rankme": metrics["rankme"], "status": "-", "minutes": 0.0}
    return [raw, untrained]


if __name__ == "__main__":
    main()
