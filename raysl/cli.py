"""The ``raysl`` command: data prepare, train, tune, analyze, export.

Exit codes: 0 success, 2 a user error (one line on stderr), 1 an internal failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from raysl.errors import RayslError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raysl", description="Tune and scale self-supervised learning on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="prepare datasets as Parquet shards")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prep = data_sub.add_parser("prepare", help="write Parquet shards + manifest.json")
    prep.add_argument("source", help="digits | idx | cifar10 | imagefolder")
    prep.add_argument("path", nargs="?", help="input folder (not for digits)")
    prep.add_argument("--out", required=True, help="output folder or URI (s3://...)")
    prep.add_argument("--shard-rows", type=int, default=10_000)
    prep.add_argument("--val-fraction", type=float, default=0.2)
    prep.add_argument("--seed", type=int, default=0)

    train = sub.add_parser("train", help="train one run with Ray Train")
    train.add_argument("config", help="run config YAML (or a search space; its base: is used)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    train.add_argument("--out", default=None, help="run folder (default: runs/<method>); re-running resumes")

    tune = sub.add_parser("tune", help="search hyperparameters with Ray Tune + Optuna")
    tune.add_argument("space", help="search-space YAML")
    tune.add_argument("--num-samples", type=int, default=None)
    tune.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    tune.add_argument("--storage", default=None, help="results folder or URI (default: ./raysl_results)")
    tune.add_argument("--name", default=None, help="experiment name (default: the space file's name)")
    tune.add_argument("--resume", action="store_true", help="continue an interrupted experiment")
    tune.add_argument("--wandb", action="store_true", help="log trials to Weights & Biases (offline unless logged in)")

    analyze = sub.add_parser("analyze", help="leaderboard, plots, importance and an HTML report")
    analyze.add_argument("paths", nargs="+", help="experiment folders or URIs")
    analyze.add_argument("--out", default=None, help="report folder (default: <first path>/report)")

    export = sub.add_parser("export", help="write a run's trained backbone to a file for downstream use")
    export.add_argument("run_dir", help="a `raysl train` run folder (its --out)")
    export.add_argument("--out", required=True, help="output file, e.g. encoder.pt")
    export.add_argument("--epoch", type=int, default=None, help="a checkpointed epoch (default: the latest)")
    export.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    return parser


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from raysl.data.shards import prepare

    if args.shard_rows < 1:
        raise RayslError(f"--shard-rows must be >= 1 (got {args.shard_rows})")
    if not 0.0 <= args.val_fraction < 1.0:
        raise RayslError(f"--val-fraction must be in [0, 1) (got {args.val_fraction})")
    manifest = prepare(
        args.source, args.path, args.out, shard_rows=args.shard_rows, val_fraction=args.val_fraction, seed=args.seed
    )
    rows = {k: v["rows"] for k, v in manifest.splits.items()}
    print(json.dumps({"out": args.out, "source": manifest.source, "rows": rows,
                      "shape": [manifest.height, manifest.width, manifest.channels],
                      "classes": manifest.num_classes}))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from raysl.config import load_config
    from raysl.errors import TrainingError
    from raysl.launch import train_run

    cfg = load_config(args.config, args.overrides)
    out = args.out or os.path.join("runs", cfg.method.name)
    try:
        summary = train_run(cfg, out, source=args.config)
    except TrainingError as exc:
        _shutdown_ray()
        print(json.dumps(getattr(exc, "summary", {"status": "errored", "error": str(exc)})), flush=True)
        raise
    _shutdown_ray()
    print(json.dumps(summary), flush=True)  # the last stdout line is the run's JSON summary
    return 0


def _shutdown_ray() -> None:
    """Disconnect (and stop a cluster we started) so Ray's log stream is flushed before our summary."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def cmd_tune(args: argparse.Namespace) -> int:
    from raysl.search import tune_main

    return tune_main(args)


def cmd_analyze(args: argparse.Namespace) -> int:
    from raysl.analyze import analyze_main

    return analyze_main(args)


def cmd_export(args: argparse.Namespace) -> int:
    from raysl.export import export_backbone

    summary = export_backbone(args.run_dir, args.out, args.epoch, force=args.force)
    for problem in summary.get("skipped", []):
        print(f"[raysl] skipped: {problem}", file=sys.stderr)
    print(json.dumps(summary), flush=True)  # the last stdout line is the export's JSON summary
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"train": cmd_train, "tune": cmd_tune, "analyze": cmd_analyze, "export": cmd_export}
    try:
        if args.command == "data":
            return cmd_data_prepare(args)
        return handlers[args.command](args)
    except RayslError as exc:
        message = " ".join(str(exc).split())
        print(f"raysl: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raysl: interrupted; completed epochs are checkpointed, re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
