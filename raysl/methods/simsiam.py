"""SimSiam (Chen & He 2021, "Exploring Simple Siamese Representation Learning").

No negatives, no momentum teacher: a predictor MLP on one branch and a
stop-gradient on the other are what keeps the embeddings from collapsing.
The predictor trains with its own learning rate, ``predictor_lr_scale`` times
the scheduled one, and by default (``fixed_predictor_lr``) is left out of the
lr schedule: section 4.3 of the paper finds a constant predictor lr works best.
"""

from typing import Annotated, Literal

from pydantic import Field

from raysl import losses
from raysl.config import MethodSection
from raysl.methods.base import StopGradPredictorMethod, predictor_mlp, with_mup_roles


class SimSiamConfig(MethodSection):
    name: Literal["simsiam"] = "simsiam"
    predictor_lr_scale: Annotated[float, Field(gt=0.0)] = 1.0
    fixed_predictor_lr: bool = True  # SimSiam sec. 4.3: no lr decay for the predictor


class SimSiam(StopGradPredictorMethod):
    config_class = SimSiamConfig
    loss_is_sample_mean = True  # per-sample terms given the step's teacher, queue or centre
    def __init__(self, method_cfg, model_cfg, in_channels):
        super().__init__(method_cfg, model_cfg, in_channels)
        self.predictor = predictor_mlp(model_cfg)

    def predict(self, z1, z2):
        return self.predictor(z1), self.predictor(z2)

    def regression_loss(self, p, z):
        return losses.simsiam(p, z)

    def param_groups(self) -> list[dict]:
        predictor = {id(p) for p in self.predictor.parameters()}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in predictor]
        return with_mup_roles(self, [
            {"params": rest, "lr_scale": 1.0},
            {
                "params": list(self.predictor.parameters()),
                "lr_scale": self.cfg.predictor_lr_scale,
                "fixed_lr": self.cfg.fixed_predictor_lr,  # the scheduler leaves this group's lr alone
            },
        ])
