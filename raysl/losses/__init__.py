"""Self-supervised losses as small pure functions on tensors.

Every function takes embeddings of the *whole* batch it should see: callers
gather across workers first (with a gather that keeps gradients, see
``raysl.distributed``), so nothing in here knows about processes or ranks.
Nothing here holds state either: losses that need a running estimate (the
iSogCLR ``u`` table, the DINO center, the DirectPred correlation) take it as an
argument and return the new value.

Inputs a loss cannot work with raise :class:`raysl.errors.LossInputError`
(a ``ValueError``) that says which function, which argument and what it got.

Notation: ``N`` batch size, ``D`` embedding width, ``V`` number of views,
``K`` number of prototypes (DINO) or queue length (MoCo), ``tau`` temperature,
``sim(a, b) = a^T b / (||a|| ||b||)``.

Layout: one module per loss family, named after its method in
``raysl.methods`` where there is one, its docstring citing the paper(s).
Every public function is re-exported here; callers use ``raysl.losses.X``.

    contrastive    nt_xent, nt_xent_multicrop, dcl, dclw, isogclr_loss, infonce_multiview
    moco           moco, mochi_negatives
    mocov3         mocov3
    byol           byol, byol_multicrop
    simsiam        simsiam
    barlow         barlow_twins, mixed_barlow_regularizer
    vicreg         vicreg
    vibcreg        vibcreg
    wmse           w_mse
    dino           dino, dino_center_update
    msbreg         msbreg, multiview_centroid_loss, singular_value_loss, brownian_diffusive_loss
    directpred     directpred_correlation_update, directpred_predictor
    nnclr          nearest_neighbour, nnclr
    supcon         supcon
    ressl          ressl
    swav           swav
    deepclusterv2  deepclusterv2
    mae            mae, mae_targets
    ops            shared numeric ops that are not losses: whiten_cholesky, iternorm,
                   sinkhorn_knopp, spherical_kmeans, the off-diagonal, standardisation
    _checks        private input checks shared by every module
"""

from raysl.losses.barlow import barlow_twins, mixed_barlow_regularizer
from raysl.losses.byol import byol, byol_multicrop
from raysl.losses.contrastive import dcl, dclw, infonce_multiview, isogclr_loss, nt_xent, nt_xent_multicrop
from raysl.losses.deepclusterv2 import deepclusterv2
from raysl.losses.dino import dino, dino_center_update
from raysl.losses.directpred import directpred_correlation_update, directpred_predictor
from raysl.losses.mae import mae, mae_targets
from raysl.losses.moco import mochi_negatives, moco
from raysl.losses.mocov3 import mocov3
from raysl.losses.msbreg import brownian_diffusive_loss, msbreg, multiview_centroid_loss, singular_value_loss
from raysl.losses.nnclr import nearest_neighbour, nnclr
from raysl.losses.ops import iternorm, sinkhorn_knopp, spherical_kmeans, whiten_cholesky
from raysl.losses.ressl import ressl
from raysl.losses.simsiam import simsiam
from raysl.losses.supcon import supcon
from raysl.losses.swav import swav
from raysl.losses.vibcreg import vibcreg
from raysl.losses.vicreg import vicreg
from raysl.losses.wmse import w_mse

__all__ = [
    "barlow_twins",
    "brownian_diffusive_loss",
    "byol",
    "byol_multicrop",
    "dcl",
    "dclw",
    "deepclusterv2",
    "dino",
    "dino_center_update",
    "directpred_correlation_update",
    "directpred_predictor",
    "infonce_multiview",
    "isogclr_loss",
    "iternorm",
    "mae",
    "mae_targets",
    "mixed_barlow_regularizer",
    "mochi_negatives",
    "moco",
    "mocov3",
    "msbreg",
    "multiview_centroid_loss",
    "nearest_neighbour",
    "nnclr",
    "nt_xent",
    "nt_xent_multicrop",
    "ressl",
    "simsiam",
    "singular_value_loss",
    "sinkhorn_knopp",
    "spherical_kmeans",
    "supcon",
    "swav",
    "vibcreg",
    "vicreg",
    "w_mse",
    "whiten_cholesky",
]
