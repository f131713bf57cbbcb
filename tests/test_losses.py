"""Tests for raysl.losses.

Every loss gets (1) a hand-computed value on tiny inputs, with the arithmetic
written out with ``math`` from the paper's formula, (2) invariances, (3) a
finite gradient at a random point and (4) a clear error on bad inputs.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from raysl import losses
from raysl.errors import LossInputError

E = math.e


def t(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


def rand(*shape, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    return x.requires_grad_(requires_grad)


# Two small fixed batches (N = 2, D = 2) used by several hand cases.
# Identical orthonormal views: a1 = b1 = (1, 0), a2 = b2 = (0, 1).
EYE = [[1.0, 0.0], [0.0, 1.0]]
# Asymmetric: a1 = (1, 0), a2 = (0, 1), b1 = (0.6, 0.8), b2 = (0, 1).
# Similarities: a1.a2 = 0, a1.b1 = 0.6, a1.b2 = 0, a2.b1 = 0.8, a2.b2 = 1, b1.b2 = 0.8
A = [[1.0, 0.0], [0.0, 1.0]]
B = [[0.6, 0.8], [0.0, 1.0]]


def assert_finite_grads(*tensors):
    for x in tensors:
        assert x.grad is not None
        assert torch.isfinite(x.grad).all()


# --------------------------------------------------------------------------
# NT-Xent
# --------------------------------------------------------------------------


def test_nt_xent_hand_identical_orthonormal():
    # tau = 0.5. Anchor a1: positive b1 (sim 1 -> 1/tau = 2), others a2, b2 (sim 0).
    # l = -log(e^2 / (e^2 + e^0 + e^0)) = log(1 + 2 e^-2); all four anchors alike.
    expected = math.log(1 + 2 * math.exp(-2))
    got = losses.nt_xent(t(EYE), t(EYE), temperature=0.5)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_nt_xent_hand_asymmetric():
    # tau = 1, denominators over the 3 other embeddings of each anchor:
    # a1: pos b1 0.6, others a2 0, b1 0.6, b2 0    -> -0.6 + log(2 + e^0.6)
    # a2: pos b2 1,   others a1 0, b1 0.8, b2 1    -> -1 + log(1 + e^0.8 + e)
    # b1: pos a1 0.6, others a1 0.6, a2 0.8, b2 0.8 -> -0.6 + log(e^0.6 + 2 e^0.8)
    # b2: pos a2 1,   others a1 0, a2 1, b1 0.8    -> -1 + log(1 + e + e^0.8)
    terms = [
        -0.6 + math.log(2 + math.exp(0.6)),
        -1 + math.log(1 + math.exp(0.8) + E),
        -0.6 + math.log(math.exp(0.6) + 2 * math.exp(0.8)),
        -1 + math.log(1 + E + math.exp(0.8)),
    ]
    got = losses.nt_xent(t(A), t(B), temperature=1.0)
    assert got.item() == pytest.approx(sum(terms) / 4, rel=1e-12)


def nt_xent_loop(z1, z2, tau):
    """Explicit per-anchor loop: positive = the pair, negatives = the other 2N-2."""
    n = z1.shape[0]
    z = [F.normalize(v, dim=0) for v in torch.cat([z1, z2])]
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        pos = math.exp(float(z[i] @ z[j]) / tau)
        negs = [math.exp(float(z[i] @ z[k]) / tau) for k in range(2 * n) if k not in (i, j)]
        assert len(negs) == 2 * n - 2
        total += -math.log(pos / (pos + sum(negs)))
    return total / (2 * n)


def test_nt_xent_matches_explicit_loop():
    z1, z2 = rand(7, 5, seed=1), rand(7, 5, seed=2)
    for tau in (0.1, 0.5, 2.0):
        got = losses.nt_xent(z1, z2, temperature=tau).item()
        assert got == pytest.approx(nt_xent_loop(z1, z2, tau), rel=1e-10)


def test_nt_xent_invariances():
    z1, z2 = rand(6, 4, seed=3), rand(6, 4, seed=4)
    base = losses.nt_xent(z1, z2, 0.2)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    assert losses.nt_xent(z1[perm], z2[perm], 0.2).item() == pytest.approx(base.item(), rel=1e-12)
    assert losses.nt_xent(3.7 * z1, 0.2 * z2, 0.2).item() == pytest.approx(base.item(), rel=1e-12)
    # symmetric in the two views
    assert losses.nt_xent(z2, z1, 0.2).item() == pytest.approx(base.item(), rel=1e-12)
    # perfectly separated identical pairs: the loss falls as tau falls
    values = [losses.nt_xent(t(EYE), t(EYE), tau).item() for tau in (1.0, 0.5, 0.1)]
    assert values[0] > values[1] > values[2] > 0


def test_nt_xent_gradient_finite():
    z1, z2 = rand(8, 16, seed=5, requires_grad=True), rand(8, 16, seed=6, requires_grad=True)
    losses.nt_xent(z1, z2, 0.1).backward()
    assert_finite_grads(z1, z2)


def test_nt_xent_half_precision_input_is_computed_in_float32():
    z1, z2 = rand(4, 8, seed=7).half(), rand(4, 8, seed=8).half()
    out = losses.nt_xent(z1, z2, 0.05)
    assert out.dtype == torch.float32 and torch.isfinite(out)


# --------------------------------------------------------------------------
# DCL / DCLW
# --------------------------------------------------------------------------


def test_nt_xent_multicrop_with_two_crops_equals_nt_xent():
    z1, z2 = rand(7, 5, seed=30), rand(7, 5, seed=31)
    # same formula, computed as log(sum of all) - log(the positive) instead of a cross-entropy:
    # float64 rounding of a value ~2.5 only
    want = losses.nt_xent(z1, z2, 0.2).item()
    assert losses.nt_xent_multicrop([z1, z2], 0.2).item() == pytest.approx(want, rel=1e-12)
    assert losses.nt_xent_multicrop(torch.stack([z1, z2]), 0.5).item() == pytest.approx(
        losses.nt_xent(z1, z2, 0.5).item(), rel=1e-12)


def test_nt_xent_multicrop_hand_three_crops():
    # N = 2 samples, V = 3 crops, tau = 1. Sample a: (1,0), (1,0), (0,1); sample b: (0,1), (0,1), (-1,0).
    # loss(anchor) = -log(pos / (pos + neg)), pos = sum over the anchor's other crops of exp(cos),
    # neg = sum over the other sample's 3 crops.
    #   a0, a1: pos = e + 1 (a1 resp. a0, and a2); neg = 1 + 1 + e^-1
    #   a2:     pos = 1 + 1;                     neg = e + e + 1
    #   b0, b1: pos = e + 1;                     neg = 1 + 1 + e
    #   b2:     pos = 1 + 1;                     neg = e^-1 + e^-1 + 1
    def term(pos, neg):
        return -math.log(pos / (pos + neg))

    want = (2 * term(E + 1, 2 + 1 / E) + term(2, 2 * E + 1) + 2 * term(E + 1, 2 + E) + term(2, 2 / E + 1)) / 6
    crops = [t([[1.0, 0.0], [0.0, 1.0]]), t([[1.0, 0.0], [0.0, 1.0]]), t([[0.0, 1.0], [-1.0, 0.0]])]
    assert losses.nt_xent_multicrop(crops, temperature=1.0).item() == pytest.approx(want, rel=1e-12)
    # scaling the embeddings changes nothing (cosine similarity); the crop order neither
    assert losses.nt_xent_multicrop([3 * crops[2], crops[0], crops[1]], 1.0).item() == pytest.approx(want, rel=1e-12)


def test_nt_xent_multicrop_matches_explicit_loop_and_has_gradients():
    crops = [rand(4, 3, seed=40 + i, requires_grad=True) for i in range(4)]
    tau = 0.3
    u = [F.normalize(c.detach(), dim=1) for c in crops]
    terms = []
    for v in range(4):
        for i in range(4):
            pos = sum(math.exp(float(u[v][i] @ u[w][i]) / tau) for w in range(4) if w != v)
            neg = sum(math.exp(float(u[v][i] @ u[w][j]) / tau) for w in range(4) for j in range(4) if j != i)
            terms.append(-math.log(pos / (pos + neg)))
    loss = losses.nt_xent_multicrop(crops, tau)
    # float64 throughout; the loop sums 16 terms ~3 in another order: rounding ~1e-15 relative
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-12)
    loss.backward()
    assert_finite_grads(*crops)
    with pytest.raises(LossInputError, match="nt_xent_multicrop: needs at least 2 views in crops, got 1"):
        losses.nt_xent_multicrop(crops[:1], tau)
    with pytest.raises(LossInputError, match="nt_xent_multicrop: temperature"):
        losses.nt_xent_multicrop(crops, 0.0)


def test_dcl_hand_identical_orthonormal():
    # tau = 0.5: positive term -1/0.5 = -2; negatives (a2, b2 for a1) have sim 0 -> log(1 + 1)
    got = losses.dcl(t(EYE), t(EYE), temperature=0.5)
    assert got.item() == pytest.approx(math.log(2) - 2, rel=1e-12)


def dcl_hand_asymmetric_terms():
    # tau = 1; negatives of anchor i: same view j != i and other view j != i.
    # a1: -0.6 + log(e^{a1.a2} + e^{a1.b2}) = -0.6 + log(1 + 1)
    # a2: -1   + log(e^{a2.a1} + e^{a2.b1}) = -1 + log(1 + e^0.8)
    # b1: -0.6 + log(e^{b1.b2} + e^{b1.a2}) = -0.6 + log(2 e^0.8)
    # b2: -1   + log(e^{b2.b1} + e^{b2.a1}) = -1 + log(e^0.8 + 1)
    pos = [0.6, 1.0, 0.6, 1.0]
    neg = [math.log(2), math.log(1 + math.exp(0.8)), math.log(2 * math.exp(0.8)), math.log(1 + math.exp(0.8))]
    return pos, neg


def test_dcl_hand_asymmetric():
    pos, neg = dcl_hand_asymmetric_terms()
    expected = sum(n - p for p, n in zip(pos, neg)) / 4
    assert losses.dcl(t(A), t(B), temperature=1.0).item() == pytest.approx(expected, rel=1e-12)


def test_dclw_hand_asymmetric():
    # sigma = 0.5: s = (0.6/0.5, 1/0.5) = (1.2, 2); w_i = 2 - N e^{s_i} / sum_j e^{s_j}, N = 2
    w1 = 2 - 2 * math.exp(1.2) / (math.exp(1.2) + math.exp(2))
    w2 = 2 - 2 * math.exp(2) / (math.exp(1.2) + math.exp(2))
    assert (w1 + w2) / 2 == pytest.approx(1.0)  # the weights average to one
    pos, neg = dcl_hand_asymmetric_terms()
    w = [w1, w2, w1, w2]
    expected = sum(n - wi * p for p, n, wi in zip(pos, neg, w)) / 4
    got = losses.dclw(t(A), t(B), temperature=1.0, sigma=0.5)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_dclw_equals_dcl_when_all_positives_are_equally_similar():
    # every positive pair has similarity 1 -> all vMF weights are exactly 1
    z = rand(5, 3, seed=9)
    assert losses.dclw(z, z, 0.1).item() == pytest.approx(losses.dcl(z, z, 0.1).item(), rel=1e-12)


def dcl_loop(z1, z2, tau, weights=None):
    """Per-anchor loop of DCL(W) in torch ops; ``weights`` are plain python floats (constants)."""
    n = z1.shape[0]
    e1, e2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    terms = []
    for anchors, same, other in ((e1, e1, e2), (e2, e2, e1)):
        for i in range(n):
            w = 1.0 if weights is None else weights[i]
            pos = (e1[i] @ e2[i]) / tau
            negs = [anchors[i] @ same[j] / tau for j in range(n) if j != i]
            negs += [anchors[i] @ other[j] / tau for j in range(n) if j != i]
            terms.append(-w * pos + torch.logsumexp(torch.stack(negs), dim=0))
    return torch.stack(terms).mean()


def test_dcl_matches_explicit_loop():
    z1, z2 = rand(6, 4, seed=15), rand(6, 4, seed=16)
    for tau in (0.1, 0.5):
        assert losses.dcl(z1, z2, tau).item() == pytest.approx(dcl_loop(z1, z2, tau).item(), rel=1e-10)


def test_dclw_weight_carries_no_gradient():
    # The gradient of dclw must equal that of DCL with the vMF weights frozen
    # as constants (computed here with math from the formula).
    n, tau, sigma = 5, 0.3, 0.5
    z1 = rand(n, 3, seed=10, requires_grad=True)
    z2 = rand(n, 3, seed=17, requires_grad=True)
    u1, u2 = F.normalize(z1.detach(), dim=1), F.normalize(z2.detach(), dim=1)
    s = [float(u1[i] @ u2[i]) / sigma for i in range(n)]
    w = [2 - n * math.exp(si) / sum(math.exp(sj) for sj in s) for si in s]
    got = torch.autograd.grad(losses.dclw(z1, z2, tau, sigma), (z1, z2))
    want_value = dcl_loop(z1, z2, tau, weights=w)
    want = torch.autograd.grad(want_value, (z1, z2))
    assert losses.dclw(z1, z2, tau, sigma).item() == pytest.approx(want_value.item(), rel=1e-10)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("fn", [losses.dcl, losses.dclw])
def test_dcl_invariances_and_gradient(fn):
    z1, z2 = rand(6, 4, seed=11), rand(6, 4, seed=12)
    base = fn(z1, z2, 0.2).item()
    perm = torch.tensor([3, 1, 5, 0, 2, 4])
    assert fn(z1[perm], z2[perm], 0.2).item() == pytest.approx(base, rel=1e-12)
    assert fn(2.5 * z1, 7 * z2, 0.2).item() == pytest.approx(base, rel=1e-12)
    assert fn(z2, z1, 0.2).item() == pytest.approx(base, rel=1e-12)
    a, b = rand(8, 16, seed=13, requires_grad=True), rand(8, 16, seed=14, requires_grad=True)
    fn(a, b, 0.1).backward()
    assert_finite_grads(a, b)


# --------------------------------------------------------------------------
# iSogCLR
# --------------------------------------------------------------------------


def test_isogclr_hand_identical_orthonormal_first_step():
    # tau = 0.5 everywhere, u = 0 (not yet initialised -> u_new = g).
    # Anchor a1: positive b1 (sim 1), negatives a2, b2 (sim 0): h = -1, -1
    # g = mean(e^{-1/0.5}) = e^-2; F = tau log g + tau rho = 0.5 * (-2) + 0.5 * 0.4 = -0.8
    z = t(EYE)
    tau = torch.full((2,), 0.5, dtype=torch.float64)
    zero = torch.zeros(2, dtype=torch.float64)
    loss, u1, u2 = losses.isogclr_loss(z, z, tau, tau, zero, zero, gamma=0.8, rho=0.4)
    assert loss.item() == pytest.approx(-0.8, rel=1e-9)
    assert torch.allclose(u1, torch.full((2,), math.exp(-2), dtype=torch.float64))
    assert torch.allclose(u2, u1)


def test_isogclr_hand_moving_average():
    # Same batch, u = 1 already: u_new = (1 - 0.8) * 1 + 0.8 * e^-2
    z = t(EYE)
    tau = torch.full((2,), 0.5, dtype=torch.float64)
    one = torch.ones(2, dtype=torch.float64)
    loss, u1, _ = losses.isogclr_loss(z, z, tau, tau, one, one, gamma=0.8, rho=0.4)
    u_new = 0.2 + 0.8 * math.exp(-2)
    assert u1[0].item() == pytest.approx(u_new, rel=1e-12)
    assert loss.item() == pytest.approx(0.5 * (math.log(u_new) + 0.4), rel=1e-9)


def isogclr_asymmetric_case():
    # a1 (tau 0.5): pos 0.6, negatives a2 0, b2 0       -> h = -0.6, -0.6, g = e^{-1.2}
    # a2 (tau 1.0): pos 1,   negatives a1 0, b1 0.8     -> h = -1, -0.2,   g = (e^-1 + e^-0.2)/2
    # b1 (tau .25): pos 0.6, negatives b2 0.8, a2 0.8   -> h = 0.2, 0.2,   g = e^{0.8}
    # b2 (tau 0.5): pos 1,   negatives b1 0.8, a1 0     -> h = -0.2, -1,   g = (e^-0.4 + e^-2)/2
    taus = [0.5, 1.0, 0.25, 0.5]
    hs = [(-0.6, -0.6), (-1.0, -0.2), (0.2, 0.2), (-0.2, -1.0)]
    return taus, hs


def test_isogclr_hand_asymmetric_value_and_tau_gradient():
    rho = 0.4
    taus, hs = isogclr_asymmetric_case()

    def objective(tau, h):  # F(tau) = tau log(mean exp(h / tau)) + tau rho
        return tau * math.log(sum(math.exp(x / tau) for x in h) / len(h)) + tau * rho

    expected = sum(objective(tau, h) for tau, h in zip(taus, hs)) / 4
    tau1 = torch.tensor(taus[:2], dtype=torch.float64, requires_grad=True)
    tau2 = torch.tensor(taus[2:], dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(2, dtype=torch.float64)
    loss, u1, u2 = losses.isogclr_loss(t(A), t(B), tau1, tau2, zero, zero, gamma=0.9, rho=rho)
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    assert u1[1].item() == pytest.approx((math.exp(-1) + math.exp(-0.2)) / 2, rel=1e-12)
    assert u2[0].item() == pytest.approx(math.exp(0.8), rel=1e-12)

    # u = g on the first step, so the gradient in tau is the true dF/dtau / (2N).
    # For a single repeated h, tau log e^{h/tau} = h is constant: dF/dtau = rho exactly.
    loss.backward()
    h = 1e-6
    fd = [(objective(tau + h, hh) - objective(tau - h, hh)) / (2 * h) / 4 for tau, hh in zip(taus, hs)]
    assert fd[0] == pytest.approx(rho / 4) and fd[2] == pytest.approx(rho / 4)
    assert tau1.grad.tolist() == pytest.approx(fd[:2], rel=1e-6)
    assert tau2.grad.tolist() == pytest.approx(fd[2:], rel=1e-6)


def test_isogclr_gradient_matches_true_objective_when_u_is_exact():
    # gamma = 1 makes u_new = g, so the surrogate's gradient must equal the
    # autograd gradient of the objective mean_i [tau_i log g_i + tau_i rho].
    n, rho = 5, 0.4
    z1, z2 = rand(n, 3, seed=20, requires_grad=True), rand(n, 3, seed=21, requires_grad=True)
    g = torch.Generator().manual_seed(0)
    tau1 = (0.1 + torch.rand(n, generator=g, dtype=torch.float64)).requires_grad_(True)
    tau2 = (0.1 + torch.rand(n, generator=g, dtype=torch.float64)).requires_grad_(True)
    u = torch.ones(n, dtype=torch.float64)
    loss, _, _ = losses.isogclr_loss(z1, z2, tau1, tau2, u, u, gamma=1.0, rho=rho)
    grads = torch.autograd.grad(loss, (z1, z2, tau1, tau2))

    def direct(z1, z2, tau1, tau2):
        e1, e2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
        terms = []
        for anchors, same, other, tau in ((e1, e1, e2, tau1), (e2, e2, e1, tau2)):
            for i in range(n):
                pos = e1[i] @ e2[i]
                negs = [anchors[i] @ same[j] - pos for j in range(n) if j != i]
                negs += [anchors[i] @ other[j] - pos for j in range(n) if j != i]
                g_i = torch.stack([torch.exp(x / tau[i]) for x in negs]).mean()
                terms.append(tau[i] * torch.log(g_i) + tau[i] * rho)
        return torch.stack(terms).mean()

    want = torch.autograd.grad(direct(z1, z2, tau1, tau2), (z1, z2, tau1, tau2))
    for got_g, want_g in zip(grads, want):
        assert torch.allclose(got_g, want_g, rtol=1e-8, atol=1e-10)


def test_isogclr_invariances_and_gradient():
    n = 6
    z1, z2 = rand(n, 4, seed=22), rand(n, 4, seed=23)
    tau1 = torch.linspace(0.1, 0.6, n, dtype=torch.float64)
    tau2 = torch.linspace(0.2, 0.7, n, dtype=torch.float64)
    u1 = torch.linspace(0.5, 2.0, n, dtype=torch.float64)
    u2 = torch.linspace(1.0, 3.0, n, dtype=torch.float64)
    base, bu1, bu2 = losses.isogclr_loss(z1, z2, tau1, tau2, u1, u2)
    perm = torch.tensor([2, 0, 5, 1, 4, 3])
    got, pu1, pu2 = losses.isogclr_loss(z1[perm], z2[perm], tau1[perm], tau2[perm], u1[perm], u2[perm])
    assert got.item() == pytest.approx(base.item(), rel=1e-12)
    assert torch.allclose(pu1, bu1[perm]) and torch.allclose(pu2, bu2[perm])
    scaled, _, _ = losses.isogclr_loss(3 * z1, 0.5 * z2, tau1, tau2, u1, u2)
    assert scaled.item() == pytest.approx(base.item(), rel=1e-12)
    # gradients reach the embeddings and every temperature
    a, b = rand(8, 16, seed=24, requires_grad=True), rand(8, 16, seed=25, requires_grad=True)
    ta = torch.full((8,), 0.1, dtype=torch.float64, requires_grad=True)
    tb = torch.full((8,), 0.1, dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(8, dtype=torch.float64)
    loss, nu1, _ = losses.isogclr_loss(a, b, ta, tb, zero, zero)
    loss.backward()
    assert_finite_grads(a, b, ta, tb)
    assert (ta.grad != 0).all() and not nu1.requires_grad


def test_isogclr_bad_inputs():
    z = rand(4, 3)
    tau, u = torch.full((4,), 0.1), torch.zeros(4)
    with pytest.raises(LossInputError, match="one entry per sample"):
        losses.isogclr_loss(z, z, torch.full((3,), 0.1), tau, u, u)
    with pytest.raises(LossInputError, match="must be positive"):
        losses.isogclr_loss(z, z, torch.tensor([0.1, 0.0, 0.1, 0.1]), tau, u, u)
    with pytest.raises(LossInputError, match="gamma must be in"):
        losses.isogclr_loss(z, z, tau, tau, u, u, gamma=0.0)
    with pytest.raises(LossInputError, match="at least 2 samples"):
        losses.isogclr_loss(z[:1], z[:1], tau[:1], tau[:1], u[:1], u[:1])


# --------------------------------------------------------------------------
# MV-InfoNCE
# --------------------------------------------------------------------------


def test_infonce_multiview_hand_two_identical_views_equals_nt_xent():
    # tau = 1. Sample i: numerator = 2 e (the two ordered positive pairs);
    # denominator = 2 (e + 2) (each of the two views: its positive e, two negatives e^0).
    # L = log(2 (e + 2) / (2 e)) = log(1 + 2/e), the same as NT-Xent here.
    got = losses.infonce_multiview([t(EYE), t(EYE)], temperature=1.0)
    assert got.item() == pytest.approx(math.log(1 + 2 / E), rel=1e-12)
    assert got.item() == pytest.approx(losses.nt_xent(t(EYE), t(EYE), 1.0).item(), rel=1e-12)


def test_infonce_multiview_hand_three_views():
    # Views of sample 1: a = (1,0), b = (1,0), c = (0.6,0.8); sample 2: d = e = f = (0,1). tau = 1.
    # Sample 1: numerator over ordered pairs: a.b = 1 (x2), a.c = 0.6 (x2), b.c = 0.6 (x2)
    #   -> 2e + 4 e^0.6
    # denominator: anchor a: b 1, c 0.6, d e f 0  -> e + e^0.6 + 3 ; anchor b: the same
    #              anchor c: a 0.6, b 0.6, d e f 0.8 -> 2 e^0.6 + 3 e^0.8
    # Sample 2: numerator 6e; denominator per anchor: 2 positives e, a 0, b 0, c 0.8
    #   -> 3 (2e + 2 + e^0.8)
    num1 = 2 * E + 4 * math.exp(0.6)
    den1 = 2 * (E + math.exp(0.6) + 3) + 2 * math.exp(0.6) + 3 * math.exp(0.8)
    num2 = 6 * E
    den2 = 3 * (2 * E + 2 + math.exp(0.8))
    expected = (math.log(den1 / num1) + math.log(den2 / num2)) / 2
    v1 = t([[1.0, 0.0], [0.0, 1.0]])
    v2 = t([[1.0, 0.0], [0.0, 1.0]])
    v3 = t([[0.6, 0.8], [0.0, 1.0]])
    got = losses.infonce_multiview([v1, v2, v3], temperature=1.0)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # a [V, N, D] tensor works the same, and the order of the views does not matter
    stacked = torch.stack([v3, v1, v2])
    assert losses.infonce_multiview(stacked, 1.0).item() == pytest.approx(expected, rel=1e-12)


def test_infonce_multiview_two_views_bounds_nt_xent():
    # V = 2: MV = log((D_a + D_b)/2) - s/tau >= (log D_a + log D_b)/2 - s/tau = NT-Xent
    for seed in range(5):
        z1, z2 = rand(6, 4, seed=30 + seed), rand(6, 4, seed=40 + seed)
        mv = losses.infonce_multiview([z1, z2], 0.3).item()
        nt = losses.nt_xent(z1, z2, 0.3).item()
        assert mv >= nt - 1e-12
        assert mv - nt < 0.5  # same loss up to the log-mean vs mean-log gap


def test_infonce_multiview_invariances_and_gradient():
    views = rand(4, 6, 5, seed=31)
    base = losses.infonce_multiview(views, 0.2).item()
    perm = torch.tensor([5, 3, 1, 0, 2, 4])
    assert losses.infonce_multiview(views[:, perm], 0.2).item() == pytest.approx(base, rel=1e-12)
    assert losses.infonce_multiview(views * 4.0, 0.2).item() == pytest.approx(base, rel=1e-12)
    x = rand(3, 8, 16, seed=32, requires_grad=True)
    losses.infonce_multiview(x, 0.1).backward()
    assert_finite_grads(x)


def test_infonce_multiview_bad_inputs():
    with pytest.raises(LossInputError, match="at least 2 views"):
        losses.infonce_multiview([rand(4, 3)], 0.1)
    with pytest.raises(LossInputError, match="same shape"):
        losses.infonce_multiview([rand(4, 3), rand(4, 2)], 0.1)
    with pytest.raises(LossInputError, match=r"\[V, N, D\]"):
        losses.infonce_multiview(rand(4, 3), 0.1)
    with pytest.raises(LossInputError, match="temperature"):
        losses.infonce_multiview(rand(2, 4, 3), -1.0)


# --------------------------------------------------------------------------
# MoCo / MoCHi
# --------------------------------------------------------------------------


def test_moco_hand():
    # tau = 0.5: logits q.k = 1 -> 2, queue (0,1) -> 0, (-1,0) -> -2
    # L = -log(e^2 / (e^2 + 1 + e^-2)) = log(1 + e^-2 + e^-4)
    q, k = t([[1.0, 0.0]]), t([[1.0, 0.0]])
    queue = t([[0.0, 1.0], [-1.0, 0.0]])
    got = losses.moco(q, k, queue, temperature=0.5)
    assert got.item() == pytest.approx(math.log(1 + math.exp(-2) + math.exp(-4)), rel=1e-12)
    # an extra per-query negative (0,1) adds one more e^0 to the denominator
    extra = t([[[0.0, 3.0]]])
    got = losses.moco(q, k, queue, temperature=0.5, extra_negatives=extra)
    assert got.item() == pytest.approx(math.log(1 + 2 * math.exp(-2) + math.exp(-4)), rel=1e-12)


def test_moco_invariances_and_gradient():
    q, k, queue = rand(5, 4, seed=50), rand(5, 4, seed=51), rand(9, 4, seed=52)
    base = losses.moco(q, k, queue, 0.2).item()
    perm = torch.tensor([4, 2, 0, 1, 3])
    assert losses.moco(q[perm], k[perm], queue, 0.2).item() == pytest.approx(base, rel=1e-12)
    assert losses.moco(2 * q, 3 * k, 0.1 * queue, 0.2).item() == pytest.approx(base, rel=1e-12)
    qperm = torch.tensor([8, 7, 6, 5, 4, 3, 2, 1, 0])
    assert losses.moco(q, k, queue[qperm], 0.2).item() == pytest.approx(base, rel=1e-12)
    qq = rand(5, 16, seed=53, requires_grad=True)
    queue = rand(32, 16, seed=54, requires_grad=True)
    extra = losses.mochi_negatives(qq, queue, n_hard=8, s=4, s_prime=2)
    losses.moco(qq, rand(5, 16, seed=55), queue, 0.2, extra_negatives=extra).backward()
    assert_finite_grads(qq)
    assert queue.grad is None  # the queue is a constant


def test_mochi_hand_geometry():
    # q = (0.8, 0.6); queue sims: (1,0) -> 0.8, (0,1) -> 0.6, (-1,0) -> -0.8
    q = t([[0.8, 0.6]])
    queue = t([[-1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    # N = 1: every negative-negative mix is the hardest negative itself
    out = losses.mochi_negatives(q, queue, n_hard=1, s=3, s_prime=0, generator=g)
    assert out.shape == (1, 3, 2)
    assert torch.allclose(out, t([[[1.0, 0.0]] * 3]))
    # N = 2: mixes of (1,0) and (0,1) stay on the arc between them
    out = losses.mochi_negatives(q, queue, n_hard=2, s=50, s_prime=0, generator=g)
    assert (out >= -1e-12).all()
    # query mixes beta q + (1 - beta) n, beta < 0.5: nearer the negative than the query
    n1 = t([1.0, 0.0])
    out = losses.mochi_negatives(q, queue, n_hard=1, s=0, s_prime=50, generator=g)[0]
    assert ((out @ n1) >= (out @ q[0]) - 1e-12).all()
    assert ((out @ q[0]) >= 0.8 - 1e-12).all()  # and between q and n on the arc


def test_mochi_shapes_norms_and_reproducibility():
    q, queue = rand(4, 8, seed=60, requires_grad=True), rand(20, 8, seed=61)
    a = losses.mochi_negatives(q, queue, n_hard=5, s=6, s_prime=3, generator=torch.Generator().manual_seed(1))
    b = losses.mochi_negatives(q, queue, n_hard=5, s=6, s_prime=3, generator=torch.Generator().manual_seed(1))
    assert a.shape == (4, 9, 8)
    assert torch.allclose(a.norm(dim=-1), torch.ones(4, 9, dtype=a.dtype))
    assert torch.equal(a, b)
    assert not a.requires_grad
    assert losses.mochi_negatives(q, queue, n_hard=5, s=0, s_prime=0).shape == (4, 0, 8)


def test_moco_and_mochi_bad_inputs():
    q = rand(4, 8)
    with pytest.raises(LossInputError, match=r"queue must have shape \[K, 8\]"):
        losses.moco(q, q, rand(5, 7), 0.2)
    with pytest.raises(LossInputError, match="extra_negatives must have shape"):
        losses.moco(q, q, rand(5, 8), 0.2, extra_negatives=rand(4, 2, 7))
    with pytest.raises(LossInputError, match="temperature"):
        losses.moco(q, q, rand(5, 8), 0.0)
    with pytest.raises(LossInputError, match="exceeds the queue length"):
        losses.mochi_negatives(q, rand(5, 8), n_hard=6)
    with pytest.raises(LossInputError, match="non-negative integer"):
        losses.mochi_negatives(q, rand(5, 8), n_hard=2, s=-1)


# --------------------------------------------------------------------------
# BYOL / SimSiam
# --------------------------------------------------------------------------


def test_byol_and_simsiam_hand():
    # cos(p_1, z_1) = 1, cos(p_2, z_2) = 0
    p = t([[2.0, 0.0], [0.0, 3.0]])
    z = t([[5.0, 0.0], [1.0, 0.0]])
    assert losses.byol(p, z).item() == pytest.approx(((2 - 2) + (2 - 0)) / 2)
    assert losses.simsiam(p, z).item() == pytest.approx(-(1 + 0) / 2)
    # a batch of one is fine for these two
    assert losses.byol(p[:1], z[:1]).item() == pytest.approx(0.0, abs=1e-12)


def test_byol_multicrop_hand_pair_average():
    # Teacher targets of the 2 global crops z0 = (1, 0), z1 = (0, 1); predictions of the crops
    # p0 = (1, 0) (global 0), p1 = (3, 0) (global 1), p2 = (1, 1) (a local crop). N = 1.
    # Pairs (target g, prediction j != g): (0,1): 2 - 2*1 = 0; (0,2): 2 - 2/sqrt2;
    #                                      (1,0): 2 - 2*0 = 2; (1,2): 2 - 2/sqrt2.
    z = [t([[1.0, 0.0]]), t([[0.0, 1.0]])]
    p = [t([[1.0, 0.0]]), t([[3.0, 0.0]]), t([[1.0, 1.0]])]
    want = (0.0 + (2 - math.sqrt(2)) + 2.0 + (2 - math.sqrt(2))) / 4
    assert losses.byol_multicrop(p, z).item() == pytest.approx(want, rel=1e-12)


def test_byol_multicrop_with_two_crops_is_the_symmetrised_byol_loss():
    p = [rand(6, 5, seed=74), rand(6, 5, seed=75)]
    z = [rand(6, 5, seed=76), rand(6, 5, seed=77)]
    # the very same float operations (a sum of two terms halved) as BYOL's two-view loss
    assert torch.equal(losses.byol_multicrop(p, z), 0.5 * (losses.byol(p[0], z[1]) + losses.byol(p[1], z[0])))
    # a local crop adds its two pairs to the mean
    local = rand(6, 5, seed=78)
    got = losses.byol_multicrop(p + [local], z)
    want = (losses.byol(p[1], z[0]) + losses.byol(local, z[0]) + losses.byol(p[0], z[1]) + losses.byol(local, z[1])) / 4
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    with pytest.raises(LossInputError, match="byol_multicrop: 3 targets but 2 predictions"):
        losses.byol_multicrop(p, z + [local])
    with pytest.raises(LossInputError, match="byol_multicrop: needs at least two crops"):
        losses.byol_multicrop(p[:1], z[:1])


@pytest.mark.parametrize("fn", [losses.byol, losses.simsiam])
def test_byol_simsiam_invariances_and_gradient(fn):
    p, z = rand(6, 5, seed=70), rand(6, 5, seed=71)
    base = fn(p, z).item()
    perm = torch.tensor([1, 0, 3, 2, 5, 4])
    assert fn(p[perm], z[perm]).item() == pytest.approx(base, rel=1e-12)
    assert fn(4 * p, 0.3 * z).item() == pytest.approx(base, rel=1e-12)
    pp = rand(8, 16, seed=72, requires_grad=True)
    fn(pp, rand(8, 16, seed=73)).backward()
    assert_finite_grads(pp)


# --------------------------------------------------------------------------
# Barlow Twins and the mixed-sample regulariser
# --------------------------------------------------------------------------


def test_barlow_twins_hand():
    # z = [[1, 1], [-1, -1]]: each column has mean 0 and biased variance 1, so the
    # standardised z is z / sqrt(1 + 1e-5); with z1 = z2: C = a * [[1, 1], [1, 1]],
    # a = 1 / (1 + 1e-5). L = 2 (1 - a)^2 + lambda * 2 a^2.
    z = t([[1.0, 1.0], [-1.0, -1.0]])
    a = 1 / (1 + 1e-5)
    lambd = 0.0051
    expected = 2 * (1 - a) ** 2 + lambd * 2 * a**2
    assert losses.barlow_twins(z, z, lambd=lambd).item() == pytest.approx(expected, rel=1e-12)


def barlow_loop(z1, z2, lambd, eps=1e-5):
    n, d = z1.shape

    def standardize(z):
        cols = []
        for j in range(d):
            col = [float(z[b, j]) for b in range(n)]
            mean = sum(col) / n
            var = sum((x - mean) ** 2 for x in col) / n
            cols.append([(x - mean) / math.sqrt(var + eps) for x in col])
        return cols  # cols[j][b]

    a, b = standardize(z1), standardize(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[i][k] * b[j][k] for k in range(n)) / n
            loss += (1 - c_ij) ** 2 if i == j else lambd * c_ij**2
    return loss


def test_barlow_twins_matches_loop_formula():
    z1, z2 = rand(9, 4, seed=80), rand(9, 4, seed=81) * 3 + 1
    for lambd in (0.0, 0.0051, 0.5):
        got = losses.barlow_twins(z1, z2, lambd).item()
        assert got == pytest.approx(barlow_loop(z1, z2, lambd), rel=1e-10)


def test_barlow_twins_invariances_and_gradient():
    z1, z2 = rand(8, 5, seed=82), rand(8, 5, seed=83)
    base = losses.barlow_twins(z1, z2).item()
    perm = torch.tensor([7, 0, 6, 1, 5, 2, 4, 3])
    assert losses.barlow_twins(z1[perm], z2[perm]).item() == pytest.approx(base, rel=1e-12)
    # per-dimension standardisation: affine maps of each dimension (positive scale) do not
    # matter, up to the BatchNorm eps (1e-5) added to variances that the scaling changes
    got = losses.barlow_twins(z1 * 4 + 2, z2 * 0.5 - 1).item()
    assert got == pytest.approx(base, rel=1e-4)
    a, b = rand(8, 16, seed=84, requires_grad=True), rand(8, 16, seed=85, requires_grad=True)
    losses.barlow_twins(a, b).backward()
    assert_finite_grads(a, b)


def test_mixed_barlow_hand():
    # D = 1, N = 2: standardised columns are +-a, a = 1/sqrt(1 + 1e-5).
    # z_A = z_B = [1, -1], z_M = [-1, 1], l = 0.5, identity perm:
    # C^MA = a^2 (-1 - 1)/2 = -a^2 ; C^MA_gt = 0.5 a^2 + 0.5 a^2 = a^2 -> diff^2 = 4 a^4
    # C^MB and C^MB_gt alike -> 4 a^4 ; L = lambda * 8 a^4
    a2 = 1 / (1 + 1e-5)
    zA = t([[1.0], [-1.0]])
    zM = t([[-1.0], [1.0]])
    got = losses.mixed_barlow_regularizer(zA, zA, zM, mix_lambda=0.5, lambd=0.25)
    assert got.item() == pytest.approx(0.25 * 8 * a2**2, rel=1e-12)


def test_mixed_barlow_is_zero_when_mixing_is_linear_at_the_ends():
    z1, z2 = rand(6, 4, seed=90), rand(6, 4, seed=91)
    perm = torch.tensor([3, 4, 5, 0, 1, 2])
    # l = 1: the mixed input is view 1 itself
    assert losses.mixed_barlow_regularizer(z1, z2, z1, 1.0, 0.0051, perm).item() == pytest.approx(0, abs=1e-12)
    # l = 0: the mixed input is view 2 permuted
    assert losses.mixed_barlow_regularizer(z1, z2, z2[perm], 0.0, 0.0051, perm).item() == pytest.approx(
        0, abs=1e-12
    )


def test_mixed_barlow_invariances_and_gradient():
    z1, z2, zm = rand(6, 4, seed=92), rand(6, 4, seed=93), rand(6, 4, seed=94)
    perm = torch.tensor([1, 2, 0, 4, 5, 3])
    base = losses.mixed_barlow_regularizer(z1, z2, zm, 0.3, 0.01, perm).item()
    # relabel the batch by sigma: every row moves, and perm becomes sigma^-1 . perm . sigma
    sigma = torch.tensor([5, 3, 1, 0, 2, 4])
    inv = torch.argsort(sigma)
    new_perm = inv[perm[sigma]]
    got = losses.mixed_barlow_regularizer(z1[sigma], z2[sigma], zm[sigma], 0.3, 0.01, new_perm).item()
    assert got == pytest.approx(base, rel=1e-10)
    a, b, m = (rand(8, 16, seed=s, requires_grad=True) for s in (95, 96, 97))
    losses.mixed_barlow_regularizer(a, b, m, 0.4, 0.0051, torch.randperm(8)).backward()
    assert_finite_grads(a, b, m)
    with pytest.raises(LossInputError, match="permutation"):
        losses.mixed_barlow_regularizer(z1, z2, zm, 0.3, 0.01, torch.tensor([0, 0, 1, 2, 3, 4]))
    with pytest.raises(LossInputError, match="mix_lambda"):
        losses.mixed_barlow_regularizer(z1, z2, zm, 1.5, 0.01)


# --------------------------------------------------------------------------
# VICReg
# --------------------------------------------------------------------------


def test_vicreg_hand_zero_variance():
    # Identical rows: Var = 0 in every dimension, std = sqrt(0 + 1e-4) = 0.01,
    # hinge = 1 - 0.01 = 0.99 per dimension -> v = 0.99 per branch, (0.99 + 0.99)/2 = 0.99.
    # invariance: each row differs by (1, 0): mse = 3 * 1 / 6 = 0.5 ; covariance = 0.
    z1 = t([[1.0, 2.0]] * 3)
    z2 = t([[0.0, 2.0]] * 3)
    got = losses.vicreg(z1, z2)
    assert got.item() == pytest.approx(25 * 0.5 + 25 * 0.99 + 1 * 0.0, rel=1e-12)
    # the variance term alone, per unit of weight, is 0.99
    only_var = losses.vicreg(z1, z1, sim_weight=0.0, var_weight=1.0, cov_weight=0.0)
    assert only_var.item() == pytest.approx(0.99, rel=1e-12)


def test_vicreg_hand_covariance():
    # z = [[1, 1], [-1, -1]] in both branches: invariance 0; unbiased Var = 2 per dim,
    # std = sqrt(2.0001) > 1 so the hinge is 0; Cov = z^T z / (N - 1) = [[2, 2], [2, 2]],
    # off-diagonal squares 2^2 + 2^2 = 8, / D = 4 per branch -> 8 total.
    z = t([[1.0, 1.0], [-1.0, -1.0]])
    assert losses.vicreg(z, z).item() == pytest.approx(8.0, rel=1e-12)


def test_vicreg_invariances_and_gradient():
    z1, z2 = rand(8, 5, seed=100), rand(8, 5, seed=101)
    base = losses.vicreg(z1, z2).item()
    perm = torch.tensor([7, 0, 6, 1, 5, 2, 4, 3])
    assert losses.vicreg(z1[perm], z2[perm]).item() == pytest.approx(base, rel=1e-12)
    assert losses.vicreg(z2, z1).item() == pytest.approx(base, rel=1e-12)
    # a common shift of both branches changes nothing (centred statistics, difference in mse)
    assert losses.vicreg(z1 + 3, z2 + 3).item() == pytest.approx(base, rel=1e-12)
    a, b = rand(8, 16, seed=102, requires_grad=True), rand(8, 16, seed=103, requires_grad=True)
    losses.vicreg(a, b).backward()
    assert_finite_grads(a, b)


# --------------------------------------------------------------------------
# DINO
# --------------------------------------------------------------------------


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_dino_hand():
    # K = 2, N = 1, teacher_temp 0.5, student_temp 1, center (0.5, 0.5).
    # Teacher crop 0 (1, 0): ((1,0) - c) / 0.5 = (1, -1) -> P = (sig(2), sig(-2)); crop 1 mirrored.
    # Student crops: s0 = (0, 0), s1 = (1, 0), s2 = (0, 2); -log_softmax:
    #   s0: (log 2, log 2); s1: (log(1 + e^-1), log(1 + e)); s2: (log(1 + e^2), log(1 + e^-2))
    # Pairs skip (t0, s0) and (t1, s1): (t0,s1), (t0,s2), (t1,s0), (t1,s2).
    p, q = sigmoid(2), sigmoid(-2)
    h = [
        p * math.log(1 + math.exp(-1)) + q * math.log(1 + E),
        p * math.log(1 + math.exp(2)) + q * math.log(1 + math.exp(-2)),
        math.log(2),
        q * math.log(1 + math.exp(2)) + p * math.log(1 + math.exp(-2)),
    ]
    students = [t([[0.0, 0.0]]), t([[1.0, 0.0]]), t([[0.0, 2.0]])]
    teachers = [t([[1.0, 0.0]]), t([[0.0, 1.0]])]
    center = t([0.5, 0.5])
    got = losses.dino(students, teachers, center, student_temp=1.0, teacher_temp=0.5)
    assert got.item() == pytest.approx(sum(h) / 4, rel=1e-12)
    # tensors [V, N, K] work the same
    got = losses.dino(torch.stack(students), torch.stack(teachers), center, 1.0, 0.5)
    assert got.item() == pytest.approx(sum(h) / 4, rel=1e-12)


def softmax2(a, b):
    """softmax of two logits, by hand."""
    return math.exp(a) / (math.exp(a) + math.exp(b)), math.exp(b) / (math.exp(a) + math.exp(b))


def test_dino_multicrop_hand_two_globals_one_local():
    # DINO eq. 3 with 2 global crops (teacher and student) and 1 local crop (student only):
    #   L = 1/4 [H(Pt(g0), Ps(g1)) + H(Pt(g0), Ps(l)) + H(Pt(g1), Ps(g0)) + H(Pt(g1), Ps(l))]
    # Pt(x) = softmax((g_t(x) - c) / tau_t), Ps(x) = softmax(g_s(x) / tau_s), H(a, b) = -sum_k a_k log b_k,
    # each averaged over the N = 2 rows. K = 2, tau_t = 0.25, tau_s = 0.5, c = (0.2, -0.1).
    tau_t, tau_s, c = 0.25, 0.5, (0.2, -0.1)
    teacher = [[[1.0, 0.0], [0.0, 0.5]], [[0.3, 0.3], [1.0, -1.0]]]  # crop -> row -> logits
    student = [[[0.5, 0.0], [0.0, 1.0]], [[0.0, 0.5], [0.2, 0.0]], [[1.0, 1.0], [-0.5, 0.5]]]  # g0, g1, local

    def p_t(crop, row):
        a, b = teacher[crop][row]
        return softmax2((a - c[0]) / tau_t, (b - c[1]) / tau_t)

    def p_s(crop, row):
        a, b = student[crop][row]
        return softmax2(a / tau_s, b / tau_s)

    def h(tc, sc):  # batch mean of the cross-entropy of one (teacher crop, student crop) pair
        rows = [-sum(pt * math.log(ps) for pt, ps in zip(p_t(tc, r), p_s(sc, r))) for r in range(2)]
        return sum(rows) / 2

    want = (h(0, 1) + h(0, 2) + h(1, 0) + h(1, 2)) / 4
    center = t([c])
    got = losses.dino([t(x) for x in student], [t(x) for x in teacher], center, student_temp=tau_s, teacher_temp=tau_t)
    # float64 softmax/log of O(1) numbers against math's: a few ulps of a value ~0.7
    assert got.item() == pytest.approx(want, rel=1e-12)

    # without the local crop: the two-view loss, (H(g0 -> g1) + H(g1 -> g0)) / 2
    two = losses.dino([t(x) for x in student[:2]], [t(x) for x in teacher], center, tau_s, tau_t)
    assert two.item() == pytest.approx((h(0, 1) + h(1, 0)) / 2, rel=1e-12)
    # the multi-crop loss is the mean of all four pairs, of which the two-view loss is half
    assert got.item() == pytest.approx((2 * two.item() + h(0, 2) + h(1, 2)) / 4, rel=1e-12)


def test_dino_center_update_hand():
    # batch center of teacher logits (1,0) and (0,1) is (0.5, 0.5); c = 0.9 * 0 + 0.1 * 0.5
    center = torch.zeros(2, dtype=torch.float64)
    new = losses.dino_center_update(center, [t([[1.0, 0.0]]), t([[0.0, 1.0]])], momentum=0.9)
    assert torch.allclose(new, t([0.05, 0.05]))
    assert torch.equal(center, torch.zeros(2, dtype=torch.float64))  # pure: input untouched


def test_dino_invariances_and_gradient():
    students = [rand(6, 10, seed=110 + i) for i in range(4)]
    teachers = [rand(6, 10, seed=120 + i) for i in range(2)]
    center = rand(10, seed=130)
    base = losses.dino(students, teachers, center).item()
    perm = torch.tensor([5, 4, 3, 0, 1, 2])
    got = losses.dino([s[perm] for s in students], [x[perm] for x in teachers], center).item()
    assert got == pytest.approx(base, rel=1e-12)
    # softmax ignores a constant added to every logit of the teacher (or the center)
    assert losses.dino(students, [x + 5 for x in teachers], center).item() == pytest.approx(base, rel=1e-10)
    assert losses.dino(students, teachers, center - 2).item() == pytest.approx(base, rel=1e-10)
    s = [rand(8, 32, seed=140 + i, requires_grad=True) for i in range(3)]
    te = [rand(8, 32, seed=150 + i, requires_grad=True) for i in range(2)]
    losses.dino(s, te, torch.zeros(32, dtype=torch.float64)).backward()
    assert_finite_grads(*s)
    assert all(x.grad is None for x in te)  # no gradient into the teacher


def test_dino_bad_inputs():
    s = [rand(4, 8)]
    with pytest.raises(LossInputError, match="at least two crops"):
        losses.dino(s, s, torch.zeros(8))
    with pytest.raises(LossInputError, match="center must have shape"):
        losses.dino([rand(4, 8), rand(4, 8)], [rand(4, 8)], torch.zeros(7))
    with pytest.raises(LossInputError, match="every crop must have shape"):
        losses.dino([rand(4, 8), rand(4, 9)], [rand(4, 8)], torch.zeros(8))
    with pytest.raises(LossInputError, match="teacher_temp"):
        losses.dino([rand(4, 8), rand(4, 8)], [rand(4, 8)], torch.zeros(8), teacher_temp=0.0)
    with pytest.raises(LossInputError, match="momentum"):
        losses.dino_center_update(torch.zeros(8), rand(4, 8), momentum=1.5)


# --------------------------------------------------------------------------
# MSBReg
# --------------------------------------------------------------------------


def test_msbreg_terms_hand():
    # centroid: V = 2, N = 1; online (1,0) and (0,1) -> centroid (0.5, 0.5); targets both (1,0)
    # -> centroid (1, 0); squared distance 0.25 + 0.25 = 0.5
    p = [t([[1.0, 0.0]]), t([[0.0, 1.0]])]
    z = [t([[1.0, 0.0]]), t([[1.0, 0.0]])]
    assert losses.multiview_centroid_loss(p, z).item() == pytest.approx(0.5, rel=1e-12)
    # singular values: orthonormal rows (N = D = 2) -> sigma = (1, 1), sum 2 = sqrt(2 * 2) -> 0
    assert losses.singular_value_loss([t(EYE)]).item() == pytest.approx(0.0, abs=1e-12)
    # collapsed rows: sigma = (sqrt(2), 0) -> 1 - sqrt(2)/sqrt(4) = 1 - 1/sqrt(2)
    collapsed = t([[3.0, 4.0], [3.0, 4.0]])
    assert losses.singular_value_loss([collapsed]).item() == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-9)
    # Brownian: <(1,0), (0.5, 2)> = 0.5 and <(0,1), (1, -3)> = -3 -> mean -1.25
    pb = [t([[2.0, 0.0]]), t([[0.0, 1.0]])]
    noise = [t([[0.5, 2.0]]), t([[1.0, -3.0]])]
    assert losses.brownian_diffusive_loss(pb, noise).item() == pytest.approx(-1.25, rel=1e-12)
    # total with the stochastic term switched off: 2 * 0.5 + 3 * singular(p)
    sv = losses.singular_value_loss(p).item()
    got = losses.msbreg(p, z, centroid_weight=2.0, singular_weight=3.0, brownian_weight=0.0)
    assert got.item() == pytest.approx(2 * 0.5 + 3 * sv, rel=1e-12)


def test_brownian_gradient_is_the_noise():
    # d L_B / d p_hat = noise / (V N): a gradient step is a random kick
    p = F.normalize(rand(1, 3, 4, seed=160), dim=-1).requires_grad_(True)
    noise = rand(1, 3, 4, seed=161)
    losses.brownian_diffusive_loss(p, noise).backward()
    # for unit-norm p the gradient is the tangential part of noise / (V N)
    expected = (noise - (noise * p.detach()).sum(-1, keepdim=True) * p.detach()) / 3
    assert torch.allclose(p.grad, expected)


def test_msbreg_invariances_reproducibility_and_gradient():
    p, z = rand(2, 6, 5, seed=170), rand(2, 6, 5, seed=171)
    kw = dict(centroid_weight=1.0, singular_weight=0.5, brownian_weight=0.0)
    base = losses.msbreg(p, z, **kw).item()
    perm = torch.tensor([2, 0, 1, 5, 3, 4])
    assert losses.msbreg(p[:, perm], z[:, perm], **kw).item() == pytest.approx(base, rel=1e-10)
    assert losses.msbreg(3 * p, 0.5 * z, **kw).item() == pytest.approx(base, rel=1e-10)
    kw = dict(centroid_weight=1.0, singular_weight=0.5, brownian_weight=0.1)
    a = losses.msbreg(p, z, **kw, generator=torch.Generator().manual_seed(3)).item()
    b = losses.msbreg(p, z, **kw, generator=torch.Generator().manual_seed(3)).item()
    assert a == b
    pp = rand(2, 8, 16, seed=172, requires_grad=True)
    losses.msbreg(pp, rand(2, 8, 16, seed=173), **kw).backward()
    assert_finite_grads(pp)


def test_msbreg_bad_inputs():
    with pytest.raises(LossInputError, match="same shape"):
        losses.msbreg(rand(2, 4, 3), rand(2, 4, 2), centroid_weight=1, singular_weight=1, brownian_weight=1)
    with pytest.raises(LossInputError, match="brownian_weight must be a non-negative"):
        losses.msbreg(rand(2, 4, 3), rand(2, 4, 3), centroid_weight=1, singular_weight=1, brownian_weight=-1)
    with pytest.raises(TypeError):
        losses.msbreg(rand(2, 4, 3), rand(2, 4, 3))  # weights are required: defaults live in the config


# --------------------------------------------------------------------------
# DirectPred
# --------------------------------------------------------------------------


def test_directpred_predictor_hand():
    # F = diag(4, 1): s = (4, 1), p = sqrt(s / 4) + 0.1 = (1.1, 0.6)
    w = losses.directpred_predictor(t([[4.0, 0.0], [0.0, 1.0]]), alpha=0.5, eps=0.1)
    assert torch.allclose(w, t([[1.1, 0.0], [0.0, 0.6]]))
    # the same spectrum in a rotated basis: W = R diag(1.1, 0.6) R^T
    c, s = math.cos(0.3), math.sin(0.3)
    r = t([[c, -s], [s, c]])
    w = losses.directpred_predictor(r @ t([[4.0, 0.0], [0.0, 1.0]]) @ r.T)
    assert torch.allclose(w, r @ t([[1.1, 0.0], [0.0, 0.6]]) @ r.T)
    # negative eigenvalues count as zero: p = 0 + eps
    w = losses.directpred_predictor(t([[2.0, 0.0], [0.0, -1.0]]), eps=0.1)
    assert torch.allclose(w, t([[1.1, 0.0], [0.0, 0.1]]))
    # and scaling F does not change W (eigenvalues are normalised by the largest)
    w1 = losses.directpred_predictor(t([[4.0, 1.0], [1.0, 2.0]]))
    w2 = losses.directpred_predictor(10 * t([[4.0, 1.0], [1.0, 2.0]]))
    assert torch.allclose(w1, w2)


def test_directpred_correlation_update_hand():
    # batch rows (1, 0), (0, 2): E[f f^T] = diag(1, 4) / 2 = diag(0.5, 2)
    z = t([[1.0, 0.0], [0.0, 2.0]])
    first = losses.directpred_correlation_update(None, z)
    assert torch.allclose(first, t([[0.5, 0.0], [0.0, 2.0]]))
    # 0.3 * I + 0.7 * diag(0.5, 2) = diag(0.65, 1.7)
    nxt = losses.directpred_correlation_update(torch.eye(2, dtype=torch.float64), z, rho=0.3)
    assert torch.allclose(nxt, t([[0.65, 0.0], [0.0, 1.7]]))


def test_directpred_bad_inputs():
    with pytest.raises(LossInputError, match="square"):
        losses.directpred_predictor(rand(3, 4))
    with pytest.raises(LossInputError, match="no positive eigenvalue"):
        losses.directpred_predictor(torch.zeros(3, 3))
    with pytest.raises(LossInputError, match="alpha"):
        losses.directpred_predictor(torch.eye(3), alpha=0.0)
    with pytest.raises(LossInputError, match="corr must have shape"):
        losses.directpred_correlation_update(torch.eye(3), rand(4, 2))


# --------------------------------------------------------------------------
# Bad inputs shared by the two-view losses
# --------------------------------------------------------------------------

TWO_VIEW = {
    "nt_xent": lambda a, b, **k: losses.nt_xent(a, b, **k),
    "dcl": lambda a, b, **k: losses.dcl(a, b, **k),
    "dclw": lambda a, b, **k: losses.dclw(a, b, **k),
    "barlow_twins": lambda a, b, **k: losses.barlow_twins(a, b),
    "vicreg": lambda a, b, **k: losses.vicreg(a, b),
    "mixed_barlow_regularizer": lambda a, b, **k: losses.mixed_barlow_regularizer(a, b, a, 0.5, 0.01),
}


@pytest.mark.parametrize("name", sorted(TWO_VIEW))
def test_two_view_losses_reject_bad_inputs(name):
    fn = TWO_VIEW[name]
    with pytest.raises(LossInputError, match=rf"{name}: needs a batch of at least 2 samples, got 1"):
        fn(rand(1, 4), rand(1, 4))
    with pytest.raises(LossInputError, match=r"must have the same shape, got \(4, 3\) and \(4, 5\)"):
        fn(rand(4, 3), rand(4, 5))
    with pytest.raises(LossInputError, match=r"must have 2 dimensions, got shape \(2, 4, 3\)"):
        fn(rand(2, 4, 3), rand(2, 4, 3))
    with pytest.raises(LossInputError, match="must be a torch.Tensor"):
        fn([[1.0, 2.0]], rand(1, 2))


@pytest.mark.parametrize("fn", [losses.nt_xent, losses.dcl, losses.dclw])
@pytest.mark.parametrize("bad", [0.0, -0.1, float("nan"), float("inf")])
def test_contrastive_losses_reject_bad_temperature(fn, bad):
    with pytest.raises(LossInputError, match=r"temperature must be a positive finite number"):
        fn(rand(4, 3), rand(4, 3), temperature=bad)


def test_errors_are_value_errors():
    with pytest.raises(ValueError):
        losses.byol(rand(4, 3), rand(3, 3))
    with pytest.raises(LossInputError, match="byol: p and z must have the same shape"):
        losses.byol(rand(4, 3), rand(3, 3))
    with pytest.raises(LossInputError, match="simsiam: p must have 2 dimensions"):
        losses.simsiam(rand(4), rand(4))
    with pytest.raises(LossInputError, match="dclw: sigma"):
        losses.dclw(rand(4, 3), rand(4, 3), sigma=0.0)
    with pytest.raises(LossInputError, match="barlow_twins: lambd"):
        losses.barlow_twins(rand(4, 3), rand(4, 3), lambd=-1.0)


# --------------------------------------------------------------------------
# SwAV: Sinkhorn-Knopp codes, swapped prediction
# --------------------------------------------------------------------------


def test_sinkhorn_hand_2x2_one_iteration():
    # exp(scores / eps) = M = [[2, 1], [1, 1]] (rows: samples, columns: prototypes), B = K = 2.
    # Q = M^T / 5; prototype rows sum to 3/5 and 2/5 -> divided by them and by K:
    #   proto 0: [1/3, 1/6], proto 1: [1/4, 1/4]; sample columns sum to 7/12 and 5/12 -> divided
    #   by them and by B, times B: sample 0 = [4/7, 3/7], sample 1 = [2/5, 3/5].
    for eps in (1.0, 0.05):
        scores = eps * torch.log(t([[2.0, 1.0], [1.0, 1.0]]))
        q = losses.sinkhorn_knopp(scores, iterations=1, epsilon=eps)
        torch.testing.assert_close(q, t([[4 / 7, 3 / 7], [2 / 5, 3 / 5]]))
    # every sample's code sums to 1 exactly; the prototypes' mass (34/35, 36/35) is only near B/K = 1
    torch.testing.assert_close(q.sum(dim=1), t([1.0, 1.0]))
    torch.testing.assert_close(q.sum(dim=0), t([34 / 35, 36 / 35]))


def test_sinkhorn_converges_to_the_doubly_stochastic_scaling_3x3():
    # M = D1 P D2 with P doubly stochastic: Sinkhorn's scaling of M is unique, so it converges to P
    # (rows sum to 1 and prototype columns to B/K = 1).
    p = t([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.25, 0.25, 0.5]])
    m = torch.diag(t([1.0, 2.0, 3.0])) @ p @ torch.diag(t([1.0, 4.0, 0.5]))
    q = losses.sinkhorn_knopp(torch.log(m), iterations=500, epsilon=1.0)
    torch.testing.assert_close(q, p)
    # B = 4 samples, K = 2 prototypes: marginals 1 per sample, B/K = 2 per prototype
    q = losses.sinkhorn_knopp(rand(4, 2, seed=1), iterations=500, epsilon=0.5)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(q.sum(dim=0), torch.full((2,), 2.0, dtype=torch.float64))
    assert bool((q > 0).all())


def test_sinkhorn_invariances():
    scores = rand(6, 4, seed=2) * 0.3
    q = losses.sinkhorn_knopp(scores)  # paper defaults: 3 iterations, epsilon 0.05
    # a shift per prototype (column) or of everything is absorbed by the normalisations, at any iteration
    shift = t([0.1, -0.2, 0.3, 0.05])
    torch.testing.assert_close(losses.sinkhorn_knopp(scores + shift), q)
    torch.testing.assert_close(losses.sinkhorn_knopp(scores + 1.5), q)
    # equivariant to the order of the samples and of the prototypes
    perm, kperm = torch.tensor([3, 0, 5, 1, 4, 2]), torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(losses.sinkhorn_knopp(scores[perm]), q[perm])
    torch.testing.assert_close(losses.sinkhorn_knopp(scores[:, kperm]), q[:, kperm])
    # no gradient flows into the codes
    assert not losses.sinkhorn_knopp(rand(6, 4, requires_grad=True)).requires_grad


def test_sinkhorn_all_reduce_sums_over_the_global_batch():
    """Two threads with half the batch each, whose reductions add both halves' partial sums
    (an all-reduce), compute the whole batch's codes; B is the global batch (8, not 4)."""
    import threading

    scores = rand(8, 5, seed=3) * 0.5
    want = losses.sinkhorn_knopp(scores)
    halves = scores.chunk(2)
    barrier = threading.Barrier(2, timeout=300)  # a hang guard only: a loaded machine may hold a thread for seconds
    slots: list = [None, None]
    got: list = [None, None]

    def worker(rank):
        def all_reduce_sum(x):
            slots[rank] = x
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()  # both have read before either writes its next partial sum
            return total

        got[rank] = losses.sinkhorn_knopp(halves[rank], all_reduce_sum=all_reduce_sum)

    threads = [threading.Thread(target=worker, args=(r,)) for r in (0, 1)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    torch.testing.assert_close(torch.cat(got), want)
    # without the reduction each half is balanced on its own: different codes
    assert not torch.allclose(torch.cat([losses.sinkhorn_knopp(h) for h in halves]), want)


def test_swav_swapped_prediction_hand():
    # two crops, one sample, tau = 0.1; scores tau*log([1, 3]) and [0, 0]:
    #   p_0 = [1/4, 3/4], p_1 = [1/2, 1/2]; codes q_0 = [1, 0], q_1 = [1/2, 1/2]
    #   L = 1/2 [H(q_0, p_1) + H(q_1, p_0)] = 1/2 [log 2 + (log 4 - log(3/4)) / 2]
    s0 = 0.1 * torch.log(t([[1.0, 3.0]]))
    s1 = t([[0.0, 0.0]])
    q0, q1 = t([[1.0, 0.0]]), t([[0.5, 0.5]])
    want = 0.5 * (math.log(2) + 0.5 * (math.log(4) - math.log(3 / 4)))
    assert losses.swav([s0, s1], [q0, q1], temperature=0.1).item() == pytest.approx(want)


def test_swav_multicrop_hand_two_globals_one_local():
    # 2 global crops (codes) + 1 local crop, one sample: every code is predicted by the 2 other crops
    #   L = 1/2 [ (H(q_0, p_1) + H(q_0, p_2)) / 2 + (H(q_1, p_0) + H(q_1, p_2)) / 2 ]
    # p_0 = [1/4, 3/4], p_1 = [1/2, 1/2], p_2 = [4/5, 1/5]; q_0 = [1, 0], q_1 = [0, 1]
    s = [0.1 * torch.log(t([[1.0, 3.0]])), t([[0.0, 0.0]]), 0.1 * torch.log(t([[4.0, 1.0]]))]
    q = [t([[1.0, 0.0]]), t([[0.0, 1.0]])]
    want = 0.5 * ((math.log(2) + math.log(5 / 4)) / 2 + (math.log(4 / 3) + math.log(5)) / 2)
    assert losses.swav(s, q, temperature=0.1).item() == pytest.approx(want)


def test_swav_formula_on_a_batch_and_gradient():
    scores = [rand(5, 4, seed=i, requires_grad=True) for i in range(4)]
    codes = [losses.sinkhorn_knopp(s) for s in scores[:2]]
    loss = losses.swav(scores, codes, temperature=0.2)
    want = 0.0
    for i, q in enumerate(codes):
        terms = [-(q * F.log_softmax(scores[v] / 0.2, dim=1)).sum(dim=1).mean() for v in range(4) if v != i]
        want = want + sum(terms) / 3
    torch.testing.assert_close(loss, want / 2)
    loss.backward()
    assert_finite_grads(*scores)
    # a constant added to a crop's scores changes nothing (softmax)
    shifted = [s.detach() + 1.0 for s in scores]
    torch.testing.assert_close(losses.swav(shifted, codes, temperature=0.2), loss.detach())


def test_swav_and_sinkhorn_bad_inputs():
    with pytest.raises(LossInputError, match="swav: needs at least two crops"):
        losses.swav([rand(4, 3)], [rand(4, 3)])
    with pytest.raises(LossInputError, match=r"swav: every crop and code must have shape \(4, 3\)"):
        losses.swav([rand(4, 3), rand(4, 3)], [rand(4, 2)])
    with pytest.raises(LossInputError, match="swav: temperature"):
        losses.swav([rand(4, 3), rand(4, 3)], [rand(4, 3)], temperature=0.0)
    with pytest.raises(LossInputError, match="sinkhorn_knopp: epsilon"):
        losses.sinkhorn_knopp(rand(4, 3), epsilon=-1.0)
    with pytest.raises(LossInputError, match="sinkhorn_knopp: iterations"):
        losses.sinkhorn_knopp(rand(4, 3), iterations=0)
    with pytest.raises(LossInputError, match="sinkhorn_knopp: scores must have 2 dimensions"):
        losses.sinkhorn_knopp(rand(4))


# --------------------------------------------------------------------------
# MoCo v3
# --------------------------------------------------------------------------


def test_mocov3_hand():
    # q = k = EYE, tau = 0.5: each query's logits are [2, 0] (own key first or second):
    # CE = log(1 + e^-2), times 2 tau = 1.
    assert losses.mocov3(t(EYE), t(EYE), 0.5).item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-12)
    # q = A, k = B, tau = 1: q1 = (1, 0) -> logits [0.6, 0], label 0; q2 = (0, 1) -> [0.8, 1], label 1.
    l1 = -0.6 + math.log(math.exp(0.6) + 1)
    l2 = -1.0 + math.log(math.exp(0.8) + math.exp(1.0))
    assert losses.mocov3(t(A), t(B), 1.0).item() == pytest.approx(2 * (l1 + l2) / 2, rel=1e-12)
    # offset: the second query alone, its positive is key 1
    assert losses.mocov3(t(A)[1:], t(B), 1.0, offset=1).item() == pytest.approx(2 * l2, rel=1e-12)


def test_mocov3_queries_split_over_workers_average_to_the_whole_batch():
    q, k = rand(6, 5, seed=120), rand(6, 5, seed=121)
    whole = losses.mocov3(q, k, 0.2)
    parts = [losses.mocov3(q[i : i + 3], k, 0.2, offset=i) for i in (0, 3)]
    assert ((parts[0] + parts[1]) / 2).item() == pytest.approx(whole.item(), rel=1e-12)


def test_mocov3_invariances_and_gradient():
    q, k = rand(6, 5, seed=122), rand(6, 5, seed=123)
    base = losses.mocov3(q, k, 0.2).item()
    perm = torch.tensor([5, 3, 1, 0, 2, 4])
    assert losses.mocov3(q[perm], k[perm], 0.2).item() == pytest.approx(base, rel=1e-12)
    assert losses.mocov3(3 * q, 0.5 * k, 0.2).item() == pytest.approx(base, rel=1e-12)
    qq, kk = rand(6, 8, seed=124, requires_grad=True), rand(6, 8, seed=125, requires_grad=True)
    losses.mocov3(qq, kk, 0.2).backward()
    assert_finite_grads(qq)
    assert kk.grad is None  # the keys are constants


def test_mocov3_bad_inputs():
    with pytest.raises(LossInputError, match=r"mocov3: offset must be"):
        losses.mocov3(rand(3, 4), rand(4, 4), offset=2)
    with pytest.raises(LossInputError, match=r"mocov3: q and k must have the same width"):
        losses.mocov3(rand(3, 4), rand(3, 5))
    with pytest.raises(LossInputError, match=r"mocov3: temperature"):
        losses.mocov3(rand(3, 4), rand(3, 4), temperature=0.0)


# --------------------------------------------------------------------------
# Nearest neighbours in a support set (NNCLR, NNBYOL, NNSiam)
# --------------------------------------------------------------------------

# A hand-made support set: rows need not be unit (the lookup is by cosine), row 4 ties row 0.
SUPPORT = [[3.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8], [1.0, 0.0]]


def test_nearest_neighbour_hand():
    # cosines: (0.9, 0.1) -> row 0 (0.994) over row 3 (0.685); (0.1, 0.9) -> row 1 (0.994) over row 3
    # (0.861); (-1, -0.1) -> row 2; (0.5, 0.9) -> row 3 (0.991) over row 1 (0.874); (2, 0) ties rows 0 and 4
    z = t([[0.9, 0.1], [0.1, 0.9], [-1.0, -0.1], [0.5, 0.9], [2.0, 0.0]]).requires_grad_(True)
    nn, idx = losses.nearest_neighbour(z, t(SUPPORT))
    assert idx.tolist() == [0, 1, 2, 3, 0]  # ties go to the lowest index
    torch.testing.assert_close(nn, t(SUPPORT)[[0, 1, 2, 3, 0]])  # the rows as stored (row 0 is not unit)
    assert not nn.requires_grad


def test_nearest_neighbour_invariances():
    z, support = rand(6, 4, seed=1), rand(10, 4, seed=2)
    _, idx = losses.nearest_neighbour(z, support)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(losses.nearest_neighbour(z[perm], support)[1], idx[perm])  # row-wise
    scale = torch.rand(6, 1, dtype=torch.float64) + 0.1
    assert torch.equal(losses.nearest_neighbour(z * scale, support * 2.5)[1], idx)  # cosine: scale-free
    # a sample in the support set is its own neighbour
    assert losses.nearest_neighbour(support[[3, 7]], support)[1].tolist() == [3, 7]
    with pytest.raises(LossInputError, match=r"nearest_neighbour: support must have shape \[K, 4\]"):
        losses.nearest_neighbour(z, rand(10, 3))


def test_nnclr_hand():
    # nn = A (the neighbours), p = B (the other view's predictions), tau = 0.1:
    # n1.p1 = 0.6, n1.p2 = 0, n2.p1 = 0.8, n2.p2 = 1 -> logits 6, 0 / 8, 10
    rows = [math.log(1 + E**-6), math.log(1 + E**-2)]  # -log e^6/(e^6+e^0), -log e^10/(e^8+e^10)
    cols = [math.log(1 + E**2), math.log(1 + E**-10)]  # -log e^6/(e^6+e^8), -log e^10/(e^0+e^10)
    got = losses.nnclr(t(A), t(B), temperature=0.1, symmetric=False)
    assert got.item() == pytest.approx(sum(rows) / 2, rel=1e-12)
    got = losses.nnclr(t(A), t(B), temperature=0.1)
    assert got.item() == pytest.approx((sum(rows) + sum(cols)) / 4, rel=1e-12)


def test_nnclr_invariances_and_gradient():
    nn, p = rand(8, 5, seed=3, requires_grad=True), rand(8, 5, seed=4, requires_grad=True)
    loss = losses.nnclr(nn, p, temperature=0.1)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    scale = torch.rand(8, 1, dtype=torch.float64) + 0.1
    torch.testing.assert_close(losses.nnclr(nn[perm], p[perm], temperature=0.1), loss)
    torch.testing.assert_close(losses.nnclr(nn * scale, p * scale.flip(0), temperature=0.1), loss)
    # with the sample itself as its neighbour it is the cross-view InfoNCE term of NT-Xent (no in-view negatives)
    z = rand(8, 5, seed=5)
    want = F.cross_entropy(F.normalize(z, dim=1) @ F.normalize(p.detach(), dim=1).T / 0.1, torch.arange(8))
    torch.testing.assert_close(losses.nnclr(z, p.detach(), temperature=0.1, symmetric=False), want)
    loss.backward()
    assert nn.grad is None  # the neighbours are constants
    assert_finite_grads(p)
    with pytest.raises(LossInputError, match="nnclr: temperature"):
        losses.nnclr(nn, p, temperature=0.0)
    with pytest.raises(LossInputError, match="nnclr: nn and p must have the same shape"):
        losses.nnclr(rand(4, 3), rand(5, 3))


# --------------------------------------------------------------------------
# SupCon
# --------------------------------------------------------------------------


def test_supcon_hand_two_classes_four_samples():
    # One view of 4 unit samples, labels [0, 0, 0, 1], tau = 0.5. Dot products:
    # z0.z1 = 0.6, z0.z2 = 0, z0.z3 = -1, z1.z2 = 0.8, z1.z3 = -0.6, z2.z3 = 0.
    z = t([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    tau = 0.5
    dots = {(0, 1): 0.6, (0, 2): 0.0, (0, 3): -1.0, (1, 2): 0.8, (1, 3): -0.6, (2, 3): 0.0}
    s = lambda i, j: dots[(min(i, j), max(i, j))] / tau  # noqa: E731

    def anchor(i, positives):  # -1/|P(i)| sum_p log exp(s_ip) / sum_{a != i} exp(s_ia)
        log_den = math.log(sum(math.exp(s(i, a)) for a in range(4) if a != i))
        return -sum(s(i, p) - log_den for p in positives) / len(positives)

    # sample 3 is alone in its class: no positive, not an anchor
    want = (anchor(0, [1, 2]) + anchor(1, [0, 2]) + anchor(2, [0, 1])) / 3
    assert losses.supcon([z], torch.tensor([0, 0, 0, 1]), temperature=tau).item() == pytest.approx(want, rel=1e-12)
    # labels are names: any integers, any order
    assert losses.supcon(z[None], torch.tensor([7, 7, 7, -2]), temperature=tau).item() == pytest.approx(want, rel=1e-12)


def test_supcon_with_every_sample_its_own_class_is_simclr():
    z1, z2 = rand(6, 4, seed=8), rand(6, 4, seed=9)
    got = losses.supcon([z1, z2], torch.arange(6), temperature=0.2)
    torch.testing.assert_close(got, losses.nt_xent(z1, z2, temperature=0.2))


def test_supcon_invariances_and_gradient():
    z1, z2 = rand(8, 5, seed=10, requires_grad=True), rand(8, 5, seed=11, requires_grad=True)
    y = torch.tensor([0, 1, 0, 2, 1, 1, 0, 2])
    loss = losses.supcon([z1, z2], y, temperature=0.1)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(losses.supcon([z1[perm], z2[perm]], y[perm], temperature=0.1), loss)
    torch.testing.assert_close(losses.supcon([z2, z1], y, temperature=0.1), loss)  # the views' order
    torch.testing.assert_close(losses.supcon([3 * z1, z2 * 0.5], y, temperature=0.1), loss)  # scale
    # one class for all: every other embedding is a positive, and the loss is at its floor log(2N - 1)
    # (cross entropy to a uniform target over the 15 others) only when all similarities are equal
    assert losses.supcon([z1, z2], torch.zeros(8, dtype=torch.long), 0.1) > math.log(15)
    same = torch.ones(8, 5, dtype=torch.float64)
    assert losses.supcon([same, same], torch.zeros(8, dtype=torch.long), 0.1).item() == pytest.approx(math.log(15))
    loss.backward()
    assert_finite_grads(z1, z2)
    with pytest.raises(LossInputError, match=r"supcon: labels must be an integer tensor of shape \[8\]"):
        losses.supcon([z1, z2], torch.zeros(8), 0.1)
    with pytest.raises(LossInputError, match="supcon: no anchor has a positive"):
        losses.supcon([z1], torch.arange(8), 0.1)
    with pytest.raises(LossInputError, match="supcon: temperature"):
        losses.supcon([z1, z2], y, temperature=0.0)


# --------------------------------------------------------------------------
# W-MSE: Cholesky whitening
# --------------------------------------------------------------------------

# Rows with covariance [[8, 4], [4, 4]] / 3 (unbiased, N = 4); its Cholesky factor is
# [[2 sqrt2, 0], [sqrt2, sqrt2]] / sqrt3, and L^{-1} x = sqrt1.5 * (1, 0) for x = (2, 1),
# sqrt1.5 * (0, 1) for x = (0, 1).
WX = [[2.0, 1.0], [-2.0, -1.0], [0.0, 1.0], [0.0, -1.0]]
S = math.sqrt(1.5)


def test_whiten_cholesky_hand():
    want = t([[S, 0.0], [-S, 0.0], [0.0, S], [0.0, -S]])
    torch.testing.assert_close(losses.whiten_cholesky(t(WX)), want, rtol=0, atol=1e-12)
    # eps = 1 shrinks the covariance to I: only the centring is left
    x = rand(6, 3, seed=130)
    torch.testing.assert_close(losses.whiten_cholesky(x, eps=1.0), x - x.mean(0), rtol=0, atol=1e-12)


def test_whitening_gives_identity_covariance():
    x = rand(40, 6, seed=131) @ rand(6, 6, seed=132)  # correlated columns
    z = losses.whiten_cholesky(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(6, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(z.T @ z / 39, torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-12)
    z32 = losses.whiten_cholesky(x.float())  # float32 in, float32 out (computed in float64)
    assert z32.dtype == torch.float32
    torch.testing.assert_close(z32.T @ z32 / 39, torch.eye(6), rtol=0, atol=1e-5)


def test_whitening_invariances():
    x = rand(12, 4, seed=133)
    z = losses.whiten_cholesky(x)
    # a shift and a lower-triangular map with a positive diagonal (L -> A L): the same output
    lower = torch.tril(rand(4, 4, seed=134)) + 3 * torch.eye(4, dtype=torch.float64)
    lower = lower * torch.sign(lower.diagonal()).reshape(-1, 1)
    torch.testing.assert_close(losses.whiten_cholesky(x @ lower.T + 5.0), z, rtol=0, atol=1e-10)
    # a rotation: the output turns by an orthogonal map (another whitening), so the Gram matrix
    # z z^T, and with it every distance and angle between the whitened samples, is unchanged
    rot, _ = torch.linalg.qr(rand(4, 4, seed=135))
    zr = losses.whiten_cholesky(x @ rot.T)
    torch.testing.assert_close(zr @ zr.T, z @ z.T, rtol=0, atol=1e-10)
    q = torch.linalg.lstsq(z, zr).solution  # zr = z q with q orthogonal
    torch.testing.assert_close(q.T @ q, torch.eye(4, dtype=torch.float64), rtol=0, atol=1e-10)


def test_w_mse_hand():
    # Both views have the rows of WX (same covariance, same whitening): whitened and normalised,
    # view 1 is (e1, -e1, e2, -e2); view 2 = rows 2, 1, 0, 3 of it = (e2, -e1, e1, -e2).
    # ||e2 - e1||^2 = 2 for rows 0 and 2, 0 for rows 1 and 3: L = (2 + 0 + 2 + 0) / 4 = 1.
    x = t(WX)
    assert losses.w_mse([x, x[[2, 1, 0, 3]]], w_size=4).item() == pytest.approx(1.0, rel=1e-12)
    # each view may be scaled, shifted, sheared (lower-triangular) on its own: the same loss
    assert losses.w_mse([3 * x + 1, x[[2, 1, 0, 3]] @ t([[1.0, 0.0], [2.0, 0.5]]).T], w_size=4).item() == (
        pytest.approx(1.0, rel=1e-12))
    # three views: the mean over the three pairs (x, x) -> 0, (x, y) -> 1, (x, y) -> 1
    assert losses.w_mse([x, x, x[[2, 1, 0, 3]]], w_size=4).item() == pytest.approx(2 / 3, rel=1e-12)


def test_w_mse_sub_batches():
    z1, z2 = rand(12, 3, seed=136), rand(12, 3, seed=137)
    halves = [losses.w_mse([z1[i : i + 6], z2[i : i + 6]], w_size=6) for i in (0, 6)]
    assert losses.w_mse([z1, z2], w_size=6).item() == pytest.approx((halves[0] + halves[1]).item() / 2, rel=1e-12)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    # perm lists the rows of each sub-batch: the same as reordering the rows and chunking in order
    assert losses.w_mse([z1, z2], w_size=6, perm=perm).item() == pytest.approx(
        losses.w_mse([z1[perm], z2[perm]], w_size=6).item(), rel=1e-12)
    # w_size >= N: one whitening of the whole batch, so the order of the rows does not matter
    assert losses.w_mse([z1[perm], z2[perm]], w_size=12).item() == pytest.approx(
        losses.w_mse([z1, z2], w_size=64).item(), rel=1e-12)
    a, b = rand(12, 3, seed=138, requires_grad=True), rand(12, 3, seed=139, requires_grad=True)
    losses.w_mse([a, b], w_size=6, perm=perm).backward()
    assert_finite_grads(a, b)


def test_w_mse_bad_inputs():
    with pytest.raises(LossInputError, match=r"whiten_cholesky: the covariance of 4 rows of width 6 is singular"):
        losses.w_mse([rand(8, 6), rand(8, 6)], w_size=4)
    losses.w_mse([rand(8, 6), rand(8, 6)], w_size=4, eps=0.1)  # shrinkage makes it positive definite
    with pytest.raises(LossInputError, match=r"w_mse: perm must be a permutation of the 4 rows"):
        losses.w_mse([rand(4, 2), rand(4, 2)], perm=torch.tensor([0, 1, 1, 3]))
    with pytest.raises(LossInputError, match=r"w_mse: w_size must be an int >= 2"):
        losses.w_mse([rand(4, 2), rand(4, 2)], w_size=1)
    with pytest.raises(LossInputError, match=r"w_mse: needs at least 2 views"):
        losses.w_mse([rand(4, 2)])
    with pytest.raises(LossInputError, match=r"whiten_cholesky: eps must be in \[0, 1\]"):
        losses.whiten_cholesky(rand(4, 2), eps=2.0)


# --------------------------------------------------------------------------
# VIbCReg: IterNorm and the normalised covariance
# --------------------------------------------------------------------------

# Centred rows with biased covariance diag(1, 4): trace 5, S_N = diag(0.2, 0.8)
IX = [[1.0, 2.0], [-1.0, -2.0], [1.0, -2.0], [-1.0, 2.0]]


def test_iternorm_hand():
    # one group, eps = 0: P_1 = (3 I - S_N) / 2 = diag(1.4, 1.1), W = P_1 / sqrt(5)
    x = t(IX)
    out, mean, w = losses.iternorm(x, num_groups=1, iterations=1, eps=0.0)
    torch.testing.assert_close(w[0], t([[1.4, 0.0], [0.0, 1.1]]) / math.sqrt(5), rtol=0, atol=1e-12)
    torch.testing.assert_close(out, x * t([1.4, 1.1]) / math.sqrt(5), rtol=0, atol=1e-12)
    assert mean.abs().max() == 0
    # T = 2: p_2 = (3 p_1 - p_1^3 s) / 2 per eigenvalue s
    p2 = [(3 * p - p**3 * s) / 2 for p, s in ((1.4, 0.2), (1.1, 0.8))]
    out, _, _ = losses.iternorm(x + 7.0, num_groups=1, iterations=2, eps=0.0)  # a shift is centred away
    torch.testing.assert_close(out, x * t(p2) / math.sqrt(5), rtol=0, atol=1e-12)
    # two groups of one feature: each feature is standardised exactly (p = 1/sqrt(s_N) = 1 for s_N = 1)
    out, _, _ = losses.iternorm(x, num_groups=2, iterations=1, eps=0.0)
    torch.testing.assert_close(out, x / t([1.0, 2.0]), rtol=0, atol=1e-12)


def test_iternorm_converges_to_whitening_and_is_rotation_equivariant():
    # (a well-conditioned covariance: Newton's iteration run far past convergence amplifies rounding
    # errors when the condition number is large, Higham 1986; IterNorm stops at T = 5)
    x = rand(64, 6, seed=140)
    out, _, _ = losses.iternorm(x, num_groups=1, iterations=20, eps=0.0)
    torch.testing.assert_close(out.T @ out / 64, torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-12)
    x = x @ (torch.eye(6, dtype=torch.float64) + 0.3 * rand(6, 6, seed=141))
    # 5 iterations: not white yet, but W is a polynomial of the covariance, so rotating the
    # features rotates the output (exactly, for any T)
    rot, _ = torch.linalg.qr(rand(6, 6, seed=142))
    out5, _, _ = losses.iternorm(x, num_groups=1, iterations=5)
    rotated, _, _ = losses.iternorm(x @ rot.T, num_groups=1, iterations=5)
    torch.testing.assert_close(rotated, out5 @ rot.T, rtol=0, atol=1e-10)
    # groups are whitened independently: the result is the groups' results side by side
    grouped, _, w = losses.iternorm(x, num_groups=3, iterations=5)
    assert w.shape == (3, 2, 2)
    parts = [losses.iternorm(x[:, i : i + 2], num_groups=1, iterations=5)[0] for i in (0, 2, 4)]
    torch.testing.assert_close(grouped, torch.cat(parts, dim=1), rtol=0, atol=1e-12)


def test_iternorm_stays_in_float32_under_bf16_autocast():
    x = rand(32, 8, seed=147).float()
    want, _, _ = losses.iternorm(x, num_groups=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _, w = losses.iternorm(x, num_groups=2)
    assert got.dtype == w.dtype == torch.float32
    torch.testing.assert_close(got, want)


def test_vibcreg_hand():
    # z = [[1, 1], [-1, -1]] in both views: invariance 0; unbiased Var = 2, the hinge is 0;
    # the columns are equal, so their correlation is 1: c = (1^2 + 1^2) / D^2 = 0.5 per view.
    z = t([[1.0, 1.0], [-1.0, -1.0]])
    assert losses.vibcreg(z, z).item() == pytest.approx(200 * (0.5 + 0.5), rel=1e-12)
    # the correlation does not depend on the scale: 10 z (std > 1) gives the same
    assert losses.vibcreg(10 * z, 10 * z).item() == pytest.approx(200.0, rel=1e-12)
    # identical rows: Var 0, std 0.01, hinge 0.99 in each view and summed (not halved as in VICReg's code):
    # 25 * (0.99 + 0.99); a (1, 0) shift between views: mse 0.5; centred columns are 0: no correlation
    z1, z2 = t([[1.0, 2.0]] * 3), t([[0.0, 2.0]] * 3)
    assert losses.vibcreg(z1, z2).item() == pytest.approx(25 * 0.5 + 25 * 1.98, rel=1e-12)
    # uncorrelated unit-variance columns: only the invariance term
    u = t([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]]) * math.sqrt(1.5)
    assert losses.vibcreg(u, u.flip(0)).item() == pytest.approx(25 * (2 * 6 + 2 * 6) / 8, rel=1e-12)


def test_vibcreg_invariances_and_gradient():
    z1, z2 = rand(8, 5, seed=143), rand(8, 5, seed=144)
    base = losses.vibcreg(z1, z2).item()
    perm = torch.tensor([7, 0, 6, 1, 5, 2, 4, 3])
    assert losses.vibcreg(z1[perm], z2[perm]).item() == pytest.approx(base, rel=1e-12)
    assert losses.vibcreg(z2, z1).item() == pytest.approx(base, rel=1e-12)
    assert losses.vibcreg(z1 + 3, z2 + 3).item() == pytest.approx(base, rel=1e-12)
    # the correlation term alone is invariant to a positive rescaling of each dimension
    scale = t([0.5, 2.0, 3.0, 1.0, 7.0])
    corr = losses.vibcreg(z1, z2, sim_weight=0.0, var_weight=0.0).item()
    assert losses.vibcreg(z1 * scale, z2 * scale, sim_weight=0.0, var_weight=0.0).item() == pytest.approx(corr)
    a, b = rand(8, 16, seed=145, requires_grad=True), rand(8, 16, seed=146, requires_grad=True)
    losses.vibcreg(a, b).backward()
    assert_finite_grads(a, b)


def test_iternorm_and_vibcreg_bad_inputs():
    with pytest.raises(LossInputError, match=r"iternorm: num_groups must divide the width 6, got 4"):
        losses.iternorm(rand(8, 6), num_groups=4)
    with pytest.raises(LossInputError, match=r"iternorm: iterations must be an int >= 1"):
        losses.iternorm(rand(8, 6), num_groups=1, iterations=0)
    with pytest.raises(LossInputError, match=r"vibcreg: needs a batch of at least 2 samples"):
        losses.vibcreg(rand(1, 4), rand(1, 4))
    with pytest.raises(LossInputError, match=r"vibcreg: cov_weight must be a non-negative number"):
        losses.vibcreg(rand(4, 4), rand(4, 4), cov_weight=-1.0)


# --------------------------------------------------------------------------
# DeepCluster v2: spherical k-means, cross-entropy to the assignments
# --------------------------------------------------------------------------


def _angles(*degrees):
    return t([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in degrees])


def test_spherical_kmeans_hand_two_clusters_on_the_circle():
    # points at 0, 10, 90 and 100 degrees: from any start the two centroids end at the directions of
    # their pairs' sums, 5 and 95 degrees (if both start in one pair: 0 and 10 -> {0} and {10, 90, 100}
    # (at ~67 degrees) -> {0, 10} and {90, 100}).
    x = 3.0 * _angles(0, 10, 90, 100)  # lengths do not matter: rows are normalised
    for seed in range(6):
        generator = torch.Generator().manual_seed(seed)
        centroids, assignments = losses.spherical_kmeans(x, 2, iterations=5, generator=generator)
        order = torch.argsort(centroids[:, 1])  # the 5-degree centroid first
        torch.testing.assert_close(centroids[order], _angles(5, 95))
        assert assignments[0] == assignments[1] != assignments[2] == assignments[3]
        assert int(assignments[0]) == int(order[0])  # rows 0 and 1 sit with the 5-degree centroid


def test_spherical_kmeans_start_empty_cluster_and_determinism():
    # one update by hand: start {0 deg, 10 deg} (rows 0 and 1); rows 2, 3 (90, 100 deg) join 10 deg,
    # whose centroid moves to the direction of 10 + 90 + 100 degrees; 0 degrees keeps row 0 alone.
    x = _angles(0, 10, 90, 100)
    assert torch.randperm(4, generator=torch.Generator().manual_seed(0))[:2].tolist() == [0, 1]  # seed 0 draws them
    c, a = losses.spherical_kmeans(x, 2, iterations=0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(c, x[:2])  # no update: the drawn rows
    assert a.tolist() == [0, 1, 1, 1]
    c, a = losses.spherical_kmeans(x, 2, iterations=1, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(c, torch.stack([x[0], F.normalize(x[1] + x[2] + x[3], dim=0)]))
    torch.testing.assert_close(c.norm(dim=1), torch.ones(2, dtype=torch.float64))
    # a centroid that gets no rows stays where it started: three copies of one point, two clusters
    same = _angles(30, 30, 30)
    c, a = losses.spherical_kmeans(same, 2, iterations=3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(c, _angles(30, 30))
    assert a.tolist() == [0, 0, 0]  # ties go to the first centroid
    # the same generator seed gives the same clustering
    x = rand(20, 4, seed=5)
    one = losses.spherical_kmeans(x, 3, generator=torch.Generator().manual_seed(7))
    two = losses.spherical_kmeans(x, 3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    # every row sits with its most similar centroid at the end
    assert torch.equal(one[1], (F.normalize(x, dim=1) @ one[0].T).argmax(dim=1))


def test_deepclusterv2_hand():
    # one clustering, two views, tau = 0.1; sample 0 is in cluster 1, sample 1 has no cluster (-1).
    # view 1 scores tau*log([1, 3]) -> p = [1/4, 3/4]; view 2 scores [0, 0] -> p = [1/2, 1/2]
    #   L = mean over the 2 known (view, sample) pairs = (-log(3/4) - log(1/2)) / 2
    v1 = torch.stack([0.1 * torch.log(t([1.0, 3.0])), t([5.0, -5.0])])
    v2 = torch.stack([t([0.0, 0.0]), t([-5.0, 5.0])])
    loss = losses.deepclusterv2([[v1, v2]], torch.tensor([[1, -1]]), temperature=0.1)
    assert loss.item() == pytest.approx((-math.log(3 / 4) - math.log(1 / 2)) / 2)
    # two clusterings average: the second puts sample 0 in cluster 0 -> (-log(1/4) - log(1/2)) / 2
    loss2 = losses.deepclusterv2([[v1, v2], [v1, v2]], torch.tensor([[1, -1], [0, -1]]), temperature=0.1)
    want = ((-math.log(3 / 4) - math.log(1 / 2)) / 2 + (-math.log(1 / 4) - math.log(1 / 2)) / 2) / 2
    assert loss2.item() == pytest.approx(want)


def test_deepclusterv2_formula_gradient_and_no_assignment():
    scores = [[rand(6, 4, seed=s, requires_grad=True) for s in (1, 2)],
              [rand(6, 3, seed=s, requires_grad=True) for s in (3, 4)]]
    a = torch.tensor([[0, 3, 1, 2, 2, 0], [2, 1, 0, 0, 1, 2]])
    loss = losses.deepclusterv2(scores, a, temperature=0.2)
    want = sum(F.cross_entropy(torch.cat(views) / 0.2, a[h].repeat(2)) for h, views in enumerate(scores)) / 2
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert_finite_grads(*scores[0], *scores[1])
    # no sample has a cluster yet (the first epoch): 0, and a zero gradient rather than none
    s = rand(6, 4, seed=9, requires_grad=True)
    empty = losses.deepclusterv2([[s, s]], torch.full((1, 6), -1))
    empty.backward()
    assert empty.item() == 0.0 and s.grad is not None and not s.grad.any()


def test_deepclusterv2_and_kmeans_bad_inputs():
    with pytest.raises(LossInputError, match=r"spherical_kmeans: k must be an integer in \[1, 3\]"):
        losses.spherical_kmeans(rand(3, 2), 4)
    with pytest.raises(LossInputError, match="deepclusterv2: assignments must have one row per clustering"):
        losses.deepclusterv2([[rand(4, 3), rand(4, 3)]], torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(LossInputError, match="deepclusterv2: an assignment of clustering 0 is >= its 3 prototypes"):
        losses.deepclusterv2([[rand(4, 3)]], torch.tensor([[0, 1, 2, 3]]))
    with pytest.raises(LossInputError, match="deepclusterv2: temperature"):
        losses.deepclusterv2([[rand(4, 3)]], torch.zeros(1, 4, dtype=torch.long), temperature=0.0)


# --------------------------------------------------------------------------
# ReSSL
# --------------------------------------------------------------------------


def test_ressl_hand():
    # queue (1, 0), (0, 1); teacher k = (1, 0) at tau_t = 0.5: logits (2, 0), p_t = (e^2, 1) / (e^2 + 1);
    # student q = (0.6, 0.8) at tau_s = 1: log p_s = (0.6, 0.8) - log(e^0.6 + e^0.8).
    queue = t([[1.0, 0.0], [0.0, 1.0]])
    pt = [E**2 / (E**2 + 1), 1 / (E**2 + 1)]
    lse = math.log(math.exp(0.6) + math.exp(0.8))
    want = -(pt[0] * (0.6 - lse) + pt[1] * (0.8 - lse))
    got = losses.ressl(t([[0.6, 0.8]]), t([[1.0, 0.0]]), queue, student_temp=1.0, teacher_temp=0.5)
    assert got.item() == pytest.approx(want, rel=1e-12)
    # rows are averaged: a second sample with q = k = (0, 1) adds H(p, p) = the entropy of softmax(0, 1/0.5)
    p = [1 / (1 + E**2), E**2 / (1 + E**2)]
    entropy = -sum(x * math.log(x) for x in p)
    got = losses.ressl(t([[0.6, 0.8], [0.0, 1.0]]), t([[1.0, 0.0], [0.0, 1.0]]), queue, 0.5, 0.5)
    first = -(pt[0] * (1.2 - math.log(math.exp(1.2) + math.exp(1.6))) + pt[1] * (1.6 - math.log(
        math.exp(1.2) + math.exp(1.6))))
    assert got.item() == pytest.approx((first + entropy) / 2, rel=1e-12)


def test_ressl_is_stationary_when_the_student_matches_the_teacher():
    # equal temperatures and q = k: the student's distribution is the target, the cross entropy
    # is at its minimum over the logits, so no gradient reaches q
    k, queue = rand(5, 4, seed=150), rand(9, 4, seed=151)
    q = k.clone().requires_grad_(True)
    losses.ressl(q, k, queue, student_temp=0.1, teacher_temp=0.1).backward()
    torch.testing.assert_close(q.grad, torch.zeros_like(q), rtol=0, atol=1e-12)


def test_ressl_invariances_and_gradient():
    q, k, queue = rand(6, 4, seed=152), rand(6, 4, seed=153), rand(9, 4, seed=154)
    base = losses.ressl(q, k, queue).item()
    perm = torch.tensor([5, 3, 1, 0, 2, 4])
    assert losses.ressl(q[perm], k[perm], queue).item() == pytest.approx(base, rel=1e-12)
    assert losses.ressl(q, k, queue[torch.arange(8, -1, -1)]).item() == pytest.approx(base, rel=1e-12)
    assert losses.ressl(2 * q, 3 * k, 0.5 * queue).item() == pytest.approx(base, rel=1e-12)
    # a mean of per-sample terms: rows split over workers average to the whole batch
    parts = [losses.ressl(q[i : i + 3], k[i : i + 3], queue).item() for i in (0, 3)]
    assert sum(parts) / 2 == pytest.approx(base, rel=1e-12)
    qq, kk = rand(6, 8, seed=155, requires_grad=True), rand(6, 8, seed=156, requires_grad=True)
    qu = rand(16, 8, seed=157, requires_grad=True)
    losses.ressl(qq, kk, qu).backward()
    assert_finite_grads(qq)
    assert kk.grad is None and qu.grad is None  # the teacher and the queue are constants


def test_ressl_bad_inputs():
    with pytest.raises(LossInputError, match=r"ressl: queue must have shape \[K, 4\]"):
        losses.ressl(rand(3, 4), rand(3, 4), rand(5, 3))
    with pytest.raises(LossInputError, match=r"ressl: q and k must have the same shape"):
        losses.ressl(rand(3, 4), rand(2, 4), rand(5, 4))
    with pytest.raises(LossInputError, match=r"ressl: teacher_temp must be a positive finite number"):
        losses.ressl(rand(3, 4), rand(3, 4), rand(5, 4), teacher_temp=0.0)
