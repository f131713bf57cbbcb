"""The private Ray APIs raysl uses live in raysl/ray_compat.py alone, and each still exists.

Catches: a Ray upgrade that renames or drops a private name raysl relies on (the run would degrade
silently: Ray's SIGINT handler instead of raysl's, no restart lines, a search folder overwritten by
Tune's fallback); and a private Ray import creeping back into another module, out of this check's view.
"""

from __future__ import annotations

import re
from pathlib import Path

from raysl import ray_compat

RAYSL = Path(__file__).resolve().parents[1] / "raysl"


def test_every_private_ray_name_raysl_uses_exists_in_the_installed_ray():
    import ray

    gone = ray_compat.missing()
    assert gone == [], f"Ray {ray.__version__} changed private APIs raysl uses (raysl/ray_compat.py):\n" + "\n".join(gone)


def test_the_check_reports_a_name_that_is_gone(monkeypatch):
    # the check above could not pass by checking nothing: a name that does not exist is reported with its loss
    monkeypatch.setitem(ray_compat.PRIVATE, "ray.train.v2._internal.execution.callback:NoSuchCallback", "a loss")
    monkeypatch.setitem(ray_compat._ATTRIBUTES, "ray.tune.tune:_setup_signal_catching", "no_such_handler_name")
    gone = ray_compat.missing()
    assert "ray.train.v2._internal.execution.callback:NoSuchCallback: a loss" in gone
    assert any(g.startswith("ray.tune.tune:_setup_signal_catching no longer sets no_such_handler_name") for g in gone), gone


def test_the_check_reads_every_attribute_of_optunasearch_that_the_study_searcher_uses(monkeypatch):
    """raysl.study.StudySearch subclasses OptunaSearch and reads six of its private attributes; each is checked
    in OptunaSearch.__init__'s source, and one that is gone is named (not only the first of the list)."""
    name = "ray.tune.search.optuna.optuna_search:OptunaSearch.__init__"
    used = set(re.findall(r"self\.(_ot_study|_ot_trials|_completed_trials|_sampler|_study_name|_storage)\b",
                          (RAYSL / "study.py").read_text()))
    assert {f"self.{a} =" for a in used} <= set(ray_compat._ATTRIBUTES[name]), used
    monkeypatch.setitem(ray_compat._ATTRIBUTES, name, (*ray_compat._ATTRIBUTES[name], "self._no_such_attribute ="))
    assert [g for g in ray_compat.missing() if g.startswith(name)] == [
        f"{name} no longer sets self._no_such_attribute =: {ray_compat.PRIVATE[name]}"]


# what a private Ray name looks like in an import or an attribute access
_PRIVATE_RAY = re.compile(r"\bray(\.\w+)*\.(_private|_raylet|_internal)\b|ray\.experimental\.internal_kv"
                          r"|\._register_sigint_handler|\._initialize_and_run_controller|_experiment_analysis"
                          r"|_check_validation_file|signal_interrupt_tune_run|TuneController")


def test_no_other_module_touches_a_private_ray_name():
    offenders = []
    for path in sorted(RAYSL.rglob("*.py")):
        if path.name == "ray_compat.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if _PRIVATE_RAY.search(code):
                offenders.append(f"{path.relative_to(RAYSL.parent)}:{number}: {line.strip()}")
    assert offenders == [], "private Ray names outside raysl/ray_compat.py:\n" + "\n".join(offenders)


def test_the_tune_stop_handler_is_recognised_by_its_name():
    def signal_interrupt_tune_run(sig, frame):  # the name Tune gives its handler
        pass

    def other(sig, frame):
        pass

    assert ray_compat.is_tune_stop_handler(signal_interrupt_tune_run)
    assert not ray_compat.is_tune_stop_handler(other) and not ray_compat.is_tune_stop_handler(None)


def test_failure_counts_read_rays_default_policy():
    import ray.train

    policy_class, _ = ray_compat.failure_policy_base()
    assert ray_compat.failure_counts(policy_class(ray.train.FailureConfig(max_failures=2))) == (0, 0)
    assert ray_compat.failure_counts(object()) is None  # a policy without the counts: None, not a crash


def test_the_own_session_start_patches_and_restores_rays_popen():
    from ray._private import services  # the one name the function under test wraps

    before = services.ConsolePopen
    with ray_compat.processes_in_own_session():
        inside = services.ConsolePopen
    assert services.ConsolePopen is before
    assert inside is not before and issubclass(inside, before)


def test_a_local_node_that_did_not_start_in_time_is_told_from_other_failures():
    # Ray's words for it are checked in its source by the first test above (Node.__init__)
    timed_out = Exception("The current node timed out during startup. This could happen because some of the "
                          "raylet failed to startup or the GCS has become overloaded.")
    assert ray_compat.is_node_startup_timeout(timed_out)
    assert not ray_compat.is_node_startup_timeout(Exception("permission denied: /tmp/ray"))
    assert not ray_compat.is_node_startup_timeout(ValueError("timed out during startup"))  # Ray raises a bare one


def test_a_one_worker_run_keeps_torch_out_of_its_train_controller(tmp_path):
    """Catches: a one-worker `raysl train` built on TorchTrainer (its backend config makes the Train controller
    import torch: ~2.5 CPU-s more per run), or the workers' entry point moved into a module that imports torch
    (the controller unpickles it by reference). Two workers keep TorchTrainer's process group."""
    import subprocess
    import sys

    import ray.train
    from ray.train.torch import TorchTrainer

    from raysl.launch import make_trainer, run_worker
    from raysl.run_config import load_config

    probe = ("import pickle, sys; from raysl.launch import run_worker; pickle.loads(pickle.dumps(run_worker)); "
             "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout[-2000:] + done.stderr[-2000:]

    def trainer(workers: int):
        cfg = load_config(str(Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml"),
                          [f"scale.num_workers={workers}"])
        return make_trainer(run_worker, {}, cfg, name="t", storage_path=str(tmp_path), callbacks=[], datasets={},
                            failure_config=ray.train.FailureConfig(max_failures=0))

    one, two = trainer(1), trainer(2)
    assert not isinstance(one, TorchTrainer) and type(one).__name__ == "DataParallelTrainer"
    assert type(one.backend_config) is ray.train.BackendConfig
    assert isinstance(two, TorchTrainer)
