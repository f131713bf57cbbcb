"""``evaluate_features``: every per-evaluation metric of one feature set (backbone or projector) at once."""

from __future__ import annotations

import torch

from raysl.evaluate.collapse import collapse_std
from raysl.evaluate.geometry import uniformity
from raysl.evaluate.inputs import ArrayLike
from raysl.evaluate.knn import knn_accuracies
from raysl.evaluate.spectrum import alpha_req, alpha_req_score, rankme


def evaluate_features(
    train_feats: ArrayLike,
    train_labels: ArrayLike | None,
    val_feats: ArrayLike,
    val_labels: ArrayLike | None,
    *,
    ks: tuple[int, ...] = (20, 200),
    prefix: str = "",
    knn_temperature: float = 0.07,
    rankme_max_samples: int = 25600,
) -> dict[str, float]:
    """The per-eval-period metrics for one feature set (backbone or projector).

    Keys (each prefixed with ``prefix``, e.g. ``"backbone/"``):

    - ``knn_acc``: kNN accuracy on the val rows with ``k = ks[0]`` (20), and
      ``knn_acc_k{k}`` for every further ``k`` (``knn_acc_k200``); left out
      when either set has no labels (None or all < 0);
    - ``rankme``, ``alpha_req`` (the decay coefficient), ``alpha_req_score``
      (``-|alpha_req - 1|``), ``uniformity``, ``feature_std`` (:func:`collapse_std`):
      label-free, on the train features.

    ``alignment`` and ``lidar`` need augmented views of the same images, so the caller adds them.
    """
    out: dict[str, float] = {}
    if _has_labels(train_labels) and _has_labels(val_labels) and ks:
        # every k from one similarity matrix per query chunk (the same values as knn_accuracy at each k)
        found = knn_accuracies(train_feats, train_labels, val_feats, val_labels, ks=ks, temperature=knn_temperature)
        for i, k in enumerate(ks):
            key = "knn_acc" if i == 0 else f"knn_acc_k{k}"
            out[prefix + key] = found[k]
    out[prefix + "rankme"] = rankme(train_feats, max_samples=rankme_max_samples)
    out[prefix + "alpha_req"] = alpha_req(train_feats)
    out[prefix + "alpha_req_score"] = alpha_req_score(out[prefix + "alpha_req"])
    out[prefix + "uniformity"] = uniformity(train_feats)
    out[prefix + "feature_std"] = collapse_std(train_feats)
    return out


def _has_labels(labels: ArrayLike | None) -> bool:
    return labels is not None and bool((torch.as_tensor(labels) >= 0).any())
