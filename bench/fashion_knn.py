"""Quality on real Fashion-MNIST: kNN accuracy of an SSL encoder after a short CPU budget,
next to raw-pixel kNN and the same encoder at random initialisation, on the same split.

Protocol (stated with every number): the kNN memory bank is a seeded subset of
``eval.max_train`` un-augmented train images, the queries are the first
``eval.max_val`` images of the official 10,000-image test split, cosine
similarity, temperature-weighted vote (T = 0.07), k = 20, backbone features.

    python bench/fashion_knn.py [--method simclr] [--epochs 3] [--width 16] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FASHION = "/usr/share/datasets/fashion-mnist"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--data", default=None, help="a prepared Fashion-MNIST folder (default: prepare one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    from raysl.data.prepare import prepare
    from raysl.data.read.shards import load_manifest
    from raysl.evaluate import knn_accuracy
    from raysl.launch import train_run
    from raysl.run_config import load_config
    from raysl.data.read.dataset import RunData
    from raysl.run_eval import initial_metrics, load_eval_set

    work = Path(tempfile.mkdtemp(prefix="raysl-fashion-"))
    data = args.data or str(work / "fashion")
    if args.data is None:
        prepare("idx", FASHION, data, shard_rows=10_000)
    space = REPO / "search_spaces" / f"{args.method}.yaml"
    if not space.exists():
        space = REPO / "search_spaces" / "quickstart.yaml"
    overrides = [
        f"method.name={args.method}", "data.source=idx", f"data.path={data}", "data.crop_size=28",
        f"model.width={args.width}", f"optim.epochs={args.epochs}", f"eval.every_epochs={args.epochs}",
        "scale.cpus_per_worker=2", "scale.torch_threads=2", *args.overrides,
    ]
    cfg = load_config(str(space), overrides)
    manifest = load_manifest(data)
    device = torch.device("cpu")
    eval_set = load_eval_set(RunData.load(cfg, data, manifest), device)

    flat = lambda x: (x.float().flatten(1) / 255.0 - manifest.mean[0]) / manifest.std[0]  # noqa: E731
    raw = knn_accuracy(flat(eval_set.train_x), eval_set.train_y, flat(eval_set.val_x), eval_set.val_y, k=20)
    untrained = initial_metrics(cfg, data)["knn_acc"]

    start = time.perf_counter()
    summary = train_run(cfg, str(work / "run"))
    minutes = (time.perf_counter() - start) / 60
    print(
        f"Fashion-MNIST kNN (k=20, bank {len(eval_set.train_x)} train, {len(eval_set.val_x)} test): "
        f"raw pixels {raw:.3f}, random-init {args.method} encoder {untrained:.3f}, "
        f"{args.method} after {args.epochs} epochs ({minutes:.1f} min on CPU) {summary['knn_acc']:.3f}; "
        f"rankme {summary['rankme']:.1f}"
    )
    print(json.dumps({"bench": "fashion_knn", "method": args.method, "epochs": args.epochs, "width": args.width,
                      "raw_pixel_knn": raw, "random_init_knn": untrained, "trained_knn": summary["knn_acc"],
                      "rankme": summary["rankme"], "minutes": minutes, "images_per_s": summary["images_per_s"]}))


if __name__ == "__main__":
    main()
