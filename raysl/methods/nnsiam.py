"""NNSiam (solo-learn's ``nnsiam``; Dwibedi et al. 2021 applied to SimSiam, Chen & He 2021).

SimSiam with the stop-gradient target replaced by its nearest neighbour: each
view's projection is looked up in a support set of ``queue_size`` projections
from earlier batches (:class:`raysl.methods.support.SupportQueue`), and the
prediction of the other view is pulled towards that neighbour
(:func:`raysl.losses.simsiam`, symmetrised). The queue takes the first view's
projections of the global batch after each step. The predictor's lr knobs
are SimSiam's.

Per-sample terms on each worker's rows given the step's queue (DDP averages
the gradients); only the queue update gathers, without gradient.
"""

from typing import Literal

from raysl.methods.simsiam import SimSiam, SimSiamConfig
from raysl.methods.support import SupportQueue, SupportQueueSize


class NNSiamConfig(SimSiamConfig):
    name: Literal["nnsiam"] = "nnsiam"  # type: ignore[assignment]
    queue_size: SupportQueueSize = 4096


class NNSiam(SimSiam):
    config_class = NNSiamConfig

    def __init__(self, method_cfg, model_cfg, in_channels):
        super().__init__(method_cfg, model_cfg, in_channels)
        self.support = SupportQueue(method_cfg.queue_size, self.projection_dim)

    def training_loss(self, views, indices):
        _, z1 = self.encode(views[0])
        _, z2 = self.encode(views[1])
        p1, p2 = self.predict(z1, z2)
        nn1, nn2 = self.support.nearest(z1), self.support.nearest(z2)
        self.support.stage(z1)
        return 0.5 * (self.regression_loss(p1, nn2) + self.regression_loss(p2, nn1)), {}

    def after_step(self) -> None:
        self.support.flush()
