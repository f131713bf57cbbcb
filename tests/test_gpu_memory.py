"""The GPU memory estimate behind fractional ``scale.gpus_per_worker``: its arithmetic on a model small
enough to count by hand, and the refusal, one line before Ray starts, of a share too small for the run."""

from __future__ import annotations

import os
import subprocess

import torch
from torch import nn

from raysl.gpu_memory import GIB, activation_bytes, check_gpu_share, estimate_worker_memory
from raysl.run_config import load_config

from conftest import HANG, RAYSL, REPO


def test_activation_bytes_counts_every_leaf_output():
    # Linear(4, 8) -> ReLU -> Linear(8, 2): outputs of 8 + 8 + 2 values per image
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    assert activation_bytes(mlp, (1, 4)) == 18 * 4
    assert activation_bytes(mlp, (3, 4), bytes_per_value=2) == 3 * 18 * 2
    assert mlp.training  # mode restored


def test_estimate_adds_state_activations_and_the_fixed_part():
    cfg = load_config(REPO / "search_spaces" / "simclr.yaml", ["model.width=4", "data.crop_size=8",
                                                                "optim.batch_size=32"])
    found = estimate_worker_memory(cfg, 1, 8)
    from raysl.methods import build_method

    torch.manual_seed(0)
    method = build_method(cfg, 1)
    params = sum(p.numel() for p in method.parameters())
    # batch norm's running statistics (float32) and its batch counters (int64)
    norms = [m for m in method.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms
    assert found["buffers"] == sum(8 * m.num_features + 8 for m in norms)
    # SimCLR has no teacher: 4 weights + 4 grads + 8 AdamW moments per parameter, and the buffers
    assert found["state"] == 16 * params + found["buffers"]
    assert found["activations"] == found["per_image"] * 32
    assert found["total"] == 1.2 * (found["state"] + found["activations"] + GIB)
    bf16 = estimate_worker_memory(load_config(REPO / "search_spaces" / "simclr.yaml", [
        "model.width=4", "data.crop_size=8", "optim.batch_size=32", "scale.precision=bf16"]), 1, 8)
    assert bf16["activations"] * 2 == found["activations"]


def test_per_image_state_is_sized_to_the_data_set():
    """DeepCluster-v2 keeps a projection per view per image: the estimate grows with the data set's rows."""
    cfg = load_config(REPO / "search_spaces" / "deepclusterv2.yaml", ["model.width=4", "data.crop_size=8"])
    small = estimate_worker_memory(cfg, 1, 8, num_samples=1000)
    large = estimate_worker_memory(cfg, 1, 8, num_samples=101_000)
    # per extra image: num_views x projection_dim float32s in the bank, 2 flags and one int64 label per head
    per_image = 2 * cfg.model.projector_dim * 4 + 2 + 8 * len(cfg.method.num_prototypes)
    assert large["buffers"] - small["buffers"] == 100_000 * per_image
    assert large["state"] - small["state"] == 100_000 * per_image


def test_small_runs_fit_a_quarter_gpu_and_a_cpu_run_is_not_checked():
    cfg = load_config(REPO / "search_spaces" / "simclr.yaml", ["scale.use_gpu=true", "scale.gpus_per_worker=0.25",
                                                                "model.width=8", "data.crop_size=8"])
    assert check_gpu_share(cfg, 1, 8, "x")["total"] < 0.25 * 80 * GIB
    assert check_gpu_share(load_config(REPO / "search_spaces" / "simclr.yaml", []), 1, 8, "x") is None


def test_a_share_too_small_is_refused_in_one_line_before_ray(tmp_path, digits_dir):
    # 0.25 of a GPU said to have 1 GB: 0.25 GB, below the fixed 1 GB part alone
    proc = subprocess.run(
        [RAYSL, "train", str(REPO / "search_spaces" / "simclr.yaml"), "--out", str(tmp_path / "run"),
         "--set", f"data.path={digits_dir}", "--set", "scale.use_gpu=true", "--set", "scale.gpus_per_worker=0.25",
         "--set", "scale.gpu_memory_gb=1"],
        capture_output=True, text=True, timeout=HANG, env={**os.environ, "RAY_ADDRESS": ""})
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("raysl: error:")]
    assert len(errors) == 1 and "scale.gpus_per_worker: 0.25 of a 1 GB GPU is 0.2 GB" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()
