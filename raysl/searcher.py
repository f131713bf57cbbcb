"""The searcher and the scheduler of a ``raysl tune`` search, and how many of its trials run at once.

Searching is Ray Tune's ``OptunaSearch`` (or :class:`raysl.study.StudySearch`, which keeps the study in
the search's database) with a define-by-run space (:class:`raysl.space.SpaceSampler`), seeded, with the
base config as the first trial; ASHA stops poor trials, PBT (no searcher) mutates running ones. The
driver that runs them is :mod:`raysl.search`, which imports this module (not the reverse).
"""

from __future__ import annotations

from raysl.space import SearchSpace


def _sampler(space: SearchSpace, num_samples: int):
    import optuna

    name, seed = space.sampler_name(), space.tune.seed
    startup = space.tune.startup_trials or max(2, min(10, num_samples // 3))
    if name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=space.conditional, n_startup_trials=startup, constant_liar=True
        )
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup, warn_independent_sampling=False)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, num_samples // 3)))


def _search_and_scheduler(space: SearchSpace, objectives, num_samples: int, max_concurrent: int, study=None):
    """``study``: the :class:`raysl.study.StudyPlace` the Optuna searcher keeps its study in (PBT has none)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from raysl.space import SpaceSampler

    base_point = space.base_point()
    scheduler_name = space.scheduler_name()
    if scheduler_name == "pbt":
        interval = space.tune.perturbation_interval or max(
            space.base_config.checkpoint.every_epochs, space.base_config.eval.every_epochs
        )
        mutations = {p.key: p.tune_domain() for p in space.params}
        scheduler = PopulationBasedTraining(
            time_attr="epoch", perturbation_interval=interval, hyperparam_mutations=mutations,
            quantile_fraction=0.25, resample_probability=0.25, synch=space.tune.synch,
        )
        searcher = BasicVariantGenerator(
            points_to_evaluate=[base_point] if base_point else None, random_state=space.tune.seed,
            max_concurrent=max_concurrent,
        )
        return searcher, scheduler, dict(mutations)

    single = len(objectives) == 1
    metric = objectives[0][0] if single else [m for m, _ in objectives]
    mode = objectives[0][1] if single else [m for _, m in objectives]
    points = [base_point] if base_point and space.sampler_name() != "grid" else None
    searcher_args = dict(space=SpaceSampler(space.params), metric=metric, mode=mode, points_to_evaluate=points,
                         sampler=_sampler(space, num_samples))
    if study is not None:
        from raysl.study import StudySearch

        searcher = StudySearch(study, **searcher_args)
    else:
        searcher = OptunaSearch(**searcher_args)
    searcher = ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
    if scheduler_name == "asha":
        scheduler = ASHAScheduler(
            time_attr="epoch", max_t=space.max_epochs(), grace_period=space.grace_period(),
            reduction_factor=space.tune.reduction_factor,
            # a trial reaching max_t ends by itself: stopping it would kill a multi-worker
            # trial's Train controller mid-shutdown (and can leak its placement group)
            stop_last_trials=False,
        )
    else:
        scheduler = FIFOScheduler()
    return searcher, scheduler, None


def _default_concurrency(space: SearchSpace, num_samples: int) -> int:
    """Trials the cluster fits at once, leaving a CPU for Ray Data when trials use Ray Train."""
    import ray

    scale = space.base_config.scale
    total = ray.cluster_resources()
    per_trial = scale.cpus_per_worker * scale.num_workers + (1 if scale.num_workers > 1 else 0)
    fits = int(total.get("CPU", 1) // per_trial)
    if scale.use_gpu and total.get("GPU", 0) > 0:
        fits = min(fits, int(total["GPU"] // (scale.gpus_per_worker * scale.num_workers)))
    return max(1, min(num_samples, fits))
