"""A search's Optuna study in a real database: SQLite in the experiment folder by default, a real
PostgreSQL server with --optuna-storage, read by plain Optuna from another process while the search
runs, continued by --resume, served by `raysl dashboard` and looked at in headless Chromium.

Searches run as `raysl tune` subprocesses on a private Ray head (test_search.RayHead); URL and
option checks run in-process and must fail before Ray starts.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import HANG, REPO, interrupt_when, signal_all
from test_report_browser import CHROMIUM, chromium
from conftest import free_port
from test_search import QUICKSTART, RAYSL, explain, final_json, run_raysl, trials

# tiny runs: digits, 8-wide convnet, 2 epochs evaluated every epoch, one trial at a time
SMALL = ["--set", "optim.epochs=2", "--set", "eval.every_epochs=1", "--set", "model.width=8",
         "--set", "tune.scheduler=fifo", "--set", "tune.max_concurrent=1"]

# A second process with plain Optuna: waits until the search has recorded its study (raysl_study.json,
# written once the database and its tables exist) and until a trial of it has an intermediate value,
# then prints what it read. It never opens the database before the search created it.
READER = r"""
import json, sys, time
from pathlib import Path
import optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
record = Path(sys.argv[1])
while not record.exists():
    time.sleep(0.2)
where = json.loads(record.read_text())
storage = optuna.storages.RDBStorage(where["storage"])
while True:
    try:
        study = optuna.load_study(study_name=where["study_name"], storage=storage)
        trials = study.get_trials(deepcopy=False)
    except KeyError:  # the search has not created its study yet
        trials = []
    if any(t.intermediate_values for t in trials):
        break
    time.sleep(0.2)
print(json.dumps({"study": study.study_name, "user_attrs": study.user_attrs, "trials": [
    {"id": t._trial_id, "number": t.number, "state": t.state.name, "params": t.params,
     "intermediate": {str(k): v for k, v in t.intermediate_values.items()}, "user_attrs": t.user_attrs}
    for t in trials]}))
"""


def load_trials(url: str, name: str) -> list:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def tune_trial_dirs(experiment: Path) -> set[str]:
    return {d.name.removeprefix("raysl_trial_") for d in experiment.glob("raysl_trial_*")}


def last_result(experiment: Path, optuna_trial) -> dict:
    """The last report of the Tune trial behind an Optuna trial."""
    path = experiment / f"raysl_trial_{optuna_trial.user_attrs['tune_trial_id']}" / "result.json"
    return json.loads(path.read_text().splitlines()[-1])


# --------------------------------------------------------------------------
# checks before Ray starts: one line, exit 2, nothing written, no password shown


def closed_port() -> int:
    return free_port()  # bound and released: nothing listens there


@pytest.mark.parametrize("url, expected", [
    ("redis://127.0.0.1:6379/0", "'redis' is not a database Optuna can keep a study in; use sqlite:////"),
    ("sqlite://", "an in-memory SQLite database ends with the search; name a file"),
    ("not a url", "is not a database URL; use sqlite:////"),
    ("sqlite:////no/such/folder/studies.db", "the folder /no/such/folder does not exist"),
    ("postgresql+psycopg2://raysl:hunter2@127.0.0.1:{port}/studies",
     "cannot open the database (connection to server at \"127.0.0.1\", port {port} failed: Connection refused"),
], ids=["scheme", "in-memory", "not-a-url", "missing-folder", "server-down"])
def test_bad_optuna_storage_fails_before_ray(tmp_path, capsys, url, expected):
    import ray

    from raysl.cli import main

    port = closed_port()
    url, expected = url.format(port=port), expected.format(port=port)
    code = main(["tune", str(QUICKSTART), "--storage", str(tmp_path / "results"), "--optuna-storage", url])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert err.startswith("raysl: error: --optuna-storage "), err
    assert expected in err, err
    assert "hunter2" not in err
    assert not ray.is_initialized()
    assert not (tmp_path / "results").exists()


def test_study_name_taken_by_another_experiment(tmp_path, capsys):
    """Studies are named after their experiment: a new experiment never joins another one's study."""
    import optuna

    url = f"sqlite:///{tmp_path}/team.db"
    taken = optuna.create_study(study_name="quickstart", storage=url)
    taken.set_user_attr("raysl_experiment", "/elsewhere/quickstart")
    from raysl.cli import main

    code = main(["tune", str(QUICKSTART), "--storage", str(tmp_path / "results"), "--optuna-storage", url])
    err = capsys.readouterr().err
    assert code == 2
    assert (f"raysl: error: {url} already holds an Optuna study named 'quickstart' (started by experiment "
            f"/elsewhere/quickstart); pass --name NEW for this experiment, or delete that study: optuna delete-study "
            f"--study-name quickstart --storage {url}") in err
    assert not (tmp_path / "results").exists()
    assert optuna.get_all_study_names(url) == ["quickstart"]


def test_pbt_search_has_no_study(tmp_path, capsys):
    from raysl.cli import main

    space = yaml.safe_load(QUICKSTART.read_text())
    space["tune"].update(scheduler="pbt")
    space["tune"].pop("sampler")
    path = tmp_path / "pbt.yaml"
    path.write_text(yaml.safe_dump(space))
    code = main(["tune", str(path), "--storage", str(tmp_path / "results"), "--optuna-storage",
                 f"sqlite:///{tmp_path}/s.db"])
    assert code == 2
    assert "--optuna-storage: a PBT search keeps no Optuna study" in capsys.readouterr().err
    # the dashboard says why a PBT experiment has no study
    (tmp_path / "results" / "pbt").mkdir(parents=True)
    shutil.copy(path, tmp_path / "results" / "pbt" / "raysl_space.yaml")
    assert main(["dashboard", str(tmp_path / "results" / "pbt")]) == 2
    assert "a PBT search has none" in capsys.readouterr().err


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "example.com"])
def test_dashboard_listens_on_loopback_only(tmp_path, capsys, host):
    from raysl.cli import main

    assert main(["dashboard", str(tmp_path), "--host", host, "--port", "8123"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith(f"raysl: error: --host {host}: raysl dashboard listens on 127.0.0.1 only"), err
    assert "ssh -L 8123:127.0.0.1:8123 HEAD_NODE" in err


def test_default_study_place(tmp_path, monkeypatch):
    from raysl.study import default_url, public_url

    assert default_url(str(tmp_path / "exp")) == (f"sqlite:///{tmp_path}/exp/optuna.db", True)
    # SQLite cannot live in object storage: a local file per experiment URI, in the raysl cache
    monkeypatch.setenv("RAYSL_CACHE", str(tmp_path / "cache"))
    url, inside = default_url("mock://bucket/results/exp")
    assert not inside and re.fullmatch(rf"sqlite:///{tmp_path}/cache/studies/exp-[0-9a-f]{{8}}\.db", url), url
    assert default_url("mock://bucket/other/exp")[0] != url  # same name, another experiment: another file
    assert public_url("postgresql+psycopg2://me:p%40ss@db.example:5432/studies") == (
        "postgresql+psycopg2://me@db.example:5432/studies")


def test_resume_command_never_shows_the_password():

    from raysl.search_options import SearchOptions, tune_resume_command

    argv = ["tune", "s.yaml", "--optuna-storage", "postgresql+psycopg2://me:hunter2@db:5432/studies",
            "--name", "x"]
    command = tune_resume_command(SearchOptions("s.yaml", argv=tuple(argv)), "/results")
    assert command == ("raysl tune s.yaml --optuna-storage postgresql+psycopg2://me@db:5432/studies --name x "
                       "--storage /results --resume")
    command = tune_resume_command(
        SearchOptions("s.yaml", argv=("tune", "s.yaml", "--optuna-storage=mysql://me:hunter2@db/s")), "/r")
    assert "hunter2" not in command and "--optuna-storage=mysql://me@db/s" in command


def test_resume_command_of_a_search_started_from_python_names_its_own_subcommand():
    """No argv (a search started from Python): the command is rebuilt from the options, and a scale grid's
    is `raysl scale` with its --predict and --trajectory (they were `raysl tune FILE`, without them)."""
    from raysl.search_options import SearchOptions, tune_resume_command

    scale = SearchOptions("grid.yaml", overrides=("optim.epochs=2",), command="scale",
                          command_args=("--predict", "width=32", "--trajectory"))
    assert tune_resume_command(scale, "/r") == ("raysl scale grid.yaml --set optim.epochs=2 --predict width=32 "
                                                "--trajectory --storage /r --resume")
    assert tune_resume_command(SearchOptions("s.yaml", num_samples=3), "/r") == (
        "raysl tune s.yaml --num-samples 3 --storage /r --resume")


@pytest.mark.parametrize("command", ["tune", "dashboard"])
def test_an_interruption_before_a_command_says_more_never_shows_the_password(command, monkeypatch, capsys):
    """Ctrl-C or an early SIGTERM before the command's own handlers: raysl.cli's line repeats the command as
    typed, with the password of --optuna-storage (both forms) left out; a search whose experiment folder is
    already kept names the command that resumes it instead (run_search sets resume_command)."""
    from raysl import cli
    from raysl.errors import Interrupted

    def stop(args):
        raise Interrupted("SIGTERM", "before training started")

    monkeypatch.setattr(cli, f"cmd_{command}", stop)
    for argv, shown in (([command, "exp", "--optuna-storage", "postgresql+psycopg2://me:hunter2@db:5432/s"],
                         "--optuna-storage postgresql+psycopg2://me@db:5432/s"),
                        ([command, "exp", "--optuna-storage=mysql://me:hunter2@db/s"],
                         "--optuna-storage=mysql://me@db/s")):
        assert cli.main(argv) == 130
        err = capsys.readouterr().err
        assert "hunter2" not in err and err.count("\n") == 1, err
        assert err.startswith("raysl: interrupted (SIGTERM); ") and err.endswith(
            f" with: raysl {command} exp {shown}\n"), err
    if command != "tune":
        return

    def stop_in_kept_folder(args):
        stopped = Interrupted("SIGTERM", "before training started")
        stopped.resume_command = "raysl tune exp --storage /r --resume"
        raise stopped

    monkeypatch.setattr(cli, "cmd_tune", stop_in_kept_folder)
    assert cli.main(["tune", "exp"]) == 130
    assert capsys.readouterr().err == ("raysl: interrupted (SIGTERM); completed epochs are checkpointed; resume "
                                       "with: raysl tune exp --storage /r --resume\n")


def test_a_search_interrupted_once_its_folder_is_kept_carries_the_command_that_resumes(monkeypatch):
    """run_search: an interruption after the experiment folder was made (its resume command computed) carries
    that command for raysl.cli's line; one before (a new experiment's folder is removed again) does not."""
    from raysl import search
    from raysl.search_options import SearchOptions

    def kept(opts, space, extra, said):
        said["resume_command"] = "raysl tune s.yaml --storage /r --resume"
        raise KeyboardInterrupt

    def not_yet(opts, space, extra, said):
        raise KeyboardInterrupt

    monkeypatch.setattr(search, "_run_search", kept)
    with pytest.raises(KeyboardInterrupt) as caught:
        search.run_search(SearchOptions("s.yaml"))
    assert caught.value.resume_command == "raysl tune s.yaml --storage /r --resume"
    monkeypatch.setattr(search, "_run_search", not_yet)
    with pytest.raises(KeyboardInterrupt) as caught:
        search.run_search(SearchOptions("s.yaml"))
    assert not hasattr(caught.value, "resume_command")


def test_sigterm_before_tunes_stop_handler_is_an_interruption_not_a_silent_sigusr1():
    """The search's SIGTERM handler stops Tune through SIGUSR1; before Tune's fit installs its handler for
    that, SIGUSR1's default action would end the process with no line: it raises Interrupted instead."""
    from raysl import search_fit
    from raysl.errors import Interrupted

    sent = []
    previous = signal.getsignal(signal.SIGTERM), signal.signal(signal.SIGUSR1, lambda *_: sent.append(1))
    try:
        search_fit._install_sigterm()
        with pytest.raises(Interrupted) as caught:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs at the next bytecode; this is never reached
        assert caught.value.signal_name == "SIGTERM" and not sent
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGUSR1, previous[1])


# Opens one database from several processes at once (they wait at a barrier file first): on a fresh
# database they all create Optuna's tables together, as two searches starting at once do.
OPEN_AT_ONCE = r"""
import sys, time
from pathlib import Path
from raysl.study import open_storage
folder, me, url = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
(folder / f"ready-{me}").touch()
while not (folder / "go").exists():
    time.sleep(0.01)
open_storage(url)
"""


def open_at_once(url: str, folder: Path, count: int = 3) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, str(folder), str(i), url], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(count)]
    try:
        deadline = time.time() + HANG
        while len(list(folder.glob("ready-*"))) < count and time.time() < deadline:
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.05)
        (folder / "go").touch()
        errors = [p.communicate(timeout=HANG)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), errors


@pytest.mark.slow  # three processes importing Ray Tune at once: ~20 s on a loaded 2-core machine
def test_processes_create_the_tables_of_a_fresh_database_at_once(tmp_path):
    """Optuna's table creation races between processes (seen: "UNIQUE constraint failed:
    alembic_version.version_num", "table ... already exists"); raysl retries it. Without the retry,
    this failed in about one run of three on a 2-core machine."""
    import optuna

    url = f"sqlite:///{tmp_path}/fresh.db"
    open_at_once(url, tmp_path)
    assert optuna.get_all_study_names(url) == []


# --------------------------------------------------------------------------
# a search in SQLite: read live by another process, interrupted, resumed, served by the dashboard


@pytest.fixture(scope="module")
def resumed(head, tmp_path_factory):
    """A 4-trial search (one trial at a time) that a plain-Optuna reader watches; interrupted once the
    reader saw an intermediate value, then resumed to the end."""
    storage = tmp_path_factory.mktemp("study") / "results"
    experiment = storage / "live"
    args = ["tune", str(QUICKSTART), *SMALL, "--num-samples", "4", "--storage", str(storage), "--name", "live"]
    proc = subprocess.Popen([RAYSL, *args], env=head.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(experiment / "raysl_study.json")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    frozen: list[int] = []
    try:
        # the reader ends once trial 0 has an intermediate value; then once trial 0 has finished and trial 1
        # has reported: trials run one at a time, so 2 are still to come and the search is running whatever
        # the machine's speed (interrupt_when checks it), with a finished trial a resume must not touch.
        # The trial process (one, reused for every trial) is stopped (SIGSTOP) before each look and stays
        # stopped through the Ctrl-C once the look says so: a Ctrl-C takes a second or two to stop the search,
        # and on a fast machine trial 1 finished and trial 2 ran in that time, so that Optuna already held all
        # 4 trials at the interrupt and the resume made none (a fresh-clone run of 2026-12-07 failed so)
        def second_running() -> bool:
            frozen[:] = head.worker_pids("ImplicitFunc")
            signal_all(frozen, signal.SIGSTOP)
            now = trials(experiment).values()
            if frozen and reader.poll() is not None and sum(_finished(t) for t in now) >= 1 and \
                    sum(bool(t["rows"]) for t in now) >= 2:
                return True
            signal_all(frozen, signal.SIGCONT)
            return False

        out, err = interrupt_when(proc, second_running, "the search")
        read, read_err = reader.communicate(timeout=HANG)
    finally:
        signal_all(frozen, signal.SIGCONT)
        if reader.poll() is None:
            reader.kill()
    assert reader.returncode == 0, read_err[-3000:]
    assert proc.returncode == 130, f"{proc.returncode}\n{out[-2000:]}\n{err[-4000:]}"
    assert final_json(out).get("interrupted")
    before = {t["number"]: t for t in json.loads(read)["trials"]}
    interrupted_trials = load_trials(f"sqlite:///{experiment}/optuna.db", "live")
    tune_before = trials(experiment)
    status_before = tune_statuses(experiment)
    again = run_raysl(head, args)  # the same command without --resume: refused, nothing deleted
    assert again.returncode == 2 and "--resume" in again.stderr, explain(again)
    assert trials(experiment) == tune_before
    done = run_raysl(head, [*args, "--resume"])
    assert done.returncode == 0, explain(done)
    return {"experiment": experiment, "read": json.loads(read), "before": before, "interrupted": interrupted_trials,
            "tune_before": tune_before, "status_before": status_before, "summary": final_json(done.stdout),
            "stderr": done.stderr}


def _finished(trial: dict) -> bool:
    return bool(trial["rows"]) and trial["rows"][-1].get("status") == "finished"


def tune_statuses(experiment: Path) -> dict[str, str]:
    """trial folder name -> its status in the newest experiment_state-*.json: what a resume starts from."""
    newest = sorted(experiment.glob("experiment_state-*.json"))[-1]
    return {json.loads(state)["relative_logdir"]: json.loads(state)["status"]
            for state, _ in json.loads(newest.read_text())["trial_data"]}


@pytest.mark.slow
def test_interrupted_search_resumes_every_trial_once(resumed):
    """Tune's own records of the interrupted search: every trial accounted for, each epoch logged once
    (also by the trial running at the interrupt, which trained again the epochs after its checkpoint),
    finished trials untouched."""
    before, summary = resumed["tune_before"], resumed["summary"]
    assert 1 <= sum(_finished(t) for t in before.values()) < 4
    untouched = 0
    after = trials(resumed["experiment"])
    assert len(after) == summary["num_trials"] == 4
    assert sum(summary["statuses"].values()) == 4 and "pending" not in summary["statuses"], summary
    assert summary["statuses"].get("finished", 0) >= 3, summary
    in_flight = [name for name, t in before.items() if not _finished(t)]
    for name, trial in after.items():
        epochs = [r["epoch"] for r in trial["rows"] if r["status"] not in ("collapsed", "diverged")]
        # every epoch logged once, none skipped (a collapsed trial ends early, by design, with a closing row
        # on its last epoch). The trial running at the interrupt restarted from the last checkpoint Tune
        # had; an epoch Tune had logged after it was trained again and replaced its first row
        # (raysl.trial_log)
        assert epochs == list(range(1, len(epochs) + 1)), (name, epochs, name in in_flight)
        assert len(epochs) == 2 or trial["rows"][-1]["status"] in ("collapsed", "diverged"), (name, trial["rows"])
        # a trial Tune had recorded as ended was not touched. (One whose last row said "finished" while Tune's
        # saved state still had it running, its last checkpoint not yet registered when the interrupt came,
        # trains again from the checkpoint the state names: seen in a CI run, its epoch-2 row replaced once.)
        if resumed["status_before"].get(name) == "TERMINATED":
            assert _finished(before[name]), (name, before[name]["rows"])
            assert trial["rows"] == before[name]["rows"]
            untouched += 1
    assert untouched >= 1


@pytest.mark.slow
def test_another_process_reads_the_study_while_the_search_runs(resumed):
    experiment, read = resumed["experiment"], resumed["read"]
    record = json.loads((experiment / "raysl_study.json").read_text())
    assert record == {"study_name": "live", "storage": f"sqlite:///{experiment}/optuna.db", "in_experiment": True}
    assert read["study"] == "live" and read["user_attrs"] == {"raysl_experiment": str(experiment)}
    seen = [t for t in read["trials"] if t["intermediate"]]
    assert seen, read
    for trial in seen:
        # one value per evaluated epoch (step = epoch), each a kNN accuracy
        assert set(trial["intermediate"]) <= {"1", "2"}, trial
        assert all(0.0 <= v <= 1.0 for v in trial["intermediate"].values()), trial
        assert (experiment / f"raysl_trial_{trial['user_attrs']['tune_trial_id']}").is_dir(), trial
    # trial 0 is the space's base point (the first one Tune asked for)
    assert read["trials"][0]["params"] == {"method.temperature": 0.2, "optim.lr": 0.002}


@pytest.mark.slow
def test_resume_continues_the_same_study(resumed):
    import optuna

    experiment = resumed["experiment"]
    url = f"sqlite:///{experiment}/optuna.db"
    assert optuna.get_all_study_names(url) == ["live"]  # no second study
    trials = load_trials(url, "live")
    assert resumed["summary"]["num_trials"] == 4
    # trial numbers continue: 0..3, one Optuna trial per Tune trial, none twice
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert {t.user_attrs["tune_trial_id"] for t in trials} == tune_trial_dirs(experiment)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), [t.state for t in trials]
    for t in trials:
        last = last_result(experiment, t)
        assert t.value == pytest.approx(last["knn_acc"])  # told the trial's last objective
        # every evaluated epoch once (a collapsed or diverged trial ends early, by design)
        assert set(t.intermediate_values) == {1, 2} or last["status"] in ("collapsed", "diverged"), (t, last)
    # the trials that existed at the interrupt are the same Optuna trials, now finished; the later ones are new
    interrupted = {t.number: t for t in resumed["interrupted"]}
    assert 0 < len(interrupted) < 4, interrupted
    for number, old in interrupted.items():
        assert trials[number]._trial_id == old._trial_id
        assert trials[number].user_attrs == old.user_attrs and trials[number].params == old.params
        assert set(old.intermediate_values.items()) <= set(trials[number].intermediate_values.items())


def stops_quietly(proc: subprocess.Popen, sig: int) -> None:
    """``sig`` stops the dashboard with exit 130, no traceback and no error line."""
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=HANG)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "raysl: error" not in err, err


def read_line(proc: subprocess.Popen) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], HANG)
    assert ready, "no line from the process"
    return proc.stdout.readline()


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs headless Chromium at /usr/bin/chromium (Debian `chromium`)")
def test_dashboard_shows_the_trial_list(resumed, tmp_path):
    """`raysl dashboard` serves the study on 127.0.0.1; headless Chromium (no internet needed: the page and its
    scripts come from the installed optuna-dashboard) renders its trial list."""
    from PIL import Image

    experiment = resumed["experiment"]
    proc = subprocess.Popen([RAYSL, "dashboard", str(experiment), "--port", "0"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = read_line(proc)
        found = re.search(r"at (http://127\.0\.0\.1:(\d+)/dashboard/studies/(\d+))$", line.strip())
        assert found, line + proc.stderr.read() if proc.poll() is not None else line
        page, port = found.group(1), found.group(2)
        assert line.startswith(f"raysl dashboard: study live (sqlite:///{experiment}/optuna.db) at ")
        # the JSON API the page reads: the study and its 4 trials
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{found.group(3)}", timeout=HANG) as answer:
            api = json.loads(answer.read())
        assert api["name"] == "live" and len(api["trials"]) == 4, {k: api[k] for k in ("name",)}
        # The page is a JavaScript app that fetches the trials after loading; the virtual-time budget runs its
        # timers without waiting in real time, and Chromium holds virtual time while a fetch is in flight.
        dom = chromium(tmp_path, "--virtual-time-budget=20000", "--dump-dom", f"{page}/trials")
        listed = re.findall(r'MuiListItemText-primary[^"]*">(Trial \d+)</span>', dom.stdout)
        assert listed == ["Trial 0", "Trial 1", "Trial 2", "Trial 3"], dom.stdout[-3000:] + dom.stderr[-2000:]
        # the selected trial's details name its Tune trial
        first = load_trials(f"sqlite:///{experiment}/optuna.db", "live")[0].user_attrs["tune_trial_id"]
        assert "tune_trial_id" in dom.stdout and first in dom.stdout

        shot = tmp_path / "dashboard.png"
        taken = chromium(tmp_path, "--window-size=1280,900", "--virtual-time-budget=20000", f"--screenshot={shot}",
                         f"{page}/trials")
        assert taken.returncode == 0 and shot.exists(), taken.stderr[-2000:]
        with Image.open(shot) as image:
            assert image.size == (1280, 900)
            low, high = image.convert("L").getextrema()
            assert low < 100 < high, "the screenshot is blank"
        (REPO / "test-artifacts").mkdir(exist_ok=True)
        shutil.copy(shot, REPO / "test-artifacts" / "dashboard.png")

        stops_quietly(proc, signal.SIGINT)  # Ctrl-C
    finally:
        if proc.poll() is None:
            proc.kill()


# --------------------------------------------------------------------------
# one database, several experiments


@pytest.mark.slow
def test_two_experiments_share_one_database(head, tmp_path):
    """Two searches at once write their studies into one SQLite file; each keeps its own trials."""
    import optuna

    url = f"sqlite:///{tmp_path}/team.db"
    procs = {}
    for name in ("alpha", "beta"):
        args = ["tune", str(QUICKSTART), *SMALL, "--set", "optim.epochs=1", "--num-samples", "2", "--storage",
                str(tmp_path / name), "--name", name, "--optuna-storage", url]
        procs[name] = subprocess.Popen([RAYSL, *args], env=head.env, cwd=REPO, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
    try:
        outputs = {name: proc.communicate(timeout=HANG) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    for name, proc in procs.items():
        assert proc.returncode == 0, f"{name}: {outputs[name][1][-4000:]}"
    assert sorted(optuna.get_all_study_names(url)) == ["alpha", "beta"]
    for name in ("alpha", "beta"):
        experiment = tmp_path / name / name
        study = optuna.load_study(study_name=name, storage=url)
        assert study.user_attrs == {"raysl_experiment": str(experiment)}
        assert len(study.trials) == 2 and all(t.state.name == "COMPLETE" for t in study.trials)
        assert {t.user_attrs["tune_trial_id"] for t in study.trials} == tune_trial_dirs(experiment)
        assert json.loads((experiment / "raysl_study.json").read_text())["storage"] == url
        assert not (experiment / "optuna.db").exists()


# --------------------------------------------------------------------------
# a real PostgreSQL server


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture
def postgres():
    """A throw-away PostgreSQL server on 127.0.0.1 (Debian's `postgresql`), password auth; its URL."""
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("needs the PostgreSQL server (Debian package postgresql: /usr/lib/postgresql/*/bin/initdb)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("needs the psycopg2 driver (pip install psycopg2-binary)")
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root needs runuser to start PostgreSQL as another user")
        import pwd

        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root needs a `postgres` user to start PostgreSQL as")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="raysl-pg-", dir="/tmp"))  # its own folder: the server's user owns it
    password = "pg-" + os.urandom(8).hex()
    (root / "pw").write_text(password + "\n")
    if as_user:
        for path in (root, root / "pw"):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    data, port = root / "data", free_port()

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=300)

    try:
        init = run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256",
                   f"--pwfile={root / 'pw'}", "-E", "UTF8")
        assert init.returncode == 0, init.stdout + init.stderr
        start = run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "120", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        assert start.returncode == 0, start.stdout + start.stderr + (root / "server.log").read_text()
        yield {"url": f"postgresql+psycopg2://postgres:{password}@127.0.0.1:{port}/postgres", "password": password,
               "public": f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"}
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_study_in_postgresql(head, tmp_path, postgres, capsys):

    from raysl.cli import main

    (tmp_path / "race").mkdir()
    open_at_once(postgres["url"], tmp_path / "race")  # a fresh server: several processes create the tables at once
    storage = tmp_path / "results"
    args = ["tune", str(QUICKSTART), *SMALL, "--num-samples", "2", "--storage", str(storage), "--name", "pg",
            "--optuna-storage", postgres["url"]]
    done = run_raysl(head, args)
    assert done.returncode == 0, explain(done)
    assert postgres["password"] not in done.stdout + done.stderr
    assert f"Optuna study pg in {postgres['public']}" in done.stderr
    experiment = storage / "pg"
    trials = load_trials(postgres["url"], "pg")
    assert [t.number for t in trials] == [0, 1] and all(t.state.name == "COMPLETE" for t in trials)
    for t in trials:
        last = last_result(storage / "pg", t)
        assert t.value == pytest.approx(last["knn_acc"])
        assert set(t.intermediate_values) == {1, 2} or last["status"] in ("collapsed", "diverged"), (t, last)
    assert {t.user_attrs["tune_trial_id"] for t in trials} == tune_trial_dirs(experiment)
    # the password is written nowhere: not in the study record, nor Tune's pickled searcher and experiment state
    assert json.loads((experiment / "raysl_study.json").read_text())["storage"] == postgres["public"]
    for path in experiment.rglob("*"):
        if path.is_file():
            assert postgres["password"].encode() not in path.read_bytes(), path
    # without the password, the recorded URL is refused by the server, and the error says how to give it
    assert main(["dashboard", str(experiment), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"raysl: error: {experiment}/raysl_study.json: the study database '{postgres['public']}': "
                          "cannot open the database ("), err
    assert "password" in err and "give the password in --optuna-storage (USER:PASSWORD@HOST)" in err, err
    assert postgres["password"] not in err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_dashboard_stops_on_a_signal_even_when_started_with_sigint_ignored(tmp_path, sig):
    """A background job of a non-interactive shell (`raysl dashboard ... &` in a script) starts with SIGINT
    ignored, and Python then leaves it ignored: the dashboard still stops on Ctrl-C (and on SIGTERM), with 130."""
    import optuna

    experiment = tmp_path / "exp"
    experiment.mkdir()
    url = f"sqlite:///{experiment}/optuna.db"
    made = optuna.create_study(study_name="exp", storage=url)
    made.optimize(lambda trial: trial.suggest_float("x", 0.0, 1.0), n_trials=2)
    (experiment / "raysl_study.json").write_text(json.dumps({"study_name": "exp", "storage": url,
                                                               "in_experiment": True}))
    proc = subprocess.Popen([RAYSL, "dashboard", str(experiment), "--port", "0"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        line = read_line(proc)
        assert "raysl dashboard: study exp" in line, line + (proc.stderr.read() if proc.poll() is not None else "")
        ignored = int(next(row for row in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                           if row.startswith("SigIgn:")).split()[1], 16)
        assert ignored & (1 << (signal.SIGINT - 1)) == 0  # raysl took SIGINT back from the inherited SIG_IGN
        stops_quietly(proc, sig)
    finally:
        if proc.poll() is None:
            proc.kill()
