"""Typed run configuration: every default raysl uses lives here, once (a method's own, with the method).

A run config has the sections ``method``, ``model``, ``data``, ``optim``,
``schedule``, ``scale``, ``eval`` and ``checkpoint``. YAML files are validated
at the edge (``raysl.run_config.load_config``); the rest of the code trusts the
typed object. A search-space file (with ``base:``/``search:``/``tune:``) is
accepted too: its ``base:`` is the run config. Reading files, ``--set`` overrides and the
one-line error text are :mod:`raysl.config_load`.

The ``method`` section is the method's own config class (a ``MethodSection``),
defined next to the method in ``raysl/methods/<name>.py`` and found by name in
``METHOD_REGISTRY``, which ``raysl.methods`` fills. This module never imports
the methods (they are a layer above it), so parse run configs through
``raysl.run_config``, which does.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Protocol

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, not ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


Temperature = Annotated[float, Field(gt=0.0, le=100.0)]
MAX_EPOCHS = 1_000_000  # optim.epochs (see OptimConfig)
# a run's seed: torch seeds generators with 64-bit integers and raysl derives per-rank and per-epoch seeds
# from it (seed * 1_000_003 + epoch * 7919 + rank, raysl.data.read.stream), which a seed past 2**32 can overflow
MAX_SEED = 2**32 - 1
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Weight = Annotated[float, Field(ge=0.0)]
Momentum = Annotated[float, Field(ge=0.0, le=1.0)]


# --------------------------------------------------------------------------
# methods: `name` selects the method, the other keys are its knobs. Each method's config class lives next to
# the method, in raysl/methods/<name>.py (defaults follow the papers, and solo-learn/lightly where the paper
# is silent), and raysl.methods registers the method; this module, a layer below, never imports them.

DEFAULT_METHOD = "simclr"  # a run config without method: trains SimCLR


class MethodSection(Section):
    """Base of every method's config (a run config's ``method:``): ``name`` selects the method.

    A subclass narrows ``name`` to its method's name (``name: Literal["simclr"] = "simclr"``) and adds the
    method's knobs; it is defined with the method, in ``raysl/methods/<name>.py``.
    """

    name: str


class RegisteredMethod(Protocol):
    """What a run config reads of a registered method class (``raysl.methods.base.Method``)."""

    config_class: type[MethodSection]  # validates the ``method:`` section
    supports_local_crops: bool  # data.local_crops.number > 0 needs it
    backbones: tuple[str, ...] | None  # the model.backbone values it trains (None: any)


#: name -> method class, in registration order. ``raysl.methods.register`` fills it when raysl.methods is
#: imported, and ``raysl.methods.METHODS`` is this dict. A run config's ``method:`` is validated by the
#: registered method's ``config_class``: parse run configs with raysl.run_config (load_config, build_config,
#: RunConfig), which imports raysl.methods first.
METHOD_REGISTRY: dict[str, RegisteredMethod] = {}


def _method_names() -> str:
    return ", ".join(METHOD_REGISTRY)


def _method_name_error(message: str, name: Any) -> ValidationError:
    """A validation error at ``method.name`` (raised inside RunConfig's validator, which adds ``method``)."""
    return ValidationError.from_exception_data("method", [
        {"type": PydanticCustomError("method_name", message), "loc": ("name",), "input": name}])


def method_section(value: Any) -> MethodSection:
    """``value`` (a ``method:`` mapping) validated by its method's own config class."""
    if not METHOD_REGISTRY:  # a programming error, not the user's: raise it as such
        raise RuntimeError("no SSL method is registered: parse run configs with raysl.run_config (load_config, "
                           "build_config, RunConfig), which imports raysl.methods, the registry")
    if isinstance(value, MethodSection):
        method = METHOD_REGISTRY.get(value.name)
        if method is not None and isinstance(value, method.config_class):
            return value
        value = value.model_dump()
    if not isinstance(value, dict):
        raise ValueError("expected a mapping of the method's name and knobs, e.g. {name: simclr, temperature: 0.2}")
    name = value.get("name")
    if name is None:
        raise _method_name_error(f"missing; name the method, one of: {_method_names()}", name)
    method = METHOD_REGISTRY.get(name) if isinstance(name, str) else None
    if method is None:
        raise _method_name_error(f"unknown method {str(name)!r}; allowed: {_method_names()}", name)
    return method.config_class.model_validate(value)


# --------------------------------------------------------------------------


class ModelConfig(Section):
    backbone: Literal["small_convnet", "resnet18", "resnet50", "vit_tiny"] = "small_convnet"
    width: Annotated[int, Field(ge=4, le=512)] = 32  # small_convnet base width
    patch_size: Annotated[int, Field(ge=1, le=64)] = 4  # vit_tiny: pixels per patch side
    vit_image_size: Annotated[int, Field(ge=1, le=1024)] = 32  # vit_tiny: the grid its position embedding learns
    # vit_tiny: Transformer blocks (DeiT-Ti's 12 by default); fewer for tiny images, where 16 tokens do not
    # need 12 blocks and a CPU epoch costs ~depth/12 of the full model's
    vit_depth: Annotated[int, Field(ge=1, le=48)] = 12
    # vit_tiny: the embedding width (DeiT-Ti's 192); heads of 64 dimensions each (vit_width / 64 of them, as DeiT)
    # and an MLP of 4 x vit_width, so that a wider ViT keeps its head size
    vit_width: Annotated[int, Field(ge=64, le=4096, multiple_of=64)] = 192
    # how initialisation and per-layer learning rates follow the width (model.width; vit_tiny: model.vit_width):
    # "standard" (PyTorch's, one lr for every layer) or "mup" (Yang et al. 2022, docs/training.md: an lr tuned at
    # one width transfers to another); mup equals standard at width mup_base_width
    parametrization: Literal["standard", "mup"] = "standard"
    mup_base_width: Annotated[int, Field(ge=1, le=4096)] = 8  # mup: the width the hyperparameters were tuned at
    projector_hidden_dim: Annotated[int, Field(ge=1)] = 512
    projector_dim: Annotated[int, Field(ge=1)] = 128
    projector_layers: Annotated[int, Field(ge=1, le=4)] = 2
    predictor_hidden_dim: Annotated[int, Field(ge=1)] = 512
    channels_last: bool = True
    compile: bool = False

    @model_validator(mode="after")
    def _mup_needs_a_width_knob(self) -> "ModelConfig":
        if self.parametrization == "mup" and self.backbone not in ("small_convnet", "vit_tiny"):
            raise ValueError(
                f"model.parametrization: mup scales layers with the backbone's width, and {self.backbone} has a "
                "fixed width; use model.backbone: small_convnet (width: model.width) or vit_tiny (width: "
                "model.vit_width), or model.parametrization: standard"
            )
        return self


class ViewAugment(Section):
    """One view's augmentation recipe; defaults are SimCLR's (Chen et al. 2020, appendix A)."""

    crop_scale: tuple[Probability, Probability] = (0.08, 1.0)
    crop_ratio: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = (3 / 4, 4 / 3)
    hflip_p: Probability = 0.5
    jitter_p: Probability = 0.8
    brightness: Annotated[float, Field(ge=0.0, le=1.0)] = 0.4
    contrast: Annotated[float, Field(ge=0.0, le=1.0)] = 0.4
    saturation: Annotated[float, Field(ge=0.0, le=1.0)] = 0.4
    hue: Annotated[float, Field(ge=0.0, le=0.5)] = 0.1
    grayscale_p: Probability = 0.2
    blur_p: Probability = 0.0
    blur_sigma: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = (0.1, 2.0)
    solarize_p: Probability = 0.0
    solarize_threshold: Probability = 0.5
    size: Annotated[int, Field(ge=4)] | None = None  # this view's output side in px; None: data.crop_size

    @model_validator(mode="after")
    def _ordered_ranges(self) -> "ViewAugment":
        for key in ("crop_scale", "crop_ratio", "blur_sigma"):
            lo, hi = getattr(self, key)
            if lo > hi:
                raise ValueError(f"{key} must be [low, high] with low <= high, got [{lo}, {hi}]")
        if self.crop_scale[0] <= 0:
            raise ValueError("crop_scale low must be > 0")
        return self


def _byol_views() -> list[ViewAugment]:
    # BYOL table 6: asymmetric blur and solarization between the two views.
    return [
        ViewAugment(blur_p=1.0, solarize_p=0.0, saturation=0.2),
        ViewAugment(blur_p=0.1, solarize_p=0.2, saturation=0.2),
    ]


AUGMENT_PRESETS = {
    "simclr": lambda: [ViewAugment(), ViewAugment()],
    "byol": _byol_views,
}


class LocalCrops(Section):
    """Multi-crop (Caron et al. 2020, SwAV; DINO): small crops beside the global views.

    Defaults are DINO's ImageNet recipe (6 x 96 px at scale 0.05-0.4). Local crops
    use the colour recipe of the last global view with blur probability ``blur_p``
    and no solarization (DINO's local transform).
    """

    number: Annotated[int, Field(ge=0, le=16)] = 0
    size: Annotated[int, Field(ge=4)] = 96
    scale: tuple[Probability, Probability] = (0.05, 0.4)
    blur_p: Probability = 0.5

    @model_validator(mode="after")
    def _ordered(self) -> "LocalCrops":
        lo, hi = self.scale
        if not 0 < lo <= hi:
            raise ValueError(f"scale must be [low, high] with 0 < low <= high, got [{lo}, {hi}]")
        return self


class DataConfig(Section):
    source: Literal["digits", "idx", "cifar10", "imagefolder", "parquet"] = "digits"
    path: str | None = None  # a prepared shard folder (raysl data prepare --out)
    augment: list[ViewAugment] | Literal["simclr", "byol"] = "simclr"
    crop_size: Annotated[int, Field(ge=4)] | None = None  # global views' side; default: the image's (224 for JPEG shards)
    local_crops: LocalCrops = Field(default_factory=LocalCrops)
    decode: Literal["auto", "cpu", "gpu"] = "auto"  # JPEG shards: gpu = nvJPEG on the worker's GPU; auto: gpu on CUDA
    # small-image shards: auto = each Train worker reads its share itself; ray_data = through a Ray Dataset
    # (its split coordinator and read tasks: a few process start-ups more per run; raysl.data.read.dataset)
    reader: Literal["auto", "ray_data"] = "auto"
    cache_on_device: bool = True  # keep the uint8 split on the worker's device after one pass
    max_cached_bytes: Annotated[int, Field(ge=0)] = 4 << 30
    # train on a seeded fraction of the train split (raysl/data/read/subset.py); eval sets stay whole
    fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0

    def global_views(self) -> list[ViewAugment]:
        if isinstance(self.augment, str):
            return AUGMENT_PRESETS[self.augment]()
        return list(self.augment)

    def local_views(self) -> list[ViewAugment]:
        """``local_crops.number`` recipes for the local crops (empty without multi-crop)."""
        local = self.local_crops
        if local.number == 0:
            return []
        last = self.global_views()[-1]
        recipe = last.model_copy(update={"crop_scale": local.scale, "size": local.size,
                                         "blur_p": local.blur_p, "solarize_p": 0.0})
        return [recipe] * local.number

    def views(self, num_global: int = 2) -> list[ViewAugment]:
        """One recipe per view a training step makes: ``num_global`` global views, then the local crops.

        The global recipes cycle through ``global_views()`` (a method with more
        views than recipes reuses them in order); the ``local_crops.number``
        local recipes follow, so ``views[:num_global]`` are the global views.
        """
        if num_global < 1:
            raise ValueError(f"num_global must be >= 1, got {num_global}")
        recipes = self.global_views()
        return [recipes[i % len(recipes)] for i in range(num_global)] + self.local_views()

    @model_validator(mode="after")
    def _local_crops_are_local(self) -> "DataConfig":
        if isinstance(self.augment, list) and not self.augment:
            raise ValueError("augment: give at least one view recipe, or a preset (simclr, byol)")
        local = self.local_crops
        if local.number and self.crop_size is not None and local.size > self.crop_size:
            raise ValueError(
                f"local_crops.size ({local.size}) is larger than crop_size ({self.crop_size}); "
                "local crops are the small views: set data.local_crops.size <= data.crop_size"
            )
        return self


class OptimConfig(Section):
    name: Literal["sgd", "lars", "adamw"] = "adamw"
    lr: Annotated[float, Field(gt=0.0, le=100.0)] = 1e-3  # per 256 images (see lr_scaling)
    # linear: lr * global_batch / 256; sqrt: lr * sqrt(global_batch / 256) (raysl.scaling_laws.scaled_lr)
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"
    weight_decay: Weight = 1e-4
    momentum: Momentum = 0.9
    batch_size: Annotated[int, Field(ge=2)] = 256  # global, split across workers
    # at most MAX_EPOCHS: the longest self-supervised recipes train for a few thousand epochs at most
    # (BYOL 1000, MAE 1600 on ImageNet), so a million or more is a typo (10**26 was accepted and printed
    # `epoch 1/99999999999999999999999999`), and the per-epoch seeds (raysl.data.read.stream) stay in 64 bits
    epochs: Annotated[int, Field(ge=1, le=MAX_EPOCHS)] = 10
    grad_clip: Annotated[float, Field(gt=0.0)] | None = None
    exclude_bias_and_norm: bool = True  # no weight decay / LARS adaptation on biases and norms
    # EMA scaling rule (Busbridge et al. 2023): when set, an EMA teacher's momenta (method.ema_base,
    # ema_final) are the values for this global batch, and a run at batch_size uses rho ** (batch_size / it)
    ema_reference_batch: Annotated[int, Field(ge=1)] | None = None

    @field_validator("epochs", mode="before")
    @classmethod
    def _epochs_bound(cls, value: Any) -> Any:
        # before pydantic's int parsing, which answers 1e26 with "exceeded maximum size" (and YAML reads
        # 1e26 as a string): say what the limit is and why
        try:
            number = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None
        except ValueError:
            number = None
        if number is not None and number > MAX_EPOCHS:
            raise ValueError(f"must be at most {MAX_EPOCHS:,} (self-supervised recipes train for a few thousand "
                             "epochs at most; a typo?)")
        return value


class ScheduleConfig(Section):
    lr: Literal["warmup_cosine", "constant", "step", "infinite"] = "warmup_cosine"
    warmup: Probability = 0.1  # fraction of training
    final_lr_fraction: Probability = 0.0
    milestones: list[Probability] = [0.6, 0.8]  # step
    gamma: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1  # step
    plateau: Probability = 0.5  # infinite: plateau lr as a fraction of the peak
    decay_end: Probability = 0.5  # infinite: where the cosine meets the plateau
    cooldown: Probability = 0.1  # infinite: final linear cool-down fraction
    weight_decay: Literal["constant", "cosine"] = "constant"
    weight_decay_final: Weight = 0.4  # used by cosine (DINO)


WORKERS_HINT = "a number of workers (e.g. 2), or [min, max] for elastic training (e.g. [1, 4])"


class ScaleConfig(Section):
    # a number, or [min, max]: elastic (raysl train), Ray Train runs as many workers as the cluster
    # fits, restarting the group at another size when workers are lost or come back; optim.batch_size
    # stays the global batch (each worker takes batch_size / workers)
    num_workers: int | tuple[int, int] = 1
    # raysl train: restarts of the worker group (from the latest checkpoint) after a worker fails;
    # `raysl train --max-failures N` sets it. Trials use tune.max_failures.
    max_failures: Annotated[int, Field(ge=0)] = 0
    use_gpu: bool = False
    cpus_per_worker: Annotated[float, Field(gt=0.0)] = 1.0
    gpus_per_worker: Annotated[float, Field(gt=0.0)] = 1.0
    # memory of one GPU, for the check of a fractional gpus_per_worker (raysl.gpu_memory); default 80
    gpu_memory_gb: Annotated[float, Field(gt=0.0)] | None = None
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast is used on GPU only
    torch_threads: Annotated[int, Field(ge=1)] | None = None  # default: cpus_per_worker
    # a cluster with an autoscaler: how long raysl waits for it to add the CPUs/GPUs the run asks for
    # before giving up in one line (a fixed cluster that cannot hold the run is refused at once)
    placement_timeout_s: Annotated[float, Field(gt=0.0)] = 600.0

    @field_validator("num_workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> int | tuple[int, int]:
        def count(v: Any) -> int:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v):
                raise ValueError(f"expected {WORKERS_HINT}")
            return int(v)

        if isinstance(value, (list, tuple)):
            if len(value) != 2:
                raise ValueError(f"expected {WORKERS_HINT}")
            low, high = count(value[0]), count(value[1])
            if not 1 <= low <= high:
                raise ValueError("[min, max] needs 1 <= min <= max, e.g. [1, 4]")
            return low if low == high else (low, high)
        if count(value) < 1:
            raise ValueError(f"needs at least 1 worker; expected {WORKERS_HINT}")
        return count(value)

    @property
    def elastic(self) -> bool:
        return isinstance(self.num_workers, tuple)

    @property
    def min_workers(self) -> int:
        return self.num_workers[0] if isinstance(self.num_workers, tuple) else self.num_workers

    @property
    def max_workers(self) -> int:
        """The most workers a run uses (what resource and FLOP counts assume)."""
        return self.num_workers[1] if isinstance(self.num_workers, tuple) else self.num_workers


# the evaluation metrics made from extra augmented views of the eval images (eval.view_metrics); also
# with the prefix projector_
VIEW_METRICS = ("lidar", "view_agreement", "agreed_rank")


class EvalConfig(Section):
    every_epochs: Annotated[int, Field(ge=1)] = 1
    knn_k: list[Annotated[int, Field(ge=1)]] = [20, 200]
    knn_temperature: Temperature = 0.07
    max_train: Annotated[int, Field(ge=1)] = 10_000  # kNN memory bank rows
    # at least 2: the evaluation compares val images with each other (LiDAR, view agreement, the collapse
    # check), and kNN accuracy on one image is 0 or 1
    max_val: Annotated[int, Field(ge=2)] = 10_000
    rankme_max_samples: Annotated[int, Field(ge=2)] = 25_600
    # LiDAR (raysl.evaluate.lidar): the first lidar_images val images, lidar_views augmented views of
    # each (the run's global view recipes, the same draws at every evaluation); the same views give
    # view_agreement (their kNN neighbourhoods in the memory bank) and agreed_rank; lidar_images 0 turns
    # all three off
    lidar_images: Annotated[int, Field(ge=0)] = 500
    lidar_views: Annotated[int, Field(ge=2)] = 8
    lidar_delta: Annotated[float, Field(gt=0.0)] = 1e-4  # S_w regulariser, relative to the mean feature variance
    # those three metrics cost lidar_images x lidar_views more forward passes and their eigendecompositions
    # at every evaluation, so they are computed only when view_metrics is true or when the search running
    # the trial ranks by one of them (search_metrics), with the sizes above
    view_metrics: bool = False
    # every metric again on the projector's output, prefixed projector_ (projector_knn_acc, projector_rankme,
    # ...; projector_lidar with the view metrics): only when true or when a search metric is a projector_
    # one. The collapse check reads the projector's spread whatever this says.
    projector_metrics: bool = False
    # the metrics the search running this trial ranks by (its tune.metric or tune.objectives): every
    # evaluation computes them, whatever the two switches above say. raysl tune sets it; empty for raysl train
    search_metrics: list[str] = []
    # linear probe at each evaluation (linear_acc): logistic regression on the memory bank's frozen backbone
    # features (raysl.evaluate.linear_probe_accuracy, 100 epochs of Adam), tested on the val split; the
    # fairer measure for encoders whose features kNN reads poorly (MAE)
    linear_probe: bool = False
    stop_on_collapse: bool = True
    # gradient noise scale B_simple at each evaluation (raysl.noise_scale); None = auto: only for
    # methods whose loss is a mean of per-sample terms (unbiased there)
    noise_scale: bool | None = None

    def wants_view_metrics(self) -> bool:
        """Whether an evaluation computes lidar, view_agreement and agreed_rank (on lidar_images >= 2 images)."""
        return self.view_metrics or any(m.removeprefix("projector_") in VIEW_METRICS for m in self.search_metrics)

    def wants_linear_probe(self) -> bool:
        """Whether an evaluation trains the linear probe (linear_acc): asked for, or the search ranks by it."""
        return self.linear_probe or "linear_acc" in self.search_metrics

    def wants_projector_metrics(self) -> bool:
        """Whether an evaluation computes the projector_ metrics."""
        return self.projector_metrics or any(m.startswith("projector_") for m in self.search_metrics)


class CheckpointConfig(Section):
    every_epochs: Annotated[int, Field(ge=1)] = 1
    keep: Annotated[int, Field(ge=1)] = 2


class RunConfig(Section):
    # the registered method's own config class (METHOD_REGISTRY): dumped with its fields, not MethodSection's
    method: SerializeAsAny[MethodSection] = Field(default_factory=lambda: {"name": DEFAULT_METHOD},
                                                  validate_default=True)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    scale: ScaleConfig = Field(default_factory=ScaleConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0
    # dotted key -> the `--set key=value` item that set it (build_config), so that a check made after
    # loading (e.g. against the data set) blames the --set item, not the file; never dumped or saved
    _set_keys: dict[str, str] = PrivateAttr(default_factory=dict)

    def origin(self, key: str, source: str) -> str:
        """Where ``key``'s value came from, for an error message: ``--set KEY=VALUE`` when an override
        set it (or a section above it), else ``source`` (the file)."""
        item = next((v for k, v in self._set_keys.items() if key == k or key.startswith(k + ".")), None)
        return f"--set {item}" if item is not None else source

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, value: Any) -> MethodSection:
        return method_section(value)

    @model_validator(mode="after")
    def _cross_checks(self) -> "RunConfig":
        scale, batch = self.scale, self.optim.batch_size
        if batch < 2 * scale.max_workers:
            raise ValueError(
                f"optim.batch_size ({batch}) must be at least 2 per worker ({scale.max_workers} workers)"
            )
        if scale.elastic:
            # the global batch (and so the lr and the results) must not change with the worker count:
            # every count Ray may choose has to split it evenly
            counts = range(scale.min_workers, scale.max_workers + 1)
            uneven = [n for n in counts if batch % n]
            if uneven:
                step = math.lcm(*counts)
                above = -(-batch // step) * step
                fits = f"{above}" if above == step else f"{above - step} or {above}"
                raise ValueError(
                    f"optim.batch_size ({batch}) is the global batch and must split evenly over every worker "
                    f"count in scale.num_workers [{scale.min_workers}, {scale.max_workers}], but not over "
                    f"{' or '.join(map(str, uneven))} workers; use a multiple of {step} (e.g. {fits}) or a "
                    "narrower range"
                )
        model = self.model
        # what the method declares it needs (raysl.methods.base.Method), read from the registry
        method = METHOD_REGISTRY.get(self.method.name)
        backbones = getattr(method, "backbones", None)
        if backbones is not None and model.backbone not in backbones:
            raise ValueError(f"{self.method.name} needs model.backbone: {' or '.join(backbones)} "
                             f"(got {model.backbone!r})")
        if model.backbone == "vit_tiny":
            for key, size in (("model.vit_image_size", model.vit_image_size), ("data.crop_size", self.data.crop_size)):
                if size is not None and size < model.patch_size:
                    raise ValueError(
                        f"{key} ({size}) is smaller than one ViT patch (model.patch_size={model.patch_size}); "
                        "use a smaller model.patch_size"
                    )
        if self.data.local_crops.number:
            if method is not None and not method.supports_local_crops:
                takes = ", ".join(name for name, cls in METHOD_REGISTRY.items() if cls.supports_local_crops)
                raise ValueError(
                    f"data.local_crops.number ({self.data.local_crops.number}): method {self.method.name!r} "
                    f"does not use local crops (multi-crop); set data.local_crops.number=0, or use one of: {takes}"
                )
            if model.backbone == "vit_tiny" and self.data.local_crops.size < model.patch_size:
                raise ValueError(
                    f"data.local_crops.size ({self.data.local_crops.size}) is smaller than one ViT patch "
                    f"(model.patch_size={model.patch_size}); use a smaller model.patch_size"
                )
        if self.data.source != "digits" and self.data.path is None:
            raise ValueError(
                f"data.path is required for data.source={self.data.source!r}: "
                "run `raysl data prepare` and point data.path at its --out folder"
            )
        return self
