"""Resuming an interrupted Optuna study (used by ``hydra_plugins.unosat_sweeper.ResumableOptunaSweeper``).

``hparams_search=optuna`` keeps the study in SQLite inside the sweep directory; running the same command with
the same ``hydra.sweep.dir`` loads it. The plugin alone (hydra-optuna-sweeper 1.3) then ran ``n_trials`` *new*
trials, left the killed trial RUNNING forever, replayed the seeded sampler's first draws, and numbered the new
jobs from 0, so they wrote into the directories of earlier trials. Before the plugin's own loop starts, the
resumable sweeper:

- marks trials left RUNNING by a killed sweep as FAIL (a sweep runs its trials itself, ``n_jobs`` at a time,
  so a RUNNING trial at start-up belongs to a sweep that is gone; two sweeps must not share a directory);
- runs only the trials still missing: ``n_trials`` minus the trials that finished (COMPLETE or PRUNED; failed
  ones, the killed one included, are not counted, so the study ends with ``n_trials`` results when trials
  succeed);
- numbers the new jobs after every existing trial (job ``n`` is trial ``n``), so no directory is reused;
- reseeds the sampler (``reseed_rng``) when the study already holds trials, so the seeded sampler does not draw
  the same parameters again (a resumed study is therefore not reproducible from the seed alone).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def prepare_resume(impl) -> tuple[int, int]:
    """Mark the study's RUNNING trials as FAIL and reseed the sampler when the study has trials; return
    (number of trials in the study, number of COMPLETE or PRUNED trials). ``impl`` is the plugin's
    ``OptunaSweeperImpl`` (its storage, study name, sampler and directions)."""
    import optuna
    from optuna.trial import TrialState

    try:
        study = optuna.load_study(study_name=impl.study_name, storage=impl.storage)
    except KeyError:  # no such study yet: a fresh sweep
        return 0, 0
    trials = study.get_trials(deepcopy=False)
    for trial in trials:
        if trial.state == TrialState.RUNNING:
            study.tell(trial.number, state=TrialState.FAIL)
            log.warning("study '%s': trial %d was left RUNNING by an interrupted sweep; marked FAIL",
                        impl.study_name, trial.number)
    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    if trials and hasattr(impl.sampler, "reseed_rng"):
        impl.sampler.reseed_rng()
    return len(trials), finished
