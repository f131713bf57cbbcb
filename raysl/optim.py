"""Optimizers: SGD, AdamW and LARS, with no weight decay on biases and norms by default."""

from __future__ import annotations

import torch
from torch import nn

from raysl.config import OptimConfig


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio (You et al. 2017, as in SimCLR/BYOL).

    Groups with ``lars=False`` (biases and norms, by default) take plain SGD steps.
    """

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9, eta: float = 0.02):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["weight_decay"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                if group["lars"]:
                    p_norm, g_norm = torch.norm(p), torch.norm(grad)
                    trust = torch.where(
                        (p_norm > 0) & (g_norm > 0), group["eta"] * p_norm / g_norm, torch.ones_like(p_norm)
                    )
                    grad = grad.mul(trust)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.clone(grad).detach()
                else:
                    buf.mul_(group["momentum"]).add_(grad)
                p.add_(buf, alpha=-group["lr"])
        return loss


def split_decay(groups: list[dict], exclude_bias_and_norm: bool) -> list[dict]:
    """Split each group into weights (decayed) and biases/norm scales (not decayed, no LARS)."""
    out: list[dict] = []
    for group in groups:
        decay = [p for p in group["params"] if p.ndim > 1 or not exclude_bias_and_norm]
        no_decay = [p for p in group["params"] if p.ndim <= 1 and exclude_bias_and_norm]
        extra = {k: v for k, v in group.items() if k != "params"}
        if decay:
            out.append({**extra, "params": decay, "decay": True, "lars": True})
        if no_decay:
            out.append({**extra, "params": no_decay, "decay": False, "lars": False})
    return out


def build_optimizer(groups: list[dict], cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    groups = split_decay(groups, cfg.exclude_bias_and_norm)
    for g in groups:
        g.setdefault("lr_scale", 1.0)
        g["weight_decay"] = cfg.weight_decay if g["decay"] else 0.0
        g["lr"] = lr * g["lr_scale"]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return LARS(groups, lr=lr, momentum=cfg.momentum)


def set_lr_and_wd(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0) if not g.get("fixed_lr") else g["lr"]
        g["weight_decay"] = weight_decay if g.get("decay", True) else 0.0


def trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]
