"""Label-based quality of frozen features: weighted kNN accuracy (one k or several at once) and the
linear probe."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from raysl.evaluate.inputs import ArrayLike, labelled


@torch.no_grad()
def knn_accuracy(
    train_feats: ArrayLike,
    train_labels: ArrayLike,
    test_feats: ArrayLike,
    test_labels: ArrayLike,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> float:
    """Weighted kNN accuracy in [0, 1] (InstDisc, Wu et al. 2018; DINO).

    Each test row takes its ``k`` most cosine-similar train rows; neighbour ``j``
    adds ``exp(sim_j / temperature)`` to the score of its class; the class with
    the highest score is the prediction (ties go to the lower class index).
    ``k`` is clamped to the number of labelled train rows. Test rows are
    processed ``chunk_size`` at a time, so memory is ``chunk_size x N_train``.

    Raises:
        ValueError: on mismatched shapes, ``k < 1``, or no labelled train/test rows.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    # one k of knn_accuracies: its top-k of exactly k neighbours per query chunk
    return knn_accuracies(train_feats, train_labels, test_feats, test_labels, ks=(k,), temperature=temperature,
                          num_classes=num_classes, chunk_size=chunk_size)[k]


@torch.no_grad()
def knn_accuracies(
    train_feats: ArrayLike,
    train_labels: ArrayLike,
    test_feats: ArrayLike,
    test_labels: ArrayLike,
    ks: tuple[int, ...] | list[int] = (20, 200),
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> dict[int, float]:
    """:func:`knn_accuracy` at every ``k`` of ``ks`` at once: ``{k: accuracy}``.

    One similarity matrix per chunk of ``chunk_size`` test rows (one matmul) and one top-k for the
    largest ``k``; each ``k`` votes with the first ``k`` of those neighbours, which are the ``k``
    nearest (top-k returns them sorted). The votes are the same floats as a top-k of ``k`` alone
    (:func:`knn_accuracy`), so the accuracies equal it whenever no two train rows tie for a test row's
    ``k``-th place (with a tie, which of the tied rows votes is top-k's arbitrary choice in both).

    Raises:
        ValueError: as :func:`knn_accuracy`, or with no ``k`` at all.
    """
    ks = tuple(int(k) for k in ks)
    if not ks:
        raise ValueError("ks must name at least one k")
    if min(ks) < 1:
        raise ValueError(f"every k must be >= 1, got {list(ks)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    xtr, ytr, xte, yte = labelled(train_feats, train_labels, test_feats, test_labels)
    largest = int(max(ytr.max().item(), yte.max().item()))
    if num_classes is None:
        num_classes = largest + 1
    elif largest >= num_classes:
        raise ValueError(f"label {largest} does not fit num_classes={num_classes}")
    clamped = {k: min(k, xtr.shape[0]) for k in ks}  # k is clamped to the labelled train rows
    top = max(clamped.values())
    xtr = F.normalize(xtr, dim=1)
    xte = F.normalize(xte, dim=1)

    correct = dict.fromkeys(sorted(set(clamped.values())), 0)
    for start in range(0, xte.shape[0], max(1, chunk_size)):
        chunk = xte[start : start + chunk_size]
        sims, idx = (chunk @ xtr.T).topk(top, dim=1)
        weights = (sims / temperature).exp()
        neighbour_labels = ytr[idx]
        truth = yte[start : start + chunk_size]
        for k in correct:
            votes = torch.zeros(chunk.shape[0], num_classes, device=xtr.device, dtype=weights.dtype)
            votes.scatter_add_(1, neighbour_labels[:, :k], weights[:, :k])
            correct[k] += int((votes.argmax(dim=1) == truth).sum().item())
    return {k: correct[clamped[k]] / xte.shape[0] for k in ks}


def linear_probe_accuracy(
    train_feats: ArrayLike,
    train_labels: ArrayLike,
    test_feats: ArrayLike,
    test_labels: ArrayLike,
    *,
    epochs: int = 100,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    seed: int = 0,
) -> float:
    """Test accuracy of a logistic-regression probe on frozen features.

    Features are standardised with the train mean and std; a linear layer
    (zero-initialised) is trained with mini-batch Adam for ``epochs`` passes,
    the learning rate following a cosine from ``lr`` to 0, minimising
    cross-entropy plus ``weight_decay / 2 * ||W||^2`` (the bias is not
    penalised). Shuffling uses a generator seeded with ``seed``, so the result
    is reproducible on a given device. About 2 s on 2 CPU cores for 10k x 512.

    Raises:
        ValueError: on mismatched shapes or no labelled train/test rows.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    xtr, ytr, xte, yte = labelled(train_feats, train_labels, test_feats, test_labels)
    num_classes = int(max(ytr.max().item(), yte.max().item())) + 1
    n = xtr.shape[0]
    batch_size = min(batch_size, n)
    total_steps = epochs * math.ceil(n / batch_size)
    generator = torch.Generator().manual_seed(seed)

    # Callers evaluate under no_grad or inference_mode; the probe needs autograd.
    with torch.inference_mode(False), torch.enable_grad():
        mean = xtr.mean(dim=0)
        std = xtr.std(dim=0, unbiased=False).clamp_min(1e-6)  # constant dims stay 0, not inf
        xtr = (xtr - mean) / std  # out-of-place: normal tensors even from inference ones
        xte = (xte - mean) / std
        ytr = ytr.clone()
        probe = torch.nn.Linear(xtr.shape[1], num_classes).to(xtr.device)
        torch.nn.init.zeros_(probe.weight)
        torch.nn.init.zeros_(probe.bias)
        optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator).to(xtr.device)
            for start in range(0, n, batch_size):
                batch = order[start : start + batch_size]
                loss = F.cross_entropy(probe(xtr[batch]), ytr[batch])
                loss = loss + 0.5 * weight_decay * probe.weight.pow(2).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()

    with torch.no_grad():
        predictions = probe(xte).argmax(dim=1)
    return float((predictions == yte).float().mean().item())
