"""Evaluation metrics on synthetic features whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch

from raysl.evaluate import (
    alignment,
    collapse_std,
    evaluate_features,
    is_collapsed,
    knn_accuracies,
    knn_accuracy,
    linear_probe_accuracy,
    rankme,
    uniformity,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def blobs(n: int, dim: int, classes: int, spread: float, seed: int = 0):
    """Gaussian blobs around random centres at distance ~``spread * sqrt(dim)``."""
    g = gen(seed)
    centres = torch.randn(classes, dim, generator=g) * spread
    labels = torch.arange(n) % classes
    feats = centres[labels] + torch.randn(n, dim, generator=g)
    return feats, labels


# --------------------------------------------------------------------------- #
# RankMe
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("r", [1, 5, 16, 40])
def test_rankme_exact_for_equal_singular_values(r):
    g = gen(r)
    left, _ = torch.linalg.qr(torch.randn(2000, r, generator=g))  # orthonormal columns
    right, _ = torch.linalg.qr(torch.randn(64, r, generator=g))
    z = left @ right.T  # 2000 x 64, r singular values all equal to 1
    assert rankme(z) == pytest.approx(r, rel=1e-3)


@pytest.mark.parametrize("r", [1, 8, 32])
def test_rankme_gaussian_low_rank(r):
    g = gen(r)
    basis, _ = torch.linalg.qr(torch.randn(64, r, generator=g))
    z = torch.randn(2000, r, generator=g) @ basis.T  # singular values ~ sqrt(2000) each
    assert rankme(z) == pytest.approx(r, rel=0.03)


def test_rankme_full_rank_isotropic_and_rank_one():
    z = torch.randn(2000, 64, generator=gen(1))
    assert rankme(z) == pytest.approx(64, rel=0.03)
    assert rankme(z) <= 64
    line = torch.randn(2000, 1, generator=gen(2)) * torch.randn(1, 64, generator=gen(3))
    assert rankme(line) == pytest.approx(1.0, abs=1e-3)


def test_rankme_max_samples_and_edge_cases():
    z = torch.randn(2000, 64, generator=gen(4))
    assert rankme(z, max_samples=10) <= 10 + 1e-3
    assert rankme(torch.zeros(10, 4)) == 0.0
    bad = z.clone()
    bad[3, 5] = float("nan")
    assert math.isnan(rankme(bad))
    assert rankme(z.half()) == pytest.approx(rankme(z), rel=1e-2)


# --------------------------------------------------------------------------- #
# kNN
# --------------------------------------------------------------------------- #

# Train points on the unit circle; the query is (1, 0) with label 0.
#   a = (1, 0),     label 0, cosine similarity 1.0
#   b = (0.8, 0.6), label 1, similarity 0.8
#   c = (0, 1),     label 1, similarity 0.0
TRAIN = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
TRAIN_Y = torch.tensor([0, 1, 1])
QUERY = torch.tensor([[2.0, 0.0]])  # not unit length: kNN normalises
QUERY_Y = torch.tensor([0])


def test_knn_by_hand():
    # k=2, T=1: class 0 gets e^1 = 2.718, class 1 gets e^0.8 = 2.226 -> predicts 0.
    assert knn_accuracy(TRAIN, TRAIN_Y, QUERY, QUERY_Y, k=2, temperature=1.0) == 1.0
    # k=3, T=1: class 1 now gets e^0.8 + e^0 = 3.226 > 2.718 -> predicts 1 (wrong).
    assert knn_accuracy(TRAIN, TRAIN_Y, QUERY, QUERY_Y, k=3, temperature=1.0) == 0.0
    # k=3, T=0.07: e^(1/0.07) = 1.6e6 beats e^(0.8/0.07) + 1 = 9.3e4 -> predicts 0.
    assert knn_accuracy(TRAIN, TRAIN_Y, QUERY, QUERY_Y, k=3, temperature=0.07) == 1.0
    # k beyond the train set is clamped to 3: same as the k=3, T=1 case.
    assert knn_accuracy(TRAIN, TRAIN_Y, QUERY, QUERY_Y, k=50, temperature=1.0) == 0.0


def test_knn_missing_train_labels_ignored():
    # An unlabelled row right on the query would, if used, push b out of the top 2.
    train = torch.cat([TRAIN, torch.tensor([[1.0, 0.01]])])
    labels = torch.cat([TRAIN_Y, torch.tensor([-1])])
    for k in (1, 2, 3):
        assert knn_accuracy(train, labels, QUERY, QUERY_Y, k=k, temperature=1.0) == (
            knn_accuracy(TRAIN, TRAIN_Y, QUERY, QUERY_Y, k=k, temperature=1.0)
        )
    with pytest.raises(ValueError, match="no labelled train rows"):
        knn_accuracy(TRAIN, torch.full((3,), -1), QUERY, QUERY_Y)


def test_knn_separated_clusters_is_perfect():
    feats, labels = blobs(600, 32, classes=6, spread=5.0)
    acc = knn_accuracy(feats[:500], labels[:500], feats[500:], labels[500:], k=20)
    assert acc == 1.0


def test_knn_random_labels_near_chance():
    g = gen(5)
    train = torch.randn(2000, 32, generator=g)
    test = torch.randn(1000, 32, generator=g)
    train_labels = torch.randint(0, 10, (2000,), generator=g)
    test_labels = torch.randint(0, 10, (1000,), generator=g)
    acc = knn_accuracy(train, train_labels, test, test_labels)
    assert 0.05 < acc < 0.16


def test_knn_chunking_does_not_change_the_answer():
    feats, labels = blobs(700, 16, classes=5, spread=0.4, seed=6)
    args = (feats[:400], labels[:400], feats[400:], labels[400:])
    full = knn_accuracy(*args, k=20)
    assert 0.3 < full < 1.0  # a case with mistakes, so chunks matter
    assert knn_accuracy(*args, k=20, chunk_size=7) == full
    assert knn_accuracy(*args, k=20, num_classes=12) == full


def test_knn_at_every_k_from_one_similarity_matrix_equals_knn_at_each_k():
    """knn_accuracies (one matmul and one top-k per query chunk) against knn_accuracy, the function that
    computed each k on its own before. Tolerance: none, the accuracies must be equal: both vote with the
    same neighbours (top-k sorts them, so the first k of the largest k's are the k nearest) and the same
    exp(sim / T) weights, and an accuracy is a count of argmaxes. Features are random (no tied
    similarities); a case with mistakes at every k, so a wrong neighbour set would show."""
    feats, labels = blobs(900, 16, classes=5, spread=0.4, seed=7)
    labels[::37] = -1  # unlabelled rows are left out by both
    train, train_y, test, test_y = feats[:600], labels[:600], feats[600:], labels[600:]
    ks = (20, 1, 200, 5, 20, 10_000)  # unsorted, repeated, and beyond the bank (clamped to its rows)
    for chunk in (1024, 37):
        for temperature in (0.07, 1.0):
            found = knn_accuracies(train, train_y, test, test_y, ks=ks, temperature=temperature, chunk_size=chunk)
            assert list(found) == [20, 1, 200, 5, 10_000]
            for k in ks:
                alone = knn_accuracy(train, train_y, test, test_y, k=k, temperature=temperature, chunk_size=chunk)
                assert found[k] == alone, (k, chunk, temperature)
    assert 0.3 < found[20] < 1.0
    # the hand-computed case above: k = 2 right, k = 3 wrong at T = 1
    assert knn_accuracies(TRAIN, TRAIN_Y, QUERY, QUERY_Y, ks=(2, 3, 50), temperature=1.0) == {2: 1.0, 3: 0.0, 50: 0.0}
    # and what evaluate_features reports is it
    out = evaluate_features(train, train_y, test, test_y, ks=(20, 200))
    assert out["knn_acc"] == knn_accuracy(train, train_y, test, test_y, k=20)
    assert out["knn_acc_k200"] == knn_accuracy(train, train_y, test, test_y, k=200)
    with pytest.raises(ValueError, match="every k must be"):
        knn_accuracies(TRAIN, TRAIN_Y, QUERY, QUERY_Y, ks=(5, 0))
    with pytest.raises(ValueError, match="at least one k"):
        knn_accuracies(TRAIN, TRAIN_Y, QUERY, QUERY_Y, ks=())


def test_knn_validation():
    with pytest.raises(ValueError, match="num_classes"):
        knn_accuracy(TRAIN, TRAIN_Y, QUERY, QUERY_Y, num_classes=1)
    with pytest.raises(ValueError, match="width"):
        knn_accuracy(TRAIN, TRAIN_Y, torch.ones(1, 3), QUERY_Y)
    with pytest.raises(ValueError, match="k must be"):
        knn_accuracy(TRAIN, TRAIN_Y, QUERY, QUERY_Y, k=0)


# --------------------------------------------------------------------------- #
# Linear probe
# --------------------------------------------------------------------------- #


def test_linear_probe_separable_blobs():
    feats, labels = blobs(1200, 20, classes=4, spread=2.0, seed=7)
    feats = feats * 50 + 1000  # standardisation makes scale and offset irrelevant
    args = (feats[:900], labels[:900], feats[900:], labels[900:])
    acc = linear_probe_accuracy(*args, epochs=30)
    assert acc > 0.95
    assert linear_probe_accuracy(*args, epochs=30) == acc  # deterministic with seed


def test_linear_probe_under_inference_mode_and_missing_labels():
    feats, labels = blobs(400, 8, classes=2, spread=3.0, seed=8)
    labels = labels.clone()
    labels[::5] = -1
    with torch.inference_mode():
        acc = linear_probe_accuracy(feats[:300], labels[:300], feats[300:], labels[300:], epochs=20)
    assert acc > 0.9


# --------------------------------------------------------------------------- #
# Alignment and uniformity
# --------------------------------------------------------------------------- #


def test_alignment():
    z = torch.randn(50, 8, generator=gen(9))
    assert alignment(z, z) == pytest.approx(0.0, abs=1e-6)
    assert alignment(z, 3 * z) == pytest.approx(0.0, abs=1e-6)  # normalised first
    assert alignment(z, -z) == pytest.approx(4.0)  # antipodal: ||2u||^2
    assert alignment(z, -z, alpha=1) == pytest.approx(2.0)


def test_uniformity_by_hand():
    assert uniformity(torch.ones(10, 5)) == pytest.approx(0.0, abs=1e-6)  # log 1
    antipodal = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # squared distance 4
    assert uniformity(antipodal, t=2) == pytest.approx(-8.0)
    assert uniformity(antipodal, t=1) == pytest.approx(-4.0)
    # Equilateral triangle on the unit circle: every squared distance is 3.
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    triangle = torch.stack([angles.cos(), angles.sin()], dim=1)
    assert uniformity(triangle, t=2) == pytest.approx(-6.0, abs=1e-5)


def test_uniformity_spread_and_subsampled():
    z = torch.randn(5000, 16, generator=gen(10))
    u = uniformity(z)  # subsampled to 4096 rows
    assert -4.0 < u < -1.0
    assert uniformity(z) == u  # seeded subsample
    assert uniformity(z, max_samples=500) == pytest.approx(u, abs=0.05)
    with pytest.raises(ValueError, match="at least 2"):
        uniformity(z[:1])


# --------------------------------------------------------------------------- #
# Collapse
# --------------------------------------------------------------------------- #


def test_collapse_detection():
    dim = 64
    constant = torch.ones(500, dim) + 1e-4 * torch.randn(500, dim, generator=gen(11))
    gaussian = torch.randn(500, dim, generator=gen(12))
    assert collapse_std(constant) < 1e-3
    assert collapse_std(gaussian) == pytest.approx(1 / math.sqrt(dim), rel=0.1)
    assert is_collapsed(constant)
    assert is_collapsed(torch.ones(500, dim))
    assert not is_collapsed(gaussian)


def test_collapse_to_a_line_caught_by_rank():
    # Rows are +e1 or -e1: std test alone misses it in 4 dims, RankMe says 1.
    signs = torch.randint(0, 2, (200, 1), generator=gen(13)) * 2.0 - 1.0
    line = signs * torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    assert not is_collapsed(line, min_rank=None)
    assert is_collapsed(line)


def test_non_finite_is_not_collapse():
    z = torch.randn(100, 8, generator=gen(14))
    z[0, 0] = float("inf")
    assert not is_collapsed(z)


# --------------------------------------------------------------------------- #
# evaluate_features
# --------------------------------------------------------------------------- #


def test_evaluate_features_keys_and_values():
    feats, labels = blobs(900, 32, classes=3, spread=5.0, seed=15)
    out = evaluate_features(feats[:600], labels[:600], feats[600:], labels[600:])
    assert set(out) == {"knn_acc", "knn_acc_k200", "rankme", "alpha_req", "alpha_req_score", "uniformity",
                        "feature_std"}
    assert out["knn_acc"] == 1.0
    assert 1.0 < out["rankme"] <= 32
    assert all(isinstance(v, float) for v in out.values())

    pre = evaluate_features(
        feats[:600], labels[:600], feats[600:], labels[600:], ks=(5,), prefix="backbone/"
    )
    assert set(pre) == {f"backbone/{key}" for key in ("knn_acc", "rankme", "alpha_req", "alpha_req_score",
                                                      "uniformity", "feature_std")}


def test_evaluate_features_without_labels():
    feats = torch.randn(300, 16, generator=gen(16))
    expected = {"rankme", "alpha_req", "alpha_req_score", "uniformity", "feature_std"}
    assert set(evaluate_features(feats[:200], None, feats[200:], None)) == expected
    missing = torch.full((200,), -1)
    assert set(evaluate_features(feats[:200], missing, feats[200:], torch.zeros(100))) == expected
