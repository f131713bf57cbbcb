"""Take the pretrained backbone out of a ``raysl train`` run, and load it back for downstream use.

``export_backbone`` reads a run folder (what ``raysl train --out DIR`` wrote:
``DIR/config.yaml`` and Ray Train's ``DIR/train/checkpoint_*/state.pt``),
rebuilds the method exactly as the run did, loads a checkpoint into it and
writes the backbone's weights with what a user needs to feed it: the model
config, input channels, normalisation and image size. The file holds only
tensors, numbers and strings, so it loads with ``torch.load(weights_only=True)``;
``load_backbone`` turns it back into a module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError
from torch import nn

from raysl import storage
from raysl.checkpoint import checkpoint_dirs, load_state, save_state
from raysl.config import ModelConfig, RunConfig
from raysl.errors import CheckpointError, ConfigError, DataError
from raysl.models import build_backbone
from raysl.outcome import TRAIN_RUN_NAME
from raysl.run_config import load_config

EXPORT_FORMAT = "raysl-backbone-v1"


@dataclass
class ExportedBackbone:
    """A trained backbone (in eval mode) and how its run fed it images."""

    module: nn.Module
    in_channels: int
    feature_dim: int
    image_size: int
    mean: list[float]
    std: list[float]
    method: str
    epoch: int

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """The run's eval transform: uint8 (or [0, 1] float) images [N, C, H, W] -> resized, normalised floats."""
        from raysl.data.augment import to_float

        return to_float(images, mean=self.mean, std=self.std, out_size=self.image_size)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features [N, feature_dim] of images as ``preprocess`` takes them, on the module's device."""
        device = next(self.module.parameters()).device
        return self.module(self.preprocess(images.to(device)))


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split()) if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_checkpoints(run_dir: str) -> tuple[dict[int, str], list[CheckpointError]]:
    """Epoch -> ``state.pt`` of every checkpoint the run kept, and the errors of those that cannot be read.

    A checkpoint torn by an interrupt is skipped rather than blocking the export of the good ones.
    """
    found: dict[int, str] = {}
    unreadable: list[CheckpointError] = []
    # Ray names checkpoint folders by time: on a repeated epoch the later one wins
    for path in (Path(d, "state.pt") for d in checkpoint_dirs(os.path.join(run_dir, TRAIN_RUN_NAME))):
        if not path.is_file():
            continue
        try:
            epoch = int(load_state(str(path), mmap=True)["epoch"])
        except CheckpointError as exc:
            unreadable.append(exc)
            continue
        except (KeyError, TypeError, ValueError):
            unreadable.append(CheckpointError(f"checkpoint {path} has no epoch; it was not written by raysl train"))
            continue
        found[epoch] = str(path)
    return found, unreadable


def _choose_checkpoint(run_dir: str, epoch: int | None, cfg: RunConfig) -> tuple[int, str, list[CheckpointError]]:
    found, unreadable = run_checkpoints(run_dir)
    if not found:
        if unreadable:
            raise unreadable[0]
        raise CheckpointError(
            f"no checkpoint in {run_dir}: the run has not finished an epoch yet; "
            f"run `raysl train CONFIG --out {run_dir}` first (it checkpoints every checkpoint.every_epochs)"
        )
    if epoch is None:
        epoch = max(found)
    if epoch not in found:
        available = ", ".join(str(e) for e in sorted(found))
        raise CheckpointError(
            f"no checkpoint of epoch {epoch} in {run_dir}; available: {available} (the run keeps the last "
            f"checkpoint.keep={cfg.checkpoint.keep}, one every checkpoint.every_epochs={cfg.checkpoint.every_epochs})"
        )
    return epoch, found[epoch], unreadable


def export_backbone(run_dir: str, out: str, epoch: int | None = None, *, force: bool = False) -> dict:
    """Write the backbone of ``run_dir``'s checkpoint (the latest, or ``epoch``'s) to ``out``; returns a summary."""
    from raysl.data.locate import resolve_data_dir
    from raysl.data.read.shards import load_manifest
    from raysl.run_setup import build_run_method, input_norm

    if not os.path.isdir(run_dir):
        raise ConfigError(f"run folder {run_dir} does not exist; pass the --out folder of a `raysl train` run")
    config_path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(config_path):
        raise ConfigError(
            f"{run_dir} has no config.yaml, so it is not a `raysl train` run folder; pass a run's --out folder"
        )
    if epoch is not None and epoch < 1:
        raise ConfigError(f"--epoch must be >= 1 (got {epoch})")
    if storage.is_dir(out):
        raise ConfigError(f"--out {out} is a folder; give a file path such as {storage.join_uri(out, 'backbone.pt')}")
    if storage.exists(out) and not force:
        raise ConfigError(f"{out} already exists; choose another --out or pass --force to overwrite it")

    cfg = load_config(config_path)
    try:
        manifest = load_manifest(resolve_data_dir(cfg))
    except DataError as exc:
        raise DataError(f"{exc} (the export needs the run's data manifest for its channels and normalisation; "
                        f"data.path in {config_path} is resolved from the current folder)") from None
    epoch, state_path, unreadable = _choose_checkpoint(run_dir, epoch, cfg)

    method = build_run_method(cfg, manifest, torch.device("cpu"))
    state = load_state(state_path, mmap=True)
    try:
        method.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(
            f"checkpoint {state_path} does not match {config_path} ({_short(exc)}); "
            "was config.yaml changed after the run?"
        ) from None
    norm = input_norm(cfg, manifest)
    payload = {
        "format": EXPORT_FORMAT,
        "backbone_state": {k: v.detach().contiguous() for k, v in method.backbone.state_dict().items()},
        "model": cfg.model.model_dump(mode="json"),
        "in_channels": int(manifest.channels),
        "feature_dim": int(method.feat_dim),
        "mean": [float(m) for m in norm["mean"]],
        "std": [float(s) for s in norm["std"]],
        "image_size": int(norm["out_size"]),
        "method": cfg.method.name,
        "epoch": epoch,
    }
    save_state(out, payload)  # atomic: `out` is never half written, on a full disk neither
    summary = {
        "out": storage.resolve(out).uri, "run": os.path.abspath(run_dir), "checkpoint": os.path.abspath(state_path),
        "epoch": epoch, "method": cfg.method.name, "backbone": cfg.model.backbone,
        "feature_dim": payload["feature_dim"], "image_size": payload["image_size"],
        "in_channels": payload["in_channels"],
    }
    if unreadable:  # e.g. torn by an interrupt: say so, since "the latest" then means the latest readable one
        summary["skipped"] = [str(exc) for exc in unreadable]
    return summary


def _not_an_export(path: str, why: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a raysl backbone export ({why}); create one with `raysl export RUN_DIR --out FILE`"
    )


def load_backbone(path: str) -> ExportedBackbone:
    """The backbone of a ``raysl export`` file, in eval mode on the CPU, with its input size and normalisation."""
    if os.path.isdir(path):
        raise _not_an_export(path, "it is a folder")
    if not os.path.isfile(path):
        raise CheckpointError(
            f"backbone file {path} does not exist; create it with `raysl export RUN_DIR --out {path}`"
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - arbitrary bytes fail in the unpickler in many ways (KeyError, ...)
        raise _not_an_export(path, f"torch.load(weights_only=True) failed: {_short(exc)}") from None
    if not isinstance(data, dict):
        raise _not_an_export(path, f"it holds a {type(data).__name__}, not a dict")
    if data.get("format") != EXPORT_FORMAT:
        if "model" in data and "optimizer" in data:
            raise _not_an_export(path, "it is a raysl training checkpoint")
        raise _not_an_export(path, f"format {data.get('format')!r}, expected {EXPORT_FORMAT!r}")
    try:
        model = ModelConfig.model_validate(data["model"])
        module, _ = build_backbone(model, int(data["in_channels"]))
        module.load_state_dict(data["backbone_state"])
    except (KeyError, TypeError, ValidationError, RuntimeError) as exc:
        raise _not_an_export(path, f"its contents do not build a backbone: {_short(exc)}") from None
    return ExportedBackbone(
        module=module.eval(), in_channels=int(data["in_channels"]), feature_dim=int(data["feature_dim"]),
        image_size=int(data["image_size"]), mean=list(data["mean"]), std=list(data["std"]),
        method=str(data["method"]), epoch=int(data["epoch"]),
    )

