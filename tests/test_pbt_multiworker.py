"""PBT over multi-worker trials: pointer checkpoints, clones that continue from the donor's weights, lineage.

The end-to-end test runs a real `raysl tune` (PBT, 2 trials of 2 Ray Train workers each) on a private
Ray head (tests/test_search.py's RayHead) and checks what the clone did from the files it left, not
from what the code is meant to do: the weights its workers held after loading (the fingerprint rank 0
reports and writes into the clone's Train run) against the donor's Train checkpoint file of that epoch,
and the step count and lr of its first epoch after the clone (its first Train checkpoint holds that
report) against the donor's and against its mutated config.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from raysl import pbt
from test_search import explain, final_json, run_raysl, trials, write_space

# 2 epochs: synchronous PBT compares both trials after epoch 1 and the clone trains epoch 2 from the
# donor's checkpoint, all this test checks; every further epoch restarts both trials' worker groups again
EPOCHS = 2


# --------------------------------------------------------------------------
# the pieces, without Ray


class _Checkpoint:
    """What read_pointer needs of a ray.tune.Checkpoint (a path on a pyarrow filesystem)."""

    def __init__(self, path: Path):
        import pyarrow.fs as pafs

        self.path, self.filesystem = str(path), pafs.LocalFileSystem()


def _train_checkpoint(run: Path, name: str, epoch: int, seed: int) -> Path:
    import torch

    from raysl.checkpoint import save_state

    torch.manual_seed(seed)
    folder = run / name
    folder.mkdir(parents=True)
    save_state(str(folder / pbt.STATE_FILE), {"model": {"w": torch.randn(3, 2)}, "epoch": epoch, "global_step": epoch})
    return folder


def test_pointer_round_trip_and_how_a_trial_starts(tmp_path):
    experiment = tmp_path / "exp"
    donor_run = experiment / "raysl_trial_aaaa" / "train"
    first = _train_checkpoint(donor_run, "checkpoint_2025-01-01_00-00-01.000000", 1, 0)
    second = _train_checkpoint(donor_run, "checkpoint_2025-01-01_00-00-02.000000", 2, 1)
    donor = pbt.TrialRef("aaaa", "raysl_trial_aaaa", {"optim.lr": 0.002})
    tune_ckpt = tmp_path / "tune_ckpt"
    tune_ckpt.mkdir()
    pbt.write_pointer(str(tune_ckpt), donor.pointer(1, "train", str(first)))
    pointer = pbt.read_pointer(_Checkpoint(tune_ckpt))
    assert pointer == pbt.Pointer("aaaa", "raysl_trial_aaaa", 1, {"optim.lr": 0.002}, "train", str(first))
    assert pbt.read_pointer(_Checkpoint(tmp_path)) is None  # a checkpoint without a pointer (older runs)

    # the donor itself restarting from it: the run it names goes on, nothing recorded
    assert pbt.start_of(pointer, donor, str(experiment), True) == pbt.Start("train", str(first), False)
    assert not (experiment / "raysl_trial_aaaa" / pbt.LINEAGE_FILE).exists()

    # another trial handed it: a clone, with its own Train run, from exactly that checkpoint
    clone = pbt.TrialRef("bbbb", "raysl_trial_bbbb", {"optim.lr": 0.0024})
    start = pbt.start_of(pointer, clone, str(experiment), True)
    assert start == pbt.Start("train_from_aaaa_e1", str(first), True)
    for _ in range(2):  # restarted before it reported: recorded once
        pbt.start_of(pointer, clone, str(experiment), True)
    (entry,) = json.loads((experiment / "raysl_trial_bbbb" / pbt.LINEAGE_FILE).read_text())
    assert (entry["trial_id"], entry["donor"], entry["epoch"], entry["fallback"]) == ("bbbb", "aaaa", 1, False)
    assert entry["mutation"] == {"optim.lr": [0.002, 0.0024]}
    assert pbt.describe_mutation(entry["mutation"]) == "optim.lr 0.002 -> 0.0024"

    # the pointed-to checkpoint deleted meanwhile (retention): the donor's newest one
    import shutil

    shutil.rmtree(first)
    assert pbt.donor_checkpoint(pointer) == (str(second), True)
    shutil.rmtree(second)
    with pytest.raises(Exception, match="is gone and its run .* has no other; raise checkpoint.keep"):
        pbt.donor_checkpoint(pointer)


def test_weights_fingerprint_sees_values_not_layout():
    import torch

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3)
    state = {k: v.clone() for k, v in conv.state_dict().items()}
    channels_last = {k: (v.to(memory_format=torch.channels_last) if v.ndim == 4 else v) for k, v in state.items()}
    assert pbt.weights_fingerprint(state) == pbt.weights_fingerprint(channels_last)
    nudged = {**state, "bias": state["bias"] + 1e-7}
    assert pbt.weights_fingerprint(nudged) != pbt.weights_fingerprint(state)


def test_pbt_with_several_workers_is_accepted(tmp_path):
    from raysl.space_file import load_space

    space = write_space(tmp_path / "pbt.yaml", {"optim.lr": {"loguniform": [1e-4, 1e-2]}},
                        {"scheduler": "pbt", "perturbation_interval": 1}, base_edits={"scale.num_workers": 2})
    text = yaml.safe_load(space.read_text())
    text["tune"].pop("sampler")
    space.write_text(yaml.safe_dump(text))
    assert load_space(str(space)).base_config.scale.num_workers == 2


# --------------------------------------------------------------------------
# a real PBT search with 2 workers per trial


def _lr_of(sampled: dict, base: dict, step: int, epoch: int) -> float:
    """The lr a run of ``base`` + ``sampled`` reports after ``step`` steps at the end of ``epoch``."""
    from raysl.run_config import build_config
    from raysl.space import apply_sample
    from raysl.train import lr_at, peak_lr

    cfg = build_config(apply_sample(base, sampled))
    total = step // epoch * cfg.optim.epochs  # steps per epoch x epochs
    return lr_at(cfg, step / total, peak_lr(cfg))


@pytest.mark.slow
def test_pbt_clone_of_a_multi_worker_trial_continues_from_the_donors_weights(head, tmp_path):
    space = write_space(
        tmp_path / "pbt2.yaml",
        {"optim.lr": {"loguniform": [1e-4, 1e-2]}},
        # 2 trials: PBT's quantile (0.25 of 2 rounds up to 1) makes the worse one clone the better one at
        # every perturbation where both have a score and the better one a checkpoint. Synchronous PBT: both
        # trials wait at the end of each epoch and are compared there, so the first clone is certain to
        # happen after epoch 1, with epochs left to train (asynchronous PBT compares a trial with the other's
        # latest score when it reports, so which clones happen depends on which trial reports first; in a
        # CI run on a loaded machine its only clone was of a finished checkpoint)
        {"scheduler": "pbt", "perturbation_interval": 1, "num_samples": 2, "max_concurrent": 2, "seed": 3,
         "synch": True},
        base_edits={"scale.num_workers": 2, "scale.cpus_per_worker": 1, "model.width": 4, "optim.batch_size": 32,
                    "optim.epochs": EPOCHS, "eval.every_epochs": 1, "eval.stop_on_collapse": False,
                    # lr = the peak after warm-up: a cosine to 0 would make every config's last lr the same
                    "schedule.lr": "constant",
                    # every Train checkpoint stays, so the test can read the donor's of any epoch
                    "checkpoint.keep": 2 * EPOCHS},
    )
    text = yaml.safe_load(space.read_text())
    text["tune"].pop("sampler")  # PBT runs without a search algorithm
    space.write_text(yaml.safe_dump(text))
    storage = tmp_path / "results"
    done = run_raysl(head, ["tune", str(space), "--storage", str(storage)])
    assert done.returncode == 0, explain(done)
    assert final_json(done.stdout)["statuses"] == {"finished": 2}, explain(done)
    check_pbt_experiment(storage / "pbt2", text["base"], tmp_path / "report", explain(done), synchronous=True)


def check_pbt_experiment(experiment: Path, base: dict, report: Path, log: str = "", synchronous: bool = False) -> None:
    """What a PBT search of 2 multi-worker trials left: pointers, clones, fingerprints, lr, analyze."""
    import torch  # noqa: F401 - load_state below

    from raysl.analyze import analyze
    from raysl.checkpoint import load_state

    found = trials(experiment)
    assert len(found) == 2

    # every Tune checkpoint of these trials is a pointer (no weights) at an existing Train checkpoint
    tune_checkpoints = sorted(p for p in experiment.glob("raysl_trial_*/checkpoint_*") if p.is_dir())
    assert tune_checkpoints
    for folder in tune_checkpoints:
        assert sorted(p.name for p in folder.iterdir()) == [pbt.POINTER_FILE], folder
        pointer = json.loads((folder / pbt.POINTER_FILE).read_text())
        assert pointer["trial_dir"] == folder.parent.name
        assert Path(pointer["checkpoint"]).parent.parent == folder.parent  # in the trial's own Train runs
        assert load_state(str(Path(pointer["checkpoint"]) / pbt.STATE_FILE))["epoch"] == pointer["epoch"]

    lineage = {name: json.loads((experiment / name / pbt.LINEAGE_FILE).read_text())
               for name in found if (experiment / name / pbt.LINEAGE_FILE).exists()}
    clones = [(name, entry) for name, entries in lineage.items() for entry in entries]
    assert clones, "no PBT exploit happened:\n" + log
    checked = carried_rows = donor_rows = 0
    for name, entry in clones:
        donor_dir = f"raysl_trial_{entry['donor']}"
        assert donor_dir in found and donor_dir != name and not entry["fallback"]
        run = experiment / name / f"train_from_{entry['donor']}_e{entry['epoch']}"
        # what the clone's workers loaded (rank 0's fingerprint of its model after loading) ...
        resumed = json.loads((run / pbt.RESUMED_FILE).read_text())
        assert resumed["resumed_epoch"] == entry["epoch"]
        # ... is the donor's Train checkpoint of that epoch: in the donor's folder, the same weights byte
        # for byte
        ckpt = Path(entry["checkpoint"])
        assert ckpt.parent.parent.name == donor_dir, ckpt
        donor_state = load_state(str(ckpt / pbt.STATE_FILE))
        assert donor_state["epoch"] == entry["epoch"]
        assert resumed["resumed_weights"] == pbt.weights_fingerprint(donor_state["model"])
        # (the check can fail: the clone's own checkpoints from before it was cloned have other weights)
        own = [load_state(str(p / pbt.STATE_FILE)) for p in (experiment / name / "train").glob("checkpoint_*")
               if p.is_dir()]
        assert own and all(pbt.weights_fingerprint(s["model"]) != resumed["resumed_weights"] for s in own)
        # the trial's report that carried it, when Ray's result log kept it (a trial PBT pauses again at
        # once can lose its newest rows of result.json: Tune copies the stored file over them on restart)
        for row in found[name]["rows"]:
            if row.get("resumed_epoch") == entry["epoch"]:
                assert row["resumed_weights"] == resumed["resumed_weights"]
                assert row["config"] == entry["config"]
                carried_rows += 1
        # the donor's config at that epoch is the one PBT mutated (where the donor's result log kept that
        # row: it loses rows the same way when PBT pauses the donor right after it reported)
        for donor_row in (r for r in found[donor_dir]["rows"] if r["epoch"] == entry["epoch"]):
            assert entry["donor_config"] == donor_row["config"]
            donor_rows += 1
        assert entry["config"]["optim.lr"] != entry["donor_config"]["optim.lr"]
        if entry["epoch"] == EPOCHS:
            continue  # cloned a finished checkpoint: nothing left to train, its report is the donor's last
        # its first epoch after the clone (the clone run's first checkpoint holds what it reported) went on
        # from the donor's step count, with the mutated lr (the lr a run of its new config reports there,
        # to float rounding), not the donor's
        first = min((load_state(str(p / pbt.STATE_FILE)) for p in run.glob("checkpoint_*") if p.is_dir()),
                    key=lambda state: state["epoch"])
        reported = first["metrics"]
        assert reported["epoch"] == first["epoch"] == entry["epoch"] + 1
        steps_per_epoch = donor_state["global_step"] // entry["epoch"]
        assert reported["step"] == first["global_step"] == donor_state["global_step"] + steps_per_epoch
        step, epoch = reported["step"], reported["epoch"]
        assert reported["lr"] == pytest.approx(_lr_of(entry["config"], base, step, epoch), rel=1e-9)
        assert reported["lr"] != pytest.approx(_lr_of(entry["donor_config"], base, step, epoch), rel=1e-6)
        checked += 1
    assert checked, f"every clone took a finished checkpoint: {clones}"
    # the row checks above ran: some clone's carrying report and some donor's row survived in result.json
    assert carried_rows >= 1 and donor_rows >= 1, (carried_rows, donor_rows, clones)
    if synchronous:  # compared at the end of epoch 1 with both scores in: the worse one cloned the better one there
        assert min(entry["epoch"] for _, entry in clones) == 1, clones

    # raysl analyze: a lineage table in the report, the clones in the summary
    summary = analyze([str(experiment)], str(report))
    (exp,) = summary["experiments"]
    shown = {(r["trial_id"], r["cloned"], r["epoch"]) for r in exp["pbt_lineage"]}
    assert shown == {(e["trial_id"], e["donor"], e["epoch"]) for _, e in clones}
    assert f"{len(clones)} PBT clone(s)" in summary["summary"]
    html = (report / "report.html").read_text()
    assert "id=\"pbt-lineage\"" in html
    for row in exp["pbt_lineage"]:
        assert row["mutation"].startswith("optim.lr ") and row["mutation"] in html.replace("-&gt;", "->")
