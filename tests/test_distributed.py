"""Distributed losses: world size 2 must compute what world size 1 computes on the whole batch.

No Ray: two gloo processes on 127.0.0.1 (torch.multiprocessing), started once
for the module; every check runs in that one pair of processes and the
results are compared here with the single-process computation on the
concatenated batch.

Why ``grad / world_size``: ``raysl.distributed.gather`` gives every worker the
whole batch, so every worker computes the same global loss L. Its backward
sums the incoming gradient over workers and hands each worker its own rows,
so worker r holds ``world_size * dL/dz[rows of r]``. DDP then *averages*
parameter gradients over workers, which divides the factor back out: the
parameters see exactly dL/dtheta. A plain ``all_gather`` (other workers' rows
as constants) instead leaves each worker only its own share, and DDP's
average scales the parameter gradient by 1/world_size (lightly issue #1977;
solo-learn's all_reduce of the Barlow correlation has the same effect). The
last tests show that this check tells the two apart.
"""

from __future__ import annotations

import inspect
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from raysl import distributed, losses
from raysl.config import ModelConfig
from raysl.methods.barlow import BarlowConfig
from raysl.methods.dcl import DCLConfig
from raysl.methods.dclw import DCLWConfig
from raysl.methods.dino import DINOConfig
from raysl.methods.directpred import DirectPredConfig
from raysl.methods.isogclr import ISogCLRConfig
from raysl.methods.mixed_barlow import MixedBarlowConfig
from raysl.methods.msbreg import MSBRegConfig
from raysl.methods.mv_infonce import MVInfoNCEConfig
from raysl.methods.simclr import SimCLRConfig
from raysl.methods.vicreg import VICRegConfig

WORLD = 2
N, D = 8, 6  # global batch rows (split 4 + 4) and embedding width
# Float32 tolerance, relative to the magnitudes compared. The two sides sum the same terms
# in different orders (per-worker partial sums, then an all-reduce, against one full-batch sum),
# and the operations depend on the CPU's SIMD width, so they agree only up to rounding: each
# compared value is a sum of at most a few hundred products here (N = 8 rows, D = 6 columns,
# cross-correlation and similarity matrices), so its error is at most ~300 x 2**-24 ~ 2e-5 of the
# largest term. An absolute tolerance fixed at 1e-6 passed on one CPU and failed on another
# (1.6e-6 for Barlow Twins' gradients); a wrong reduction (the 1/world_size bug) is off by 50%.
RTOL = 1e-5
SCALE_TOL = 2e-5


def assert_close(got: torch.Tensor, want: torch.Tensor, scale: float | None = None, **kwargs) -> None:
    """``got == want`` up to float32 rounding of sums, relative to ``scale`` (default: the largest |want|).

    Pass the scale of the whole computation when ``want`` may be zero in exact arithmetic (the
    gradient of a bias followed by BatchNorm): its rounding noise is relative to the other terms.
    """
    if scale is None:
        scale = float(want.detach().abs().max()) if want.numel() else 0.0
    torch.testing.assert_close(got, want, rtol=RTOL, atol=max(SCALE_TOL * scale, 1e-12), **kwargs)


# --------------------------------------------------------------------------- #
# the losses of every method that gathers with gradients, at their defaults
# --------------------------------------------------------------------------- #


def _isogclr(z1, z2, tau1, tau2, u1, u2):
    c = ISogCLRConfig()
    return losses.isogclr_loss(z1, z2, tau1, tau2, u1, u2, gamma=c.gamma, rho=c.rho)[0]


def _mixed_barlow(z1, z2, zm, perm_global):
    c = MixedBarlowConfig()
    bt = losses.barlow_twins(z1, z2, lambd=c.lambd)
    reg = losses.mixed_barlow_regularizer(z1, z2, zm, mix_lambda=0.3, lambd=c.lambd, perm=perm_global)
    return c.scale_loss * (bt + c.mixup_weight * reg)


def _block_perm() -> torch.Tensor:
    """The gathered batch's permutation when every worker permutes its own rows (as MixedBarlowTwins does)."""
    local = torch.tensor([2, 0, 3, 1])
    return torch.cat([local + r * (N // WORLD) for r in range(WORLD)])


# name -> (number of [N, D] embedding inputs, loss of the gathered inputs)
CASES = {
    "simclr": (2, lambda z1, z2: losses.nt_xent(z1, z2, SimCLRConfig().temperature)),
    "dcl": (2, lambda z1, z2: losses.dcl(z1, z2, DCLConfig().temperature)),
    "dclw": (2, lambda z1, z2: losses.dclw(z1, z2, DCLWConfig().temperature, DCLWConfig().sigma)),
    "isogclr": (2, _isogclr),
    "barlow": (2, lambda z1, z2: BarlowConfig().scale_loss * losses.barlow_twins(z1, z2, BarlowConfig().lambd)),
    "mixed_barlow": (3, _mixed_barlow),
    "vicreg": (2, lambda z1, z2: losses.vicreg(
        z1, z2, VICRegConfig().sim_weight, VICRegConfig().var_weight, VICRegConfig().cov_weight)),
    "mv_infonce": (4, lambda *views: losses.infonce_multiview(list(views), MVInfoNCEConfig().temperature)),
    # multi-crop SimCLR: 2 global + 2 local crops, each gathered (as SimCLR does with data.local_crops)
    "simclr_multicrop": (4, lambda *crops: losses.nt_xent_multicrop(list(crops), SimCLRConfig().temperature)),
    # MSBReg's batch-level term (the per-sample terms stay local, see test_msbreg_split_*)
    "msbreg": (2, lambda p1, p2: losses.singular_value_loss([p1, p2])),
    # NNCLR: neighbours of z1, z2 in a fixed support set against the gathered predictions p2, p1
    "nnclr": (4, lambda z1, z2, p1, p2: _nnclr(z1, z2, p1, p2)),
    # SupCon: the labels of the whole batch (gathered without gradient by the method), three classes
    "supcon": (2, lambda z1, z2: losses.supcon([z1, z2], torch.tensor([0, 1, 0, 2, 1, 1, 0, 2]), 0.1)),
}


def _wmse(z1, z2, w_size: int = N, eps: float | None = None):
    """W-MSE on the gathered batch, whitened in sub-batches of one global permutation (rank 0's, in WMSE)."""
    from raysl.methods.wmse import WMSEConfig

    eps = WMSEConfig().w_eps if eps is None else eps
    return losses.w_mse([z1, z2], w_size=w_size, eps=eps, perm=_block_perm())


# W-MSE's whitening: the whole batch at once (default shrinkage 0), and two sub-batches of
# N / 2 = 4 rows (fewer rows than D = 6 dimensions: shrunk to stay positive definite)
CASES["wmse"] = (2, _wmse)
CASES["wmse_subbatches"] = (2, lambda z1, z2: _wmse(z1, z2, w_size=N // 2, eps=0.3))


def _vibcreg(z1, z2):
    from raysl.methods.vibcreg import VIbCRegConfig

    c = VIbCRegConfig()
    return losses.vibcreg(z1, z2, c.sim_weight, c.var_weight, c.cov_weight)


CASES["vibcreg"] = (2, _vibcreg)  # variance and correlation of the gathered (IterNorm-ed) projections


def case_inputs(name: str) -> list[torch.Tensor]:
    """The full-batch inputs of a case: embeddings, then per-row extras (iSogCLR's tau/u)."""
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    views, _ = CASES[name]
    out = [torch.randn(N, D, generator=g) for _ in range(views)]
    if name == "isogclr":
        out += [0.1 + 0.2 * torch.rand(N, generator=g) for _ in range(2)]  # tau1, tau2
        out += [0.5 + torch.rand(N, generator=g) for _ in range(2)]  # u1, u2 (moving averages)
    return out


def case_loss(name: str, inputs: list[torch.Tensor]) -> torch.Tensor:
    fn = CASES[name][1]
    if name == "mixed_barlow":
        return fn(*inputs, _block_perm())
    return fn(*inputs)


def rows(x: torch.Tensor, rank: int) -> torch.Tensor:
    return x.chunk(WORLD)[rank]


# --------------------------------------------------------------------------- #
# parameter level: a tiny encoder under DDP
# --------------------------------------------------------------------------- #


class TinyPair(nn.Module):
    """A linear "encoder" whose forward returns the loss, as raysl's methods do under DDP."""

    def __init__(self, loss: str, gather=distributed.gather):
        super().__init__()
        self.encoder = nn.Linear(5, D)
        self.loss, self.gather = loss, gather

    def forward(self, x1, x2, t1, t2):
        z1, z2 = self.encoder(x1), self.encoder(x2)
        if self.loss == "simclr":
            return losses.nt_xent(self.gather(z1), self.gather(z2), SimCLRConfig().temperature)
        if self.loss == "barlow":
            return losses.barlow_twins(self.gather(z1), self.gather(z2), BarlowConfig().lambd)
        # msbreg as MSBReg computes it: per-sample terms on the local rows, the spread on the gathered batch
        c = MSBRegConfig()
        local = losses.msbreg([z1, z2], [t1, t2], centroid_weight=c.centroid_weight,
                              singular_weight=0.0, brownian_weight=0.0)
        return local + c.singular_weight * losses.singular_value_loss([self.gather(z1), self.gather(z2)])


PARAM_CASES = ("simclr", "barlow", "msbreg")


def param_inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [torch.randn(N, 5, generator=g), torch.randn(N, 5, generator=g),
            torch.randn(N, D, generator=g), torch.randn(N, D, generator=g)]


def tiny(loss: str, gather=distributed.gather) -> TinyPair:
    torch.manual_seed(0)
    return TinyPair(loss, gather)


def full_batch_msbreg(model: TinyPair, x1, x2, t1, t2) -> torch.Tensor:
    """MSBReg's loss on one worker with the whole batch (noise term off: it is random)."""
    c = MSBRegConfig()
    z1, z2 = model.encoder(x1), model.encoder(x2)
    return losses.msbreg([z1, z2], [t1, t2], centroid_weight=c.centroid_weight,
                         singular_weight=c.singular_weight, brownian_weight=0.0)


def param_grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]


# --------------------------------------------------------------------------- #
# the two workers
# --------------------------------------------------------------------------- #


def _worker(rank: int, port: int, out_dir: str) -> None:
    import os

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        results: dict = {"world_size": distributed.world_size()}
        for name in CASES:
            local = [rows(x, rank).clone().requires_grad_(True) for x in case_inputs(name)]
            loss = case_loss(name, [distributed.gather(x) for x in local])
            loss.backward()
            results[name] = (loss.detach(), [None if x.grad is None else x.grad.clone() for x in local])

        for name in PARAM_CASES:
            x1, x2, t1, t2 = (rows(x, rank) for x in param_inputs())
            for label, gather in (("gather", distributed.gather), ("all_gather", _plain_all_gather)):
                model = nn.parallel.DistributedDataParallel(tiny(name, gather))
                model(x1, x2, t1, t2).backward()
                results[f"param/{label}/{name}"] = param_grads(model.module)

        # statistics without gradient: DINO's center and DirectPred's correlation
        g = torch.Generator().manual_seed(3)
        teacher = [torch.randn(N, 16, generator=g) for _ in range(2)]
        center = torch.randn(1, 16, generator=g)
        batch_mean = distributed.all_reduce_mean(torch.cat([rows(t, rank) for t in teacher]).mean(0, keepdim=True))
        results["dino_center"] = losses.dino_center_update(center, [batch_mean], DINOConfig().center_momentum)
        z = torch.cat([distributed.gather_no_grad(rows(t, rank)) for t in teacher])
        results["directpred_corr"] = losses.directpred_correlation_update(None, z, rho=DirectPredConfig().alpha)

        # DINO with local crops: per-sample loss on the worker's own rows (no gather), centre from
        # the teacher's global crops only, averaged over workers
        students, teachers, center = dino_multicrop_inputs()
        local_students = [rows(x, rank).clone().requires_grad_(True) for x in students]
        local_teachers = [rows(x, rank) for x in teachers]
        loss = losses.dino(local_students, local_teachers, center, DINOConfig().student_temp, DINOConfig().teacher_temp)
        loss.backward()
        batch_mean = distributed.all_reduce_mean(torch.cat(local_teachers).mean(0, keepdim=True))
        results["dino_multicrop"] = (loss.detach(), [x.grad.clone() for x in local_students],
                                     losses.dino_center_update(center, [batch_mean], DINOConfig().center_momentum))

        # MixedBarlowTwins' mixup: one lambda for all workers, the global permutation of the gathered batch
        from raysl.methods.mixed_barlow import MixedBarlowTwins

        torch.manual_seed(100 + rank)  # workers' RNGs differ, as in train_worker
        method = MixedBarlowTwins(MixedBarlowConfig(), ModelConfig(width=4, projector_hidden_dim=8, projector_dim=4), 1)
        x1, x2 = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
        mixed, lam, perm = method.mixup(x1, x2)
        results["mixup"] = (mixed, lam, perm, x1, x2)
        # NNCLR / NNBYOL / NNSiam: each worker looks its own rows up in the support queue and pushes the
        # gathered batch, so every worker keeps the queue and neighbours of one worker on the whole batch
        results["support"] = support_queue_steps(rank)
        # MoCo v3: each worker's queries against the keys of the global batch (gathered, no gradient);
        # the method's own contrast() picks the positives at rank * rows
        from raysl.methods.mocov3 import MoCoV3, MoCoV3Config

        mocov3 = MoCoV3(MoCoV3Config(), ModelConfig(width=4, projector_hidden_dim=8, projector_dim=4), 1)
        q, k = mocov3_inputs()
        local_q = rows(q, rank).clone().requires_grad_(True)
        loss = mocov3.contrast(local_q, distributed.gather_no_grad(rows(k, rank)))
        loss.backward()
        results["mocov3"] = (loss.detach(), local_q.grad.clone())
        # ReSSL: the student's own rows against the relation set every worker shares (before the first
        # push: the gathered teacher embeddings of the global batch)
        from raysl.methods.ressl import ReSSL, ReSSLConfig

        ressl = ReSSL(ReSSLConfig(), ModelConfig(width=4, projector_hidden_dim=8, projector_dim=4), 1)
        q, k = ressl_inputs()
        local_q = rows(q, rank).clone().requires_grad_(True)
        anchors = ressl.relation_set(distributed.gather_no_grad(rows(k, rank)))
        c = ReSSLConfig()
        loss = losses.ressl(local_q, rows(k, rank), anchors, c.student_temp, c.teacher_temp)
        loss.backward()
        results["ressl"] = (loss.detach(), local_q.grad.clone())
        # SwAV: Sinkhorn codes over the global batch, the sums all-reduced inside the iterations
        results["swav"] = swav_codes(rank)
        # DeepCluster v2: the memory bank of the gathered batch, k-means of it on every worker
        results["deepclusterv2"] = deepclusterv2_run(rank)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def dino_multicrop_inputs() -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Student logits of 2 global + 2 local crops, teacher logits of the 2 global crops, a centre."""
    g = torch.Generator().manual_seed(11)
    students = [torch.randn(N, 16, generator=g) for _ in range(4)]
    teachers = [torch.randn(N, 16, generator=g) for _ in range(2)]
    return students, teachers, torch.randn(1, 16, generator=g)


def _plain_all_gather(x: torch.Tensor) -> torch.Tensor:
    """The wrong way: other workers' rows arrive as constants (no gradient flows back to them)."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


# --------------------------------------------------------------------------- #
# tests
# --------------------------------------------------------------------------- #


def test_every_method_that_gathers_with_gradients_has_a_case():
    from raysl.methods import METHODS
    from raysl.methods.base import PairLossMethod

    def gathers(cls) -> bool:
        source = inspect.getsource(inspect.getmodule(cls))
        return issubclass(cls, PairLossMethod) or "distributed.gather(" in source or "gathered_projections(" in source

    missing = [name for name, cls in METHODS.items() if gathers(cls) and name not in CASES]
    assert not missing, f"add a world-size-2 case to CASES for {missing}"


def test_workers_ran_distributed(two_workers):
    assert [r["world_size"] for r in two_workers] == [WORLD, WORLD]


@pytest.mark.parametrize("name", CASES)
def test_loss_and_input_gradients_match_one_worker(name, two_workers):
    inputs = [x.clone().requires_grad_(True) for x in case_inputs(name)]
    loss = case_loss(name, inputs)
    loss.backward()
    for rank, result in enumerate(two_workers):
        worker_loss, worker_grads = result[name]
        assert_close(worker_loss, loss.detach())
        for i, (x, g) in enumerate(zip(inputs, worker_grads)):
            if x.grad is None:  # an input the loss treats as a constant (iSogCLR's u)
                assert g is None
                continue
            assert_close(
                g / WORLD, rows(x.grad, rank), float(x.grad.abs().max()),
                msg=lambda m: f"{name}: rank {rank} input {i}: {m}",
            )


@pytest.mark.parametrize("name", PARAM_CASES)
def test_ddp_parameter_gradients_equal_one_worker_full_batch(name, two_workers):
    model = tiny(name)
    x1, x2, t1, t2 = param_inputs()
    loss = full_batch_msbreg(model, x1, x2, t1, t2) if name == "msbreg" else model(x1, x2, t1, t2)
    loss.backward()
    expected = param_grads(model)
    scale = max(float(g.abs().max()) for g in expected)  # some of these gradients are 0 in exact arithmetic
    for result in two_workers:
        for got, want in zip(result[f"param/gather/{name}"], expected):
            assert_close(got, want, scale)


@pytest.mark.parametrize("name", ("simclr", "barlow"))
def test_plain_all_gather_scales_parameter_gradients_by_one_over_world_size(name, two_workers):
    """The control: the check above catches the bug it is there for."""
    model = tiny(name)
    model(*param_inputs()).backward()
    want = torch.cat([g.flatten() for g in param_grads(model)])
    for result in two_workers:
        got = torch.cat([g.flatten() for g in result[f"param/all_gather/{name}"]])
        assert (got - want).norm() > 0.25 * want.norm()
        assert_close(got, want / WORLD, float(want.abs().max()) / WORLD)


def test_dino_center_and_directpred_correlation_are_global_statistics(two_workers):
    g = torch.Generator().manual_seed(3)
    teacher = [torch.randn(N, 16, generator=g) for _ in range(2)]
    center = torch.randn(1, 16, generator=g)
    want_center = losses.dino_center_update(center, teacher, DINOConfig().center_momentum)
    want_corr = losses.directpred_correlation_update(None, torch.cat(teacher), rho=DirectPredConfig().alpha)
    for result in two_workers:
        assert_close(result["dino_center"], want_center)
        assert_close(result["directpred_corr"], want_corr)


def test_dino_multicrop_workers_average_to_the_full_batch(two_workers):
    """DINO's loss is a per-sample mean on each worker's rows: DDP's average of the workers'
    (equal-sized) losses and gradients is the full batch's; the centre is a global statistic."""
    students, teachers, center = dino_multicrop_inputs()
    students = [x.clone().requires_grad_(True) for x in students]
    c = DINOConfig()
    loss = losses.dino(students, teachers, center, c.student_temp, c.teacher_temp)
    loss.backward()
    want_center = losses.dino_center_update(center, teachers, c.center_momentum)
    worker_losses = torch.stack([r["dino_multicrop"][0] for r in two_workers])
    assert_close(worker_losses.mean(), loss.detach())
    for rank, result in enumerate(two_workers):
        _, grads, worker_center = result["dino_multicrop"]
        for x, g in zip(students, grads):  # d(own mean)/dz = WORLD x d(full mean)/dz on the own rows
            assert_close(g / WORLD, rows(x.grad, rank))
        assert_close(worker_center, want_center)


def test_mixed_barlow_mixup_agrees_across_workers(two_workers):
    (m0, lam0, perm0, a0, b0), (m1, lam1, perm1, a1, b1) = (r["mixup"] for r in two_workers)
    assert lam0 == lam1 and 0.0 <= lam0 <= 1.0
    assert torch.equal(perm0, perm1)
    n = a0.shape[0]
    assert sorted(perm0.tolist()) == list(range(WORLD * n))
    for rank, (mixed, a, b) in enumerate(((m0, a0, b0), (m1, a1, b1))):
        local = perm0[rank * n : (rank + 1) * n] - rank * n  # each worker mixes its own rows only
        assert sorted(local.tolist()) == list(range(n))
        torch.testing.assert_close(mixed, lam0 * a + (1 - lam0) * b[local])


# --------------------------------------------------------------------------- #
# MoCo v3: in-batch keys gathered across workers
# --------------------------------------------------------------------------- #


def mocov3_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(16)
    return torch.randn(N, D, generator=g), torch.randn(N, D, generator=g)


def test_mocov3_workers_with_gathered_keys_average_to_the_full_batch(two_workers):
    """Each worker's loss is the mean over its own queries against all keys: DDP's average of the
    workers' losses and gradients is the one-worker loss of the whole batch."""
    from raysl.methods.mocov3 import MoCoV3Config

    q, k = mocov3_inputs()
    q = q.clone().requires_grad_(True)
    loss = losses.mocov3(q, k, MoCoV3Config().temperature)
    loss.backward()
    assert_close(torch.stack([r["mocov3"][0] for r in two_workers]).mean(), loss.detach())
    for rank, result in enumerate(two_workers):
        assert_close(result["mocov3"][1] / WORLD, rows(q.grad, rank))


# --------------------------------------------------------------------------- #
# ReSSL: per-sample relations to a relation set every worker shares
# --------------------------------------------------------------------------- #


def ressl_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(17)
    return torch.randn(N, 4, generator=g), torch.randn(N, 4, generator=g)


def test_ressl_workers_average_to_the_full_batch(two_workers):
    from raysl.methods.ressl import ReSSLConfig

    q, k = ressl_inputs()
    q = q.clone().requires_grad_(True)
    c = ReSSLConfig()
    loss = losses.ressl(q, k, k, c.student_temp, c.teacher_temp)  # the empty queue's stand-in: the batch's keys
    loss.backward()
    assert_close(torch.stack([r["ressl"][0] for r in two_workers]).mean(), loss.detach())
    for rank, result in enumerate(two_workers):
        assert_close(result["ressl"][1] / WORLD, rows(q.grad, rank))


# --------------------------------------------------------------------------- #
# SwAV: Sinkhorn-Knopp over the global batch (and the queue)
# --------------------------------------------------------------------------- #


def swav_codes(rank: int | None = None) -> list[torch.Tensor]:
    """SwAV's codes of global view 0 without and with a full queue, and the loss of two views with them.

    ``rank`` None: one worker with the whole batch; otherwise that worker's rows.
    """
    from raysl.methods.swav import SwAV, SwAVConfig

    torch.manual_seed(0)  # the same prototypes on every worker, as DDP's broadcast makes them
    method = SwAV(SwAVConfig(num_prototypes=5, queue_size=6),
                  ModelConfig(width=4, projector_hidden_dim=8, projector_dim=D), 1)
    g = torch.Generator().manual_seed(13)
    z1, z2, queue = torch.randn(N, D, generator=g), torch.randn(N, D, generator=g), torch.randn(2, 6, D, generator=g)
    if rank is not None:
        z1, z2 = rows(z1, rank), rows(z2, rank)
    s1, s2 = method.scores(z1), method.scores(z2)
    out = [method.codes(s1, 0)]
    method.enqueue(torch.nn.functional.normalize(queue, dim=2))  # the gathered queue, the same on every worker
    assert method.queue_full()
    codes = [method.codes(s1, 0), method.codes(s2, 1)]
    out += [codes[0], losses.swav([s1, s2], codes, method.cfg.temperature).detach()]
    return out


def test_swav_sinkhorn_codes_equal_one_worker_on_the_global_batch(two_workers):
    """World size 2 == world size 1: each worker's rows get the codes of the whole batch (B = 8, not 4),
    with the queue too (each queued row enters on one worker); the per-sample losses average to the
    full batch's."""
    plain, queued, loss = swav_codes()
    assert not torch.allclose(plain, queued)  # the queue changes the equipartition
    for rank, result in enumerate(two_workers):
        got_plain, got_queued, _ = result["swav"]
        assert_close(got_plain, rows(plain, rank))
        assert_close(got_queued, rows(queued, rank))
    assert_close(torch.stack([r["swav"][2] for r in two_workers]).mean(), loss)


# --------------------------------------------------------------------------- #
# NNCLR, NNBYOL, NNSiam: the support queue's nearest-neighbour lookup
# --------------------------------------------------------------------------- #


def _nn_support() -> torch.Tensor:
    return torch.randn(12, D, generator=torch.Generator().manual_seed(19))


def _nnclr(z1, z2, p1, p2):
    from raysl.methods.nnclr import NNCLRConfig

    support, t = _nn_support(), NNCLRConfig().temperature
    nn1, nn2 = losses.nearest_neighbour(z1, support)[0], losses.nearest_neighbour(z2, support)[0]
    return 0.5 * (losses.nnclr(nn1, p2, t) + losses.nnclr(nn2, p1, t))


def support_queue_steps(rank: int | None = None) -> list[torch.Tensor]:
    """Three steps of a 12-row support queue: each step's neighbours (gathered), then the queue state.

    ``rank`` None: one worker with the whole batch of 8; otherwise that worker's 4 rows. The first
    step finds the queue empty (a row is its own neighbour), the third wraps around its end.
    """
    from raysl.methods.support import SupportQueue

    g = torch.Generator().manual_seed(17)
    queue, out = SupportQueue(12, D), []
    for z in [torch.randn(N, D, generator=g) for _ in range(3)]:
        local = z if rank is None else rows(z, rank)
        out.append(distributed.gather_no_grad(queue.nearest(local)))
        queue.stage(local)  # gathers the global batch
        queue.flush()  # after_step
    return out + [queue.queue.clone(), queue.ptr.clone(), queue.filled.clone()]


def test_support_queue_lookup_and_push_equal_one_worker(two_workers):
    want = support_queue_steps()
    assert int(want[-1]) == 12 and int(want[-2]) == 24 % 12  # full, wrapped
    # step 1 pushed its (unit) rows, which are its own neighbours; step 2 finds its neighbours among them
    assert all(any(torch.equal(r, q) for q in want[0]) for r in want[1])
    for result in two_workers:
        got = result["support"]
        for a, b in zip(got[:-2], want[:-2]):
            assert_close(a, b)
        assert torch.equal(got[-2], want[-2]) and torch.equal(got[-1], want[-1])


# --------------------------------------------------------------------------- #
# DeepCluster v2: memory bank and k-means shared by every worker
# --------------------------------------------------------------------------- #


def deepclusterv2_run(rank: int | None = None) -> dict:
    """Three epochs of 2 steps over 8 images (global batch 4): k-means at the start of epochs 2 and 3.

    ``rank`` None: one worker with the whole batch; otherwise that worker's 2 rows of each step. The
    network is in eval mode (BatchNorm's running statistics), so a row's projection does not depend on
    the rows beside it; no optimizer step, so only the method's own state changes.
    """
    from raysl.methods.deepclusterv2 import DeepClusterV2, DeepClusterV2Config

    torch.manual_seed(0)
    method = DeepClusterV2(DeepClusterV2Config(num_prototypes=[2, 3], kmeans_iterations=3),
                           ModelConfig(width=4, projector_hidden_dim=8, projector_dim=D), 1, num_samples=N)
    method.eval()
    g = torch.Generator().manual_seed(21)
    images = torch.randn(N, 1, 8, 8, generator=g)
    step_losses = []
    for epoch in range(3):
        for batch in torch.randperm(N, generator=g).chunk(2):  # the same order on every worker
            rows_of_step = batch if rank is None else rows(batch, rank)
            x = images[rows_of_step]
            loss, _ = method([x, x.flip(-1)], rows_of_step)
            loss.backward()
            method.after_step()
            step_losses.append(loss.detach())
    return {"losses": torch.stack(step_losses), "assignments": method.assignments.clone(),
            "prototypes": [p.clone() for p in method.prototypes()], "clusterings": int(method.clusterings)}


def test_deepclusterv2_kmeans_agrees_across_workers_and_equals_one_worker(two_workers):
    """Every worker keeps the whole bank (gathered rows), so the k-means is the one-worker k-means:
    the same centroids and assignments everywhere; the per-sample losses average to the full batch's."""
    want = deepclusterv2_run()
    assert want["clusterings"] == 2 and bool((want["assignments"] >= 0).all())
    assert not want["losses"][:2].any() and bool((want["losses"][2:] > 0).all())  # the first epoch fills the bank
    for result in two_workers:
        got = result["deepclusterv2"]
        assert got["clusterings"] == 2
        assert torch.equal(got["assignments"], want["assignments"])
        for a, b in zip(got["prototypes"], want["prototypes"]):
            assert_close(a, b)
    mean = torch.stack([r["deepclusterv2"]["losses"] for r in two_workers]).mean(dim=0)
    assert_close(mean, want["losses"])
