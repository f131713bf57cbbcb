"""Predict a larger run before training it: raysl scale on real Fashion-MNIST, then the held-out run.

Protocol (search_spaces/scaling_fashion.yaml): SimCLR, small convnet, 16 px crops,
4 epochs, batch 256, AdamW; a grid of widths 4/8/16 x data fractions 1/16..1/2 run
by ``raysl scale`` (one Ray Tune experiment), fitted with
E(N, D) = E_inf + A / N^alpha + B / D^beta (N backbone parameters, D train images,
E = 1 - kNN accuracy, k = 20, cosine, memory bank 10,000 train images, 5,000 test
images as queries) and E(C) against FLOPs, 90% bootstrap intervals. The fit's
prediction for width 32 on all the data (outside the grid on both axes) is read
from scaling.json; then that run is trained with ``raysl train`` (same base
config, same seed) and its measured error compared with the prediction.

Target (issue 13): the measured error inside the predicted 90% interval and within
10% of the predicted value (relative). The interval a single held-out run is judged
against is the one-run prediction interval (the fitted curve's bootstrap interval
widened by the runs' scatter around it); the curve's own interval is printed too.

    python bench/scaling_fashion.py [--work /tmp/raysl-scaling-fashion] [--plot docs/scaling_fashion.png]

Needs ``data/fashion`` (``raysl data prepare idx /usr/share/datasets/fashion-mnist
--out data/fashion``). Re-running reuses a finished grid (``raysl scale --resume``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "search_spaces" / "scaling_fashion.yaml"
HELD_OUT = {"model.width": 32, "data.fraction": 1.0}


def raysl(*args: str, cwd: Path) -> dict:
    """Run the raysl CLI; its last stdout line is the JSON summary."""
    cmd = [sys.executable, "-m", "raysl.cli", *args]
    print("+", " ".join(cmd[2:]), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(args[:2])} exited {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def held_out_prediction(scaling: dict) -> dict:
    for entry in scaling["predictions"]:
        if entry["point"] == HELD_OUT:
            return entry
    sys.exit(f"bench: scaling.json has no prediction at {HELD_OUT}; is fit.predict in {SPEC} edited?")


def plot(scaling: dict, measured: float, prediction: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from raysl.scaling_laws import LawFit, law_value

    fit = scaling["model_data"]
    law = LawFit.from_dict(fit) if hasattr(LawFit, "from_dict") else None
    runs = scaling["runs"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    fractions = sorted({r["config"]["data.fraction"] for r in runs})
    colours = plt.cm.viridis(np.linspace(0.1, 0.8, len(fractions) + 1))
    n_line = np.geomspace(min(r["n_params"] for r in runs) * 0.8, prediction["n_params"] * 1.2, 60)
    for colour, fraction in zip(colours, fractions):
        members = [r for r in runs if r["config"]["data.fraction"] == fraction]
        ax.scatter([r["n_params"] for r in members], [r["error"] for r in members], color=colour,
                   label=f"fraction {fraction:g} ({members[0]['train_images']:,.0f} images seen)")
        if law is not None:
            ax.plot(n_line, law_value(law, law.params, N=n_line, D=members[0]["train_images"]), color=colour, lw=1)
    full = colours[-1]
    if law is not None:
        ax.plot(n_line, law_value(law, law.params, N=n_line, D=prediction["train_images"]), color=full, lw=1, ls="--",
                label=f"fit at all the data ({prediction['train_images']:,.0f} images seen)")
    median, lo, hi = prediction["error_model_data"]
    _, run_lo, run_hi = prediction.get("run_model_data") or (None, lo, hi)
    ax.errorbar([prediction["n_params"]], [median], yerr=[[median - run_lo], [run_hi - median]], fmt="none",
                ecolor="grey", elinewidth=6, alpha=0.4, label="one new run, 90% prediction interval")
    ax.errorbar([prediction["n_params"]], [median], yerr=[[median - lo], [hi - median]], fmt="s", color="black",
                capsize=4, label="predicted curve (90% interval), width 32")
    ax.scatter([prediction["n_params"]], [measured], marker="*", s=160, color="crimson", zorder=5,
               label="measured afterwards")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("backbone parameters N")
    ax.set_ylabel("kNN error (1 - kNN accuracy)")
    ax.set_title("Fashion-MNIST, SimCLR, 4 epochs: E(N, D) fit on widths 4-16, fractions 1/16-1/2")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/raysl-scaling-fashion"))
    parser.add_argument("--plot", type=Path, default=None, help="write the plot here (PNG)")
    args = parser.parse_args()
    if not (REPO / "data" / "fashion" / "manifest.json").exists():
        sys.exit("bench: data/fashion is missing; run: raysl data prepare idx /usr/share/datasets/fashion-mnist "
                 "--out data/fashion")
    args.work.mkdir(parents=True, exist_ok=True)
    experiment = args.work / "fashion_scaling"
    started = time.time()
    scale_args = ["scale", str(SPEC), "--storage", str(args.work), "--name", "fashion_scaling"]
    raysl(*scale_args, *(["--resume"] if experiment.exists() else []), cwd=REPO)
    grid_s = time.time() - started
    scaling = json.loads((experiment / "scaling.json").read_text())
    prediction = held_out_prediction(scaling)

    base = yaml.safe_load(SPEC.read_text())["base"]
    config = args.work / "held_out.yaml"
    config.write_text(yaml.safe_dump(base, sort_keys=False))
    run_dir, done = args.work / "held_out_run", args.work / "held_out.json"
    if done.exists():  # trained by an earlier invocation: compare again, do not retrain
        final = json.loads(done.read_text())
        held_s = final.pop("bench_seconds")
    else:
        started = time.time()
        final = raysl("train", str(config), "--out", str(run_dir),
                      *[a for k, v in HELD_OUT.items() for a in ("--set", f"{k}={v}")], cwd=REPO)
        held_s = time.time() - started
        done.write_text(json.dumps({**final, "bench_seconds": held_s}))
    measured = 1.0 - float(final["knn_acc"])
    median, lo, hi = prediction["error_model_data"]  # where the fitted curve lies
    _, run_lo, run_hi = prediction.get("run_model_data") or (None, lo, hi)  # where one new run lands
    inside = run_lo <= measured <= run_hi
    relative = abs(measured - median) / median
    grid_flops = sum(float(r.get("flops") or 0.0) for r in scaling["runs"])
    print(f"fashion-mnist scaling: {len(scaling['runs'])} grid runs ({grid_s:.0f} s, {grid_flops:.3g} FLOPs), "
          f"held-out width 32 x all the data ({prediction['train_images']:,.0f} images seen) ({prediction['compute']:.3g} FLOPs, "
          f"{held_s:.0f} s): predicted kNN error {median:.4f} (curve 90%: [{lo:.4f}, {hi:.4f}]; one run 90%: "
          f"[{run_lo:.4f}, {run_hi:.4f}]), measured {measured:.4f}; inside the one-run interval: "
          f"{'yes' if inside else 'no'}; relative difference {100 * relative:.1f}% (target <= 10%)")
    if args.plot:
        plot(scaling, measured, prediction, args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)
    print(json.dumps({"bench": "scaling_fashion", "predicted": [median, lo, hi], "one_run": [run_lo, run_hi],
                      "measured": measured,
                      "inside": inside, "relative": relative, "grid_runs": len(scaling["runs"]),
                      "grid_seconds": round(grid_s), "held_out_seconds": round(held_s), "grid_flops": grid_flops,
                      "held_out_flops": prediction["compute"], "fit": scaling["model_data"].get("params")}))


if __name__ == "__main__":
    main()
