"""``UnosatOptunaSweeper``: Hydra sweeper on Optuna's ask/tell API (the work is in :mod:`unosat.sweeps`).

Configured by ``conf/hydra/sweeper/unosat_optuna.yaml`` (selected by ``hparams_search=optuna``). Jobs run
through Hydra's configured launcher, so ``hydra/launcher=submitit_slurm`` runs trials as SLURM jobs. Optuna
(the ``sweep`` extra) is imported only when a sweep starts, so Hydra's plugin discovery never needs it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class UnosatOptunaSweeper(Sweeper):
    """Runs (or resumes) an Optuna study, one Hydra job per trial; see :func:`unosat.sweeps.run_study`."""

    def __init__(
        self,
        study_name: str,
        storage: str | None,
        direction: str,
        n_trials: int,
        n_jobs: int = 1,
        max_failure_rate: float = 1.0,
        sampler: Any = None,
        pruner: Any = None,
        params: Any = None,
    ) -> None:
        def plain(node: Any) -> Any:
            return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node

        from unosat.sweeps import StudySettings

        self.settings = StudySettings(
            study_name=str(study_name),
            storage=None if storage is None else str(storage),
            direction=str(direction),
            n_trials=int(n_trials),
            n_jobs=max(1, int(n_jobs)),
            max_failure_rate=float(max_failure_rate),
            sampler=plain(sampler),
            pruner=plain(pruner),
            params=plain(params),
        )
        self.launcher = None
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from unosat.io.atomic import write_text_atomic
        from unosat.sweeps import results_summary, run_study

        try:
            import optuna  # noqa: F401
        except ImportError:
            raise ImportError('hparams_search=optuna needs Optuna: pip install -e ".[sweep]"') from None
        assert self.launcher is not None and self.config is not None, "setup() first"
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(sweep_dir / "multirun.yaml", OmegaConf.to_yaml(self.config))
        study = run_study(
            self.settings,
            list(arguments),
            lambda jobs, first: self.launcher.launch(jobs, initial_job_idx=first),
        )
        results = results_summary(study)
        write_text_atomic(
            sweep_dir / "optimization_results.yaml", OmegaConf.to_yaml(OmegaConf.create(results))
        )
        log.info(
            "study '%s': %s; best: %s",
            study.study_name,
            results["trials"],
            {k: results[k] for k in ("best_trial", "best_value", "best_params") if k in results} or "none",
        )
        return study
