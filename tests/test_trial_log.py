"""raysl.trial_log: the rows a retrained epoch replaces are cut off the end of Tune's trial logs.

Catches: an epoch logged twice after a restart (nothing cut), rows of epochs before the restart lost (cut
too early), a file Tune appends to left torn or replaced (its open handle then writes elsewhere), rows of a
file that is not in epoch order cut, a CSV row with a quoted newline split."""

from __future__ import annotations

import csv
import io
import json

from raysl.trial_log import EpochOnce, cut_from_epoch, epoch_rows


def _lines(*epochs, closing=None) -> str:
    rows = [{"epoch": e, "loss": 1.0 / e, "status": "running"} for e in epochs]
    if closing:
        rows.append({"epoch": epochs[-1], "status": closing, "error": "loss became NaN"})
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_json_rows_of_the_retrained_epoch_and_later_are_cut_off_the_open_file(tmp_path):
    path = tmp_path / "result.json"
    path.write_text(_lines(1, 2, 3, 4) + '{"epoch": 5, "lo')  # a half-written last line
    handle = path.open("a")  # as Tune's logger holds it: appends follow the rows kept
    assert cut_from_epoch(path, 3) == 3
    handle.write(json.dumps({"epoch": 3, "loss": 0.3}) + "\n")
    handle.close()
    assert [json.loads(line)["epoch"] for line in path.read_text().splitlines()] == [1, 2, 3]


def test_nothing_is_cut_for_a_new_epoch_a_file_out_of_order_or_none(tmp_path):
    path = tmp_path / "result.json"
    text = _lines(1, 2)
    path.write_text(text)
    assert cut_from_epoch(path, 3) == 0 and path.read_text() == text
    out_of_order = _lines(1, 3, 2)
    path.write_text(out_of_order)
    assert cut_from_epoch(path, 3) == 0 and path.read_text() == out_of_order
    assert cut_from_epoch(tmp_path / "missing.json", 1) == 0


def test_csv_rows_cut_after_a_row_with_a_quoted_newline(tmp_path):
    out = io.StringIO()
    writer = csv.DictWriter(out, ["epoch", "error", "loss"])
    writer.writeheader()
    writer.writerow({"epoch": 1, "error": "two\nlines", "loss": 1.0})
    writer.writerow({"epoch": 2, "error": "", "loss": 0.5})
    writer.writerow({"epoch": 3, "error": "", "loss": 0.4})
    path = tmp_path / "progress.csv"
    path.write_text(out.getvalue())
    assert [e for _, e in epoch_rows(path.read_text(), is_csv=True)] == [1, 2, 3]
    assert cut_from_epoch(path, 2, is_csv=True) == 2
    rows = list(csv.DictReader(path.open()))
    assert [(r["epoch"], r["error"]) for r in rows] == [("1", "two\nlines")]


class _Trial:
    def __init__(self, path):
        self.local_path = str(path)


def test_a_closing_report_on_its_epoch_is_added_a_retrained_epoch_replaces(tmp_path):
    (tmp_path / "result.json").write_text(_lines(1, 2, 3))
    callback = EpochOnce()
    callback.on_trial_result(0, [], _Trial(tmp_path), {"epoch": 3, "status": "diverged"})
    assert (tmp_path / "result.json").read_text() == _lines(1, 2, 3)  # the diverged row follows epoch 3's
    # a trial stopped by a full disk reports its epoch again, status running, with the error: added too
    callback.on_trial_result(0, [], _Trial(tmp_path), {"epoch": 3, "status": "running", "error": "no space"})
    assert (tmp_path / "result.json").read_text() == _lines(1, 2, 3)
    callback.on_trial_result(0, [], _Trial(tmp_path), {"epoch": 2, "status": "running"})
    assert (tmp_path / "result.json").read_text() == _lines(1)


def test_a_pbt_trials_first_report_after_a_restore_cuts_nothing(tmp_path):
    """An asynchronous PBT clone may continue from a donor epoch behind its own rows: its lineage stays."""
    (tmp_path / "result.json").write_text(_lines(1, 2, 3, 4))
    callback = EpochOnce()
    callback.on_trial_result(0, [], _Trial(tmp_path), {"epoch": 3, "resumed_epoch": 2, "resumed_weights": "ab"})
    assert (tmp_path / "result.json").read_text() == _lines(1, 2, 3, 4)


def test_a_trial_tune_restarts_from_its_checkpoint_logs_each_epoch_once(ray_local, tmp_path):
    """Real Ray Tune (joined to the suite's head), its own JSON and CSV loggers, a trial restarted from its
    checkpoint after a crash (Tune's FailureConfig): result.json and progress.csv hold epochs 1, 2, 3 once
    each (without EpochOnce: 1, 2, 2, 3; seen). Catches the callback running after Tune's loggers (the redo
    row then cut with the stale one) or not at all."""
    from ray import tune

    from raysl.trial_log import EpochOnce

    # defined here, so that Ray pickles it by value (the workers cannot import the test module)
    def _crashing_trainable(config):
        """Epoch 1 checkpointed, epoch 2 not, and a crash before epoch 3 on the first try: Tune restarts the trial
        from the epoch-1 checkpoint, which trains and reports epoch 2 again."""
        import os
        import tempfile

        from ray import tune

        start = 0
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                start = json.loads(open(os.path.join(folder, "state.json")).read())["epoch"]
        for epoch in range(start + 1, 4):
            if epoch == 3 and not os.path.exists(config["crashed"]):
                open(config["crashed"], "w").close()
                raise RuntimeError("the trial's process died")
            metrics = {"epoch": epoch, "status": "running", "loss": 1.0 / epoch}
            if epoch == 1:
                with tempfile.TemporaryDirectory() as folder:
                    open(os.path.join(folder, "state.json"), "w").write(json.dumps({"epoch": epoch}))
                    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
            else:
                tune.report(metrics)

    tuner = tune.Tuner(
        _crashing_trainable,
        param_space={"crashed": str(tmp_path / "crashed")},
        run_config=tune.RunConfig(name="restart", storage_path=str(tmp_path / "results"), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=1), callbacks=[EpochOnce()]),
    )
    (result,) = tuner.fit()
    assert result.error is None and (tmp_path / "crashed").exists()  # it crashed once and then finished
    (trial,) = [p for p in (tmp_path / "results" / "restart").iterdir() if p.is_dir()]
    logged = [json.loads(line)["epoch"] for line in (trial / "result.json").read_text().splitlines()]
    assert logged == [1, 2, 3], logged
    with (trial / "progress.csv").open() as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3]
