"""Placement: a run (or a search's trials) the cluster cannot hold is refused at once, not left waiting.

Ray waits forever for a placement group a fixed cluster can never give, with nothing on the screen;
what a run asks for is known before training, so it is checked right after Ray starts.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from raysl.config import RunConfig
from raysl.errors import PlacementError


# --------------------------------------------------------------------------
# placement: a run the cluster cannot hold is refused at once, not left waiting for resources forever


@dataclass(frozen=True)
class Needs:
    """What a run (or one trial) asks the cluster for: ``workers`` bundles of ``per_worker`` (each on one
    node), plus ``extra`` anywhere (``why_extra`` says what for)."""

    what: str  # "the run", "a trial"
    workers: int
    per_worker: dict[str, float]
    extra: dict[str, float] = field(default_factory=dict)
    why_extra: str = ""

    def describe(self) -> str:
        bundle = "{" + ", ".join(f"{k}: {_num(self.per_worker.get(k, 0))}" for k in ("CPU", "GPU")) + "}"
        text = f"{self.workers} worker{'s' * (self.workers != 1)} x {bundle}"
        extra = [f"{_num(v)} {k}" for k, v in self.extra.items() if v]
        return text + (f" plus {' and '.join(extra)} for {self.why_extra}" if extra else "")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def run_needs(cfg: RunConfig, ray_data: bool) -> Needs:
    """``raysl train``: the (minimum number of) Train workers; with a Ray Dataset (``ray_data``: JPEG shards,
    or ``data.reader: ray_data``) plus a CPU for its read (and decode) tasks: they ask for one CPU each, and
    with every CPU held by a worker they never run. (The workers read small-image shards themselves by
    default: raysl.data.read.dataset.RunData.reads_in_worker.)"""
    scale = cfg.scale
    bundle = {"CPU": scale.cpus_per_worker, "GPU": scale.gpus_per_worker if scale.use_gpu else 0.0}
    if not ray_data:
        return Needs("the run", scale.min_workers, bundle)
    return Needs("the run", scale.min_workers, bundle, {"CPU": 1.0}, "Ray Data's read tasks")


def trial_needs(cfg: RunConfig, decode_tasks: bool) -> Needs:
    """One ``raysl tune`` trial (raysl.trial.trial_resources): a one-worker trial is its worker; a
    multi-worker trial adds its driver (a hundredth of a CPU) and, where Ray Data decodes its rows (JPEG
    shards: ``decode_tasks``), a CPU for the decode tasks (its read tasks take none)."""
    scale = cfg.scale
    bundle = {"CPU": scale.cpus_per_worker, "GPU": scale.gpus_per_worker if scale.use_gpu else 0.0}
    if scale.max_workers == 1:
        return Needs("a trial", 1, bundle)
    return Needs("a trial", scale.max_workers, bundle, {"CPU": 1.01 if decode_tasks else 0.01},
                 "the trial's driver" + (" and its JPEG decode tasks" if decode_tasks else ""))


def missing_resource(needs: Needs, nodes: list[dict[str, float]]) -> str | None:
    """The resource ("CPU" or "GPU") the nodes (each one's total resources) lack for ``needs``, or None
    when it fits: the worker bundles packed first-fit, largest first (each bundle on one node, as Ray
    places them), then ``extra`` from what is left anywhere."""
    free = [{k: float(n.get(k, 0.0)) for k in ("CPU", "GPU")} for n in nodes]
    bundle = {k: float(v) for k, v in needs.per_worker.items() if v}
    for _ in range(needs.workers):
        home = next((n for n in free if all(n[k] >= v - 1e-9 for k, v in bundle.items())), None)
        if home is None:
            totals = {k: sum(n[k] for n in free) for k in bundle}
            # name what is short: the resource some bundle cannot get at all, else the one left too small
            short = [k for k, v in bundle.items() if not any(n[k] >= v - 1e-9 for n in free)]
            return (short or [k for k, v in bundle.items() if totals[k] < v] or list(bundle))[0]
        for k, v in bundle.items():
            home[k] -= v
    for k, v in needs.extra.items():
        if v and sum(n.get(k, 0.0) for n in free) < v - 1e-9:
            return k
    return None


def _cluster_nodes() -> list[dict[str, float]]:
    import ray

    return [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]


def _totals(nodes: list[dict[str, float]]) -> str:
    return "{" + ", ".join(f"{k}: {_num(sum(n.get(k, 0.0) for n in nodes))}" for k in ("CPU", "GPU")) + "}"


def cluster_can_grow() -> bool:
    """Whether the cluster may add nodes (an autoscaler that launches them), so that waiting makes sense.

    A local cluster raysl started itself (no RAY_ADDRESS) never grows. A joined one grows when an
    autoscaler runs with a node-launching config: Ray's autoscaler v2 reports its state version (not
    0), or v1's status names real node types. A cluster started by hand (``ray start`` on each node)
    has Ray's read-only monitor, whose status names every node ``node_<its id>``: that one is fixed.
    When Ray says neither (an older or newer Ray, a status not written yet), raysl assumes it may grow
    and waits (``scale.placement_timeout_s``) rather than refuse a run that could have started.
    """
    if not os.environ.get("RAY_ADDRESS"):
        return False
    import ray

    try:  # private Ray APIs, read only; any failure leaves the answer to the next check
        from ray.autoscaler.v2.sdk import get_cluster_status

        version = get_cluster_status(ray.get_runtime_context().gcs_address).stats.autoscaler_version
        if version not in (None, "", "0", 0):
            return True
    except Exception:  # noqa: BLE001
        pass
    try:
        from raysl.ray_compat import node_type_mapping

        mapping = node_type_mapping()
        if mapping:
            return not all(kind == f"node_{node}" for node, kind in mapping.items())
    except Exception:  # noqa: BLE001
        pass
    return True


def _fixes(needs: Needs, short: str, nodes: list[dict[str, float]]) -> str:
    total = {k: sum(n.get(k, 0.0) for n in nodes) for k in ("CPU", "GPU")}
    if short == "GPU":
        if total["GPU"] == 0:
            return ("set scale.use_gpu=false (this cluster has no GPU), or run on a cluster with GPUs "
                    "(RAY_ADDRESS=... raysl ...)")
        return "lower scale.num_workers or scale.gpus_per_worker, or join a cluster with more GPUs (RAY_ADDRESS)"
    # a rough count (it ignores how the CPUs split over nodes), to say which way to go
    fit = int((total["CPU"] - needs.extra.get("CPU", 0.0)) // needs.per_worker.get("CPU", 1.0))
    hint = f" (about {fit} fit)" if 1 <= fit < needs.workers else ""
    return (f"lower scale.num_workers{hint} or scale.cpus_per_worker, or join a larger cluster "
            "(RAY_ADDRESS=... raysl ...)")


def check_placement(needs_list: list[Needs], timeout_s: float, *, say: Callable[[str], Any] | None = None,
                    nodes_of: Callable[[], list[dict[str, float]]] = _cluster_nodes,
                    can_grow: Callable[[], bool] = cluster_can_grow, sleep: Callable[[float], Any] | None = None,
                    clock: Callable[[], float] | None = None) -> None:
    """Refuse (``PlacementError``) what the cluster cannot hold, before anything is placed.

    Ray would otherwise wait forever for a placement group a fixed cluster can never give, with
    nothing on the screen. A cluster that can grow (:func:`cluster_can_grow`) is asked for the
    resources (``ray.autoscaler.sdk.request_resources``) and polled; after ``timeout_s`` the run is
    refused in the same way. The other arguments are for tests.
    """
    import time

    sleep = sleep or time.sleep
    clock = clock or time.monotonic
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    nodes = nodes_of()
    lacking = [(needs, short) for needs in needs_list if (short := missing_resource(needs, nodes)) is not None]
    if not lacking:
        return
    needs, short = lacking[0]
    if not can_grow():
        fixed = "no autoscaler" if os.environ.get("RAY_ADDRESS") else "the local cluster raysl started"
        raise PlacementError(f"{needs.what} needs {needs.describe()} but the cluster has {_totals(nodes)}: not enough "
                             f"{short}, and it cannot grow ({fixed}); {_fixes(needs, short, nodes)}")
    _request_resources(needs)
    say(f"[raysl] waiting for the cluster to grow: {needs.what} needs {needs.describe()}, the cluster has "
        f"{_totals(nodes)} (short of {short}); giving up after {_num(timeout_s)} s (scale.placement_timeout_s)")
    deadline = clock() + timeout_s
    try:
        while True:
            sleep(min(5.0, max(0.0, deadline - clock())))
            nodes = nodes_of()
            lacking = [(n, s) for n in needs_list if (s := missing_resource(n, nodes)) is not None]
            if not lacking:
                say(f"[raysl] the cluster has grown to {_totals(nodes)}; starting")
                return
            if clock() >= deadline:
                needs, short = lacking[0]
                raise PlacementError(
                    f"{needs.what} needs {needs.describe()} but the cluster has {_totals(nodes)} after waiting "
                    f"{_num(timeout_s)} s for it to grow: not enough {short}; {_fixes(needs, short, nodes)}, or "
                    "wait longer (scale.placement_timeout_s)")
    finally:
        _request_resources(None)


def _request_resources(needs: Needs | None) -> None:
    """Tell an autoscaler what to add (None: withdraw the request); its public SDK call."""
    try:
        from ray.autoscaler.sdk import request_resources

        if needs is None:
            request_resources(bundles=[])
            return
        bundle = {k: v for k, v in needs.per_worker.items() if v}
        extra = {k: v for k, v in needs.extra.items() if v}
        request_resources(bundles=[bundle] * needs.workers + ([extra] if extra else []))
    except Exception:  # noqa: BLE001 - no autoscaler to tell (e.g. a cluster joined without one): nothing to ask
        pass
