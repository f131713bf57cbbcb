"""A search space: its searched keys (:class:`Param`) and how they are sampled, its ``tune:`` section, and the
space as a search runs it (:class:`SearchSpace`).

Sampled trial configs are flat ``{dotted.key: value}`` mappings (the Optuna
parameter names); :func:`apply_sample` turns one into a run-config tree. When a
trial picks another method than the base's, the base's method section is
replaced by that method's defaults: a SimCLR temperature never leaks into BYOL.

Reading a search-space file (parsing ``search:``, checking every range end and the ``tune:`` section) is
:mod:`raysl.space_file`. :class:`SpaceSampler` and the :class:`Param` it holds are pickled into a search's
saved searcher state as ``raysl.space.<name>``, which a ``--resume`` unpickles: they stay in this module.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from raysl.config import DEFAULT_METHOD, MAX_SEED, RunConfig
from raysl.config_load import get_dotted, set_dotted
from raysl.outcome import METRIC_MODES, known_metric, metric_mode, worst_value  # noqa: F401 (re-exported)

SAMPLERS = ("tpe", "cmaes", "random", "grid", "gp", "nsga2")
SCHEDULERS = ("asha", "pbt", "fifo")


# --------------------------------------------------------------------------
# distributions


@dataclass(frozen=True)
class Param:
    """One searched key. ``when`` maps a choice to the params searched only when it is picked."""

    key: str
    kind: str  # loguniform | uniform | int | choice
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple = ()
    log: bool = False
    when: tuple[tuple[Any, tuple["Param", ...]], ...] = ()

    def branch(self, value: Any) -> tuple["Param", ...]:
        for choice, params in self.when:
            if choice == value and type(choice) is type(value):
                return params
        return ()

    def test_values(self) -> list[Any]:
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def describe(self) -> str:
        if self.kind == "choice":
            return f"choice {list(self.choices)}"
        return f"{self.kind}{' (log)' if self.log and self.kind == 'int' else ''} [{self.low}, {self.high}]"

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return any(value == c and type(value) is type(c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and int(value) != value:
            return False
        return self.low <= value <= self.high

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial (or Ray's wrapper of one) for this key's value."""
        if self.kind == "loguniform":
            return trial.suggest_float(self.key, self.low, self.high, log=True)
        if self.kind == "uniform":
            return trial.suggest_float(self.key, self.low, self.high)
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log)
        return trial.suggest_categorical(self.key, list(self.choices))

    def tune_domain(self) -> Any:
        """The same distribution as a Ray Tune domain (for PBT, which runs without a searcher)."""
        from ray import tune

        if self.kind == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.kind == "uniform":
            return tune.uniform(self.low, self.high)
        if self.kind == "int":
            return tune.lograndint(self.low, self.high + 1) if self.log else tune.randint(self.low, self.high + 1)
        return tune.choice(list(self.choices))

    def same_distribution(self, other: "Param") -> bool:
        if self.kind != other.kind or self.log != other.log:
            return False
        return self.kind != "choice" or list(self.choices) == list(other.choices)


def walk(params: tuple[Param, ...]):
    """Every param, branches included (depth first)."""
    for p in params:
        yield p
        for _, sub in p.when:
            yield from walk(sub)


class SpaceSampler:
    """Define-by-run space for Ray Tune's OptunaSearch: a branch's keys are suggested only
    when its choice was picked. A plain class (not a closure) so the searcher's state pickles."""

    def __init__(self, params: tuple[Param, ...]):
        self.params = params

    def __call__(self, trial: Any) -> None:
        self._sample(trial, self.params)
        return None

    def _sample(self, trial: Any, params: tuple[Param, ...]) -> None:
        for p in params:
            value = p.suggest(trial)
            if p.when:
                self._sample(trial, p.branch(value))


# --------------------------------------------------------------------------
# the tune: section


class TuneSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_samples: int = Field(10, ge=1)
    metric: str | None = None  # default: knn_acc when the data has labels, else rankme
    mode: Literal["max", "min"] | None = None  # default: the metric's better direction
    objectives: list[dict[str, Literal["max", "min"]]] | dict[str, Literal["max", "min"]] | None = None
    scheduler: Literal["asha", "pbt", "fifo"] | None = None  # default: asha (fifo with objectives)
    sampler: Literal["tpe", "cmaes", "random", "grid", "gp", "nsga2"] | None = None
    max_concurrent: int | None = Field(None, ge=1)  # default: what the cluster's CPUs fit
    seed: int = Field(0, ge=0, le=MAX_SEED)  # Optuna's samplers seed numpy, which takes 32 bits
    grace_period: int | None = Field(None, ge=1)  # ASHA, in epochs; default eval.every_epochs
    reduction_factor: float = Field(3.0, gt=1.0)  # ASHA
    perturbation_interval: int | None = Field(None, ge=1)  # PBT, in epochs
    # PBT: every trial waits at each perturbation point and the bottom quantile clones the top together
    # (Ray's synch=True): reproducible exploits at the cost of the slowest trial's pace; default asynchronous
    synch: bool = False
    startup_trials: int | None = Field(None, ge=1)  # TPE/GP random trials before modelling
    max_failures: int = Field(2, ge=0)  # restarts of a trial (and of its Train workers) after a crash
    budget_epochs: int | None = Field(None, ge=1)  # end the search once its trials trained this many epochs
    # a trial's process (Ray, torch and raysl imported, the data loaded) runs the next trial on the same
    # resources instead of a new process starting: ~7 CPU-s less per trial on a 2-core machine
    # (bench/trial_reuse.py); false starts every trial afresh
    reuse_actors: bool = True


@dataclass
class SearchSpace:
    source: str
    base: dict  # run-config tree, --set overrides applied
    base_config: RunConfig
    params: tuple[Param, ...]
    tune: TuneSettings
    raw: dict = field(default_factory=dict)  # search: as written (for raysl_space.yaml)

    @property
    def conditional(self) -> bool:
        return any(p.when for p in walk(self.params))

    def objectives(self, labeled: bool = True) -> list[tuple[str, str]]:
        """[(metric, mode), ...]: one for a single-objective search."""
        t = self.tune
        if t.objectives:
            items = t.objectives.items() if isinstance(t.objectives, dict) else [
                kv for d in t.objectives for kv in d.items()
            ]
            return [(k, v) for k, v in items]
        metric = t.metric or ("knn_acc" if labeled else "rankme")
        # an unknown metric has no mode: None here, and raysl.space_file._check_tune refuses it by name when the
        # file loads
        return [(metric, t.mode or (metric_mode(metric) if known_metric(metric) else None))]

    def sampler_name(self) -> str | None:
        if self.tune.sampler:
            return self.tune.sampler
        if self.scheduler_name() == "pbt":
            return None
        return "nsga2" if len(self.objectives()) > 1 else "tpe"

    def scheduler_name(self) -> str:
        return self.tune.scheduler or ("fifo" if self.tune.objectives else "asha")

    def max_epochs(self) -> int:
        for p in walk(self.params):
            if p.key == "optim.epochs":
                return int(max(p.test_values()))
        return self.base_config.optim.epochs

    def grace_period(self) -> int:
        return self.tune.grace_period or min(self.base_config.eval.every_epochs, self.max_epochs())

    def base_point(self) -> dict[str, Any]:
        """The base config's value of every searched key it reaches: the first trial runs the base."""
        tree = self.base_config.model_dump(mode="json")
        point: dict[str, Any] = {}

        def visit(params: tuple[Param, ...]) -> None:
            for p in params:
                value = get_dotted(tree, p.key, _MISSING)
                if value is _MISSING or not p.contains(value):
                    continue
                point[p.key] = value
                if p.when:
                    visit(p.branch(value))

        visit(self.params)
        return point

    def grid(self) -> dict[str, list]:
        return {p.key: (list(p.choices) if p.kind == "choice" else list(range(int(p.low), int(p.high) + 1)))
                for p in self.params}

    def to_yaml_dict(self) -> dict:
        return {"base": self.base, "search": self.raw, "tune": self.tune.model_dump(exclude_none=True)}


_MISSING = object()


# --------------------------------------------------------------------------
# a sampled trial's config


def apply_sample(base: dict, sample: dict[str, Any]) -> dict:
    """A trial's run-config tree: ``base`` with the sampled ``{dotted.key: value}`` set.

    ``method.name`` goes first; a method other than the base's starts from its own defaults.
    """
    tree = copy.deepcopy(base)
    for key, value in sorted(sample.items(), key=lambda kv: kv[0] != "method.name"):
        if key == "method.name" and value != get_dotted(tree, "method.name", DEFAULT_METHOD):
            tree["method"] = {"name": value}
        else:
            tree = set_dotted(tree, key, value)
    return tree

