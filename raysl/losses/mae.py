"""MAE (He et al. 2022): masked-patch pixel reconstruction.
"""

from __future__ import annotations

from torch import Tensor

from raysl.errors import LossInputError
from raysl.losses._checks import _check_tensor, _float, _shape


def mae_targets(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-patch normalised pixels (``norm_pix_loss``): ``(t - mean) / sqrt(var + eps)`` over each patch's values.

    As the official code: the unbiased variance of the patch's ``p^2 C`` values, ``eps`` 1e-6.
    """
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


def mae(pred: Tensor, target: Tensor, mask: Tensor, *, norm_pix: bool = True) -> Tensor:
    """MAE's loss: the mean over masked patches of the per-patch mean squared pixel error.

    ``L = sum_{n,l} m_{nl} mean_j (pred_{nlj} - t_{nlj})^2 / sum_{n,l} m_{nl}``, with ``t`` the
    patch's pixels, per-patch normalised with ``norm_pix`` (:func:`mae_targets`).

    Args:
        pred: ``[N, L, P]`` predicted pixels of every patch.
        target: ``[N, L, P]`` the image's patches (``raysl.methods.mae.patchify``).
        mask: ``[N, L]`` 1 for a masked patch (in the loss), 0 for a visible one.
    """
    fn = "mae"
    _check_tensor(fn, "pred", pred, 3)
    _check_tensor(fn, "target", target, 3)
    _check_tensor(fn, "mask", mask, 2)
    if pred.shape != target.shape or mask.shape != pred.shape[:2]:
        raise LossInputError(
            f"{fn}: pred {_shape(pred)} and target {_shape(target)} must match, mask {_shape(mask)} be [N, L]"
        )
    target = _float(target.detach())
    if norm_pix:
        target = mae_targets(target)
    per_patch = (_float(pred) - target).pow(2).mean(dim=-1)
    mask = _float(mask)
    return (per_patch * mask).sum() / mask.sum()
