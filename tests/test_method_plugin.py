"""A method is one file plus one registry line (issue 24): a throw-away method outside raysl parses and trains.

Bug this catches: a method whose config is not spelled out in raysl/config.py. Before issue 24 every method's
config class sat in config.py's static union (``MethodConfig``), so a method in its own file was refused by
the config loader ("unknown method") until config.py was edited too; and a union that did not dump the
method's own fields (``SerializeAsAny``) would send the workers ``method: {name: toy}`` only, so they would
train with the defaults instead of the user's knobs (here ``scale: 2.0``, checked in the worker).
"""

from __future__ import annotations

import importlib
import math
import sys

import pytest

from raysl.errors import ConfigError
from raysl.methods import METHODS, register
from raysl.run_config import load_config

# the whole method, as a contributor writes it: its config class and its method class, in one file
TOY_METHOD = '''\
"""Toy: NT-Xent times a constant (``scale``)."""

from typing import Literal

from raysl import losses
from raysl.config import MethodSection
from raysl.methods.base import PairLossMethod

BUILT = []  # the config each ToyMethod was built with (the test reads what the worker got)


class ToyConfig(MethodSection):
    name: Literal["toy"] = "toy"
    scale: float = 1.0


class ToyMethod(PairLossMethod):
    config_class = ToyConfig

    def __init__(self, method_cfg, model_cfg, in_channels):
        super().__init__(method_cfg, model_cfg, in_channels)
        BUILT.append(method_cfg)

    def pair_loss(self, z1, z2):
        return self.cfg.scale * losses.nt_xent(z1, z2, temperature=0.2)
'''

SMALL = """\
model: {width: 4, projector_hidden_dim: 16, projector_dim: 8}
data: {crop_size: 8}
optim: {epochs: 2, batch_size: 128}
eval: {every_epochs: 2}
"""


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy method's module, imported from a throw-away package folder and registered; unregistered after."""
    (tmp_path / "toy_ssl.py").write_text(TOY_METHOD)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("toy_ssl")
    register("toy", module.ToyMethod)  # the one line a contributor adds to raysl/methods/__init__.py
    try:
        yield module
    finally:
        METHODS.pop("toy", None)
        sys.modules.pop("toy_ssl", None)


def test_a_method_in_one_file_parses_and_trains(toy, tmp_path, digits_dir):
    from raysl.loop_io import LocalIO
    from raysl.train import train_worker

    path = tmp_path / "toy.yaml"
    path.write_text("method: {name: toy, scale: 2.0}\n" + SMALL)
    cfg = load_config(path)
    assert type(cfg.method) is toy.ToyConfig and cfg.method.scale == 2.0
    assert list(type(cfg.method).model_fields) == ["name", "scale"]
    assert cfg.model_dump(mode="json")["method"] == {"name": "toy", "scale": 2.0}  # what the workers get

    bad = tmp_path / "bad.yaml"
    bad.write_text("method: {name: toy, scael: 2.0}\n" + SMALL)
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert str(info.value).startswith(f"{bad}: unknown key 'method.scael' for method"), info.value
    assert "did you mean method.scale?" in str(info.value) and "toy takes: scale" in str(info.value)
    with pytest.raises(ConfigError, match=r"unknown method 'tooy'; allowed: .*\btoy\b"):
        load_config(None, ["method.name=tooy"])

    io = LocalIO()
    train_worker({"config": cfg.model_dump(mode="json"), "data_dir": digits_dir}, io)
    assert [built.scale for built in toy.BUILT] == [2.0]  # the worker re-parsed the JSON with the toy's knob
    assert [r["epoch"] for r in io.reports] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in io.reports), [r["loss"] for r in io.reports]
    assert io.reports[-1]["status"] == "finished"


def test_register_refuses_a_config_named_otherwise(toy):
    """The registry line names the method; the config class's ``name`` must say the same."""
    with pytest.raises(ValueError, match=r"ToyConfig.name defaults to 'toy'"):
        register("toy2", toy.ToyMethod)
    assert "toy2" not in METHODS


def test_the_methods_need_no_name_checks():
    """What a method needs is declared on its class, where the config, the launcher and the loop read it."""
    assert [n for n, cls in METHODS.items() if cls.needs_labels] == ["supcon"]
    assert [n for n, cls in METHODS.items() if cls.uses_num_samples] == ["isogclr", "deepclusterv2"]
    assert {n: cls.backbones for n, cls in METHODS.items() if cls.backbones} == {"mae": ("vit_tiny",)}
    for name, cls in METHODS.items():
        assert cls.config_class.model_fields["name"].default == name
        assert cls.__module__ == cls.config_class.__module__  # one file: the method and its config
