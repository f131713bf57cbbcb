"""A rough GPU memory estimate per worker, to refuse a ``scale.gpus_per_worker`` share that cannot fit.

Fractional GPUs (``scale.gpus_per_worker: 0.25``) let Ray pack four small
trials on one GPU; Ray only counts the fraction, it does not limit memory, so
four trials that each need a third of the GPU start and then die out of
memory. Before Ray starts, the run's need is estimated as::

    weights + gradients + optimizer state      4 B x all parameters (EMA teacher included)
                                               + 4 B x trainable (gradients)
                                               + 8 B (AdamW: two moments) / 4 B (SGD, LARS: momentum)
                                                 x trainable
                                               + every buffer at its size (queues, support sets,
                                                 DeepCluster's per-image bank, sized to the data set)
  + activations kept for the backward pass     the outputs of every leaf module in one forward,
                                               per view at its size, x the per-worker batch,
                                               x 4 B (fp32) or 2 B (bf16 autocast)
  + a fixed 1 GiB (CUDA context, cuDNN workspaces, the allocator's cache)

and the whole multiplied by 1.2 for fragmentation. It is an estimate of the
order of magnitude (a leaf module's output is not always what autograd keeps:
in-place ReLUs keep less, attention keeps more), meant to catch a share that
is several times too small, not to pack a GPU to the last gigabyte: when the
estimate exceeds the share, the run is refused with the numbers; when it
fits, nothing is promised.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["DEFAULT_GPU_MEMORY_GB", "activation_bytes", "estimate_worker_memory", "check_gpu_share"]

GIB = 1024**3
DEFAULT_GPU_MEMORY_GB = 80.0  # A100-80GB / H100; scale.gpu_memory_gb says otherwise
FIXED_BYTES = 1 * GIB
FRAGMENTATION = 1.2
OPTIMIZER_STATE_BYTES = {"adamw": 8, "adam": 8, "sgd": 4, "lars": 4}


def activation_bytes(module: nn.Module, input_shape: tuple[int, ...], bytes_per_value: int = 4) -> int:
    """Bytes of every leaf module's output in one forward on a zero input of ``input_shape``.

    Run in eval mode (BatchNorm cannot train on one image; the output sizes are the same)."""
    total = 0

    def count(_module, _inputs, output) -> None:
        nonlocal total
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor):
                total += t.numel() * bytes_per_value

    leaves = [m for m in module.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            module(torch.zeros(input_shape))
    finally:
        module.train(was_training)
        for h in handles:
            h.remove()
    return total


def estimate_worker_memory(cfg, in_channels: int, crop_size: int, num_samples: int | None = None) -> dict[str, Any]:
    """The estimate above for one worker of ``cfg`` (bytes): ``state`` (of which ``buffers``),
    ``activations``, ``total``. ``num_samples``: the data set's rows, which size per-image state."""
    from raysl.methods import build_method

    torch.manual_seed(0)
    method = build_method(cfg, in_channels, num_samples=num_samples)
    all_params = sum(p.numel() for p in method.parameters())
    trainable = sum(p.numel() for p in method.parameters() if p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in method.buffers())
    state = 4 * all_params + 4 * trainable + OPTIMIZER_STATE_BYTES.get(cfg.optim.name, 8) * trainable + buffers
    value_bytes = 2 if cfg.scale.precision == "bf16" else 4
    workers = cfg.scale.min_workers  # the fewest workers carry the biggest per-worker batch
    local_batch = cfg.optim.batch_size // workers
    per_image = 0
    for view in cfg.data.views(method.num_views):
        size = int(view.size or crop_size)
        per_image += activation_bytes(method.backbone, (1, in_channels, size, size), value_bytes)
        per_image += activation_bytes(method.projector, (1, method.feat_dim), value_bytes)
    activations = per_image * local_batch
    total = FRAGMENTATION * (state + activations + FIXED_BYTES)
    return {"state": state, "buffers": buffers, "activations": activations, "per_image": per_image,
            "local_batch": local_batch, "total": total}


def check_gpu_share(cfg, in_channels: int, crop_size: int, source: str,
                    num_samples: int | None = None) -> dict[str, Any] | None:
    """Refuse (ConfigError) a fractional ``scale.gpus_per_worker`` whose share is below the estimate."""
    from raysl.errors import ConfigError

    scale = cfg.scale
    if not scale.use_gpu or scale.gpus_per_worker >= 1.0:
        return None
    gpu_gb = scale.gpu_memory_gb or DEFAULT_GPU_MEMORY_GB
    share = scale.gpus_per_worker * gpu_gb * GIB
    found = estimate_worker_memory(cfg, in_channels, crop_size, num_samples)
    if found["total"] > share:
        fits = max(1, int(gpu_gb * GIB // found["total"]))
        raise ConfigError(
            f"{cfg.origin('scale.gpus_per_worker', source)}: scale.gpus_per_worker: {scale.gpus_per_worker:g} of a "
            f"{gpu_gb:g} GB GPU is "
            f"{share / GIB:.1f} GB, and this run needs about {found['total'] / GIB:.1f} GB per worker (weights, "
            f"gradients, optimizer state and buffers {found['state'] / GIB:.2f} GB + activations of "
            f"{found['local_batch']} images {found['activations'] / GIB:.1f} GB + 1 GB, x1.2; raysl.gpu_memory); "
            f"use scale.gpus_per_worker: {1 / fits:g} or more, a smaller optim.batch_size, or set "
            f"scale.gpu_memory_gb if your GPUs have more than {gpu_gb:g} GB"
        )
    return found
