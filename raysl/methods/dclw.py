"""DCLW (Yeh et al. 2022, ECCV, "Decoupled Contrastive Learning"), Eq. 7.

DCL whose positive term is weighted by a von Mises-Fisher weight with
concentration ``sigma``: hard positives (views that disagree) count more.
"""

from typing import Annotated, Literal

from pydantic import Field

from raysl import losses
from raysl.config import MethodSection, Temperature
from raysl.methods.base import PairLossMethod


class DCLWConfig(MethodSection):
    name: Literal["dclw"] = "dclw"
    temperature: Temperature = 0.1
    sigma: Annotated[float, Field(gt=0.0)] = 0.5


class DCLW(PairLossMethod):
    config_class = DCLWConfig

    def pair_loss(self, z1, z2):
        return losses.dclw(z1, z2, temperature=self.cfg.temperature, sigma=self.cfg.sigma)
