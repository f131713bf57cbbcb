"""DirectPred (Tian, Chen & Ganguli 2021, "Understanding self-supervised learning
dynamics without contrastive pairs", section 5).

SimSiam's structure (predictor on one branch, stop-gradient on the other),
but the linear predictor is not learned: it is *set* from the spectrum of a
moving-average correlation of the online projections,

    F <- alpha F + (1 - alpha) E_B[z z^T]           every step
    F = U diag(s) U^T,  W_p = U diag((s / max s)^(1/2) + eps) U^T   every ``decomposition_period`` steps

the fixed point (W_p proportional to F^(1/2)) that the paper's analysis of
BYOL/SimSiam dynamics predicts for a trained linear predictor. ``eps`` boosts
weak eigendirections so they keep learning. The predictor is a buffer, so no
gradient or optimizer ever touches it. The regression loss is BYOL's
normalised MSE, as in the paper's experiments.
"""

from typing import Annotated, Literal

import torch
from pydantic import Field

from raysl import distributed, losses
from raysl.config import MethodSection, Probability
from raysl.methods.base import StopGradPredictorMethod

# The exponent on the normalised eigenvalues: 1/2 is the paper's square root.
EIGEN_POWER = 0.5


class DirectPredConfig(MethodSection):
    name: Literal["directpred"] = "directpred"
    decomposition_period: Annotated[int, Field(ge=1)] = 1
    alpha: Probability = 0.3  # moving-average weight rho of the correlation matrix F
    eps: Annotated[float, Field(ge=0.0)] = 0.1


class DirectPred(StopGradPredictorMethod):
    config_class = DirectPredConfig
    loss_is_sample_mean = True  # per-sample terms given the step's teacher, queue or centre
    def __init__(self, method_cfg, model_cfg, in_channels):
        super().__init__(method_cfg, model_cfg, in_channels)
        d = model_cfg.projector_dim
        self.register_buffer("predictor_weight", torch.eye(d))
        self.register_buffer("correlation", torch.zeros(d, d))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _update_predictor(self, z1: torch.Tensor, z2: torch.Tensor) -> None:
        # The global batch's projections, so every worker holds the same F and W_p.
        z = torch.cat([distributed.gather_no_grad(z1.detach()), distributed.gather_no_grad(z2.detach())])
        step = int(self.steps)
        corr = losses.directpred_correlation_update(None if step == 0 else self.correlation, z, rho=self.cfg.alpha)
        self.correlation.copy_(corr)
        if step % self.cfg.decomposition_period == 0:
            w = losses.directpred_predictor(self.correlation, alpha=EIGEN_POWER, eps=self.cfg.eps)
            self.predictor_weight.copy_(w)
        self.steps += 1

    def predict(self, z1, z2):
        if self.training and torch.is_grad_enabled():
            self._update_predictor(z1, z2)
        w = self.predictor_weight.to(z1.dtype)
        return z1 @ w.T, z2 @ w.T

    def regression_loss(self, p, z):
        return losses.byol(p, z)
