"""SupCon's labels: read once from the train split, looked up by row index; no labels, no run.

Training on digits is covered by tests/test_methods.py, the loss by tests/test_losses.py
and the global batch at world size 2 by tests/test_distributed.py.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from raysl.data.prepare import prepare
from raysl.data.read.shards import load_manifest, read_split
from raysl.errors import ConfigError
from raysl.launch import check_against_data
from raysl.methods import build_method
from raysl.methods.supcon import train_labels
from raysl.run_config import load_config

from conftest import HANG

SMALL = ["model.width=4", "model.projector_hidden_dim=16", "model.projector_dim=8"]


def test_train_labels_are_the_train_split_by_row_index(digits_dir):
    manifest = load_manifest(digits_dir)
    table = train_labels(digits_dir, manifest)
    assert table.shape == (sum(s["rows"] for s in manifest.splits.values()),)
    import pyarrow.parquet as pq

    from raysl.data.read.shards import shard_uris

    part = pq.read_table(shard_uris(digits_dir, "train", manifest)[0], columns=["index", "label"])
    index = torch.from_numpy(part.column("index").to_numpy().astype(np.int64))
    assert torch.equal(table[index], torch.from_numpy(part.column("label").to_numpy().astype(np.int64)))
    _, labels = read_split(digits_dir, "train")
    assert int((table >= 0).sum()) == len(labels)  # val rows stay -1


def test_supcon_step_uses_the_labels_of_its_rows(digits_dir):
    from raysl import losses

    torch.manual_seed(0)
    method = build_method(load_config(None, ["method.name=supcon", *SMALL]), 1)
    with pytest.raises(RuntimeError, match="needs the train labels"):
        method([torch.randn(4, 1, 8, 8)] * 2, torch.arange(4))
    method.labels = torch.tensor([3, 3, 5, 5, -1, -1])
    views = [torch.randn(6, 1, 8, 8), torch.randn(6, 1, 8, 8)]
    loss, _ = method(views, torch.tensor([0, 2, 1, 3, 4, 5]))
    z = [method.encode(v)[1] for v in views]
    # rows 4 and 5 have no label: each is its own class
    torch.testing.assert_close(loss, losses.supcon(z, torch.tensor([3, 5, 3, 5, -5, -6]), 0.1))


def test_supcon_on_unlabelled_data_is_a_config_error_before_ray(tmp_path: Path):
    from PIL import Image

    (tmp_path / "src").mkdir()
    for i in range(6):  # a flat folder: no classes, no labels
        Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(tmp_path / "src" / f"{i}.png")
    out = str(tmp_path / "out")
    prepare("imagefolder", str(tmp_path / "src"), out, val_fraction=0.0, workers=1)
    cfg = load_config(None, ["method.name=supcon", "optim.batch_size=4", f"data.path={out}", "data.source=parquet"])
    with pytest.raises(ConfigError, match="method supcon needs labelled data"):
        check_against_data(cfg, out, "config.yaml")
    check_against_data(load_config(None, ["method.name=simclr", "optim.batch_size=4"]), out, "config.yaml")

    raysl = str(Path(sys.executable).with_name("raysl"))
    space = str(Path(__file__).resolve().parents[1] / "search_spaces" / "supcon.yaml")
    ray_tmp = Path(tempfile.mkdtemp(prefix="rsl", dir="/tmp"))  # where a local Ray would make its session
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([raysl, "train", space, "--set", "data.source=parquet", "--set", f"data.path={out}",
                           "--set", "optim.batch_size=4", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=HANG,
                          env={**env, "RAY_TMPDIR": str(ray_tmp),
                               "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("raysl: error: ")
    assert "method supcon needs labelled data" in done.stderr
    # refused before Ray starts: no Ray session was made, and no Ray Train folder in the run
    assert list(ray_tmp.iterdir()) == [], list(ray_tmp.rglob("*"))[:5]
    assert not (tmp_path / "run" / "train").exists()
    ray_tmp.rmdir()
