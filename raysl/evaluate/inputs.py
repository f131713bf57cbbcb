"""The checked tensors every metric of raysl.evaluate takes: ``[N, D]`` features, ``[N]`` labels."""

from __future__ import annotations

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray


def as_features(x: ArrayLike, name: str) -> torch.Tensor:
    x = torch.as_tensor(x).detach()
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [N, D] matrix, got shape {tuple(x.shape)}")
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()  # half precision is too coarse for similarities and SVDs
    return x


def as_labels(y: ArrayLike, n: int, name: str, device: torch.device) -> torch.Tensor:
    y = torch.as_tensor(y).detach().to(device=device, dtype=torch.long)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must be a 1-D vector of {n} labels, got shape {tuple(y.shape)}")
    return y


def labelled(
    train_feats: ArrayLike,
    train_labels: ArrayLike,
    test_feats: ArrayLike,
    test_labels: ArrayLike,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Checked tensors on the train features' device, unlabelled rows dropped."""
    xtr = as_features(train_feats, "train_feats")
    xte = as_features(test_feats, "test_feats").to(device=xtr.device, dtype=xtr.dtype)
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(
            f"train and test features differ in width: {xtr.shape[1]} vs {xte.shape[1]}"
        )
    ytr = as_labels(train_labels, xtr.shape[0], "train_labels", xtr.device)
    yte = as_labels(test_labels, xte.shape[0], "test_labels", xtr.device)
    keep_tr, keep_te = ytr >= 0, yte >= 0
    if not bool(keep_tr.any()):
        raise ValueError("no labelled train rows (all train labels are < 0)")
    if not bool(keep_te.any()):
        raise ValueError("no labelled test rows (all test labels are < 0)")
    return xtr[keep_tr], ytr[keep_tr], xte[keep_te], yte[keep_te]
