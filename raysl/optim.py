"""Optimizers: SGD, AdamW and LARS, with no weight decay on biases and norms by default, and muP's per-layer
learning rates (``model.parametrization: mup``)."""

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


# muP (model.parametrization: mup): the learning-rate factor of each layer role (raysl.models.MUP_ROLES) is
# m ** exponent, m = width / model.mup_base_width. Adam and SGD are Table 3 of Yang et al. 2022 ("Tensor Programs
# V", arXiv 2203.03466) written relative to the base width, with its 1/fan_in^2 readout initialisation moved into
# a 1/sqrt(m) multiplier on the features (raysl.models.build_backbone): that move multiplies the readout's Adam lr
# by sqrt(m) and leaves its SGD lr alone. LARS's trust ratio makes a step's norm lr * eta * |W| whatever the
# gradient's size; steps of the size muP asks for (spectral norm ~ sqrt(fan_out / fan_in): Yang, Simon and
# Bernstein 2023, arXiv 2310.17813) then need 1/sqrt(m) for hidden weights (|W| ~ sqrt(m)) and nothing for the
# input and readout weights. LARS's groups without the trust ratio (biases, norms) take plain SGD steps: SGD's row.
# A readout whose output is renormalised (normed_readout: the projector's first linear, followed by BatchNorm)
# steps like a hidden layer. Table 3 also assumes the backbone's gradients come back through an unnormalised
# readout, 1/m of their standard size per coordinate; through a BatchNorm they come back at 1/sqrt(m), so SGD's
# factors (not Adam's, nor the trust ratio's, which ignore the gradient's size) lose another sqrt(m) then
# (mup_lr_factor). tests/test_mup.py's coordinate check holds each rule to the same step size at widths 8 to 64.
MUP_LR_EXPONENT: dict[str, dict[str, float]] = {
    "adamw": {"input": 0.0, "hidden": -1.0, "readout": -0.5, "normed_readout": -1.0, "vector": 0.0, "fixed": 0.0},
    "sgd": {"input": 1.0, "hidden": 0.0, "readout": 0.0, "normed_readout": 0.0, "vector": 1.0, "fixed": 0.0},
    "lars": {"input": 0.0, "hidden": -0.5, "readout": 0.0, "normed_readout": -0.5, "vector": 0.0, "fixed": 0.0},
}


def mup_lr_factor(optimizer: str, role: str, width_mult: float, *, trust_ratio: bool = True,
                  normed_readout: bool = False) -> float:
    """The learning-rate factor of a muP layer role (:data:`MUP_LR_EXPONENT`) for ``optim.name``.

    ``trust_ratio``: whether a LARS group uses it (False: plain SGD steps); ``normed_readout``: whether the
    model's gradients come back to its backbone through a normalised readout.
    """
    table = "sgd" if optimizer == "lars" and not trust_ratio else optimizer
    exponent = MUP_LR_EXPONENT[table][role]
    if table == "sgd" and normed_readout and role != "fixed":
        exponent -= 0.5
    return width_mult ** exponent


def build_optimizer(groups: list[dict], cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    groups = split_decay(groups, cfg.exclude_bias_and_norm)
    for g in groups:
        g.setdefault("lr_scale", 1.0)
        if "mup_role" in g:  # muP (raysl.models.mup_param_groups): the role's factor rides on lr_scale
            g["lr_scale"] *= mup_lr_factor(cfg.name, g["mup_role"], g["mup_width_mult"], trust_ratio=g["lars"],
                                           normed_readout=g.get("mup_normed_readout", False))
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
