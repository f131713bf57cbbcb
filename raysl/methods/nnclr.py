"""NNCLR (Dwibedi et al. 2021, "With a Little Help from My Friends: Nearest-Neighbor
Contrastive Learning of Visual Representations").

SimCLR with the positive replaced by a nearest neighbour: each sample's
projection ``z`` is looked up in a support set (a FIFO queue of ``queue_size``
projections of earlier batches, :class:`raysl.methods.support.SupportQueue`)
and its neighbour ``NN(z)`` is contrasted, at temperature ``temperature``,
with the predictions ``p = predictor(z)`` of the other view over the global
batch (:func:`raysl.losses.nnclr`: Eq. 2 plus the paper's symmetric term). The
loss is averaged over the two directions (view 1's neighbours against view 2's
predictions and back), as solo-learn does. The queue takes the first view's
projections of the global batch after each step.

Distributed: the lookup is per sample in the queue every worker shares, so
the neighbours are looked up on each worker's rows and gathered without
gradient; the predictions are gathered with gradient (in-batch negatives).
"""

from typing import Literal

from raysl import distributed, losses
from raysl.config import MethodSection, Temperature
from raysl.methods.base import Method, predictor_mlp
from raysl.methods.support import SupportQueue, SupportQueueSize


class NNCLRConfig(MethodSection):
    name: Literal["nnclr"] = "nnclr"
    temperature: Temperature = 0.1  # Dwibedi et al. 2021, Sec. 4
    queue_size: SupportQueueSize = 4096


class NNCLR(Method):
    config_class = NNCLRConfig

    def __init__(self, method_cfg, model_cfg, in_channels):
        super().__init__(method_cfg, model_cfg, in_channels)
        self.predictor = predictor_mlp(model_cfg)
        self.support = SupportQueue(method_cfg.queue_size, self.projection_dim)

    def training_loss(self, views, indices):
        _, z1 = self.encode(views[0])
        _, z2 = self.encode(views[1])
        p1, p2 = distributed.gather(self.predictor(z1)), distributed.gather(self.predictor(z2))
        nn1 = distributed.gather_no_grad(self.support.nearest(z1))
        nn2 = distributed.gather_no_grad(self.support.nearest(z2))
        t = self.cfg.temperature
        loss = 0.5 * (losses.nnclr(nn1, p2, temperature=t) + losses.nnclr(nn2, p1, temperature=t))
        self.support.stage(z1)
        return loss, {}

    def after_step(self) -> None:
        self.support.flush()
