"""What a ``raysl tune`` search is asked to do (:class:`SearchOptions`), where its experiment is, whether a
``--resume`` may continue it, and the command that resumes it.

:mod:`raysl.search` (the driver) and :mod:`raysl.scale` (a scaling experiment's searches) read these.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from raysl import jsonio, signing, storage
from raysl.console import without_passwords
from raysl.errors import ConfigError
from raysl.outcome import SPACE_FILE
from raysl.space import SearchSpace
from raysl.study import OPTION as OPTUNA_OPTION
from raysl.study import STUDY_FILES

DEFAULT_STORAGE = "./raysl_results"


@dataclass(frozen=True)
class SearchOptions:
    """What a search is asked to do besides its space: the options of ``raysl tune`` (``raysl scale`` fills
    them for its grid). ``argv`` is the command as typed, which the resume command repeats."""

    space_path: str  # the space (or scaling) file: names the experiment, and every message
    overrides: tuple[str, ...] = ()
    num_samples: int | None = None
    name: str | None = None
    storage: str | None = None
    resume: bool = False
    trust_experiment: bool = False
    optuna_storage: str | None = None
    wandb: bool = False
    verbose: bool = False
    argv: tuple[str, ...] = ()
    # the subcommand (tune or scale) and that command's own arguments (scale's --predict, --trajectory): the
    # resume command is rebuilt from them when there is no argv (a search started from Python)
    command: str = "tune"
    command_args: tuple[str, ...] = ()
    # the command that resumes this search when it is one part of a larger one (raysl scale's transfer
    # experiment runs a search per budget in its folder: --resume of the scale command continues it)
    resume_command: str | None = None


def experiment_name(opts: SearchOptions) -> str:
    name = opts.name or Path(opts.space_path).stem
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError(f"--name {name!r}: use a plain folder name, e.g. --name quickstart_lr")
    return name


def storage_root(opts: SearchOptions) -> str:
    return storage.resolve(opts.storage or DEFAULT_STORAGE).uri


def _check_resumable(experiment: str, space: SearchSpace, opts: SearchOptions) -> bool:
    """Decide between a new experiment and a resumed one; returns True to restore."""
    from ray.tune import Tuner

    listing = [entry for entry, _ in storage.list_dir(experiment)]
    if opts.trust_experiment and not opts.resume:
        raise ConfigError(f"{signing.TRUST_OPTION} signs an experiment's saved state to resume it; use it with "
                          "--resume (a new experiment needs no trust)")
    if not opts.resume:
        if listing:
            raise ConfigError(
                f"{experiment} already holds an experiment named {Path(experiment).name!r}; pass --resume to "
                "continue it, or --name NEW for a new one (raysl never deletes results)"
            )
        return False
    if not listing:  # a typo in --name or --storage must not quietly start a new search
        where, name = experiment.rstrip("/").rsplit("/", 1)
        raise ConfigError(f"no experiment {name} in {where} to resume; drop --resume to start it")
    if not Tuner.can_restore(experiment):
        if set(listing) - {SPACE_FILE, storage.RESERVE_FILE} - STUDY_FILES:
            raise ConfigError(f"--resume: {experiment} has no Ray Tune experiment state to resume; "
                              "pass another --name to start a new experiment")
        # interrupted before Tune wrote its state: only the space raysl wrote first is there
        print(f"[raysl] --resume: nothing was run yet in {experiment}; starting it", file=sys.stderr)
        return False
    # before anything unpickles Ray's state (Tuner.restore does): a replaced pickle would run its code here
    if opts.trust_experiment:
        signing.check_intact(experiment, trusting=True)  # a damaged file is not signed: Ray would fail on it
        signed = signing.sign_experiment(experiment)
        print(f"[raysl] {signing.TRUST_OPTION}: signed the {signed} state files of {experiment} with your secret "
              "as they are", file=sys.stderr)
    else:
        signing.verify_experiment(experiment)
    stored = storage.read_text(storage.join_uri(experiment, SPACE_FILE), missing_ok=True)
    if stored is not None:
        before = yaml.safe_load(stored) or {}
        now = jsonio.plain(space.to_yaml_dict())
        for section in ("base", "search"):
            if before.get(section) != now.get(section):
                raise ConfigError(
                    f"--resume: the {section}: of {space.source} (with --set) differs from the one "
                    f"{experiment} was started with ({storage.join_uri(experiment, SPACE_FILE)}); resume with the same "
                    "space and --set, or pass --name NEW"
                )
    return True


def tune_resume_command(opts: SearchOptions, storage_root: str) -> str:
    """The exact `raysl tune` (or `raysl scale`) command that continues this search: the command as given
    (``opts.argv``, else rebuilt from ``opts``), with --storage made absolute and --resume."""
    import shlex

    argv = list(opts.argv)
    if not argv:
        argv = [opts.command, opts.space_path, *(x for o in opts.overrides for x in ("--set", o)),
                *opts.command_args]
        if opts.num_samples is not None:
            argv += ["--num-samples", str(opts.num_samples)]
        if opts.name:
            argv += ["--name", opts.name]
    # a database password is never printed: the resumed search gets it from PGPASSWORD, ~/.pgpass or an
    # --optuna-storage typed again
    argv = without_passwords(argv, OPTUNA_OPTION)
    parts: list[str] = []
    given = False
    for i, arg in enumerate(argv):
        # --trust-experiment is for one resume: the state is signed when this one ends
        if arg in ("--resume", signing.TRUST_OPTION) or (i > 0 and argv[i - 1] == "--storage"):
            continue
        if arg == "--storage" or arg.startswith("--storage="):
            parts += ["--storage", storage_root]  # where it is, as given, made absolute
            given = True
            continue
        parts.append(arg)
    if not given:
        parts += ["--storage", storage_root]
    return shlex.join(["raysl", *parts, "--resume"])
