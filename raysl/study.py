"""Where a search's Optuna study lives: a real database that outlives the search.

Every ``raysl tune`` (and ``raysl scale``) search with an Optuna sampler keeps its study in
an SQL database through Optuna's ``RDBStorage``:

- by default an SQLite file in the experiment folder, ``<experiment>/optuna.db``; when the
  experiment lives in object storage (``s3://``, ``gs://``) SQLite cannot sit there, so the
  default is a local file, ``<raysl cache>/studies/<name>-<hash>.db``, and the search says
  where (``--optuna-storage`` puts it on a server everyone can reach instead);
- ``--optuna-storage URL``: any SQLAlchemy URL of SQLite, PostgreSQL or MySQL, e.g. a team's
  ``postgresql+psycopg2://USER@HOST:5432/DB``.

The study is named after the experiment, so studies of several experiments share one database;
a new experiment never joins a study another experiment started (that is an error naming the
fix). Where the study is goes into ``<experiment>/raysl_study.json`` with the password left
out, for ``raysl dashboard EXPERIMENT`` and ``raysl tune --resume``; a password comes again
from ``--optuna-storage`` or from the driver's own means (``PGPASSWORD``, ``~/.pgpass``).

PBT searches have no study: Ray Tune's PopulationBasedTraining mutates running trials and
cannot be combined with a searcher, so there is no Optuna sampler to record.

:class:`StudySearch` is Ray Tune's ``OptunaSearch`` on that database. It reports each fresh
evaluation to its Optuna trial as an intermediate value at ``step = epoch`` (the learning
curve another process or the dashboard reads while the search runs), and pickles without its
database connection (and so without a password) into Tune's experiment state: a restored
search reopens the same study and its live trials, so ``--resume`` continues it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune.search.optuna import OptunaSearch

from raysl import jsonio, storage
from raysl.console import public_url  # the URL with its password left out (also raysl.cli's, which imports no Ray)
from raysl.errors import ConfigError, StorageError
from raysl.outcome import BAD_STATUSES, SPACE_FILE, STUDY_FILE, Status
from raysl.outcome import STUDY_DB_FILE as DB_FILE
# files the study adds to an experiment folder (SQLite writes its journal next to the database)
STUDY_FILES = {STUDY_FILE, DB_FILE, DB_FILE + "-journal", DB_FILE + "-wal", DB_FILE + "-shm"}
OPTION = "--optuna-storage"
EXPERIMENT_ATTR = "raysl_experiment"  # study user attribute: the experiment that started the study
TRIAL_ATTR = "tune_trial_id"  # trial user attribute: the Tune trial (folder raysl_trial_<id>)
BACKENDS = ("sqlite", "postgresql", "mysql")
URL_EXAMPLES = ("sqlite:////path/to/studies.db, postgresql+psycopg2://USER@HOST:5432/DB or "
                "mysql+pymysql://USER@HOST:3306/DB")
# the pip package of each SQLAlchemy driver Optuna may need
DRIVER_PACKAGES = {"psycopg2": "psycopg2-binary", "psycopg": "'psycopg[binary]'", "pg8000": "pg8000",
                   "asyncpg": "asyncpg", "mysqldb": "mysqlclient", "pymysql": "PyMySQL",
                   "mysqlconnector": "mysql-connector-python"}
CONNECT_TIMEOUT_S = 10  # an unreachable server is an error after this, not a hang
_SETUP_TRIES = 30  # above the number of Optuna's tables (see open_storage)
SQLITE_BUSY_TIMEOUT_S = 60  # a reader (the dashboard) may hold the file briefly while the search writes


# --------------------------------------------------------------------------
# URLs


def _parse(url: str, option: str = OPTION):
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - sqlalchemy raises ArgumentError and ValueError
        raise ConfigError(f"{option} {public_url(url)!r} is not a database URL; use {URL_EXAMPLES}") from None
    backend = parsed.get_backend_name()
    if backend not in BACKENDS:
        raise ConfigError(f"{option} {public_url(url)!r}: {backend!r} is not a database Optuna can keep a study "
                          f"in; use {URL_EXAMPLES}")
    if backend == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ConfigError(f"{option} {public_url(url)!r}: an in-memory SQLite database ends with the search; "
                          "name a file: sqlite:////path/to/studies.db")
    return parsed


def _absolute_sqlite(url: str, option: str = OPTION) -> str:
    """A relative SQLite path made absolute: the study must not depend on the folder raysl runs in."""
    parsed = _parse(url, option)
    if parsed.get_backend_name() != "sqlite":
        return url
    path = Path(parsed.database).expanduser()
    if not path.is_absolute() or str(path) != parsed.database:
        parsed = parsed._replace(database=str(path.resolve()))
    if not path.resolve().parent.is_dir():
        raise ConfigError(f"{option} {public_url(url)!r}: the folder {path.resolve().parent} does not exist; "
                          "create it or name a file in an existing folder")
    return parsed.render_as_string(hide_password=False)


def default_url(experiment: str) -> tuple[str, bool]:
    """(URL, in_experiment): the experiment folder's ``optuna.db``, or a local cache file for a
    remote experiment (SQLite needs a local file)."""
    location = storage.resolve(experiment)
    if location.is_local:
        return f"sqlite:///{location.path.rstrip('/')}/{DB_FILE}", True

    digest = hashlib.sha1(location.uri.encode()).hexdigest()[:8]
    folder = storage.cache_root() / "studies"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder.resolve()}/{location.name}-{digest}.db", False


# --------------------------------------------------------------------------
# opening a database


def _engine_kwargs(parsed) -> dict[str, Any]:
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    return {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}, "pool_pre_ping": True}


def _one_line(exc: BaseException, url: str) -> str:
    """The database's own words, on one line, without SQLAlchemy's links or the password."""
    text = str(getattr(exc, "orig", None) or exc)
    text = " ".join(text.split("(Background on this error")[0].split())
    password = _password(url)
    if password:
        text = text.replace(password, "***")
    return text[:300]


def _password(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).password
    except Exception:  # noqa: BLE001
        return None


def _created_meanwhile(exc: BaseException) -> bool:
    """Another process created Optuna's tables (or its version row) while this one did: two searches
    starting at once on a fresh database."""
    text = str(getattr(exc, "orig", None) or exc).lower()
    return any(sign in text for sign in ("already exists", "unique constraint", "duplicate key", "duplicate entry"))


def open_storage(url: str, option: str = OPTION):
    """Optuna's ``RDBStorage`` on ``url`` (tables created when missing); any failure is one line.

    Creating the tables races when two searches start at once on a fresh database: the loser sees
    "already exists" for a table the winner made, and tries again. Each such failure means the
    other process made progress, so the retries are bounded by the number of Optuna's tables.
    """
    import optuna
    import sqlalchemy.exc

    parsed = _parse(url, option)
    shown = public_url(url)
    try:
        for attempt in range(_SETUP_TRIES):
            try:
                return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(parsed))
            except sqlalchemy.exc.DBAPIError as exc:
                if attempt + 1 == _SETUP_TRIES or not _created_meanwhile(exc):
                    raise
        raise AssertionError("unreachable")
    except ImportError:
        driver = parsed.get_driver_name() if parsed.drivername != parsed.get_backend_name() else (
            "psycopg2" if parsed.get_backend_name() == "postgresql" else "mysqldb")
        package = DRIVER_PACKAGES.get(driver, driver)
        raise ConfigError(f"{option} {shown!r}: the database driver {driver} is not installed; "
                          f"pip install {package}") from None
    except sqlalchemy.exc.OperationalError as exc:
        detail = _one_line(exc, url)
        if "password" in detail and not _password(url):
            fix = f"give the password in {OPTION} (USER:PASSWORD@HOST) or set PGPASSWORD / ~/.pgpass"
        elif parsed.get_backend_name() == "sqlite":
            fix = "check the file's folder and permissions"
        else:
            fix = f"start the server or fix the host, port, user and database in {OPTION}"
        raise ConfigError(f"{option} {shown!r}: cannot open the database ({detail}); {fix}") from None
    except Exception as exc:  # noqa: BLE001 - e.g. Optuna's schema version check, a bad option in the URL
        raise ConfigError(f"{option} {shown!r}: cannot use the database ({_one_line(exc, url)}); "
                          f"see the message, or pass another {OPTION}") from None


# --------------------------------------------------------------------------
# where an experiment's study is


@dataclass(frozen=True)
class StudyPlace:
    """One experiment's study: ``url`` may hold a password and is never printed or written."""

    url: str
    name: str
    experiment: str
    in_experiment: bool  # the experiment folder's own optuna.db
    source: str = OPTION  # where the URL came from, for messages

    def open(self):
        return open_storage(self.url, self.source)

    @property
    def public_url(self) -> str:
        return public_url(self.url)

    def record(self) -> None:
        """``<experiment>/raysl_study.json``: where the study is, without the password."""
        text = jsonio.dumps({"study_name": self.name, "storage": self.public_url,
                             "in_experiment": self.in_experiment}, indent=1)
        storage.write_atomic(storage.join_uri(self.experiment, STUDY_FILE), text + "\n", option="--storage")


# the full URL (password included) of each study this process opened, for a restored searcher:
# Tune unpickles it without a connection and it reopens the study through here
_OPENED: dict[tuple[str, str], str] = {}


def _remember(place: StudyPlace) -> StudyPlace:
    _OPENED[(place.name, place.public_url)] = place.url
    return place


def prepare_new(experiment: str, name: str, given: str | None, retry: bool = False) -> StudyPlace:
    """The study of a new search: the database answers and holds no study of that name from another
    experiment. ``retry``: an earlier start of this experiment stopped before Tune ran anything; its
    (empty) study is dropped and started again."""
    if given:
        url, inside = _absolute_sqlite(given), False
    else:
        url, inside = default_url(experiment)
        if inside:
            storage.make_dirs(experiment, option="--storage")
        else:
            print(f"[raysl] the Optuna study of {experiment} is kept on this machine in {public_url(url)} "
                  f"(SQLite cannot live in {experiment.split('://', 1)[0]}://); pass {OPTION} "
                  "postgresql+psycopg2://... to keep it on a shared server", file=sys.stderr)
    place = StudyPlace(url, name, experiment, inside)
    db = open_storage(url)
    try:
        study_id = db.get_study_id_from_name(name)
    except KeyError:
        return _remember(place)
    owner = db.get_study_user_attrs(study_id).get(EXPERIMENT_ATTR)
    if retry and owner == experiment:
        db.delete_study(study_id)
        return _remember(place)
    started_by = f" (started by experiment {owner})" if owner else ""
    raise ConfigError(
        f"{place.public_url} already holds an Optuna study named {name!r}{started_by}; pass --name NEW for this "
        f"experiment, or delete that study: optuna delete-study --study-name {name} --storage {place.public_url}"
    )


def _record_of(experiment: str) -> dict | None:
    text = storage.read_text(storage.join_uri(experiment, STUDY_FILE), missing_ok=True)
    if text is None:
        return None
    try:
        recorded = json.loads(text)
        if isinstance(recorded["study_name"], str) and isinstance(recorded["storage"], str):
            return recorded
    except (ValueError, KeyError, TypeError):
        pass
    raise ConfigError(f"{storage.join_uri(experiment, STUDY_FILE)} is not a raysl study record; "
                      "it was edited or truncated")


def load(experiment: str, given: str | None = None, option: str = OPTION) -> StudyPlace:
    """The study an experiment recorded (for --resume and the dashboard); ``given`` supplies the
    password or a new address of the same database."""
    recorded = _record_of(experiment)
    if recorded is None:
        raise ConfigError(f"{experiment} has no Optuna study ({STUDY_FILE} is missing): {_why_none(experiment)}")
    name, inside = recorded["study_name"], bool(recorded.get("in_experiment"))
    stored = default_url(experiment)[0] if inside else recorded["storage"]  # the folder may have moved since
    url = _absolute_sqlite(given, option) if given else _OPENED.get((name, stored), stored)
    if given and public_url(url) != recorded["storage"]:
        print(f"[raysl] the study of {experiment} was recorded in {recorded['storage']}; using {public_url(url)} "
              f"as {option} says", file=sys.stderr)
    source = option if given else f"{storage.join_uri(experiment, STUDY_FILE)}: the study database"
    return _remember(StudyPlace(url, name, experiment, inside and not given, source))


def _why_none(experiment: str) -> str:
    import yaml

    text = storage.read_text(storage.join_uri(experiment, SPACE_FILE), missing_ok=True)
    if text is None:
        return "it is not a raysl tune experiment folder (no raysl_space.yaml); give the folder --storage/--name made"
    try:
        scheduler = ((yaml.safe_load(text) or {}).get("tune") or {}).get("scheduler")
    except yaml.YAMLError:
        scheduler = None
    if scheduler == "pbt":
        return "a PBT search has none (PBT mutates running trials without an Optuna sampler); use raysl analyze"
    return "it was run before raysl kept studies; use raysl analyze"


def prepare_resume(experiment: str, given: str | None) -> StudyPlace | None:
    """The study a resumed search continues; None for an experiment that has none (PBT, or older)."""
    if _record_of(experiment) is None:
        if given:
            raise ConfigError(f"{OPTION}: {experiment} has no Optuna study to continue ({_why_none(experiment)}); "
                              f"resume without {OPTION}")
        return None
    place = load(experiment, given)
    db = place.open()
    try:
        db.get_study_id_from_name(place.name)
    except KeyError:
        raise ConfigError(f"--resume: {place.public_url} has no Optuna study named {place.name!r} (the study "
                          f"{experiment} started); pass the {OPTION} it was started with") from None
    if given:
        place.record()
    return place


# --------------------------------------------------------------------------
# the searcher


class StudySearch(OptunaSearch):
    """Ray Tune's OptunaSearch on a study in a database (see the module docstring)."""

    _NOT_PICKLED = ("_storage", "_ot_study", "_ot_trials")

    def __init__(self, place: StudyPlace, **kwargs: Any):
        self._public_url = place.public_url
        self._experiment = place.experiment
        self._reported: dict[str, int] = {}  # Tune trial id -> last epoch told to Optuna
        self._trial_ids: dict[str, int] = {}  # Tune trial id -> Optuna's trial id (survives pickling)
        super().__init__(study_name=place.name, storage=open_storage(place.url), **kwargs)
        self._ot_study.set_user_attr(EXPERIMENT_ATTR, place.experiment)

    # pickling: no connection (and no password) in Tune's experiment state

    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k not in self._NOT_PICKLED}
        ids = dict(self.__dict__.get("_trial_ids") or {})
        ids.update({tid: t._trial_id for tid, t in (self.__dict__.get("_ot_trials") or {}).items()})
        state["_trial_ids"] = ids
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._storage = self._ot_study = None
        self._ot_trials = {}

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        # Ray hands the experiment's searcher-state-*.pkl: `--resume` checked its signature first (raysl.signing)
        with open(checkpoint_path, "rb") as f:
            self.__setstate__(pickle.load(f))

    def _attach(self) -> None:
        """Reopen the study and its unfinished trials after unpickling."""
        if self._ot_study is not None:
            return
        import optuna

        url = _OPENED.get((self._study_name, self._public_url), self._public_url)
        self._storage = open_storage(url)
        self._ot_study = optuna.load_study(study_name=self._study_name, storage=self._storage,
                                           sampler=self._sampler, pruner=optuna.pruners.NopPruner())
        self._ot_trials = {tid: optuna.Trial(self._ot_study, ot_id)
                           for tid, ot_id in self._trial_ids.items() if tid not in self._completed_trials}

    # a full disk (or a read-only one) under the study's SQLite file

    def _storage_failure(self, exc: BaseException):
        """The one-line StorageError when ``exc`` is the study's database failing to write (SQLite's "database
        or disk is full"), after noting it for the search (raysl.storage.note_failure: the search stops and
        gets back the room it set aside for its last state); None for any other error."""
        where = self._experiment
        with contextlib.suppress(Exception):  # else the experiment names it well enough
            from sqlalchemy.engine import make_url

            url = make_url(self._public_url)
            if url.get_backend_name() == "sqlite" and url.database:
                where = url.database
        failure = storage.error_in(exc, where, "writing the Optuna study", "--storage")
        if failure is not None:
            storage.note_failure(failure)
        return failure

    # Tune's calls

    def suggest(self, trial_id: str) -> dict | None:
        self._attach()
        if storage.noted_failure() is not None:
            return None  # the search is stopping: no trial starts on storage that cannot take it
        try:
            params = super().suggest(trial_id)
        except Exception as exc:
            if self._storage_failure(exc) is None:
                raise
            asked = self._ot_trials.pop(trial_id, None)
            if asked is not None:  # asked for but never run: not left RUNNING in the study
                with contextlib.suppress(Exception):
                    import optuna

                    self._ot_study.tell(asked, state=optuna.trial.TrialState.FAIL)
            return None  # Tune asks again later; the search stops first (raysl.search)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and trial_id not in self._trial_ids:
            self._trial_ids[trial_id] = ot_trial._trial_id
            ot_trial.set_user_attr(TRIAL_ATTR, trial_id)
        return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """A fresh evaluation becomes the Optuna trial's intermediate value at step = epoch
        (Optuna keeps none for several objectives). Reports between evaluations repeat the last
        one and are not told; an epoch reported again after a restart is told once."""
        self._attach()
        if result.get("status") == Status.RUNNING and isinstance(result.get("error"), str):
            # raysl.trial's report of a trial that met full storage: no new evaluation, and the search stops
            # (noted here too: an experiment started before raysl.search.SearchStop resumes without it)
            storage.note_failure(StorageError(result["error"]))
            return
        if isinstance(self.metric, list) or trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        epoch, value = result.get("epoch"), result.get(self.metric)
        if epoch is None or result.get("eval_epoch", epoch) != epoch or result.get("status") in BAD_STATUSES:
            return
        if not isinstance(value, (int, float)) or not math.isfinite(value) or epoch <= self._reported.get(trial_id, -1):
            return
        try:
            self._ot_trials[trial_id].report(float(value), int(epoch))
        except Exception as exc:  # noqa: BLE001 - a database hiccup must not end the search
            if self._storage_failure(exc) is None:  # a full disk: the search stops and says so in one line
                print(f"[raysl] Optuna study: could not record epoch {epoch} of trial {trial_id}: "
                      f"{_one_line(exc, '')}", file=sys.stderr)
            return
        self._reported[trial_id] = int(epoch)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """OptunaSearch's, but a study database that cannot be written is not passed over: Ray logs the
        failed ``tell`` as a warning and forgets it. On a full disk the search stops (raysl.storage.note_failure
        gives back the room it set aside) and the trial's end is told once more, in that room."""
        import optuna

        self._attach()
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return  # told already, or not a trial of this study (cannot happen in a raysl search)
        ot_trial = self._ot_trials[trial_id]
        if result:
            value = ([result.get(m) for m in self.metric] if isinstance(self.metric, list)
                     else result.get(self.metric))
        else:
            value = None
        state = optuna.trial.TrialState.COMPLETE
        if value is None:
            state = optuna.trial.TrialState.FAIL if error else optuna.trial.TrialState.PRUNED
        for attempt in range(2):
            try:
                self._ot_study.tell(ot_trial, value, state=state)
                break
            except Exception as exc:  # noqa: BLE001 - as OptunaSearch: e.g. a NaN the study refuses
                if attempt or self._storage_failure(exc) is None:
                    break
        self._completed_trials.add(trial_id)

    def add_evaluated_point(self, *args: Any, **kwargs: Any) -> None:
        self._attach()
        super().add_evaluated_point(*args, **kwargs)

