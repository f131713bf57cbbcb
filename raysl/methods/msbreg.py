"""MSBReg (Moon, Buracas, Park, Kim & Canny 2022, "An Embedding-Dynamic Approach
to Self-supervised Learning", arXiv 2207.03552).

Embeddings as particles under three forces, each a loss term with its weight:
a multiview centroid loss pulls the centroid of the online predictions of an
image's views onto the centroid of the momentum target network's projections
(BYOL's online/target networks), a singular value loss spreads the batch
evenly over many directions, and a Brownian diffusive loss kicks every
embedding in a random direction. ``losses.msbreg`` has the formulas.

Distributed: the centroid and Brownian terms are per-sample means, computed
on the local rows (DDP's gradient average turns them into the global mean);
the singular value loss is a statistic of the whole batch, so it sees the
predictions of every worker (gathered with gradients).
"""

from typing import Literal

from raysl import distributed, losses
from raysl.config import Weight
from raysl.methods.base import EMASchedule, EMATeacherMethod, predictor_mlp


class MSBRegConfig(EMASchedule):
    # The centroid loss targets a momentum ("delayed-parameter") network, as in BYOL: ema_base/ema_final.
    name: Literal["msbreg"] = "msbreg"
    centroid_weight: Weight = 1.0
    singular_weight: Weight = 1.0
    brownian_weight: Weight = 1.0


class MSBReg(EMATeacherMethod):
    config_class = MSBRegConfig

    def __init__(self, method_cfg, model_cfg, in_channels):
        super().__init__(method_cfg, model_cfg, in_channels)
        self.predictor = predictor_mlp(model_cfg)

    def training_loss(self, views, indices):
        c = self.cfg
        p = [self.predictor(self.encode(v)[1]) for v in views]
        z = [self.teacher_encode(v) for v in views]
        per_sample = losses.msbreg(
            p, z, centroid_weight=c.centroid_weight, singular_weight=0.0, brownian_weight=c.brownian_weight
        )
        spread = losses.singular_value_loss([distributed.gather(x) for x in p])
        return per_sample + c.singular_weight * spread, {"ema_momentum": self.ema_momentum()}
