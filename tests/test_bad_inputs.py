"""Typed user mistakes end in one line, exit 2, before Ray starts (issue 23, item 7).

Each case below gave a traceback or was silently accepted. Now `raysl` prints exactly one
``raysl: error: ...`` line naming the problem and its fix, exits with 2, writes nothing (no run folder,
no experiment) and never starts Ray. The commands run in this process (``raysl.cli.main``): every one of
them fails before Ray would start, so none of these tests trains or starts a cluster.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from raysl import cli
from raysl.data.prepare import prepare

from conftest import REPO

QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"
SCALING = REPO / "search_spaces" / "scaling_quickstart.yaml"
# a valid 1x1 PNG: what `raysl train picture.png` reads
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d4944415478da63f8cf00000301010018dd8db00000000049454e44ae426082")


def refused(argv: list[str], capsys) -> str:
    """Run ``raysl ARGV``; assert exit 2, one error line and no traceback, and that Ray was not started;
    return the error line."""
    code = cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("raysl: error:")]
    assert code == 2, err
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err
    assert "Traceback" not in err, err
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()
    return lines[0]


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --------------------------------------------------------------------------- 1. binary or folder config


@pytest.mark.parametrize("kind", ["random bytes", "png", "folder"])
@pytest.mark.parametrize("command", ["train", "tune", "scale"])
def test_a_binary_file_or_a_folder_as_config_is_one_line(tmp_path, capsys, kind, command):
    """Bug: read_yaml read the file as text, so a binary file (random bytes, a PNG) was a
    UnicodeDecodeError traceback and a folder an IsADirectoryError traceback, for every command."""
    config = tmp_path / "config.yaml"
    if kind == "folder":
        config.mkdir()
    else:
        config.write_bytes(PNG if kind == "png" else bytes(range(128, 256)) * 4)
    out = tmp_path / "out"
    where = ["--out", str(out)] if command == "train" else ["--storage", str(out)]
    line = refused([command, str(config), *where], capsys)
    assert str(config) in line
    assert ("is a folder, not a file" if kind == "folder" else "is not a text file") in line
    assert not out.exists()


# --------------------------------------------------------------------------- 2. duplicate YAML keys


@pytest.mark.parametrize(("text", "line_no", "key"), [
    ("method: {name: simclr}\noptim:\n  batch_size: 64\n  batch_size: 256\n", 4, "batch_size"),
    ("method: {name: simclr}\noptim: {epochs: 1}\nmethod: {name: byol}\n", 3, "method"),
])
def test_a_key_given_twice_in_one_mapping_is_refused(tmp_path, capsys, text, line_no, key):
    """Bug: PyYAML keeps the last of two equal keys silently: a config saying `batch_size: 64` and later
    `batch_size: 256` trained with 256. Now the file, the line and the key are named."""
    config = tmp_path / "dup.yaml"
    config.write_text(text)
    line = refused(["train", str(config), "--out", str(tmp_path / "run")], capsys)
    assert f"{config}: line {line_no}: duplicate key {key!r}" in line and "keep one" in line
    assert not (tmp_path / "run").exists()


def test_the_duplicate_check_keeps_safe_load_semantics(tmp_path):
    """The strict loader is yaml.safe_load otherwise: a merge key may be overridden (YAML's meaning), and a
    Python tag is still refused (tests/test_security.py has the payload cases)."""
    from raysl.config_load import read_yaml
    from raysl.errors import ConfigError

    merged = tmp_path / "merge.yaml"
    merged.write_text("a: &base {x: 1, y: 2}\nb:\n  <<: *base\n  x: 3\n")
    assert read_yaml(merged) == {"a": {"x": 1, "y": 2}, "b": {"x": 3, "y": 2}}
    tagged = tmp_path / "tag.yaml"
    tagged.write_text("method: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(tagged)


# --------------------------------------------------------------------------- 3. absurd epoch counts


@pytest.mark.parametrize("how", ["--set", "file"])
def test_epochs_beyond_a_million_are_refused(tmp_path, capsys, how):
    """Bug: `optim.epochs: 100000000000000000000000000` was accepted and the run printed
    `epoch 1/99999999999999999999999999`; `--set optim.epochs=1e26` gave pydantic's "exceeded maximum size"."""
    if how == "file":
        config = tmp_path / "long.yaml"
        config.write_text("method: {name: simclr}\noptim:\n  epochs: 100000000000000000000000000\n")
        argv = ["train", str(config)]
    else:
        argv = ["train", str(QUICKSTART), "--set", "optim.epochs=1e26"]
    line = refused([*argv, "--out", str(tmp_path / "run")], capsys)
    assert "optim.epochs: must be at most 1,000,000" in line
    assert not (tmp_path / "run").exists()


def test_a_seed_that_would_overflow_torch_is_refused(tmp_path, capsys):
    """Bug: `seed: 1e18` was accepted, and the generators a worker seeds from it (seed * 9973 + rank + 1) overflow
    torch's 64-bit seeds: a ValueError traceback in the worker."""
    line = refused(["train", str(QUICKSTART), "--set", "seed=1e18", "--out", str(tmp_path / "run")], capsys)
    assert "seed: Input should be less than or equal to 4294967295" in line


# --------------------------------------------------------------------------- 4. unknown tune.metric


@pytest.mark.parametrize("how", ["file", "--set"])
def test_an_unknown_tune_metric_is_refused_by_name(tmp_path, capsys, how):
    """Bug: a search space whose tune.metric is unknown and has no tune.mode was a KeyError traceback
    (the metric's default mode was looked up before the metric was checked)."""
    space = yaml.safe_load(QUICKSTART.read_text())
    space["tune"].pop("mode")
    overrides = []
    if how == "file":
        space["tune"]["metric"] = "knn_accuracy"
    else:
        space["tune"].pop("metric")
        overrides = ["--set", "tune.metric=knn_accuracy"]
    path = write_yaml(tmp_path / "space.yaml", space)
    storage = tmp_path / "results"
    line = refused(["tune", str(path), *overrides, "--storage", str(storage)], capsys)
    assert f"{path}: tune.metric: unknown metric 'knn_accuracy'; allowed: knn_acc, " in line
    assert not storage.exists()


# --------------------------------------------------------------------------- 5. a val split of 0 or 1 image


@pytest.fixture(scope="module")
def short_val(tmp_path_factory) -> dict[int, str]:
    """digits prepared with a val split of 0 and of 1 image (1,797 rows: --val-fraction 0.0006 keeps 1)."""
    root = tmp_path_factory.mktemp("short-val")
    found = {}
    for fraction in (0.0, 0.0006):
        manifest = prepare("digits", None, str(root / f"val{fraction}"), val_fraction=fraction)
        found[manifest.splits["val"].rows] = str(root / f"val{fraction}")
    assert sorted(found) == [0, 1]
    return found


@pytest.mark.parametrize("images", [0, 1])
@pytest.mark.parametrize("command", ["train", "tune"])
def test_a_val_split_of_fewer_than_two_images_is_refused_before_ray(tmp_path, capsys, short_val, images,
                                                                     command):
    """Bug: training on such data started Ray, trained an epoch and failed at the first evaluation with a
    KeyError traceback (raysl tune: each trial, twice, then exit 1)."""
    data = short_val[images]
    out = tmp_path / "out"
    where = ["--out", str(out)] if command == "train" else ["--storage", str(out), "--num-samples", "1"]
    line = refused([command, str(QUICKSTART), "--set", f"data.path={data}", "--set", "optim.epochs=1", *where],
                   capsys)
    assert f"{data}: the val split has {images} image" in line and "needs at least 2" in line
    assert "--val-fraction" in line
    assert not out.exists()


def test_eval_max_val_of_one_is_refused(tmp_path, capsys):
    """The same evaluation on one image, chosen through eval.max_val: refused with the config."""
    line = refused(["train", str(QUICKSTART), "--set", "eval.max_val=1", "--out", str(tmp_path / "run")], capsys)
    assert "eval.max_val: Input should be greater than or equal to 2" in line


# --------------------------------------------------------------------------- 6. a one-point scaling grid


def test_a_one_point_scaling_grid_is_refused_before_training(tmp_path, capsys):
    """Bug: `raysl scale` of a grid with one point trained that run (a minute on digits) and only then said
    that no fit was possible."""
    data = yaml.safe_load(SCALING.read_text())
    data["grid"] = {"model.width": [8]}
    path = write_yaml(tmp_path / "one.yaml", data)
    storage = tmp_path / "results"
    line = refused(["scale", str(path), "--storage", str(storage)], capsys)
    assert f"{path}: grid: model.width: [8] is one run" in line and "give an axis more values" in line
    assert not storage.exists()


# --------------------------------------------------------------------------- 7. --out is a file


@pytest.mark.parametrize("under", [False, True])
def test_out_that_is_a_file_is_refused_without_a_resume_command(tmp_path, capsys, under):
    """Bug: `raysl train ... --out FILE` said `... is a file, not a folder; choose another --out; resume with:
    raysl train ... --out FILE`, a resume with that same file."""
    file = tmp_path / "notes.txt"
    file.write_text("mine\n")
    out = file / "run" if under else file
    line = refused(["train", str(QUICKSTART), "--set", "optim.epochs=1", "--out", str(out)], capsys)
    assert f"{file} is a file, not a folder; point --out at a folder" in line
    assert "resume with" not in line
    assert file.read_text() == "mine\n"


# --------------------------------------------------------------------------- 8. edited manifest row counts


@pytest.mark.parametrize("edit", ["split total", "split and shard, fewer", "split and shard, more"])
def test_a_manifest_whose_row_counts_were_edited_is_named(tmp_path, capsys, digits_dir, edit):
    """Bug: editing the train rows in manifest.json (to 100, with the shards unchanged) failed with
    `optim.batch_size: 256 is larger than the 100 training images`, blaming the config; edited upwards
    (5000) the run trained with a wrong step count and no error at all."""
    data = tmp_path / "digits"
    shutil.copytree(digits_dir, data)
    manifest = json.loads((data / "manifest.json").read_text())
    train = manifest["splits"]["train"]
    rows = 5000 if edit.endswith("more") else 100
    train["rows"] = rows
    if edit.startswith("split and shard"):
        train["shards"][0]["rows"] = rows - sum(s["rows"] for s in train["shards"][1:])
    (data / "manifest.json").write_text(json.dumps(manifest, indent=2))
    out = tmp_path / "run"
    line = refused(["train", str(QUICKSTART), "--set", f"data.path={data}", "--set", "optim.epochs=1",
                    "--out", str(out)], capsys)
    assert f"{data}: manifest.json disagrees with its shards" in line and "re-run raysl data prepare" in line
    assert "batch_size" not in line
    assert not out.exists()
