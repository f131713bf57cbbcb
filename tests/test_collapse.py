"""Collapse is a change training causes: no alarm on a run that has not moved, an alarm on a real one.

A randomly initialised projector on a few dozen photos can look collapsed by a snapshot rule
(per-dimension std of the normalised embeddings under 0.1/sqrt(D)); raysl judges a collapse
against the same network's spread at initialisation, on enough eval rows to measure it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from raysl.errors import CollapsedError
from raysl.evaluate import MIN_COLLAPSE_ROWS, collapse_std, collapsed_by_training, is_collapsed
from raysl.run_config import load_config
from raysl.loop_io import LocalIO
from raysl.train import train_worker

from conftest import HANG, RAYSL, REPO

QUICKSTART = str(REPO / "search_spaces" / "quickstart.yaml")
SIMCLR = str(REPO / "search_spaces" / "simclr.yaml")


def _near_one_point(rows: int, dim: int, spread: float, seed: int = 0) -> torch.Tensor:
    """Embeddings around one direction: a snapshot rule calls them collapsed when ``spread`` is small."""
    gen = torch.Generator().manual_seed(seed)
    centre = torch.randn(dim, generator=gen)
    return centre + spread * torch.randn(rows, dim, generator=gen)


def test_a_network_that_starts_narrow_and_stays_there_is_not_collapsed():
    start = _near_one_point(64, 128, 0.02)
    assert is_collapsed(start)  # the old snapshot rule's false alarm
    init_std = collapse_std(start)
    # the same spread later (another sample of it): training did not narrow it
    assert not collapsed_by_training(_near_one_point(64, 128, 0.02, seed=1), init_std)


def test_a_spread_that_training_narrowed_is_collapsed():
    init_std = collapse_std(_near_one_point(64, 128, 0.02))
    assert collapsed_by_training(_near_one_point(64, 128, 0.002, seed=1), init_std)
    # unknown start (a checkpoint from before the start was recorded): the snapshot decides
    assert collapsed_by_training(torch.ones(64, 128), None)


def test_too_few_rows_never_raise_the_alarm():
    constant = torch.ones(MIN_COLLAPSE_ROWS - 1, 128)
    assert is_collapsed(constant) and not collapsed_by_training(constant, 1.0)
    assert collapsed_by_training(torch.ones(MIN_COLLAPSE_ROWS, 128), 1.0)


def test_huge_weight_decay_collapses_the_projector_and_the_run_says_so(digits_dir):
    # AdamW's decoupled decay at 200 x lr 0.002 shrinks every weight by 40% a step: the projector's
    # output becomes its bias, one point for every image (a real collapse, not a diverged loss)
    cfg = load_config(QUICKSTART, ["model.width=8", "optim.epochs=3", "eval.every_epochs=1",
                                   "optim.weight_decay=200", "eval.projector_metrics=true"])  # projector_feature_std
    io = LocalIO()
    with pytest.raises(CollapsedError, match=r"^collapsed at epoch 1: "):
        train_worker({"config": cfg.model_dump(mode="json"), "data_dir": digits_dir}, io)
    assert [r["status"] for r in io.reports] == ["collapsed"]
    assert io.reports[0]["projector_feature_std"] < 1e-3


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A few dozen real photographs (crops of the ones in scikit-learn's wheel), prepared as a user does."""
    root = tmp_path_factory.mktemp("photos")
    made = subprocess.run([sys.executable, str(REPO / "bench" / "make_imagefolder.py"), "--out", str(root / "jpegs"),
                           "--images", "40", "--classes", "2", "--seed", "0"], capture_output=True, text=True,
                          timeout=HANG)
    assert made.returncode == 0, made.stderr[-2000:]
    prepared = subprocess.run([RAYSL, "data", "prepare", "imagefolder", str(root / "jpegs"), "--out",
                               str(root / "shards"), "--max-side", "512"], capture_output=True, text=True,
                              timeout=HANG)
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    return root / "shards"


@pytest.mark.slow
def test_the_readme_cpu_photo_example_finishes(photos, head, tmp_path):
    """The README's "try it on a CPU" run (SimCLR, 32 px, batch 16, a few dozen photos) used to exit
    `collapsed at epoch 1` after two steps: its random projector's spread was under the snapshot
    threshold. It must finish, and say nothing about collapse. It is also the suite's one-worker run fed by
    Ray Data's crops of JPEG shards (the default reader of encoded shards): its workers say they got crop
    columns, and Ray Data's own log shows the DecodeCrops tasks that cut them."""
    out = tmp_path / "run"
    before = head.data_logs()
    done = subprocess.run([RAYSL, "train", SIMCLR, "--set", "data.source=imagefolder", "--set", f"data.path={photos}",
                           "--set", "data.crop_size=32", "--set", "optim.batch_size=16", "--set", "optim.epochs=2",
                           "--set", "eval.every_epochs=1", "--out", str(out)],
                          env=head.env, capture_output=True, text=True, timeout=HANG, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["status"] == "finished" and summary["epoch"] == 2
    assert "collapse" not in done.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and [r["status"] for r in rows] == ["running", "finished"]
    assert "[raysl] input: crops cut by Ray Data tasks (MapBatches(DecodeCrops)); views of 32, 32 px" in done.stderr
    text = head.data_log_since(before)
    assert "-> TaskPoolMapOperator[MapBatches(DecodeCrops)] ->" in text and "execution finished" in text, text[-2000:]
