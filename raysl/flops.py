"""FLOPs of a run: counted, not estimated from parameter counts.

``torch.utils.flop_counter.FlopCounterMode`` counts 2 FLOPs per multiply-add
of the matrix ops (convolutions, linear layers, matmuls, attention) and
nothing else: BatchNorm, LayerNorm, ReLU/GELU, pooling, softmax and
elementwise adds are not counted (they are a few per cent of a convnet's
FLOPs). The forward pass of one image is counted at each view's crop size,
on a batch of 1, with the modules in eval mode.

Training FLOPs of a run::

    train_flops = sum over views v of (3 * student_forward(v) + teacher_forward(v)) * images * epochs

The 3 is the usual forward + backward (about twice the forward) rule
(Kaplan et al. 2020, sec. 2.1). ``student_forward`` is backbone + projector
(+ predictor); ``teacher_forward`` is the EMA teacher's backbone + projector
forward on the global views only (BYOL, MoCo, DINO, MSBReg run it without a
backward pass); it is 0 for other methods. Not counted: the loss itself
(similarity matrices, covariances), DirectPred's predictor matrix, the
augmentation and the evaluations between epochs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from raysl.config import RunConfig


def forward_flops(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass of ``module`` on a zero tensor of ``input_shape`` (eval mode)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(torch.zeros(input_shape))
    finally:
        module.train(was_training)
    return int(counter.get_total_flops())


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def method_flops(cfg: RunConfig, in_channels: int, crop_size: int) -> dict[str, Any]:
    """Forward FLOPs per image of the method's parts, and the parameter counts.

    ``backbone`` maps each view size (px) to the backbone's forward FLOPs at it;
    ``projector``/``predictor`` do not depend on the image size; ``params`` is
    the backbone's trainable parameter count (the N of a scaling law: kNN and
    the linear probe read backbone features), ``params_heads`` the heads'.
    """
    from raysl.methods import build_method

    torch.manual_seed(0)
    method = build_method(cfg, in_channels)
    views = cfg.data.views(method.num_views)
    sizes = sorted({int(v.size or crop_size) for v in views})
    backbone = {size: forward_flops(method.backbone, (1, in_channels, size, size)) for size in sizes}
    projector = forward_flops(method.projector, (1, method.feat_dim))
    predictor_module = getattr(method, "predictor", None)
    predictor = 0
    if isinstance(predictor_module, nn.Module):
        predictor = forward_flops(predictor_module, (1, cfg.model.projector_dim))
    heads = [method.projector] + ([predictor_module] if isinstance(predictor_module, nn.Module) else [])
    return {
        "backbone": backbone,
        "projector": projector,
        "predictor": predictor,
        "teacher": hasattr(method, "teacher_backbone"),
        "num_global_views": method.num_views,
        "view_sizes": [int(v.size or crop_size) for v in views],
        "params": param_count(method.backbone),
        "params_heads": sum(param_count(h) for h in heads),
    }


def run_flops(cfg: RunConfig, in_channels: int, crop_size: int, train_rows: int) -> dict[str, Any]:
    """Training FLOPs of a run of ``cfg`` that trains on ``train_rows`` images per epoch.

    ``train_rows`` is after ``data.fraction`` (``raysl.data.read.subset.train_rows``);
    each epoch takes ``train_rows // batch_size`` full batches, as the loop does.

    Returns ``flops`` (the whole run), ``flops_per_step``, ``forward_flops_per_image``
    (student backbone + heads at the global crop size), ``images`` (training
    images seen: steps x global batch x epochs), ``params`` (backbone) and
    ``params_heads``.
    """
    parts = method_flops(cfg, in_channels, crop_size)
    steps_per_epoch = train_rows // cfg.optim.batch_size
    images = steps_per_epoch * cfg.optim.batch_size * cfg.optim.epochs
    heads = parts["projector"] + parts["predictor"]
    per_image_step = 0  # FLOPs per training image per step, all views
    for i, size in enumerate(parts["view_sizes"]):
        student = parts["backbone"][size] + heads
        on_teacher = parts["teacher"] and i < parts["num_global_views"]  # the teacher sees the global views
        teacher = parts["backbone"][size] + parts["projector"] if on_teacher else 0
        per_image_step += 3 * student + teacher
    return {
        "flops": float(per_image_step * images),
        "flops_per_step": float(per_image_step * cfg.optim.batch_size),
        "forward_flops_per_image": float(parts["backbone"][parts["view_sizes"][0]] + heads),
        "images": int(images),
        "steps": int(steps_per_epoch * cfg.optim.epochs),
        "params": int(parts["params"]),
        "params_heads": int(parts["params_heads"]),
    }
