"""The same SimCLR trial written as a lightly user writes it: the baseline of bench/trial_overhead.py.

A plain PyTorch loop in one process, as lightly's SimCLR example has it (lightly 1.6: ``SimCLRTransform``
on PIL images in a ``DataLoader``, ``NTXentLoss``, AdamW), with raysl's own model (the small convnet at the
given width and SimCLR's projector, built by raysl so that both sides train the same network) on the same
Fashion-MNIST rows (a seeded subset of the training images; the 10,000 test images as the kNN queries), and
the same evaluation schedule: a kNN classifier on backbone features (lightly's ``knn_predict``, cosine,
temperature 0.1) at k = 20 and 200, every ``--eval-every`` epochs and after the last. No Ray: no start-up
but Python's and the imports, which is what a search built on it would pay per trial too.

Prints one JSON line: wall_s (from the process start), train_s, eval_s, knn_acc (k = 20), knn_acc_k200.

    .venv/bin/python bench/lightly_loop.py --rows 10000 --epochs 4 --eval-every 1
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

IDX = Path("/usr/share/datasets/fashion-mnist")
REPO = Path(__file__).resolve().parents[1]


def read_idx(name: str) -> np.ndarray:
    with gzip.open(IDX / name, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _lightly_knn_predict():
    """lightly's ``knn_predict`` (lightly/utils/benchmarking/knn.py, torch only), loaded from its file: the
    package's ``__init__`` imports PyTorch Lightning, which this bench does not need."""
    import importlib.util

    import lightly

    path = Path(lightly.__file__).parent / "utils" / "benchmarking" / "knn.py"
    spec = importlib.util.spec_from_file_location("lightly_knn", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.knn_predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--eval-every", type=int, default=1)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--crop", type=int, default=28)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers (2 cores: 1 beside the loop)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch
    from lightly.loss import NTXentLoss
    from lightly.transforms import SimCLRTransform
    knn_predict = _lightly_knn_predict()
    from PIL import Image

    from raysl.methods import build_method
    from raysl.run_config import load_config

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    train_x = read_idx("train-images-idx3-ubyte.gz")
    train_y = read_idx("train-labels-idx1-ubyte.gz")
    pick = rng.choice(len(train_x), size=min(args.rows, len(train_x)), replace=False)
    train_x, train_y = train_x[pick], train_y[pick]
    test_x, test_y = read_idx("t10k-images-idx3-ubyte.gz"), read_idx("t10k-labels-idx1-ubyte.gz")

    # the Fashion-MNIST search space's base: the same model, temperature and lr as the raysl runs
    cfg = load_config(REPO / "search_spaces" / "fashion_simclr.yaml",
                      [f"model.width={args.width}", f"optim.batch_size={args.batch}"])
    method = build_method(cfg, 1)
    backbone, projector = method.backbone, method.projector
    transform = SimCLRTransform(input_size=args.crop, cj_prob=0.8, cj_strength=0.5, cj_hue=0.0, cj_sat=0.0,
                                min_scale=0.3, random_gray_scale=0.0, gaussian_blur=0.0, hf_prob=0.5,
                                rr_prob=0.0, normalize=None)

    class Views(torch.utils.data.Dataset):
        def __len__(self):
            return len(train_x)

        def __getitem__(self, i):
            views = transform(Image.fromarray(train_x[i]).convert("RGB"))
            return [v[:1] for v in views]  # grey: one of the three equal channels

    loader = torch.utils.data.DataLoader(Views(), batch_size=args.batch, shuffle=True, drop_last=True,
                                         num_workers=args.workers, persistent_workers=args.workers > 0)
    criterion = NTXentLoss(temperature=cfg.method.temperature)
    lr = cfg.optim.lr * args.batch / 256
    optimizer = torch.optim.AdamW([*backbone.parameters(), *projector.parameters()], lr=lr,
                                  weight_decay=cfg.optim.weight_decay)
    steps = args.epochs * len(loader)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)

    def features(images: np.ndarray) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for lo in range(0, len(images), 512):
                x = torch.from_numpy(images[lo:lo + 512]).float().div(255).unsqueeze(1)
                out.append(torch.nn.functional.normalize(backbone(x), dim=1))
        return torch.cat(out)

    def evaluate() -> dict:
        backbone.eval()
        bank, queries = features(train_x), features(test_x)
        labels = torch.from_numpy(train_y.astype(np.int64))
        truth = torch.from_numpy(test_y.astype(np.int64))
        out = {}
        for k, key in ((20, "knn_acc"), (200, "knn_acc_k200")):
            hits = 0
            for lo in range(0, len(queries), 1024):
                pred = knn_predict(queries[lo:lo + 1024], bank.T, labels, num_classes=10, knn_k=k, knn_t=0.1)
                hits += int((pred[:, 0] == truth[lo:lo + 1024]).sum())
            out[key] = hits / len(queries)
        backbone.train()
        return out

    train_s = eval_s = 0.0
    metrics: dict = {}
    for epoch in range(1, args.epochs + 1):
        t = time.perf_counter()
        for x0, x1 in loader:
            z0, z1 = projector(backbone(x0)), projector(backbone(x1))
            loss = criterion(z0, z1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        train_s += time.perf_counter() - t
        if epoch % args.eval_every == 0 or epoch == args.epochs:
            t = time.perf_counter()
            metrics = evaluate()
            eval_s += time.perf_counter() - t
    print(json.dumps({"wall_s": time.perf_counter() - START, "train_s": train_s, "eval_s": eval_s, **metrics,
                      "loss": loss.item(), "steps": steps}))


if __name__ == "__main__":
    main()
