"""Method-level checks of MoCo v3, W-MSE, VIbCReg and ReSSL (their losses: tests/test_losses.py;
training from their search spaces: tests/test_methods.py)."""

from __future__ import annotations

import torch

from raysl.methods import build_method
from raysl.run_config import load_config

SMALL = ["model.width=4", "model.projector_hidden_dim=16", "model.projector_dim=8", "model.predictor_hidden_dim=16"]


def small_method(name: str, *overrides: str, in_channels: int = 1):
    torch.manual_seed(0)
    return build_method(load_config(None, [f"method.name={name}", *SMALL, *overrides]), in_channels)


def views(n: int = 16, seed: int = 0, count: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 1, 8, 8, generator=g) for _ in range(count)]


def optimized(method) -> set[int]:
    return {id(p) for g in method.param_groups() for p in g["params"]}


# --------------------------------------------------------------------------- #
# MoCo v3
# --------------------------------------------------------------------------- #


def test_mocov3_trains_the_online_network_only():
    method = small_method("mocov3")
    teacher = [p for n, p in method.named_parameters() if n.startswith("teacher_")]
    assert teacher and not any(id(p) in optimized(method) for p in teacher)
    assert all(id(p) in optimized(method) for p in method.predictor.parameters())
    loss, metrics = method(views())
    loss.backward()
    assert torch.isfinite(loss) and "ema_momentum" in metrics
    assert all(p.grad is None for p in teacher)
    assert all(p.grad is not None for p in method.predictor.parameters())


def test_mocov3_vit_keeps_its_random_patch_projection():
    vit = ["model.backbone=vit_tiny", "model.patch_size=4", "model.vit_image_size=8"]
    method = small_method("mocov3", *vit)
    patch = list(method.backbone.patch_embed.parameters())
    assert patch and not any(p.requires_grad for p in patch)
    assert not any(id(p) in optimized(method) for p in patch)
    before = [p.detach().clone() for p in patch]
    loss, _ = method(views(n=4))
    loss.backward()
    assert all(p.grad is None for p in patch)
    assert method.backbone.cls_token.grad is not None  # the rest of the ViT trains
    method.after_step()  # the teacher's copy stays equal to the frozen projection
    for p, b, tp in zip(patch, before, method.teacher_backbone.patch_embed.parameters()):
        torch.testing.assert_close(p, b)
        torch.testing.assert_close(tp, b)
    trained = small_method("mocov3", *vit, "method.freeze_patch_embed=false")
    assert all(id(p) in optimized(trained) for p in trained.backbone.patch_embed.parameters())


# --------------------------------------------------------------------------- #
# W-MSE
# --------------------------------------------------------------------------- #


def test_wmse_whitens_every_view_of_the_batch_in_sub_batches():
    from raysl import losses

    method = small_method("wmse", "method.num_views=4", "method.w_size=16", "method.w_iter=2")
    assert method.num_views == 4
    vs = views(n=32, count=4)
    torch.manual_seed(5)
    loss, _ = method(vs)
    zs = [method.encode(v)[1] for v in vs]
    torch.manual_seed(5)  # the permutations are the only random draws of a step
    perms = [torch.randperm(32) for _ in range(2)]
    want = sum(losses.w_mse(zs, w_size=16, eps=0.0, perm=p) for p in perms) / 2
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert all(p.grad is not None for p in method.projector.parameters())


# --------------------------------------------------------------------------- #
# VIbCReg
# --------------------------------------------------------------------------- #


def test_vibcreg_whitens_the_projector_output_with_iternorm():
    import pytest

    from raysl import losses
    from raysl.errors import ConfigError

    method = small_method("vibcreg", "method.num_groups=2", "method.iternorm_iterations=3")
    norm = method.projector[-1]
    x = views()[0]
    h = method.backbone(x)
    pre = method.projector[:-1](h)
    want, mean, w = losses.iternorm(pre, num_groups=2, iterations=3, eps=norm.eps)
    torch.testing.assert_close(method.projector(h), want)  # training: the batch's own whitening
    torch.testing.assert_close(norm.running_mean, 0.1 * mean.detach())  # running estimates, momentum 0.1
    method.eval()
    with torch.no_grad():  # evaluation: the running mean and whitening matrices
        pre = method.projector[:-1](method.backbone(x))
        xc = (pre - norm.running_mean).reshape(16, 2, 4).transpose(0, 1)
        torch.testing.assert_close(method.embed(x)["projector"],
                                   (xc @ norm.running_wm.transpose(1, 2)).transpose(0, 1).reshape(16, 8))
    method.train()
    loss, _ = method(views())
    loss.backward()
    assert torch.isfinite(loss)
    with pytest.raises(ConfigError, match=r"method.num_groups \(3\) must divide model.projector_dim \(8\)"):
        small_method("vibcreg", "method.num_groups=3")


# --------------------------------------------------------------------------- #
# ReSSL
# --------------------------------------------------------------------------- #


def test_ressl_teacher_sees_the_weak_view_and_fills_its_queue():
    from raysl import losses

    method = small_method("ressl", "method.queue_size=24")
    teacher = [p for n, p in method.named_parameters() if n.startswith("teacher_")]
    assert teacher and not any(id(p) in optimized(method) for p in teacher)
    weak, strong = views()
    loss, _ = method([weak, strong])
    k = method.teacher_encode(weak)
    # the empty queue: the relations are to the step's own teacher embeddings
    want = losses.ressl(method.encode(strong)[1], k, k, method.cfg.student_temp, method.cfg.teacher_temp)
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert all(p.grad is None for p in teacher)
    method.after_step()
    assert int(method.memory.filled) == 16
    torch.testing.assert_close(method.relation_set(k), torch.nn.functional.normalize(k.detach(), dim=1))
    loss, _ = method(views(seed=1))  # now over the queue
    method.after_step()
    assert int(method.memory.filled) == 24  # full: the oldest keys were overwritten
    with torch.no_grad():
        method([weak, strong])  # evaluation-time calls do not push
    method.after_step()
    assert int(method.memory.ptr) == (32 % 24)
