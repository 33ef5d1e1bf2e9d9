"""``ResumableOptunaSweeper``: the Hydra Optuna sweeper plugin with a resume step (see :mod:`unosat.optuna_resume`).

Configured by ``conf/hparams_search/optuna.yaml``. Needs the ``sweep`` extra (hydra-optuna-sweeper); without
it this module defines nothing, so Hydra's plugin discovery is unaffected.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # the sweep extra is not installed
    OptunaSweeper = None

if OptunaSweeper is not None:

    class ResumableOptunaSweeper(OptunaSweeper):
        """Same configuration as ``hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper``."""

        def sweep(self, arguments: list[str]) -> Any:
            from unosat.optuna_resume import prepare_resume

            impl = self.sweeper
            if impl.storage is not None and impl.n_trials > 0:
                existing, finished = prepare_resume(impl)
                if existing:
                    impl.n_trials = max(0, impl.n_trials - finished)
                    impl.job_idx = existing
                    log.info("resuming study '%s': %d trial(s) finished, %d to run, new jobs numbered from %d",
                             impl.study_name, finished, impl.n_trials, existing)
            return super().sweep(arguments)
