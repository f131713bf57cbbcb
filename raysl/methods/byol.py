"""BYOL (Grill et al. 2020, "Bootstrap Your Own Latent").

The online network predicts the momentum teacher's projection of the other
view; the loss is symmetrised over the two views.

Multi-crop (``data.local_crops``, as solo-learn offers it): the teacher embeds
the two global views only; every crop (global or local) predicts the teacher's
projection of each global view that is not itself, and the loss averages those
pairs (:func:`raysl.losses.byol_multicrop`; with two views, the loss above).
"""

from typing import Literal

from raysl import losses
from raysl.methods.base import EMASchedule, EMATeacherMethod
from raysl.models import mlp


class BYOLConfig(EMASchedule):
    name: Literal["byol"] = "byol"


class BYOL(EMATeacherMethod):
    config_class = BYOLConfig
    loss_is_sample_mean = True  # per-sample terms given the step's teacher, queue or centre
    supports_local_crops = True

    def __init__(self, method_cfg, model_cfg, in_channels):
        super().__init__(method_cfg, model_cfg, in_channels)
        self.predictor = mlp(model_cfg.projector_dim, model_cfg.predictor_hidden_dim, model_cfg.projector_dim, 2)

    def training_loss(self, views, indices):
        global_views, _ = self.split_views(views)
        predictions = self.encode_crops(views, lambda x: self.predictor(self.encode(x)[1]))
        targets = [self.teacher_encode(v) for v in global_views]
        return losses.byol_multicrop(predictions, targets), {"ema_momentum": self.ema_momentum()}
