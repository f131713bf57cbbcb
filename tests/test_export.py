"""`raysl export`: the backbone of a real `raysl train` run, written to a file and loaded back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from raysl.checkpoint import load_state
from raysl.data.augment import to_float
from raysl.data.read.shards import load_manifest, read_split
from raysl.errors import CheckpointError
from raysl.export import EXPORT_FORMAT, export_backbone, load_backbone, run_checkpoints
from raysl.run_config import load_config
from raysl.run_setup import build_run_method, input_norm

from conftest import FINISHED_RUN, HANG, RAYSL, REPO

QUICKSTART = str(REPO / "search_spaces" / "quickstart.yaml")


@pytest.fixture(scope="module")
def run_dir(finished_run) -> Path:
    """A real `raysl train` run (conftest ``finished_run``: two epochs, both checkpoints kept), on disk
    as a user gets it."""
    return finished_run


@pytest.fixture(scope="module")
def val_images(digits_dir) -> torch.Tensor:
    x, _ = read_split(digits_dir, "val")
    return torch.from_numpy(np.ascontiguousarray(x[:64])).permute(0, 3, 1, 2).contiguous()


def method_from_checkpoint(run: Path, state_path: str | None, digits_dir: str):
    """The run's method as `raysl train` builds it, with a checkpoint's weights (None: fresh, seeded as the run)."""
    cfg = load_config(str(run / "config.yaml"))
    manifest = load_manifest(digits_dir)
    torch.manual_seed(cfg.seed)
    method = build_run_method(cfg, manifest, torch.device("cpu"))
    if state_path is not None:
        method.load_state_dict(load_state(state_path)["model"])
    return method.eval(), input_norm(cfg, manifest)


def export_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([RAYSL, "export", *args], capture_output=True, text=True, timeout=HANG)


def assert_user_error(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [f"raysl: error: {message}"]
    assert proc.stdout == ""


def test_exported_backbone_gives_the_checkpoint_backbone_features(run_dir, digits_dir, val_images, tmp_path):
    out = tmp_path / "encoder.pt"
    proc = export_cli(str(run_dir), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["epoch"] == 2 and summary["method"] == "simclr" and summary["out"] == str(out)

    latest = run_checkpoints(str(run_dir))[0][2]
    trained, norm = method_from_checkpoint(run_dir, latest, digits_dir)
    fresh, _ = method_from_checkpoint(run_dir, None, digits_dir)
    x = to_float(val_images, **norm)
    with torch.no_grad():
        expected = trained.backbone(x)
        untrained = fresh.backbone(x)

    exported = load_backbone(str(out))
    assert not exported.module.training
    assert (exported.feature_dim, exported.image_size, exported.in_channels) == (64, 8, 1)
    with torch.no_grad():
        got = exported.module(x.contiguous())
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(exported.features(val_images), expected)  # its own preprocessing is the run's
    assert not torch.allclose(got, untrained, atol=1e-3)  # training moved the weights: the test can fail


def test_file_is_plain_data_for_weights_only_load(run_dir, tmp_path):
    out = tmp_path / "encoder.pt"
    export_backbone(str(run_dir), str(out))
    data = torch.load(out, weights_only=True)
    assert set(data) == {"format", "backbone_state", "model", "in_channels", "feature_dim", "mean", "std",
                         "image_size", "method", "epoch"}
    assert data["format"] == EXPORT_FORMAT and data["method"] == "simclr" and data["epoch"] == 2
    assert data["model"] == load_config(str(run_dir / "config.yaml")).model.model_dump(mode="json")
    assert (data["in_channels"], data["feature_dim"], data["image_size"]) == (1, 64, 8)
    assert all(isinstance(v, torch.Tensor) for v in data["backbone_state"].values())
    assert not any(k.startswith("projector") for k in data["backbone_state"])
    assert len(data["mean"]) == len(data["std"]) == 1
    assert sorted(os.listdir(tmp_path)) == ["encoder.pt"]  # no temporary file left behind


def test_epoch_picks_that_checkpoint(run_dir, digits_dir, val_images, tmp_path):
    checkpoints = run_checkpoints(str(run_dir))[0]
    assert sorted(checkpoints) == [1, 2]
    first = export_backbone(str(run_dir), str(tmp_path / "e1.pt"), epoch=1)
    second = export_backbone(str(run_dir), str(tmp_path / "e2.pt"), epoch=2)
    assert (first["epoch"], second["epoch"]) == (1, 2)
    e1, e2 = load_backbone(str(tmp_path / "e1.pt")), load_backbone(str(tmp_path / "e2.pt"))
    assert (e1.epoch, e2.epoch) == (1, 2)

    method, norm = method_from_checkpoint(run_dir, checkpoints[1], digits_dir)
    with torch.no_grad():
        torch.testing.assert_close(e1.features(val_images), method.backbone(to_float(val_images, **norm)))
    assert not torch.allclose(e1.features(val_images), e2.features(val_images), atol=1e-3)


def test_missing_run_folder_is_a_one_line_error(tmp_path):
    missing = tmp_path / "nope"
    assert_user_error(export_cli(str(missing), "--out", str(tmp_path / "e.pt")),
                      f"run folder {missing} does not exist; pass the --out folder of a `raysl train` run")


def test_run_without_checkpoint_says_train_first(run_dir, tmp_path):
    # a run stopped before its first epoch ended: config.yaml, no checkpoint
    early = tmp_path / "early"
    early.mkdir()
    (early / "config.yaml").write_bytes((run_dir / "config.yaml").read_bytes())
    assert_user_error(
        export_cli(str(early), "--out", str(tmp_path / "e.pt")),
        f"no checkpoint in {early}: the run has not finished an epoch yet; run `raysl train CONFIG --out {early}` "
        "first (it checkpoints every checkpoint.every_epochs)",
    )
    assert not (tmp_path / "e.pt").exists()


def test_epoch_without_checkpoint_lists_the_available_ones(run_dir, tmp_path):
    assert_user_error(
        export_cli(str(run_dir), "--out", str(tmp_path / "e.pt"), "--epoch", "3"),
        f"no checkpoint of epoch 3 in {run_dir}; available: 1, 2 (the run keeps the last checkpoint.keep=2, "
        "one every checkpoint.every_epochs=1)",
    )


def test_existing_output_is_left_unchanged_unless_forced(run_dir, tmp_path):
    out = tmp_path / "encoder.pt"
    out.write_bytes(b"someone's file\n")
    assert_user_error(export_cli(str(run_dir), "--out", str(out)),
                      f"{out} already exists; choose another --out or pass --force to overwrite it")
    assert out.read_bytes() == b"someone's file\n"

    proc = export_cli(str(run_dir), "--out", str(out), "--force", "--epoch", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["epoch"] == 1
    assert load_backbone(str(out)).epoch == 1
    assert sorted(os.listdir(tmp_path)) == ["encoder.pt"]


def test_load_backbone_refuses_what_is_not_an_export(run_dir, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    state = run_checkpoints(str(run_dir))[0][2]
    for path, why in ((str(text), "torch.load(weights_only=True) failed"),
                      (state, "it is a raysl training checkpoint")):
        with pytest.raises(CheckpointError) as info:
            load_backbone(path)
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(f"{path} is not a raysl backbone export ({why}")
        assert message.endswith("; create one with `raysl export RUN_DIR --out FILE`")


def test_a_torn_latest_checkpoint_is_skipped_and_reported(run_dir, tmp_path):
    # an interrupt while Ray copies the last checkpoint leaves a truncated state.pt behind
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    checkpoints = run_checkpoints(str(copy))[0]
    torn = Path(checkpoints[2])
    torn.write_bytes(torn.read_bytes()[:1000])
    summary = export_backbone(str(copy), str(tmp_path / "e.pt"))
    assert summary["epoch"] == 1 and summary["checkpoint"] == checkpoints[1]
    assert len(summary["skipped"]) == 1 and str(torn.relative_to(tmp_path)) in summary["skipped"][0]
    assert load_backbone(str(tmp_path / "e.pt")).epoch == 1


def test_a_rerun_that_cannot_resume_the_run_is_refused_before_anything_is_written(
        run_dir, tmp_path, monkeypatch, capsys):
    """Issue 23: `raysl train` again on a finished run's --out with another width overwrote its config.yaml,
    then failed with a `size mismatch` traceback, and `raysl export` of the run failed from then on. Now it
    is refused in one line naming what differs, before Ray, the data or any write; export still works."""
    import hashlib

    import ray

    from raysl import cli, launch

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started for a refused re-run")

    monkeypatch.setattr(launch, "init_ray", no_ray)
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)

    def listing() -> dict[str, str]:  # every file of the run folder, with its bytes' hash
        return {str(p.relative_to(copy)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(copy.rglob("*")) if p.is_file()}

    before, config = listing(), (copy / "config.yaml").read_bytes()
    # model.width (8 in the run) cannot change; optim.epochs may (train longer) and is not named
    code = cli.main(["train", QUICKSTART, *FINISHED_RUN, "--set", "model.width=32", "--set", "optim.epochs=3",
                     "--out", str(copy)])
    captured = capsys.readouterr()
    assert code == 2, captured.err[-3000:]
    # catches: config.yaml overwritten with the new config, then a size-mismatch traceback (exit 1)
    (line,) = captured.err.strip().splitlines()
    assert line == (f"raysl: error: --out {copy} holds a run trained with other settings (model.width: 8 -> 32), "
                    "and a resume cannot change what a run learns (only optim.epochs, scale.*, eval.*, "
                    "checkpoint.*); train these settings into a new --out, or resume that run with its own "
                    f"settings ({copy / 'config.yaml'})"), line
    assert captured.out == ""
    # catches: any write before the refusal (config.yaml, metrics.jsonl, a checkpoint or Ray's snapshot)
    assert (copy / "config.yaml").read_bytes() == config and listing() == before
    assert not ray.is_initialized()
    # catches: the export of the run failing after the re-run (its config.yaml no longer its checkpoints')
    exported = export_backbone(str(copy), str(tmp_path / "e.pt"))
    assert exported["epoch"] == 2 and load_backbone(str(tmp_path / "e.pt")).feature_dim == 64
