"""model.parametrization: mup (issue 27: search small, train big): muP (Yang et al. 2022, "Tensor Programs V",
arXiv 2203.03466) keeps each layer's step the same size as the width grows, so an lr tuned at a small width
transfers to a large one.

Bugs these catch: a muP that is a no-op (the coordinate check: under muP the features move by the same
amount at widths 8 and 64, under the standard parametrization they move several times more at 64; a no-op
would give both the standard ratio), a factor on the wrong layer (the role and lr tests), a factor that the
per-step schedule drops (set_lr_and_wd), and a standard run that changes when the new keys exist.
"""

from __future__ import annotations

import pytest
import torch

from raysl.errors import ConfigError
from raysl.methods import METHODS, build_method
from raysl.models import mup_param_groups, mup_roles
from raysl.optim import build_optimizer, set_lr_and_wd
from raysl.run_config import load_config


@pytest.fixture(autouse=True)
def one_thread():
    """The coordinate checks are small; one thread keeps them quick and their sums in one order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def method_of(*overrides: str, seed: int = 0, num_samples: int | None = None):
    cfg = load_config(None, list(overrides))
    torch.manual_seed(seed)
    return build_method(cfg, 3, num_samples=num_samples), cfg


def vit(*overrides: str) -> tuple[str, ...]:
    return ("model.backbone=vit_tiny", "model.vit_depth=2", "model.vit_image_size=8", "model.patch_size=4",
            *overrides)


# --------------------------------------------------------------------------
# the coordinate check (the muP paper's own test, its Figures 5 and 13): train a few steps at each width and
# watch how far the features move


def feature_change(parametrization: str, width: int, optimizer: str, lr: float, *extra: str,
                   steps: int = 4) -> tuple[float, float]:
    """Mean |change| of the backbone's features (before muP's 1/sqrt(m) readout multiplier, which belongs to
    the readout) and of the projector's output, after ``steps`` SimCLR steps on one fixed batch of 8x8 noise
    images; BatchNorm in training mode (batch statistics) when measured too."""
    vit_tiny = "model.backbone=vit_tiny" in extra
    key, base = ("model.vit_width", 64) if vit_tiny else ("model.width", 8)
    method, cfg = method_of(*extra, f"{key}={width}", f"model.parametrization={parametrization}",
                            f"model.mup_base_width={base}", f"optim.name={optimizer}", "optim.weight_decay=0")
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(32, 3, 8, 8, generator=gen)
    views = [x + 0.1 * torch.randn(x.shape, generator=gen) for _ in range(2)]
    opt = build_optimizer(method.param_groups(), cfg.optim, lr)
    mult = method.backbone.output_mult

    def features():
        with torch.no_grad():
            h = method.backbone(x)
            return h / mult, method.projector(h)

    h0, z0 = features()
    for _ in range(steps):
        loss, _ = method(views)
        opt.zero_grad()
        loss.backward()
        opt.step()
    h1, z1 = features()
    return (h1 - h0).abs().mean().item(), (z1 - z0).abs().mean().item()


# (what, optimizer, lr, overrides, which output: 0 backbone features / 1 projector output, widths, margin).
# The lrs are small enough that no width saturates (BatchNorm bounds how far a feature can move).
COORDINATE_CHECKS = [
    ("small_convnet adamw", "adamw", 1e-4, (), 0, (8, 16, 32, 64), 2.5),
    ("small_convnet adamw, projector", "adamw", 1e-4, (), 1, (8, 16, 32, 64), 2.0),
    ("vit_tiny adamw", "adamw", 1e-4, vit(), 0, (64, 128, 256, 512), 2.5),
    ("small_convnet sgd", "sgd", 1e-3, (), 0, (8, 64), 1.6),
    ("small_convnet lars", "lars", 0.1, (), 0, (8, 64), 1.5),
    # an unnormalised readout (one projector layer: no BatchNorm after it): Table 3 as printed
    ("small_convnet adamw, 1-layer projector", "adamw", 1e-4, ("model.projector_layers=1",), 1, (8, 64), 2.5),
    ("small_convnet sgd, 1-layer projector", "sgd", 1e-3, ("model.projector_layers=1",), 1, (8, 64), 2.0),
]


@pytest.mark.parametrize("what, optimizer, lr, extra, output, widths, margin", COORDINATE_CHECKS,
                         ids=[c[0] for c in COORDINATE_CHECKS])
def test_coordinate_check(what, optimizer, lr, extra, output, widths, margin):
    """Under muP the step's effect at width 64 (ViT: 512, 8x its base 64) is within 2x of width 8's: muP's
    theory makes it width-independent up to finite-width fluctuations (a few tens of percent at these widths
    and 4 steps; 2x leaves room for them and still rules out growth with the width). Under the standard
    parametrization it grows with the width (Adam's steps ~width^0.5-1 here): its ratio must exceed muP's by
    ``margin``, which a muP that changed nothing would fail (both ratios would be the standard one)."""
    ratios = {}
    for parametrization in ("standard", "mup"):
        sizes = [feature_change(parametrization, w, optimizer, lr, *extra)[output] for w in widths]
        ratios[parametrization] = sizes[-1] / sizes[0]
        print(f"{what} {parametrization}: " + ", ".join(f"width {w}: {s:.4f}" for w, s in zip(widths, sizes))
              + f"; ratio {ratios[parametrization]:.2f}")
    assert 0.5 <= ratios["mup"] <= 2.0, ratios
    assert ratios["standard"] > margin * ratios["mup"], ratios


# --------------------------------------------------------------------------
# the standard parametrization is what it was


def test_standard_builds_what_it_built_before():
    """No parametrization key, or standard with another base width: the same weights, one group of every
    trainable parameter at lr_scale 1 (as param_groups made it before muP), no muP keys in the optimizer, and
    features that are the network's own (no multiplier)."""
    default, cfg = method_of("model.width=16")
    for overrides in (("model.parametrization=standard",), ("model.parametrization=standard",
                                                            "model.mup_base_width=4")):
        other, _ = method_of("model.width=16", *overrides)
        assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), other.state_dict().values()))
        groups = other.param_groups()
        assert len(groups) == 1 and groups[0]["lr_scale"] == 1.0 and set(groups[0]) == {"params", "lr_scale"}
        assert [id(p) for p in groups[0]["params"]] == [id(p) for p in other.parameters() if p.requires_grad]
        opt = build_optimizer(groups, cfg.optim, 0.5)
        assert len(opt.param_groups) == 2  # weights, and biases/norms without decay, as before
        assert all(g["lr"] == 0.5 and not any(k.startswith("mup") for k in g) for g in opt.param_groups)
    assert default.backbone.output_mult == 1.0
    x = torch.randn(4, 3, 8, 8)
    default.eval()
    assert torch.equal(default.backbone(x), default.backbone.features(x))


def test_mup_at_its_base_width_is_standard():
    """m = 1: the same weights, the same per-group lrs, so the same training step bit for bit."""
    runs = []
    for parametrization in ("standard", "mup"):
        method, cfg = method_of("model.width=8", "model.mup_base_width=8",
                                f"model.parametrization={parametrization}")
        opt = build_optimizer(method.param_groups(), cfg.optim, 1e-3)
        assert {g["lr"] for g in opt.param_groups} == {1e-3}
        x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
        loss, _ = method([x, x.flip(-1)])
        loss.backward()
        opt.step()
        runs.append(method.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(runs[0].values(), runs[1].values()))


def test_mup_keeps_pytorch_init_and_scales_the_features():
    """muP changes no initial weight: its readout's smaller initialisation (the paper's 1/fan_in^2 variance,
    1/m of PyTorch's) is the features' 1/sqrt(m) multiplier instead."""
    standard, _ = method_of("model.width=32")
    mup, _ = method_of("model.width=32", "model.parametrization=mup", "model.mup_base_width=8")
    assert all(torch.equal(a, b) for a, b in zip(standard.state_dict().values(), mup.state_dict().values()))
    x = torch.randn(4, 3, 8, 8)
    standard.eval(), mup.eval()
    assert torch.allclose(mup.backbone(x), standard.backbone(x) * 0.5)  # m = 32 / 8 = 4


# --------------------------------------------------------------------------
# roles and per-group learning rates


def roles_of(method) -> dict[str, str]:
    groups = method.param_groups()
    names = {id(p): n for n, p in method.named_parameters()}
    return {names[id(p)]: g["mup_role"] for g in groups for p in g["params"]}


def test_roles_of_the_convnet_and_its_heads():
    method, _ = method_of("model.width=16", "model.parametrization=mup")
    roles = roles_of(method)
    assert roles["backbone.features.0.weight"] == "input"  # 3 -> 16 channels: only the fan-out grows
    assert roles["backbone.features.3.weight"] == "hidden"
    assert roles["backbone.features.1.weight"] == roles["backbone.features.1.bias"] == "vector"  # BatchNorm
    assert roles["projector.0.weight"] == "normed_readout"  # 128 -> 512, BatchNorm after it
    assert roles["projector.1.weight"] == roles["projector.3.weight"] == "fixed"  # 512 -> 128
    one_layer, _ = method_of("model.width=16", "model.parametrization=mup", "model.projector_layers=1")
    assert roles_of(one_layer)["projector.0.weight"] == "readout"


def test_roles_of_the_vit_and_mae_decoder():
    method, _ = method_of(*vit("model.vit_width=128", "model.parametrization=mup", "model.mup_base_width=64"))
    roles = roles_of(method)
    block = "backbone.blocks.layers.0."
    assert roles["backbone.patch_embed.weight"] == "input"
    assert {roles[f"backbone.{k}"] for k in ("patch_embed.bias", "cls_token", "pos_embed", "norm.weight")} == {"vector"}
    for k in ("self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight", "linear2.weight"):
        assert roles[block + k] == "hidden", k
    assert roles[block + "self_attn.in_proj_bias"] == roles[block + "norm1.weight"] == "vector"
    assert method.backbone.blocks.layers[0].self_attn.num_heads == 2  # 64 dimensions a head, as DeiT's
    mae, _ = method_of(*vit("method.name=mae", "model.vit_width=128", "model.parametrization=mup",
                            "model.mup_base_width=64"))
    roles = roles_of(mae)
    assert roles["decoder_embed.weight"] == "readout"  # vit width -> decoder_dim, nothing normalises it first
    assert roles["decoder.layers.0.linear1.weight"] == roles["mask_token"] == "fixed"


def group_lrs(method, cfg, lr: float) -> dict[tuple[str, bool], float]:
    opt = build_optimizer(method.param_groups(), cfg.optim, lr)
    return {(g["mup_role"], g["lars"]): g["lr"] for g in opt.param_groups}


def test_adamw_group_lrs():
    """Width 32 at base 8 (m = 4): hidden and normalised readout lr = base lr * 8 / 32, input, vector and
    fixed lr = base lr, an unnormalised readout base lr / sqrt(m) (its init moved into the features' 1/sqrt(m)).
    The schedule's per-step lr keeps the factors."""
    method, cfg = method_of("model.width=32", "model.parametrization=mup", "model.mup_base_width=8")
    lrs = group_lrs(method, cfg, 0.01)
    assert lrs[("hidden", True)] == pytest.approx(0.01 * 8 / 32)
    assert lrs[("normed_readout", True)] == pytest.approx(0.01 * 8 / 32)
    assert lrs[("input", True)] == lrs[("vector", False)] == lrs[("fixed", True)] == lrs[("fixed", False)] == 0.01
    opt = build_optimizer(method.param_groups(), cfg.optim, 0.01)
    set_lr_and_wd(opt, 0.003, 0.0)  # a step of the cosine schedule
    assert {(g["mup_role"], g["lars"]): g["lr"] for g in opt.param_groups} == pytest.approx(
        {k: v * 0.3 for k, v in lrs.items()})
    one_layer, cfg = method_of("model.width=32", "model.parametrization=mup", "model.projector_layers=1")
    assert group_lrs(one_layer, cfg, 0.01)[("readout", True)] == pytest.approx(0.01 / 2)


def test_sgd_and_lars_group_lrs():
    """SGD: Table 3 (input and vectors x m, hidden x 1, readout x 1 with the features' multiplier) for an
    unnormalised readout; behind a normalised one every width-dependent factor loses sqrt(m) (the backbone's
    gradients come back sqrt(m) larger). LARS: hidden x 1/sqrt(m), its groups without the trust ratio SGD's."""
    m = 4
    method, cfg = method_of("model.width=32", "model.parametrization=mup", "model.projector_layers=1",
                            "optim.name=sgd")
    lrs = group_lrs(method, cfg, 1.0)
    assert lrs[("input", True)] == pytest.approx(m) and lrs[("vector", False)] == pytest.approx(m)
    assert lrs[("hidden", True)] == lrs[("readout", True)] == lrs[("fixed", False)] == 1.0
    method, cfg = method_of("model.width=32", "model.parametrization=mup", "optim.name=sgd")
    lrs = group_lrs(method, cfg, 1.0)
    assert lrs[("input", True)] == pytest.approx(m ** 0.5) and lrs[("vector", False)] == pytest.approx(m ** 0.5)
    assert lrs[("hidden", True)] == pytest.approx(m ** -0.5) == lrs[("normed_readout", True)]
    assert lrs[("fixed", True)] == 1.0
    method, cfg = method_of("model.width=32", "model.parametrization=mup", "optim.name=lars")
    lrs = group_lrs(method, cfg, 1.0)
    assert lrs[("hidden", True)] == pytest.approx(m ** -0.5) == lrs[("normed_readout", True)]
    assert lrs[("input", True)] == lrs[("fixed", True)] == 1.0
    assert lrs[("vector", False)] == pytest.approx(m ** 0.5)  # plain SGD steps behind a normalised readout


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_splits_its_groups_by_role(name):
    """Every trainable parameter lands in exactly one group with a role, under each method's own heads, and
    building the wider twin (on the meta device) draws no random numbers."""
    backbone = vit("model.vit_width=128") if METHODS[name].backbones == ("vit_tiny",) else ("model.width=16",)
    method, _ = method_of(f"method.name={name}", *backbone, "model.parametrization=mup", num_samples=5000)
    rng = torch.get_rng_state()
    groups = method.param_groups()
    assert torch.equal(rng, torch.get_rng_state())
    grouped = [id(p) for g in groups for p in g["params"]]
    assert all("mup_role" in g for g in groups)
    assert len(grouped) == len(set(grouped))
    trainable = {id(p) for p in method.parameters() if p.requires_grad}  # EMA teachers do not train
    assert set(grouped) == trainable and {"input", "hidden", "vector"} <= {g["mup_role"] for g in groups}


def test_a_model_that_does_not_match_its_wider_twin_is_refused():
    method, cfg = method_of("model.width=16", "model.parametrization=mup")
    with pytest.raises(ValueError, match="no counterpart"):
        mup_roles(method, torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="not the model's"):
        mup_param_groups([{"params": [torch.nn.Parameter(torch.zeros(2))]}], method, cfg.model,
                         lambda c: build_method(cfg.model_copy(update={"model": c}), 3))


# --------------------------------------------------------------------------
# config


def config_error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, list(overrides))
    return str(info.value)


def test_config_errors():
    assert "mup_base_width" in config_error("model.parametrization=mup", "model.mup_base_width=0")
    assert "parametrization" in config_error("model.parametrization=mup_v2")
    for resnet in ("resnet18", "resnet50"):
        message = config_error(f"model.backbone={resnet}", "model.parametrization=mup")
        assert "small_convnet" in message and "vit_tiny" in message and "fixed width" in message, message
    assert "vit_width" in config_error("model.backbone=vit_tiny", "model.vit_width=100")  # 64 a head
    load_config(None, ["model.backbone=resnet18", "model.parametrization=standard"])  # fine as before
