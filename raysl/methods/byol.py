"""BYOL (Grill et al. 2020, "Bootstrap Your Own Latent").

The online network predicts the momentum teacher's projection of the other
view; the loss is symmetrised over the two views.
"""

from raysl import losses
from raysl.methods.base import EMATeacherMethod
from raysl.models import mlp


class BYOL(EMATeacherMethod):
    def __init__(self, method_cfg, model_cfg, in_channels):
        super().__init__(method_cfg, model_cfg, in_channels)
        self.predictor = mlp(model_cfg.projector_dim, model_cfg.predictor_hidden_dim, model_cfg.projector_dim, 2)

    def training_loss(self, views, indices):
        _, z1 = self.encode(views[0])
        _, z2 = self.encode(views[1])
        p1, p2 = self.predictor(z1), self.predictor(z2)
        t1, t2 = self.teacher_encode(views[0]), self.teacher_encode(views[1])
        loss = 0.5 * (losses.byol(p1, t2) + losses.byol(p2, t1))
        return loss, {"ema_momentum": self.ema_momentum()}
