"""Label-free objectives: alpha-ReQ and LiDAR on embeddings of known structure, and the
"label-free selectors" table of `raysl analyze` on a synthetic experiment whose Spearman
correlations and regrets are worked out by hand below."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from raysl.evaluate import (
    agreed_rank,
    alpha_req,
    alpha_req_score,
    evaluate_features,
    lidar,
    rankme,
    view_knn_agreement,
)

# --------------------------------------------------------------------------
# helpers


def _orthogonal(d: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # a uniformly random rotation (or reflection)


def with_spectrum(eigenvalues: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` rows whose covariance has exactly ``eigenvalues`` (in a random basis): centred orthonormal
    columns scaled by sqrt(n * lambda_k), then rotated."""
    d = eigenvalues.numel()
    a = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    q, _ = torch.linalg.qr(a - a.mean(dim=0))  # columns stay centred: they span the centred columns of a
    return math.sqrt(n) * q * eigenvalues.sqrt() @ _orthogonal(d, seed + 1).T


def power_law(d: int, a: float) -> torch.Tensor:
    return torch.arange(1, d + 1, dtype=torch.float64) ** -a


def entropy_rank(p: list[float]) -> float:
    return math.exp(-sum(x * math.log(x) for x in p if x > 0))


# --------------------------------------------------------------------------
# alpha-ReQ


@pytest.mark.parametrize("a", [0.5, 1.0, 2.0])
def test_alpha_req_recovers_an_exact_power_law(a):
    z = with_spectrum(power_law(128, a), n=500)
    # the covariance's spectrum is k^-a exactly: the fitted slope is exact up to float64 rounding
    assert alpha_req(z) == pytest.approx(a, abs=1e-9)
    # float32 features: eigenvalues to ~1e-7 relative, so the slope to ~1e-6
    assert alpha_req(z.float()) == pytest.approx(a, abs=1e-5)


@pytest.mark.parametrize("a", [0.5, 1.0, 2.0])
def test_alpha_req_on_gaussian_samples_of_a_power_law(a):
    # 10,000 samples of a 128-d Gaussian with covariance eigenvalues k^-a: each sample eigenvalue
    # scatters by about sqrt(2/N) ~ 1.4% and the weighted fit over ranks 6..100 averages that out; the
    # bias of sample spectra (Marchenko-Pastur spreading, D/N ~ 1.3%) tilts the slope by much less than
    # 0.02 (measured |deviation| <= 0.0033 over seeds 0-3 and these three exponents)
    z = torch.randn(10_000, 128, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    z = z * power_law(128, a).sqrt()
    assert alpha_req(z) == pytest.approx(a, abs=0.02)


def test_alpha_req_invariant_to_scale_rotation_and_translation():
    z = with_spectrum(power_law(128, 1.3) * (1 + 0.2 * torch.rand(128, generator=torch.Generator().manual_seed(1),
                                                                     dtype=torch.float64)), n=1000)
    base = alpha_req(z)
    assert base == pytest.approx(1.3, abs=0.1)  # a noisy power law, not an exact one
    for other in (1e-3 * z, 1e3 * z, z @ _orthogonal(128, 7), z + 5.0):
        assert alpha_req(other) == pytest.approx(base, rel=1e-9)


def test_alpha_req_fits_ranks_6_to_100():
    lam = power_law(128, 1.0)
    base = alpha_req(with_spectrum(lam, n=500))
    spiked = lam.clone()
    spiked[:5] *= 100.0  # the first five eigenvalues are outside the fit
    assert alpha_req(with_spectrum(spiked, n=500)) == pytest.approx(base, abs=1e-9)
    tail = lam.clone()
    tail[100:] *= 1e-6  # and so is everything beyond rank 100
    assert alpha_req(with_spectrum(tail, n=500)) == pytest.approx(base, abs=1e-9)
    inside = lam.clone()
    inside[5] *= 10.0  # rank 6 is in it
    assert abs(alpha_req(with_spectrum(inside, n=500)) - base) > 0.01
    # another range: ranks 1..10 see the spike
    assert alpha_req(with_spectrum(spiked, n=500), ranks=(1, 10)) > base + 0.5


def test_alpha_req_edge_cases():
    assert math.isnan(alpha_req(torch.ones(50, 16)))  # every row the same: no spectrum
    assert math.isnan(alpha_req(torch.full((50, 16), float("nan"))))
    # 6 features: ranks 6..100 leave a single rank, no slope
    assert math.isnan(alpha_req(torch.randn(100, 6, generator=torch.Generator().manual_seed(0))))
    g = torch.Generator().manual_seed(0)
    # collapsed to one direction: nothing past rank 6 but the floor, no slope to read
    assert math.isnan(alpha_req(torch.randn(500, 1, generator=g) * torch.randn(1, 64, generator=g)))
    # 20 directions left of 64: the floored tail after rank 20 makes alpha steep, and finite
    few = torch.randn(500, 20, generator=g, dtype=torch.float64) @ torch.randn(20, 64, generator=g, dtype=torch.float64)
    assert 5.0 < alpha_req(few) < 100.0
    with pytest.raises(ValueError):
        alpha_req(torch.randn(10, 10), ranks=(5, 5))


def test_alpha_req_score():
    assert alpha_req_score(1.0) == 0.0
    assert alpha_req_score(0.75) == alpha_req_score(1.25) == -0.25
    assert math.isnan(alpha_req_score(math.nan))


def test_evaluate_features_reports_alpha_req():
    z = with_spectrum(power_law(64, 1.5), n=600).float()
    out = evaluate_features(z, None, z[:100], None, prefix="projector_")
    assert out["projector_alpha_req"] == pytest.approx(1.5, abs=1e-4)
    assert out["projector_alpha_req_score"] == pytest.approx(-0.5, abs=1e-4)


# --------------------------------------------------------------------------
# LiDAR

MEANS = torch.tensor([[2.0, 1.0], [2.0, -1.0], [-2.0, 1.0], [-2.0, -1.0]], dtype=torch.float64)


def four_views(sx: float, sy: float) -> torch.Tensor:
    """4 images x 4 views in 2-d: image i's views are mu_i +- (sx, 0) and mu_i +- (0, sy).

    By hand: S_b = mean of mu_i mu_i^T = diag(4, 1); S_w = diag(2 sx^2, 2 sy^2) / 4 = diag(sx^2/2, sy^2/2)."""
    offsets = torch.tensor([[sx, 0.0], [-sx, 0.0], [0.0, sy], [0.0, -sy]], dtype=torch.float64)
    return MEANS[:, None, :] + offsets[None]


def test_lidar_hand_computed():
    # S_w = I: S_lidar = S_b / (1 + delta') = diag(4, 1) / (1 + delta'): p = (0.8, 0.2) whatever delta'
    # (the eps = 1e-7 added to each p moves the result by ~1e-6 at most)
    assert lidar(four_views(math.sqrt(2), math.sqrt(2))) == pytest.approx(entropy_rank([0.8, 0.2]), abs=1e-5)
    # S_w = diag(4, 1): whitening evens out the two directions, S_lidar = diag(4/(4+d'), 1/(1+d'))
    # with d' = 1e-4 * tr(S_w + S_b) / 2 = 1e-4 * (5 + 5) / 2
    d = 1e-4 * 5.0
    lam = [4 / (4 + d), 1 / (1 + d)]
    expected = entropy_rank([x / sum(lam) for x in lam])
    assert expected == pytest.approx(2.0, abs=1e-6)
    assert lidar(four_views(2 * math.sqrt(2), math.sqrt(2))) == pytest.approx(expected, abs=1e-5)
    # a larger delta regularises more: d' = 0.5 * 5 = 2.5 -> diag(4/6.5, 1/3.5)
    lam = [4 / 6.5, 1 / 3.5]
    assert lidar(four_views(2 * math.sqrt(2), math.sqrt(2)), delta=0.5) == pytest.approx(
        entropy_rank([x / sum(lam) for x in lam]), abs=1e-5)


def test_lidar_takes_a_list_of_views():
    z = four_views(1.0, 0.3)
    assert lidar([z[:, j] for j in range(4)]) == pytest.approx(lidar(z), rel=1e-12)


def _surrogate_classes(separable_dims: int, n: int = 200, q: int = 8, d: int = 32, seed: int = 0) -> torch.Tensor:
    """n images (means ~ N(0, I) in d dims), q views each: view noise 0.1 in the first
    ``separable_dims`` directions and 10 in the others, where the images' views overlap."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.full((d,), 10.0, dtype=torch.float64)
    noise[:separable_dims] = 0.1
    means = torch.randn(n, 1, d, generator=g, dtype=torch.float64)
    return means + torch.randn(n, q, d, generator=g, dtype=torch.float64) * noise


def test_lidar_separable_vs_overlapping_surrogate_classes():
    separable = _surrogate_classes(separable_dims=32)
    overlapping = _surrogate_classes(separable_dims=2)
    high, low = lidar(separable), lidar(overlapping)
    # separable in every direction: close to the 32 dimensions (a sample of 200 means has an uneven
    # spectrum, ~29 here); separable in 2: ~2, plus the floor S_w/q that 8 views leave in S_b (~2.6)
    assert high > 24.0
    assert low < 4.0
    assert high > 6 * low
    # RankMe pools the views and counts the noisy directions as well: it hardly tells the two apart
    flat = lambda z: z.reshape(-1, z.shape[-1]).float()  # noqa: E731
    assert rankme(flat(overlapping)) > 0.8 * rankme(flat(separable))


def test_lidar_invariant_to_scale_rotation_and_translation():
    z = _surrogate_classes(separable_dims=6, n=120, q=4, d=16, seed=5)
    base = lidar(z)
    for other in (1e-3 * z, 1e3 * z, z @ _orthogonal(16, 11), z - 7.0):
        assert lidar(other) == pytest.approx(base, rel=1e-9)


def test_lidar_edge_cases():
    same = torch.randn(50, 1, 8, generator=torch.Generator().manual_seed(0)).expand(50, 4, 8)
    # identical views: S_w is only the regulariser, so LiDAR is the effective rank of S_b, finite
    assert 1.0 < lidar(same) <= 8.0
    # every image the same: no between-class scatter
    assert lidar(torch.randn(1, 4, 8).expand(50, 4, 8)) == 0.0
    assert lidar(torch.ones(10, 3, 5)) == 0.0
    assert math.isnan(lidar(torch.full((10, 3, 5), float("inf"))))
    for bad in (torch.randn(1, 4, 8), torch.randn(10, 1, 8), torch.randn(10, 8)):
        with pytest.raises(ValueError):
            lidar(bad)
    with pytest.raises(ValueError):
        lidar(torch.randn(10, 3, 5), delta=0.0)


# --------------------------------------------------------------------------
# view kNN agreement


def _at_degrees(*angles: float, length: float = 1.0) -> torch.Tensor:
    rad = torch.tensor(angles, dtype=torch.float64) * math.pi / 180
    return length * torch.stack([rad.cos(), rad.sin()], dim=1)


def test_view_knn_agreement_hand_computed():
    # bank rows at 0, 10, 90 and 100 degrees (lengths differ: cosine ignores them); k = 2
    bank = torch.cat([_at_degrees(0, 10, length=3.0), _at_degrees(90, 100, length=0.5)])
    # image A's views at 5, 95 and 3 degrees find {0, 10}, {90, 100}, {0, 10}: pairs share 0, 2, 0 rows
    # image B's at 2, 8 and 52 find {0, 10}, {0, 10}, {90, 10} (cos 38 > cos 42 > cos 48): share 2, 1, 1
    views = torch.stack([_at_degrees(5, 95, 3), _at_degrees(2, 8, 52, length=7.0)])
    assert view_knn_agreement(bank, views, k=2) == 6 / 12  # (2 + 4) shared of 2 images x 3 pairs x k
    # the first two views of each image only: A shares 0 of 2, B 2 of 2
    assert view_knn_agreement(bank, views[:, :2], k=2) == 2 / 4
    # k = 1: A's views find 10, 90, 0 (0 shared); B's 0, 10, 90 (0 shared)
    assert view_knn_agreement(bank, views, k=1) == 0.0
    # every view the same: every pair shares all k
    assert view_knn_agreement(bank, views[:, :1].expand(2, 4, 2), k=2) == 1.0


def test_view_knn_agreement_random_and_stable_neighbourhoods():
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(200, 64, generator=g, dtype=torch.float64)
    means = torch.randn(300, 1, 64, generator=g, dtype=torch.float64)
    # views unrelated to each other: two random 20-subsets of 200 rows share 20 * 20 / 200 = 2 on
    # average, an agreement of k / N = 0.1; 300 images x 6 pairs put its standard error near 0.002
    unrelated = torch.randn(300, 4, 64, generator=g, dtype=torch.float64)
    assert view_knn_agreement(bank, unrelated, k=20) == pytest.approx(0.1, abs=0.02)
    # views that are small perturbations of one point per image keep most of their neighbourhood
    # (noise 0.05 against unit-variance means); large ones (noise 10) wash it out to the random level
    noise = torch.randn(300, 4, 64, generator=g, dtype=torch.float64)
    stable = view_knn_agreement(bank, means + 0.05 * noise, k=20)
    washed = view_knn_agreement(bank, means + 10.0 * noise, k=20)
    assert stable > 0.8
    assert washed == pytest.approx(0.1, abs=0.02)


def test_view_knn_agreement_invariant_to_scale_and_rotation():
    g = torch.Generator().manual_seed(3)
    bank = torch.randn(150, 16, generator=g, dtype=torch.float64)
    views = torch.randn(80, 1, 16, generator=g, dtype=torch.float64) + 0.5 * torch.randn(80, 3, 16, generator=g,
                                                                                         dtype=torch.float64)
    k = 10
    # exact invariance needs no near-tie at anyone's k-th place: these draws keep a margin of 1e-5 or
    # more in cosine, far above float64's error (1e-16) and float32's (1e-7) in computing it
    sims = F.normalize(views, dim=2) @ F.normalize(bank, dim=1).T
    top = sims.topk(k + 1, dim=2).values
    assert float((top[..., k - 1] - top[..., k]).min()) > 1e-5
    base = view_knn_agreement(bank, views, k=k)
    rot = _orthogonal(16, 4)
    assert 0.0 < base < 1.0
    for b, v in ((1e-3 * bank, 1e-3 * views), (1e3 * bank, views), (bank @ rot, views @ rot)):
        assert view_knn_agreement(b, v, k=k) == base
    # float32 features give the same neighbourhoods here
    assert view_knn_agreement(bank.float(), views.float(), k=k) == base


def test_view_knn_agreement_bad_input():
    bank = torch.randn(10, 4)
    for views, k in ((torch.randn(5, 1, 4), 3), (torch.randn(5, 2, 3), 3), (torch.randn(5, 4), 3),
                     (torch.randn(5, 2, 4), 0), (torch.randn(5, 2, 4), 11)):
        with pytest.raises(ValueError):
            view_knn_agreement(bank, views, k=k)
    assert math.isnan(view_knn_agreement(bank, torch.randn(0, 2, 4), k=3))


def test_agreed_rank():
    assert agreed_rank(20.0, 0.25) == 5.0
    assert agreed_rank(7.5, 0.0) == 0.0


# --------------------------------------------------------------------------
# the selector table of `raysl analyze`

# trial -> (final status, its reports). Each finished trial reports 2 epochs; the selector reads the last.
KNN = {"t0": 0.70, "t1": 0.80, "t2": 0.75, "t3": 0.60, "t4": 0.78}
FINAL = {  # metric -> value per finished trial (None: never reported)
    "rankme": {"t0": 10.0, "t1": 20.0, "t2": 30.0, "t3": 5.0, "t4": 25.0},
    "alpha_req": {"t0": 1.5, "t1": 1.05, "t2": 0.7, "t3": 3.0, "t4": 0.9},
    "lidar": {"t0": 40.0, "t1": 50.0, "t2": 60.0, "t3": 10.0, "t4": 60.0},
    "alignment": {"t0": 0.5, "t1": 0.3, "t2": 0.4, "t3": 0.2, "t4": 0.35},
    "uniformity": {"t0": -2.0, "t1": None, "t2": -3.0, "t3": -1.0, "t4": -2.5},
    "view_agreement": {"t0": 0.3, "t1": 0.2, "t2": 0.1, "t3": 0.4, "t4": 0.25},
    "agreed_rank": {"t0": 3.0, "t1": 4.0, "t2": 3.0, "t3": 2.0, "t4": 6.25},  # rankme x view_agreement
}
# By hand (best kNN 0.80, trial t1; the stopped trial t5 is not in the pool):
EXPECTED = {
    # picks t2 (rankme 30): 0.80 - 0.75. Ranks rankme (2,3,5,1,4) vs kNN (2,5,3,1,4): sum d^2 = 8,
    # rho = 1 - 6 * 8 / (5 * 24) = 0.6
    "rankme": ("t2", 0.05, 0.6, 5),
    # -|alpha - 1| = (-.5, -.05, -.3, -2, -.1): picks t1 (the best); ranks equal kNN's: rho = 1
    "alpha_req": ("t1", 0.0, 1.0, 5),
    # t2 and t4 tie at 60: regret 0.80 - mean(0.75, 0.78) = 0.035; ranks (2, 3, 4.5, 1, 4.5) vs
    # (2, 5, 3, 1, 4), centred (-1, 0, 1.5, -2, 1.5) and (-1, 2, 0, -2, 1): rho = 6.5 / sqrt(9.5 * 10)
    "lidar": ("t2", 0.035, 6.5 / math.sqrt(95.0), 5),
    # min picks t3 (0.2): 0.80 - 0.60; scores -alignment rank (1, 4, 2, 5, 3) vs (2, 5, 3, 1, 4):
    # sum d^2 = 1 + 1 + 1 + 16 + 1 = 20, rho = 1 - 6 * 20 / 120 = 0
    "alignment": ("t3", 0.2, 0.0, 5),
    # t1 never reported it, so it cannot be picked: min picks t2 (-3.0): 0.80 - 0.75 over 4 trials;
    # scores of t0, t2, t3, t4 (2, 3, 1, 2.5) rank (2, 4, 1, 3) vs their kNN (0.70, 0.75, 0.60, 0.78)
    # ranked (2, 3, 1, 4): sum d^2 = 0 + 1 + 0 + 1 = 2, rho = 1 - 6 * 2 / 60 = 0.8
    "uniformity": ("t2", 0.05, 0.8, 4),
    # max picks t3 (0.4): 0.80 - 0.60; ranks (4, 2, 1, 5, 3) vs (2, 5, 3, 1, 4): d = (2, -3, -2, 4, -1),
    # sum d^2 = 34, rho = 1 - 6 * 34 / 120 = -0.7
    "view_agreement": ("t3", 0.2, -0.7, 5),
    # max picks t4 (6.25): 0.80 - 0.78; t0 and t2 tie at 3.0: ranks (2.5, 4, 2.5, 1, 5), centred
    # (-0.5, 1, -0.5, -2, 2) against (-1, 2, 0, -2, 1): rho = 8.5 / sqrt(9.5 * 10)
    "agreed_rank": ("t4", 0.02, 8.5 / math.sqrt(95.0), 5),
}


def _write_trial(root: Path, trial: str, rows: list[dict], lr: float) -> None:
    folder = root / f"raysl_trial_{trial}"
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps({"optim.lr": lr}))
    (folder / "result.json").write_text("".join(json.dumps({**row, "trial_id": trial}) + "\n" for row in rows))


def synthetic_experiment(root: Path) -> Path:
    exp = root / "synthetic"
    for i, trial in enumerate(KNN):
        final = {m: v[trial] for m, v in FINAL.items() if v[trial] is not None}
        first = {m: (v + 1.0) for m, v in final.items()}  # epoch 1's values differ: the last one counts
        rows = [{"epoch": 1, "eval_epoch": 1, "knn_acc": KNN[trial] - 0.3, "loss": 5.0, "status": "running",
                 "timestamp": 1000 + 10 * i, "time_total_s": 5.0, **first},
                {"epoch": 2, "eval_epoch": 2, "knn_acc": KNN[trial], "loss": 4.0, "status": "finished",
                 "timestamp": 1005 + 10 * i, "time_total_s": 10.0, "done": True, **final}]
        _write_trial(exp, trial, rows, lr=1e-3 * (i + 1))
    # stopped by the scheduler after epoch 1 with the best kNN and RankMe of all: not in the pool
    _write_trial(exp, "t5", [{"epoch": 1, "eval_epoch": 1, "knn_acc": 0.95, "rankme": 99.0, "lidar": 99.0,
                              "alpha_req": 1.0, "loss": 3.0, "status": "running", "timestamp": 1100,
                              "time_total_s": 5.0, "done": True}], lr=9e-3)
    return exp


def test_label_free_selector_table(tmp_path):
    from raysl.results import load_experiments
    from raysl.selectors import label_free_selectors

    (exp,) = load_experiments(str(synthetic_experiment(tmp_path)))
    assert dict(zip(exp.trials["trial_id"], exp.trials["status"]))["t5"] == "stopped"
    table = label_free_selectors(exp)
    assert table["trials"] == 5
    assert table["best_knn_acc"] == pytest.approx(0.80)
    assert table["best_trial"] == "t1"
    rows = {r["metric"]: r for r in table["rows"]}
    assert list(rows) == ["rankme", "alpha_req", "lidar", "view_agreement", "agreed_rank", "alignment", "uniformity"]
    for metric, (picked, regret, rho, trials) in EXPECTED.items():
        row = rows[metric]
        assert row["picked_trial"] == picked, metric
        assert row["regret"] == pytest.approx(regret, abs=1e-12), metric
        assert row["spearman"] == pytest.approx(rho, abs=1e-12), metric
        assert row["trials"] == trials, metric
        assert row["picked_value"] == FINAL[metric][picked]
    assert rows["alpha_req"]["selects"] == "closest to 1"
    assert rows["alignment"]["selects"] == rows["uniformity"]["selects"] == "min"


def test_analyze_reports_the_selector_table(tmp_path):
    from raysl.analyze import analyze

    exp = synthetic_experiment(tmp_path)
    summary = analyze([str(exp)], str(tmp_path / "report"))
    (one,) = summary["experiments"]
    rows = {r["metric"]: r for r in one["label_free_selectors"]["rows"]}
    assert rows["lidar"]["regret"] == pytest.approx(0.035)
    # alpha_req has regret 0: the best label-free selector (first of the ties in table order)
    assert "best label-free selector alpha_req (kNN regret 0.0000)" in summary["summary"]
    import pandas as pd

    board = pd.read_csv(tmp_path / "report" / "leaderboard.csv").set_index("trial_id")
    for metric in ("alpha_req", "lidar", "agreed_rank"):  # final values, read from the reports' history
        assert board.loc["t2", metric] == FINAL[metric]["t2"]
    assert board.loc["t5", "lidar"] == 99.0
    saved = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert saved["experiments"][0]["label_free_selectors"]["best_trial"] == "t1"
    page = (tmp_path / "report" / "report.html").read_text()
    section = page.split('id="label-free-selectors"')[1].split("<h2>")[0]
    assert "5 finished trials" in section
    for metric in EXPECTED:
        assert f'data-col="metric">{metric}</td>' in section
    assert "closest to 1" in section


def test_selector_table_without_knn(tmp_path):
    from raysl.results import load_experiments
    from raysl.selectors import label_free_selectors

    exp = tmp_path / "nolabels"
    for i in range(3):
        rows = [{"epoch": 1, "rankme": 5.0 + i, "loss": 1.0, "status": "finished"}]
        _write_trial(exp, f"u{i}", rows, lr=1e-3 * (i + 1))
    table = label_free_selectors(load_experiments(str(exp))[0])
    assert table["rows"] == [] and "knn_acc" in table["note"]


# --------------------------------------------------------------------------
# as tune.metric


def _quickstart(tune: dict) -> dict:
    import yaml

    from conftest import REPO

    data = yaml.safe_load((REPO / "search_spaces" / "quickstart.yaml").read_text())
    data["tune"] = {**{k: v for k, v in data["tune"].items() if k not in ("metric", "mode")}, **tune}
    return data


@pytest.mark.parametrize("metric, mode", [("lidar", "max"), ("projector_lidar", "max"), ("alpha_req_score", "max"),
                                          ("agreed_rank", "max"), ("view_agreement", "max"),
                                          ("rankme", "max"), ("alignment", "min"), ("uniformity", "min")])
def test_label_free_metrics_are_objectives_with_their_direction(metric, mode):
    from raysl.space import worst_value
    from raysl.space_file import space_from_dict

    space = space_from_dict(_quickstart({"metric": metric}), "s.yaml")
    assert space.objectives() == [(metric, mode)]
    # a diverged or collapsed trial reports a value no real trial beats: LiDAR >= 0, -|alpha - 1| > -1e9
    worst = {"lidar": 0.0, "alpha_req_score": -1e9, "agreed_rank": 0.0,
             "view_agreement": 0.0}.get(metric.removeprefix("projector_"))
    if worst is not None:
        assert worst_value(metric, mode) == worst


def test_alpha_req_as_objective_needs_a_direction():
    from raysl.errors import ConfigError
    from raysl.space import worst_value
    from raysl.space_file import space_from_dict

    with pytest.raises(ConfigError, match=r"s\.yaml: tune\.metric: alpha_req .* best near 1.*alpha_req_score"):
        space_from_dict(_quickstart({"metric": "alpha_req"}), "s.yaml")
    # with tune.mode it is the user's choice (e.g. prefer flatter spectra)
    space = space_from_dict(_quickstart({"metric": "alpha_req", "mode": "min"}), "s.yaml")
    assert space.objectives() == [("alpha_req", "min")]
    assert worst_value("alpha_req", "min") == 1e9


# --------------------------------------------------------------------------
# reported at every evaluation


def test_every_evaluation_reports_alpha_req_and_lidar(digits_dir):
    """The network a run starts from, evaluated as every epoch's evaluation is (raysl.run_eval.evaluate_method)."""
    from conftest import REPO
    from raysl.run_config import load_config
    from raysl.run_eval import initial_metrics

    quickstart = REPO / "search_spaces" / "quickstart.yaml"
    asked = ["eval.view_metrics=true", "eval.projector_metrics=true"]  # LiDAR and projector_ metrics: off unless asked
    cfg = load_config(quickstart, ["model.width=4", "eval.lidar_images=100", "eval.lidar_views=4", *asked])
    first = initial_metrics(cfg, digits_dir)
    for key in ("alpha_req", "alpha_req_score", "lidar", "projector_alpha_req", "projector_lidar"):
        assert math.isfinite(first[key]), key
    assert first["alpha_req_score"] == -abs(first["alpha_req"] - 1)
    assert 1.0 <= first["lidar"] <= 99.0  # at most n - 1 = 99 for 100 images
    # the views LiDAR sees are drawn from a fixed seed: the same network gives the same value
    assert initial_metrics(cfg, digits_dir)["lidar"] == first["lidar"]
    # and they are augmented views: more views of the same images change it
    more = initial_metrics(load_config(quickstart, ["model.width=4", "eval.lidar_images=100",
                                                    "eval.lidar_views=8", *asked]), digits_dir)
    assert more["lidar"] != first["lidar"]
    # the same views' neighbourhoods in the memory bank, and the product with RankMe
    for prefix in ("", "projector_"):
        assert 0.0 < first[prefix + "view_agreement"] <= 1.0
        assert first[prefix + "agreed_rank"] == first[prefix + "rankme"] * first[prefix + "view_agreement"]
    off = initial_metrics(load_config(quickstart, ["model.width=4", "eval.lidar_images=0", *asked]), digits_dir)
    for key in ("lidar", "view_agreement", "agreed_rank"):
        assert key not in off and "projector_" + key not in off


def test_linear_probe_is_reported_at_an_evaluation_when_asked(digits_dir):
    """``eval.linear_probe``: ``linear_acc`` is the probe of raysl.evaluate on the evaluated network's
    frozen backbone features (memory bank -> val split), computed here independently from the same network."""
    import torch

    from conftest import REPO
    from raysl.data.read.shards import load_manifest
    from raysl.evaluate import linear_probe_accuracy
    from raysl.run_config import load_config
    from raysl.data.read.dataset import RunData
    from raysl.run_eval import embed_all, initial_metrics, load_eval_set
    from raysl.run_setup import build_run_method, input_norm

    quickstart = REPO / "search_spaces" / "quickstart.yaml"
    cfg = load_config(quickstart, ["model.width=4", "eval.lidar_images=0", "eval.linear_probe=true"])
    reported = initial_metrics(cfg, digits_dir)
    manifest = load_manifest(digits_dir)
    torch.manual_seed(cfg.seed)
    method = build_run_method(cfg, manifest, torch.device("cpu")).eval()
    eval_set = load_eval_set(RunData.load(cfg, digits_dir), torch.device("cpu"))
    norm = input_norm(cfg, manifest)
    with torch.no_grad():
        bank, queries = (embed_all(method, x, norm)["backbone"] for x in (eval_set.train_x, eval_set.val_x))
    expected = linear_probe_accuracy(bank, eval_set.train_y, queries, eval_set.val_y, seed=cfg.seed)
    assert reported["linear_acc"] == expected
    # a probe on a random-init convnet's features of the 10 digits: far above chance (0.1)
    assert reported["linear_acc"] > 0.5
    off = initial_metrics(load_config(quickstart, ["model.width=4", "eval.lidar_images=0"]), digits_dir)
    assert "linear_acc" not in off
