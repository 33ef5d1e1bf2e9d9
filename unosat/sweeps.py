"""Optuna sweeps (``python train.py -m hparams_search=optuna``), written on Optuna's public ask/tell API.

The Hydra side is :class:`hydra_plugins.unosat_sweeper.optuna_sweeper.UnosatOptunaSweeper`, configured by
``conf/hydra/sweeper/unosat_optuna.yaml`` and ``conf/hparams_search/optuna.yaml``; it launches each trial as
a Hydra job through the configured launcher (local, or ``hydra/launcher=submitit_slurm``). This module holds
what it does, so that it can be tested without Hydra:

- the search space: overrides in Hydra's grammar (``interval(a,b)``, ``tag(log,interval(a,b))``,
  ``int(interval(a,b))``, ``choice(a,b,c)`` or ``a,b,c``, ``range(start,stop,step)``) become Optuna
  distributions; anything else is a fixed override passed to every job unchanged;
- resume: with the study in SQLite inside the sweep directory, running the same command with the same
  ``hydra.sweep.dir`` loads the study; trials left RUNNING by a killed sweep are marked FAIL; only the trials
  still missing to ``n_trials`` finished ones (COMPLETE or PRUNED) run; job ``n`` is trial ``n``, so a new
  trial never writes into an earlier trial's directory; a seeded sampler is reseeded with ``seed + number of
  trials already in the study`` so it does not replay the draws of the first sweep (a resumed study is
  reproducible given where it was interrupted);
- pruning: each job gets ``optuna.trial``, ``optuna.storage`` and ``optuna.study_name`` overrides; the
  training run re-attaches to its trial (:func:`attach_trial`) and
  :class:`unosat.training.optuna_pruning.OptunaPruning` reports ``optimized_metric`` at every validation
  epoch; a trial the pruner stops records ``pruned_at_epoch`` and is told PRUNED here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from unosat.errors import UnosatError

log = logging.getLogger(__name__)

#: user attribute a pruned trial's run sets (its epoch): the sweeper then tells the trial PRUNED
PRUNED_ATTR = "pruned_at_epoch"


@dataclass
class SearchSpace:
    """Optuna distributions by override key, and the overrides passed unchanged to every job."""

    distributions: dict[str, Any] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)


def params_as_overrides(params: Mapping[str, Any] | None) -> list[str]:
    """``search_space`` entries (``key: interval(0.1, 1)``) as override strings (``key=interval(0.1, 1)``)."""
    out = []
    for key, value in (params or {}).items():
        if isinstance(value, bool) or value is None:
            value = "null" if value is None else str(value).lower()
        out.append(f"{key}={value}")
    return out


def parse_search_space(overrides: Iterable[str]) -> SearchSpace:
    """Split override strings (Hydra's grammar) into Optuna distributions and fixed overrides.

    :class:`UnosatError` names an override that does not parse or cannot become a distribution (a shuffled
    sweep, a choice of lists, a range that is empty).
    """
    import optuna.distributions as od
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    space = SearchSpace()
    for line in overrides:
        try:
            override = parser.parse_override(line)
        except HydraException as err:  # OverrideParseException, or the grammar's own error
            raise UnosatError(f"search space: cannot parse '{line}': {str(err).splitlines()[0]}") from None
        if not override.is_sweep_override():
            space.fixed.append(line)
            continue
        key = override.get_key_element()
        value = override.value()
        if getattr(value, "shuffle", False):
            raise UnosatError(f"search space: '{line}': shuffle() has no meaning for Optuna")
        if override.is_interval_sweep():
            log_scale = "log" in value.tags
            if isinstance(value.start, int) and isinstance(value.end, int):
                space.distributions[key] = od.IntDistribution(value.start, value.end, log=log_scale)
            else:
                space.distributions[key] = od.FloatDistribution(
                    float(value.start), float(value.end), log=log_scale
                )
        elif override.is_range_sweep():
            items = list(override.sweep_iterator())
            if not items:
                raise UnosatError(f"search space: '{line}' is an empty range")
            if all(
                isinstance(x, int) and not isinstance(x, bool) for x in (value.start, value.stop, value.step)
            ):
                space.distributions[key] = (
                    od.IntDistribution(items[0], items[-1], step=value.step)
                    if value.step > 0
                    else od.CategoricalDistribution(items)
                )
            else:
                space.distributions[key] = od.CategoricalDistribution(items)
        else:  # choice(a,b) or a,b
            items = list(override.sweep_iterator())
            bad = [x for x in items if not isinstance(x, (str, int, float, bool, type(None)))]
            if bad:
                raise UnosatError(
                    f"search space: '{line}': Optuna chooses among numbers, strings, booleans and "
                    f"null, not {bad[0]!r}"
                )
            space.distributions[key] = od.CategoricalDistribution(items)
    return space


def override_value(value: Any) -> str:
    """A value written as an override value: strings quoted (so ``'1e-3'`` stays a string); dicts and lists
    of such values in Hydra's grammar (``{a:1,b:'x'}``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)  # inf, -inf, nan: Hydra's spelling
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def grid_of(space: SearchSpace) -> dict[str, list]:
    """The grid of a search space of choices and ranges (for ``GridSampler``); :class:`UnosatError` for an
    interval, which has no grid."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    grid = {}
    for key, dist in space.distributions.items():
        if isinstance(dist, CategoricalDistribution):
            grid[key] = list(dist.choices)
        elif isinstance(dist, IntDistribution) and not dist.log:
            grid[key] = list(range(dist.low, dist.high + 1, dist.step))
        else:
            raise UnosatError(
                f"hydra/sweeper/sampler=grid needs choice() or range() for every parameter; "
                f"{key} is an interval (use another sampler, or choice/range)"
            )
    return grid


def resume_study(study, name: str) -> tuple[int, int]:
    """Mark the trials of ``study`` left RUNNING by an interrupted sweep as FAIL; return (trials in the study,
    finished trials: COMPLETE or PRUNED). A sweep runs its trials itself, so a RUNNING trial at start-up
    belongs to a sweep that is gone (two sweeps must not share a sweep directory)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    for trial in trials:
        if trial.state == TrialState.RUNNING:
            study.tell(trial.number, state=TrialState.FAIL)
            log.warning(
                "study '%s': trial %d was left RUNNING by an interrupted sweep; marked FAIL",
                name,
                trial.number,
            )
    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    return len(trials), finished


def attach_trial(storage: str, study_name: str, number: int, pruner: Any = None):
    """The running trial ``number`` of the study ``study_name`` in ``storage``, judged by ``pruner`` (a
    config with ``_target_`` or a pruner; None: no pruning), for a training run to report to (``optuna.trial.Trial``);
    :class:`UnosatError` when it is missing or no longer running."""
    import optuna
    from optuna.trial import TrialState

    try:
        study = optuna.load_study(study_name=study_name, storage=storage, pruner=build_pruner(pruner))
    except KeyError:
        raise UnosatError(f"optuna.storage {storage}: no study '{study_name}'") from None
    frozen = next((t for t in study.get_trials(deepcopy=False) if t.number == int(number)), None)
    if frozen is None:
        raise UnosatError(f"optuna.storage {storage}: study '{study_name}' has no trial {number}")
    if frozen.state != TrialState.RUNNING:
        raise UnosatError(
            f"optuna.storage {storage}: trial {number} of study '{study_name}' is {frozen.state.name}, "
            "not RUNNING: it cannot be reported to"
        )
    return optuna.trial.Trial(study, frozen._trial_id)


def pruned_at(study, trial) -> int | None:
    """The epoch at which the run of ``trial`` (an asked, still running ``optuna.trial.Trial``) was stopped by
    the pruner, read from the storage (the run wrote it from its own process), or None."""
    from optuna.trial import TrialState

    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if frozen.number == trial.number:
            return frozen.user_attrs.get(PRUNED_ATTR)
    return None


@dataclass
class StudySettings:
    """What ``hydra.sweeper`` configures (see ``conf/hydra/sweeper/unosat_optuna.yaml``)."""

    study_name: str
    storage: str | None
    direction: str
    n_trials: int
    n_jobs: int = 1
    max_failure_rate: float = 1.0
    sampler: Mapping | None = None  # a config with _target_ (an optuna sampler); None: TPE
    pruner: Mapping | None = None  # a config with _target_ (an optuna pruner); None: no pruning
    params: Mapping | None = None  # the search space (override key -> grammar)


#: launch(list of each job's overrides, number of the first job) -> one result per job: an object with
#: ``return_value`` that raises the job's error when it failed (Hydra's ``JobReturn``)
Launch = Callable[[list[list[str]], int], Sequence[Any]]


def build_sampler(config: Mapping | None, space: SearchSpace, trials_so_far: int):
    """The sampler of ``config`` (``_target_`` and arguments); ``GridSampler`` gets the grid of ``space``; a
    ``seed`` is offset by ``trials_so_far`` so a resumed sweep does not replay the first sweep's draws."""
    import optuna
    from hydra.utils import get_class

    if not config:
        return optuna.samplers.TPESampler()
    kwargs = {k: v for k, v in dict(config).items() if k != "_target_"}
    target = str(config.get("_target_", ""))
    try:
        cls = get_class(target)
    except Exception as err:
        raise UnosatError(f"hydra.sweeper.sampler._target_ '{target}' is not a class ({err})") from None
    if issubclass(cls, optuna.samplers.GridSampler):
        kwargs["search_space"] = grid_of(space)
    if kwargs.get("seed") is not None and trials_so_far:
        kwargs["seed"] = int(kwargs["seed"]) + trials_so_far
        log.info(
            "sampler %s reseeded with %d (seed + %d trials already in the study): no replay of earlier draws",
            cls.__name__,
            kwargs["seed"],
            trials_so_far,
        )
    return cls(**kwargs)


def build_pruner(config: Any):
    """The pruner of ``config`` (``_target_`` and arguments; or a pruner already built), or Optuna's
    ``NopPruner`` when None or empty."""
    import optuna
    from hydra.utils import instantiate

    if isinstance(config, optuna.pruners.BasePruner):
        return config
    if not config:
        return optuna.pruners.NopPruner()
    pruner = instantiate(dict(config))
    if not isinstance(pruner, optuna.pruners.BasePruner):
        raise UnosatError(f"hydra.sweeper.pruner: {config.get('_target_')} is not an Optuna pruner")
    return pruner


def identity_overrides(settings: StudySettings, number: int) -> list[str]:
    """The overrides that tell a job which trial it is and which pruner judges it (``optuna.*`` in the train
    config; a study loaded in another process does not know the sweep's pruner), so its run can report to
    the trial; none without a storage (a job cannot reach an in-memory study) or without a pruner."""
    if settings.storage is None or not settings.pruner:
        return []
    return [
        f"++optuna.trial={number}",
        f"++optuna.storage={override_value(settings.storage)}",
        f"++optuna.study_name={override_value(settings.study_name)}",
        f"++optuna.pruner={override_value(dict(settings.pruner))}",
    ]


def run_study(settings: StudySettings, arguments: Sequence[str], launch: Launch) -> Any:
    """Run (or resume) the study: ask trials ``n_jobs`` at a time, launch them as jobs numbered like the
    trials, tell each result (COMPLETE with the value the job returned; FAIL when it raised or returned no
    finite value; PRUNED when its run was stopped by the pruner), until ``n_trials`` trials of the study have
    finished. Returns the study. ``arguments``: the command line's overrides (a sweep override there joins
    the search space; the rest go to every job unchanged)."""
    import optuna
    from optuna.trial import TrialState

    if settings.direction not in ("maximize", "minimize"):
        raise UnosatError(
            f"hydra.sweeper.direction must be maximize or minimize (optimized_mode=max|min), got "
            f"'{settings.direction}'"
        )
    space = parse_search_space([*params_as_overrides(settings.params), *arguments])
    if not space.distributions:
        raise UnosatError(
            "hparams_search=optuna: the search space is empty (search_space in "
            "conf/hparams_search/optuna.yaml, or a sweep override such as optimizer.lr='interval(1e-4,1e-2)')"
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=settings.study_name,
        storage=settings.storage,
        direction=settings.direction,
        load_if_exists=True,
    )
    stored = study.direction.name.lower()
    if stored != settings.direction:
        raise UnosatError(
            f"study '{settings.study_name}' in {settings.storage} was created to {stored}; "
            f"this sweep would {settings.direction} (optimized_mode): use another hydra.sweep.dir"
        )
    existing, finished = resume_study(study, settings.study_name)
    if existing:
        log.info(
            "resuming study '%s' (%s): %d trial(s) in it, %d finished, %d to run",
            settings.study_name,
            settings.storage,
            existing,
            finished,
            max(0, settings.n_trials - finished),
        )
    sampler = build_sampler(settings.sampler, space, existing)
    study = (
        optuna.load_study(
            study_name=settings.study_name,
            storage=settings.storage,
            sampler=sampler,
            pruner=build_pruner(settings.pruner),
        )
        if settings.storage
        else optuna.create_study(
            study_name=settings.study_name,
            direction=settings.direction,
            sampler=sampler,
            pruner=build_pruner(settings.pruner),
        )
    )
    grid = isinstance(sampler, optuna.samplers.GridSampler)
    remaining = settings.n_trials - finished
    launched = failed = 0
    while remaining > 0:
        if grid and sampler.is_exhausted(study):
            log.info("the grid is exhausted: every combination has been tried")
            break
        trials = [
            study.ask(fixed_distributions=space.distributions) for _ in range(min(settings.n_jobs, remaining))
        ]
        jobs = [
            [
                *space.fixed,
                *(f"{k}={override_value(v)}" for k, v in t.params.items()),
                *identity_overrides(settings, t.number),
            ]
            for t in trials
        ]
        numbers = [t.number for t in trials]
        if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            results = list(launch(jobs, numbers[0]))  # job n is trial n: its own directory
        else:  # another process asked trials in between: launch one by one, each job numbered as its trial
            results = [r for job, n in zip(jobs, numbers) for r in launch([job], n)]
        for trial, result in zip(trials, results):
            state, value = job_outcome(study, trial, result)
            tell(study, trial, state, value)
            launched += 1
            failed += state == TrialState.FAIL
            remaining -= state != TrialState.FAIL
        if launched and failed / launched > settings.max_failure_rate:
            raise UnosatError(
                f"{failed} of {launched} trials failed, more than hydra.sweeper.max_failure_rate="
                f"{settings.max_failure_rate}"
            )
    return study


def job_outcome(study, trial, result) -> tuple[Any, float | None]:
    """(state, value) of a finished job: PRUNED when its run recorded that the pruner stopped it (value: the
    epoch) or it raised ``optuna.TrialPruned``; FAIL when it raised or returned no finite number; else
    COMPLETE with the number it returned."""
    import optuna
    from optuna.trial import TrialState

    try:
        value = result.return_value
    except optuna.TrialPruned:
        return TrialState.PRUNED, None
    except Exception as err:  # the job's own error; a sweep goes on
        log.warning(
            "trial %d failed: %s: %s",
            trial.number,
            type(err).__name__,
            str(err).splitlines()[0] if str(err) else "",
        )
        return TrialState.FAIL, None
    epoch = pruned_at(study, trial)
    if epoch is not None:
        return TrialState.PRUNED, float(epoch)
    try:
        value = float(value)
    except (TypeError, ValueError):
        log.warning(
            "trial %d failed: the job returned %r, not a number (optimized_metric)", trial.number, value
        )
        return TrialState.FAIL, None
    if not math.isfinite(value):
        log.warning("trial %d failed: the job returned %s", trial.number, value)
        return TrialState.FAIL, None
    return TrialState.COMPLETE, value


def tell(study, trial, state, value: float | None) -> None:
    """Tell the study a trial's outcome and log it. ``GridSampler`` calls ``Study.stop`` after the last grid
    point, which Optuna only allows inside ``Study.optimize``: that error is ignored here (the state is
    stored before it; the sweep loop checks ``is_exhausted`` itself)."""
    import optuna
    from optuna.trial import TrialState

    try:
        study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    except RuntimeError as err:
        if not (isinstance(study.sampler, optuna.samplers.GridSampler) and "Study.stop" in str(err)):
            raise
    if state == TrialState.COMPLETE:
        log.info("trial %d: %s %.6g with %s", trial.number, study.direction.name.lower(), value, trial.params)
    elif state == TrialState.PRUNED:
        log.info(
            "trial %d: pruned%s with %s",
            trial.number,
            "" if value is None else f" at epoch {value:.0f}",
            trial.params,
        )
    else:
        log.info("trial %d: FAIL with %s", trial.number, trial.params)


def results_summary(study) -> dict:
    """What ``optimization_results.yaml`` records: the study, its trial states, and the best trial."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    out: dict[str, Any] = {
        "name": study.study_name,
        "direction": study.direction.name.lower(),
        "trials": {
            s.name: sum(t.state == s for t in trials) for s in TrialState if any(t.state == s for t in trials)
        },
    }
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        out.update(best_trial=best.number, best_value=best.value, best_params=dict(best.params))
    return out
