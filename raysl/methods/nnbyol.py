"""NNBYOL (solo-learn's ``nnbyol``; Dwibedi et al. 2021 applied to BYOL, Grill et al. 2020).

BYOL with the target replaced by its nearest neighbour: the momentum teacher's
projection of each view is looked up in a support set of ``queue_size``
teacher projections from earlier batches (:class:`raysl.methods.support.SupportQueue`),
and the online prediction of the other view regresses onto that neighbour
(:func:`raysl.losses.byol`, symmetrised over the two views). The queue takes
the teacher's projections of the first view of the global batch after each step.

Per-sample terms on each worker's rows given the step's queue (DDP averages
the gradients); only the queue update gathers, without gradient.
"""

from typing import Literal

from raysl import losses
from raysl.methods.byol import BYOL, BYOLConfig
from raysl.methods.support import SupportQueue, SupportQueueSize


class NNBYOLConfig(BYOLConfig):
    name: Literal["nnbyol"] = "nnbyol"  # type: ignore[assignment]
    queue_size: SupportQueueSize = 4096


class NNBYOL(BYOL):
    config_class = NNBYOLConfig
    supports_local_crops = False

    def __init__(self, method_cfg, model_cfg, in_channels):
        super().__init__(method_cfg, model_cfg, in_channels)
        self.support = SupportQueue(method_cfg.queue_size, self.projection_dim)

    def training_loss(self, views, indices):
        p1, p2 = (self.predictor(self.encode(v)[1]) for v in views)
        t1, t2 = self.teacher_encode(views[0]), self.teacher_encode(views[1])
        targets = [self.support.nearest(t1), self.support.nearest(t2)]
        self.support.stage(t1)
        return losses.byol_multicrop([p1, p2], targets), {"ema_momentum": self.ema_momentum()}

    def after_step(self) -> None:
        super().after_step()
        self.support.flush()
