"""Config validation: every user mistake is one line naming the file, the key and what is allowed."""

from __future__ import annotations

import math
import subprocess
import textwrap

import pytest

from raysl.cli import main
from raysl.errors import ConfigError
from raysl.run_config import RunConfig, load_config

from conftest import HANG, RAYSL, REPO


def write(tmp_path, text: str, name: str = "run.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def error_of(path: str, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_live_in_one_place():
    cfg = RunConfig()
    assert cfg.method.name == "simclr" and cfg.method.temperature == 0.2
    assert load_config(str(REPO / "search_spaces/quickstart.yaml")).method.name == "simclr"


@pytest.mark.parametrize(
    "yaml_text, expected",
    [
        ("method: {name: simclr, temprature: 0.1}", ["method.temprature", "unknown key", "temperature"]),
        ("method: {name: simclr, temperature: -0.5}", ["method.temperature", "greater than 0", "-0.5"]),
        ("method: {name: simclr, temperature: hot}", ["method.temperature", "valid number"]),
        ("method: {name: nosuchmethod}", ["unknown method 'nosuchmethod'", "simclr", "byol"]),
        ("optim: {batch_size: 1}", ["optim.batch_size", "greater than or equal to 2"]),
        ("optim: {name: adam}", ["optim.name", "'sgd', 'lars' or 'adamw'"]),
        ("modle: {backbone: resnet18}", ["unknown key 'modle'"]),
        ("data: {augment: [{hflip_p: 1.5}]}", ["data.augment.0.hflip_p", "less than or equal to 1"]),
        ("data: {source: idx}", ["data.path is required", "raysl data prepare"]),
    ],
)
def test_config_errors_name_file_key_and_allowed(tmp_path, yaml_text, expected):
    path = write(tmp_path, yaml_text)
    message = error_of(path)
    assert message.startswith(path)
    for part in expected:
        assert part in message, message


def test_set_override_errors(tmp_path):
    path = write(tmp_path, "method: {name: simclr}")
    assert "method.temperature" in error_of(path, ["method.temperature=-1"])
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_config(path, ["method.temperature"])
    assert load_config(path, ["method.temperature=0.5"]).method.temperature == 0.5


@pytest.mark.parametrize(
    "override, suggestion",
    [
        ("optim.lrr=0.1", "did you mean optim.lr?"),  # a typo
        ("optim.learning_rate=0.1", "did you mean optim.lr?"),  # another library's name
        ("optim.temperature=0.3", "did you mean method.temperature?"),  # the right key in the wrong section
        ("method.temprature=0.1", "did you mean method.temperature?"),
    ],
)
def test_unknown_key_suggests_the_closest_and_says_it_came_from_set(tmp_path, override, suggestion):
    path = write(tmp_path, "method: {name: simclr}")
    message = error_of(path, [override])
    assert message.startswith(f"--set {override}: unknown key"), message
    assert suggestion in message


def test_unknown_key_in_the_file_names_the_file_even_with_other_overrides(tmp_path):
    path = write(tmp_path, "optim: {lrr: 0.1}")
    message = error_of(path, ["optim.epochs=3"])
    assert message.startswith(f"{path}: unknown key 'optim.lrr'") and "did you mean optim.lr?" in message


def test_search_space_set_errors_name_the_override(tmp_path):
    from raysl.space_file import load_space

    with pytest.raises(ConfigError) as info:
        load_space(str(REPO / "search_spaces/quickstart.yaml"), ["optim.bs=64"])
    assert str(info.value).startswith("--set optim.bs=64: unknown key") and "did you mean optim.batch_size?" in str(info.value)


def test_set_has_help_text():
    proc = subprocess.run([RAYSL, "train", "--help"], capture_output=True, text=True, timeout=HANG)
    assert "--set KEY=VALUE" in proc.stdout and "optim.lr=0.01" in proc.stdout


def test_bad_yaml_and_missing_file(tmp_path):
    assert "not valid YAML" in error_of(write(tmp_path, "method: [unclosed"))
    assert "file not found" in error_of(str(tmp_path / "nope.yaml"))


def test_search_space_base_is_accepted(tmp_path):
    path = write(tmp_path, "base: {method: {name: byol}}\nsearch: {}\n")
    assert load_config(path).method.name == "byol"


def test_cli_user_error_exits_2_with_one_line_before_ray_starts(tmp_path, capsys):
    import ray

    path = write(tmp_path, "method: {name: simclr, temperature: -1}")
    assert main(["train", path, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "method.temperature" in err and err.startswith("raysl: error:")
    assert not ray.is_initialized()
    assert not (tmp_path / "out").exists()


def test_batch_larger_than_dataset_fails_before_ray(tmp_path, capsys):
    import ray

    path = write(tmp_path, "optim: {batch_size: 100000}")
    assert main(["train", path, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "optim.batch_size: 100000 is larger than the 1438 training images" in err
    assert not ray.is_initialized()


def test_cli_subprocess_has_no_traceback(tmp_path):
    path = write(tmp_path, "method: {name: nope}")
    proc = subprocess.run([RAYSL, "train", path], capture_output=True, text=True, timeout=HANG)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown method 'nope'" in proc.stderr


def test_missing_prepared_data_names_the_folder(tmp_path, capsys):
    path = write(tmp_path, f"data: {{source: parquet, path: {tmp_path / 'nodata'}}}")
    assert main(["train", path]) == 2
    assert "manifest.json" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted((REPO / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_every_bundled_search_space_validates(path):
    """What the README and the benches point users at loads as `raysl tune` (or `raysl scale`) reads it."""
    if path.name.startswith("scaling_"):  # as raysl scale reads it before Ray starts (raysl.scale.scale_main)
        from raysl.scaling import grid_points, load_scaling
        from raysl.space_file import space_from_dict

        spec = load_scaling(str(path))
        space = space_from_dict(spec.space_dict(), spec.source)  # base: and the grid as a search space
        points = grid_points(spec)  # every grid point's run config
        assert space.grid() == spec.grid and len(points) == math.prod(len(v) for v in spec.grid.values()) > 1
    else:
        from raysl.space_file import load_space

        load_space(path)
