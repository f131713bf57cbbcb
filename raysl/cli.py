"""The ``raysl`` command: data prepare, train, tune, scale, analyze, export, dashboard, up/down.

Exit codes: 0 success, 2 a user or environment error (one line on stderr), 130 an interruption
(one line ending with the command that resumes), 1 an internal failure.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from raysl import jsonio
from raysl.errors import RayslError

if TYPE_CHECKING:
    from raysl.search_options import SearchOptions


SET_HELP = ("override one config key, repeatable; the value is read as YAML: --set optim.lr=0.01 "
            "--set method.temperature=0.1 --set data.augment=byol; sections: method, model, data, optim, "
            "schedule, scale, eval, checkpoint (all keys and defaults: raysl/config.py, a method's in "
            "raysl/methods/<name>.py)")
# --resume refuses Ray state files not signed with the user's secret (raysl.signing)
TRUST_HELP = ("with --resume: resume an experiment whose saved Ray state is not signed with your secret (written "
              "before raysl signed it, with another secret, or by a search killed outright); raysl signs it as it "
              "is, then resumes. Only for a folder you trust: unpickling that state runs its code")


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raysl", description="Tune and scale self-supervised learning on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="prepare datasets as Parquet shards")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prep = data_sub.add_parser("prepare", help="write Parquet shards + manifest.json")
    prep.add_argument("source", help="digits | idx | cifar10 | imagefolder")
    prep.add_argument("path", nargs="?", help="input folder (not for digits)")
    prep.add_argument("--out", required=True, help="output folder or URI (s3://...)")
    prep.add_argument("--shard-rows", type=int, default=None, help="rows per shard (default 10000; imagefolder 1000)")
    prep.add_argument("--val-fraction", type=float, default=0.2)
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--max-side", type=int, default=None,
                      help="imagefolder: downsize images whose longer side exceeds N to N (default: keep sizes)")
    prep.add_argument("--quality", type=int, default=None, help="imagefolder: JPEG quality of downsized JPEGs (default 90)")
    prep.add_argument("--strict", action="store_true", help="imagefolder: stop at the first unreadable file")
    prep.add_argument("--workers", type=int, default=None,
                      help="imagefolder: parallel processes (default: CPU count; Ray tasks when RAY_ADDRESS is set)")

    train = sub.add_parser("train", help="train one run with Ray Train")
    train.add_argument("config", help="run config YAML (or a search space; its base: is used)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    train.add_argument("--out", default=None, help="run folder (default: runs/<method>); re-running resumes")
    train.add_argument("--max-failures", type=_non_negative_int, default=None, metavar="N",
                       help="restart the worker group from the latest checkpoint up to N times when a worker "
                            "fails (a preempted node, the OOM killer); default: scale.max_failures (0)")
    train.add_argument("--verbose", action="store_true", help="also show Ray's own logs (workers, warnings, reports)")

    tune = sub.add_parser("tune", help="search hyperparameters with Ray Tune + Optuna")
    tune.add_argument("space", help="search-space YAML")
    tune.add_argument("--num-samples", type=int, default=None)
    tune.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help=SET_HELP + " (applies to the space's base:, e.g. --set optim.epochs=5)")
    tune.add_argument("--storage", default=None, help="results folder or URI (default: ./raysl_results)")
    tune.add_argument("--name", default=None, help="experiment name (default: the space file's name)")
    tune.add_argument("--resume", action="store_true", help="continue an interrupted experiment")
    tune.add_argument("--trust-experiment", action="store_true", help=TRUST_HELP)
    tune.add_argument("--optuna-storage", default=None, metavar="URL",
                      help="database of the search's Optuna study (default: SQLite EXPERIMENT/optuna.db), e.g. a "
                           "team's postgresql+psycopg2://USER@HOST:5432/DB; the study is named after the experiment")
    tune.add_argument("--wandb", action="store_true", help="log trials to Weights & Biases (offline unless logged in)")
    tune.add_argument("--verbose", action="store_true", help="also show Ray's own logs and Tune's result tables")

    scale = sub.add_parser("scale", help="a grid of runs as one Tune experiment, then scaling-law fits; with "
                                         "search: a hyperparameter search per grid point, then h_opt(C) fits")
    scale.add_argument("file", help="scaling YAML (base:, grid:, fit:; see search_spaces/scaling_quickstart.yaml; "
                                    "with search: and raysl tune's tune: a transfer experiment, see "
                                    "search_spaces/scaling_transfer.yaml)")
    scale.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help=SET_HELP + " (applies to the file's base:; with search:, --set tune.num_samples=4 "
                                       "edits its tune:)")
    scale.add_argument("--predict", action="append", default=[], metavar="KEY=VALUE",
                       help="also predict the error at a point: --predict width=64 (grid axes, comma-separated) "
                            "or --predict compute=1e15 (training FLOPs); repeatable. A transfer experiment (search:): "
                            "the predicted hyperparameters there and a run config, predicted_config_<i>.yaml (on a "
                            "finished one, with --resume: its budgets are skipped)")
    scale.add_argument("--trajectory", action="store_true",
                       help="also fit the whole-curve law L(N, S_min) on every evaluation of every run (needs >= 2 "
                            "model sizes and >= 2 batch sizes) and predict each --predict point's whole curve "
                            "(trajectory_<i>.csv, the report's trajectory plot); fit.targets: steps to each error")
    scale.add_argument("--storage", default=None, help="results folder or URI (default: ./raysl_results)")
    scale.add_argument("--name", default=None, help="experiment name (default: the file's name)")
    scale.add_argument("--resume", action="store_true",
                       help="continue an interrupted grid (a transfer experiment: the budget that was running, "
                            "skipping those whose search has ended), then fit again")
    scale.add_argument("--trust-experiment", action="store_true", help=TRUST_HELP)
    scale.add_argument("--verbose", action="store_true", help="also show Ray's own logs and Tune's result tables")

    analyze = sub.add_parser("analyze", help="leaderboard, plots, importance and an HTML report")
    analyze.add_argument("paths", nargs="+", help="experiment folders or URIs")
    analyze.add_argument("--out", default=None, help="report folder (default: <first path>/report)")
    analyze.add_argument("--predict", action="append", default=[], metavar="KEY=VALUE",
                         help="a scaling experiment (raysl scale): predict the error from its stored fits at a "
                              "point: --predict width=64 (grid axes, comma-separated) or --predict compute=1e15; "
                              "repeatable")

    dash = sub.add_parser("dashboard", help="serve an experiment's Optuna study with optuna-dashboard on 127.0.0.1")
    dash.add_argument("experiment", help="experiment folder or URI (--storage/--name of raysl tune)")
    dash.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (default 8080; 0: any free port)")
    dash.add_argument("--host", default="127.0.0.1",
                      help="loopback address to listen on (default 127.0.0.1); reach it from elsewhere through "
                           "ssh -L PORT:127.0.0.1:PORT HEAD_NODE")
    dash.add_argument("--optuna-storage", default=None, metavar="URL",
                      help="the study's database URL with its password, when the recorded one has none")

    up = sub.add_parser("up", help="start a local Ray cluster that later raysl commands on this machine join "
                                   "(start-up once, not per run); `raysl down` stops it")
    up.add_argument("--num-cpus", type=int, default=None,
                    help="logical CPUs of the cluster (default: twice the cores, at least 4, as a command's own)")
    sub.add_parser("down", help="stop the local Ray cluster `raysl up` started (other Ray clusters go on)")

    export = sub.add_parser("export", help="write a run's trained backbone to a file for downstream use")
    export.add_argument("run_dir", help="a `raysl train` run folder (its --out)")
    export.add_argument("--out", required=True, help="output file, e.g. encoder.pt")
    export.add_argument("--epoch", type=int, default=None, help="a checkpointed epoch (default: the latest)")
    export.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    return parser


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from raysl.data.prepare import prepare

    if args.shard_rows is not None and args.shard_rows < 1:
        raise RayslError(f"--shard-rows must be >= 1 (got {args.shard_rows})")
    if not 0.0 <= args.val_fraction < 1.0:
        raise RayslError(f"--val-fraction must be in [0, 1) (got {args.val_fraction})")
    try:
        manifest = prepare(
            args.source, args.path, args.out, shard_rows=args.shard_rows, val_fraction=args.val_fraction,
            seed=args.seed, max_side=args.max_side, quality=args.quality, strict=args.strict, workers=args.workers,
            progress=sys.stderr,
        )  # fmt: skip
    except KeyboardInterrupt as stop:  # Ctrl-C, or a SIGTERM (the early handler of main() stays on here)
        # one line from the start of a line: the progress bar of an imagefolder prepare clears itself first
        name = getattr(stop, "signal_name", "SIGINT")
        how = "finished shards are kept; resume with" if args.source == "imagefolder" else "run it again with"
        print(f"raysl: interrupted ({name}); {how}: {typed_command(args.argv)}", file=sys.stderr)
        return 130
    if manifest.skipped:
        count = len(manifest.skipped)
        print(f"raysl: skipped {count} unreadable file{'s' * (count != 1)}, see "
              f"{args.out.rstrip('/')}/manifest.json", file=sys.stderr)  # fmt: skip
    rows = {k: v["rows"] for k, v in manifest.splits.items()}
    summary = {"out": args.out, "source": manifest.source, "rows": rows,
               "shape": [manifest.height, manifest.width, manifest.channels],
               "encoding": manifest.encoding, "skipped": len(manifest.skipped), "classes": manifest.num_classes}
    if manifest.sizes_vary:  # images of many sizes have no one shape: give their range, not the median as if it were
        summary["shape"] = None
        summary["sizes"] = {**{k: list(v) for k, v in (manifest.size_range or {}).items()},
                            "median": [manifest.height, manifest.width], "channels": manifest.channels}
    jsonio.print_line(summary)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from raysl.errors import Interrupted, StorageError, TrainingError, WorkerDiedError
    from raysl.launch import train_run
    from raysl.run_config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.max_failures is not None:  # the flag wins over the config's scale.max_failures
        cfg.scale.max_failures = args.max_failures
    out = args.out or os.path.join("runs", cfg.method.name)
    _refuse_file_out(out)
    try:
        summary = train_run(cfg, out, source=args.config, verbose=args.verbose)
    except StorageError as exc:  # the run folder could not be written: say how to continue once it can
        _shutdown_ray()
        if hasattr(exc, "summary"):
            jsonio.print_line(exc.summary)
        resume = train_resume_command(args, _absolute(out))
        print(f"raysl: error: {' '.join(str(exc).split())}; resume with: {resume}", file=sys.stderr, flush=True)
        return 2
    except Interrupted as stop:  # Ctrl-C or SIGTERM: train_run stopped Ray and kept every registered checkpoint
        resume = train_resume_command(args, _absolute(out))
        print(f"raysl: interrupted ({stop.signal_name}) {stop.detail}; resume with: {resume}", file=sys.stderr,
              flush=True)
        return 130
    except WorkerDiedError as exc:  # an environment failure: say what was kept and how to go on
        _shutdown_ray()
        jsonio.print_line(exc.summary)  # type: ignore[attr-defined]
        resume = train_resume_command(args, _absolute(out))
        print(f"raysl: error: {' '.join(str(exc).split())}; resume with: {resume}", file=sys.stderr, flush=True)
        return 2
    except TrainingError as exc:
        _shutdown_ray()
        jsonio.print_line(getattr(exc, "summary", {"status": "errored", "error": str(exc)}))
        raise
    # the last stdout line is the run's JSON summary (strict: null, never Infinity). Without --verbose nothing
    # of Ray's reaches stdout (log_to_driver is off), so the result is shown before Ray's teardown (stopping a
    # cluster of the command's own takes seconds) rather than after it
    if not args.verbose:
        jsonio.print_line(summary)
    _shutdown_ray()
    if args.verbose:  # Ray's forwarded worker output is flushed first
        jsonio.print_line(summary)
    return 0


def _refuse_file_out(out: str) -> None:
    """A run folder that is a file (or lies under one) is refused in words of its own: the folder check in
    train_run would be a StorageError, which gets a resume command with this same --out."""
    from raysl import storage
    from raysl.errors import ConfigError

    hint = "point --out at a folder: a new one starts the run, an existing run folder resumes it"
    if storage.is_file(out):
        raise ConfigError(f"--out {out} is a file, not a folder; {hint}")
    if "://" not in out:
        under = next((p for p in Path(out).expanduser().absolute().parents if p.exists()), None)
        if under is not None and not under.is_dir():
            raise ConfigError(f"--out {out}: {under} is a file, not a folder; {hint}")


def _absolute(out: str) -> str:
    """A local --out made absolute (the resume command works from any folder); a URI as given."""
    return out if "://" in out else str(Path(out).expanduser().resolve())


def train_resume_command(args: argparse.Namespace, out: str) -> str:
    """The exact `raysl train` command that continues this run from its last checkpoint."""
    import shlex

    parts = ["raysl", "train", args.config, *(x for o in args.overrides for x in ("--set", o)), "--out", out]
    if getattr(args, "max_failures", None) is not None:
        parts += ["--max-failures", str(args.max_failures)]
    return " ".join(shlex.quote(p) for p in parts)


def _shutdown_ray() -> None:
    """Disconnect (and stop a cluster we started) so Ray's log stream is flushed before our summary."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _search_options(args: argparse.Namespace, space_path: str) -> "SearchOptions":
    from raysl.search_options import SearchOptions

    return SearchOptions(
        space_path=space_path, overrides=tuple(args.overrides), num_samples=getattr(args, "num_samples", None),
        name=args.name, storage=args.storage, resume=args.resume, trust_experiment=args.trust_experiment,
        optuna_storage=getattr(args, "optuna_storage", None), wandb=getattr(args, "wandb", False),
        verbose=args.verbose, argv=tuple(args.argv), command=args.command)


def cmd_tune(args: argparse.Namespace) -> int:
    from raysl.search import run_search

    return run_search(_search_options(args, args.space))


def cmd_scale(args: argparse.Namespace) -> int:
    from raysl.scale import ScaleOptions, scale_main

    return scale_main(ScaleOptions(search=_search_options(args, args.file), predict=tuple(args.predict),
                                   trajectory=args.trajectory))


def cmd_analyze(args: argparse.Namespace) -> int:
    from raysl.analyze import analyze_main

    return analyze_main(args.paths, args.out, args.predict)


def cmd_up(args: argparse.Namespace) -> int:
    from raysl import local_cluster

    if args.num_cpus is not None and args.num_cpus < 1:
        raise RayslError(f"--num-cpus must be >= 1 (got {args.num_cpus})")
    cluster, started = local_cluster.up(args.num_cpus)
    if started:
        print(f"raysl: a local Ray cluster is up at {cluster.address} ({cluster.num_cpus} logical CPUs, dashboard "
              f"{cluster.dashboard_url}); raysl train, tune and scale on this machine join it until `raysl down`",
              file=sys.stderr)
    else:
        print(f"raysl: the local Ray cluster from `raysl up` is already running at {cluster.address}; "
              "`raysl down` stops it", file=sys.stderr)
    jsonio.print_line({"address": cluster.address, "dashboard": cluster.dashboard_url, "num_cpus": cluster.num_cpus,
                       "started": started})
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from raysl import local_cluster

    cluster = local_cluster.down()
    if cluster is None:
        print("raysl: no local Ray cluster from `raysl up` is running; nothing to stop", file=sys.stderr)
    else:
        print(f"raysl: stopped the local Ray cluster at {cluster.address}", file=sys.stderr)
    jsonio.print_line({"stopped": cluster.address if cluster else None})
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from raysl.dashboard import dashboard_main

    return dashboard_main(args.experiment, args.host, args.port, args.optuna_storage)


def cmd_export(args: argparse.Namespace) -> int:
    from raysl.export import export_backbone

    summary = export_backbone(args.run_dir, args.out, args.epoch, force=args.force)
    for problem in summary.get("skipped", []):
        print(f"[raysl] skipped: {problem}", file=sys.stderr)
    jsonio.print_line(summary)  # the last stdout line is the export's JSON summary
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed: the resume commands repeat it
    if getattr(args, "verbose", False) and not (sys.stdout.isatty() and sys.stderr.isatty()):
        # before Ray is imported: its log de-duplication marks repeats in ANSI green, even in a file
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if args.command in ("train", "tune", "scale"):
        from raysl.local_cluster import prepare_to_join

        prepare_to_join()  # before Ray is imported: it reads RAY_AUTH_MODE once per process
    previous = _early_sigterm()
    handlers = {"train": cmd_train, "tune": cmd_tune, "scale": cmd_scale, "analyze": cmd_analyze,
                "export": cmd_export, "dashboard": cmd_dashboard, "up": cmd_up, "down": cmd_down}
    try:
        if args.command == "data":
            return cmd_data_prepare(args)
        return handlers[args.command](args)
    except RayslError as exc:
        message = " ".join(str(exc).split())
        print(f"raysl: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # before a command could say more (e.g. while Ray starts)
        name = getattr(stop, "signal_name", "SIGINT")
        # a search whose experiment folder is kept says how to resume it (raysl.search.run_search)
        again = getattr(stop, "resume_command", None) or typed_command(args.argv)
        if args.command in ("train", "tune", "scale"):
            print(f"raysl: interrupted ({name}); completed epochs are checkpointed; resume with: {again}",
                  file=sys.stderr)
        else:
            print(f"raysl: interrupted ({name}); run it again with: {again}", file=sys.stderr)
        return 130
    finally:
        if previous is not None:  # main() called in a process that goes on (a test, a notebook)
            import signal

            signal.signal(signal.SIGTERM, previous)


def typed_command(argv: list[str]) -> str:
    """``raysl`` and ``argv`` (the command as typed), for a line that says how to run it again; a database
    password given to --optuna-storage is left out, as raysl never prints one (the command run again gets
    it from PGPASSWORD, ~/.pgpass or the option typed again with it)."""
    import shlex

    from raysl.console import without_passwords  # light: no Ray, no torch (it runs while they import)

    return shlex.join(["raysl", *without_passwords(argv, "--optuna-storage")])


def _early_sigterm():
    """A scheduler's SIGTERM before a command installs its own handler (while torch and Ray import, for
    seconds) ends like Ctrl-C: one line and exit 130, not Python's silent exit 143. The commands that
    start Ray replace it with theirs (raysl.interrupts.interrupt_signals, raysl.search). Returns the handler it
    replaced (None off the main thread, where none is installed)."""
    import signal
    import threading

    from raysl.errors import Interrupted

    def on_sigterm(*_):
        raise Interrupted("SIGTERM", "before training started")

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, on_sigterm)  # the handler it replaced


if __name__ == "__main__":
    sys.exit(main())
