"""Every JSON raysl writes is strict JSON: a non-finite number is written as ``null``, never as the
``NaN`` / ``Infinity`` / ``-Infinity`` that Python's json writes by default and that ``JSON.parse``,
jq and other strict readers reject (issue 22: ``"noise_scale": Infinity`` in the summary line and
metrics.jsonl). Each writer that runs without Ray is fed non-finite values (Python floats, numpy
scalars and arrays, torch scalars, nested in lists and dicts) and its output is read back with a
parser that refuses the three constants."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch


def raise_on_constant(name: str):
    raise ValueError(f"not strict JSON: {name}")


def strict_loads(text: str):
    """``json.loads`` that fails on NaN, Infinity and -Infinity (as JSON.parse does)."""
    return json.loads(text, parse_constant=raise_on_constant)


def test_the_strict_parser_refuses_what_python_writes_by_default():
    with pytest.raises(ValueError, match="not strict JSON: Infinity"):
        strict_loads(json.dumps({"noise_scale": math.inf}))
    assert strict_loads('{"a": null, "b": 1.5}') == {"a": None, "b": 1.5}


# every non-finite kind a metric can arrive as, and where each must end up as null
NON_FINITE = {
    "nan": math.nan,
    "inf": math.inf,
    "minus_inf": -math.inf,
    "np_inf": np.float64(np.inf),
    "np32_nan": np.float32(np.nan),
    "np_0d": np.array(-np.inf),
    "torch": torch.tensor(math.inf),
    "nested": {"list": [1.0, math.nan, (np.float64(-np.inf), 2)], "array": np.array([0.5, np.nan])},
}
AS_NULLS = {
    "nan": None, "inf": None, "minus_inf": None, "np_inf": None, "np32_nan": None, "np_0d": None, "torch": None,
    "nested": {"list": [1.0, None, [None, 2]], "array": [0.5, None]},
}


def test_dumps_writes_null_for_every_non_finite_kind():
    from raysl.jsonio import dumps, to_json_safe

    finite = {"epoch": 3, "ok": True, "name": "simclr", "x": np.float32(0.5), "n": np.int64(7), "b": np.bool_(False),
              "t": torch.tensor(2.0)}
    assert strict_loads(dumps({**NON_FINITE, **finite})) == {**AS_NULLS, "epoch": 3, "ok": True, "name": "simclr",
                                                              "x": 0.5, "n": 7, "b": False, "t": 2.0}
    assert to_json_safe({1: math.inf}) == {"1": None}  # keys become strings, as json writes them
    # anything the conversion does not know is left to json's own rules (default=, or a TypeError)
    assert strict_loads(dumps({"path": Path("/x")}, default=str)) == {"path": "/x"}


def test_print_line_writes_one_strict_line(capsys):
    # the summary line `raysl train` / `tune` / `scale` / `analyze` / `export` end with
    from raysl.jsonio import print_line

    print_line({"status": "finished", "noise_scale": math.inf, "grad": np.float64(-np.inf)})
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert strict_loads(out) == {"status": "finished", "noise_scale": None, "grad": None}


def test_metrics_jsonl_rows_are_strict(tmp_path):
    from raysl.run_folder import MetricsFile

    path = tmp_path / "metrics.jsonl"
    metrics = MetricsFile(path, show=False)
    metrics.write({"epoch": 1, "loss": 2.0, "status": "running", **NON_FINITE})
    metrics.write({"epoch": 2, "loss": 1.5, "status": "finished", "noise_scale": np.float64(np.inf)})
    rows = [strict_loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"epoch": 1, "loss": 2.0, "status": "running", **AS_NULLS},
                    {"epoch": 2, "loss": 1.5, "status": "finished", "noise_scale": None}]
    assert metrics.rows() == rows  # and the file reads back as written (a resume keeps the rows)


def test_a_tune_result_is_strict_and_keeps_the_searcher_a_number():
    """ResultFiller turns each loop report into the Tune result Ray writes to the trial's result.json:
    non-finite values become null, but the searched metric stays a number (its worst value), because
    ASHA, PBT and Optuna compare it."""
    from raysl.space import worst_value
    from raysl.trial import ResultFiller

    filler = ResultFiller([("knn_acc", "max")])
    out = filler({"epoch": 1, "loss": 1.0, "status": "running", "knn_acc": math.nan, "rankme": np.float64(np.inf),
                  "alpha_req": -math.inf, "noise_scale": None})
    assert strict_loads(json.dumps(out)) == out
    assert out["knn_acc"] == worst_value("knn_acc", "max") and out["rankme"] is None and out["alpha_req"] is None
    # a metric reported as None (not measurable) is not a number the searcher can compare either
    assert filler({"epoch": 2, "loss": 1.0, "status": "running", "knn_acc": None})["knn_acc"] == worst_value("knn_acc")
    # the last report of a trial that failed repeats the last evaluation: strict too
    final = filler.final("diverged", "loss is nan")
    assert strict_loads(json.dumps(final)) == final and final["knn_acc"] == worst_value("knn_acc")


def test_pbt_lineage_pointer_and_resume_files_are_strict(tmp_path):
    from raysl.pbt import LINEAGE_FILE, POINTER_FILE, Pointer, record_clone, record_resume, write_pointer

    trial = tmp_path / "trial"
    trial.mkdir()
    config = {"optim.lr": np.float64(np.inf), "method.temperature": math.nan}
    record_clone(str(trial), {"donor": "t1", "epoch": 2, "mutation": {"optim.lr": [math.inf, np.float32(-np.inf)]},
                              "config": config, "donor_config": {"optim.lr": 0.1}, "time": 1.0})
    lineage = strict_loads((trial / LINEAGE_FILE).read_text())
    assert lineage[0]["mutation"] == {"optim.lr": [None, None]} and lineage[0]["config"] == {
        "optim.lr": None, "method.temperature": None}
    write_pointer(str(trial), Pointer("t2", "trial_2", 2, config))
    assert strict_loads((trial / POINTER_FILE).read_text())["config"] == {"optim.lr": None, "method.temperature": None}
    record_resume(str(trial / "resumed.json"), {"resumed_epoch": 2, "loss": np.float64(np.nan)})
    assert strict_loads((trial / "resumed.json").read_text()) == {"resumed_epoch": 2, "loss": None}


def test_scaling_json_is_strict(tmp_path):
    # a fit can be unbounded: B_crit = inf when S_min = 0, an interval open at one end
    from raysl.scaling import RESULT_FILE
    from raysl.scaling_fits import write_result

    where = write_result(str(tmp_path), {"runs": [{"noise_scale": math.inf, "knn_acc": 0.9}],
                                         "critical_batch": {"B_crit": np.float64(np.inf),
                                                            "interval": np.array([1.0, np.inf])}})
    assert where.endswith(RESULT_FILE)
    assert strict_loads((tmp_path / RESULT_FILE).read_text()) == {
        "runs": [{"noise_scale": None, "knn_acc": 0.9}], "critical_batch": {"B_crit": None, "interval": [1.0, None]}}


def test_manifest_is_strict():
    # the per-channel mean and std of an empty train split are NaN
    from raysl.data.manifest import Manifest

    manifest = Manifest(source="digits", source_path=None, height=8, width=8, channels=1, encoding="raw",
                        class_names=None, num_classes=10, labeled=True, mean=(np.float64(np.nan),),
                        std=(math.inf,), seed=0, val_fraction=0.2, split_from="shuffle", splits={})
    written = strict_loads(manifest.to_json())
    assert written["mean"] == [None] and written["std"] == [None]


def test_keys_are_strict_and_canonical_and_plain_keeps_numbers():
    """jsonio.key is raysl's one way to make comparison/grouping keys: catches a key that writes NaN/Infinity
    (not JSON) or depends on dict order; jsonio.plain normalises like a JSON round trip but keeps inf, so a
    search space with an infinite bound compares equal to itself read back from YAML on --resume."""
    from raysl import jsonio

    assert jsonio.key({"b": float("nan"), "a": (1, np.float32(2.5))}) == '{"a": [1, 2.5], "b": null}'
    assert jsonio.key({"a": 1, "b": 2}) == jsonio.key({"b": 2, "a": 1})
    assert jsonio.key({"when": Path("/x")}) == '{"when": "/x"}'  # str of what JSON cannot hold
    assert jsonio.plain({"lr": (1e-4, float("inf")), 3: "x"}) == {"lr": [1e-4, float("inf")], "3": "x"}


def test_no_json_dumps_outside_the_strict_writer():
    """Every JSON text raysl makes goes through raysl.jsonio (allow_nan=False): catches a new json.dumps that
    would write NaN or Infinity, which strict parsers refuse."""
    root = Path(__file__).resolve().parents[1] / "raysl"
    found = [f"{p.relative_to(root)}:{n}" for p in sorted(root.rglob("*.py")) if p.name != "jsonio.py"
             for n, line in enumerate(p.read_text().splitlines(), 1) if "json.dumps(" in line]
    assert found == [], found
