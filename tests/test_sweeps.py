"""Optuna sweeps (unosat.sweeps, the UnosatOptunaSweeper's work) without Hydra jobs: the search-space grammar,
resuming a killed study, no sampler replay, job numbers, failures, the grid, and pruning through the
Lightning callback on a real SQLite study (BoringModel, no dataset). The train.py-level sweeps are in
test_train.py."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

import pytorch_lightning as pl  # noqa: E402
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from pytorch_lightning.demos.boring_classes import BoringModel, RandomDataset  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from unosat.errors import UnosatError  # noqa: E402
from unosat.sweeps import (  # noqa: E402
    PRUNED_ATTR,
    StudySettings,
    attach_trial,
    identity_overrides,
    override_value,
    parse_search_space,
    run_study,
)
from unosat.training.optuna_pruning import OptunaPruning  # noqa: E402

MEDIAN = {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 2, "n_warmup_steps": 1}


class Job:
    """What Hydra's launcher returns for one job (``JobReturn``): ``return_value`` raises the job's error."""

    def __init__(self, value=None, error: BaseException | None = None):
        self.value, self.error = value, error

    @property
    def return_value(self):
        if self.error is not None:
            raise self.error
        return self.value


class FakeLauncher:
    """Runs each job by calling ``objective(overrides)``; records the job numbers it was given."""

    def __init__(self, objective):
        self.objective, self.numbers, self.overrides = objective, [], []

    def __call__(self, jobs: list[list[str]], first: int) -> list[Job]:
        results = []
        for i, overrides in enumerate(jobs):
            self.numbers.append(first + i)
            self.overrides.append(overrides)
            try:
                results.append(Job(self.objective(dict(o.split("=", 1) for o in overrides if "=" in o))))
            except Exception as err:
                results.append(Job(error=err))
        return results


def settings(
    tmp_path: Path, n_trials: int, params: dict, sampler: dict | None = None, pruner: dict | None = None, **kw
) -> StudySettings:
    return StudySettings(
        study_name="unosat",
        storage=f"sqlite:///{tmp_path}/optuna.db",
        direction="maximize",
        n_trials=n_trials,
        sampler=sampler or {"_target_": "optuna.samplers.RandomSampler", "seed": 3},
        pruner=pruner,
        params=params,
        **kw,
    )


def states(tmp_path: Path) -> list[tuple[int, str]]:
    study = optuna.load_study(study_name="unosat", storage=f"sqlite:///{tmp_path}/optuna.db")
    return [(t.number, t.state.name) for t in study.get_trials()]


# ------------------------------------------------------------------------------ search space


def test_the_search_space_grammar_becomes_optuna_distributions_and_fixed_overrides():
    space = parse_search_space(
        [
            "optimizer.lr=tag(log, interval(1e-5, 1e-2))",
            "optimizer.weight_decay=interval(0, 0.05)",
            "data.batch_size=choice(4, 8)",
            "model=unet,fpn",
            "trainer.max_epochs=range(2, 9, 3)",
            "loss.label_smoothing=range(0, 0.3, 0.1)",
            "epochs=int(interval(1, 5))",
            "seed=7",
            "~search_space",
        ]
    )
    d = space.distributions
    assert d["optimizer.lr"] == FloatDistribution(1e-5, 1e-2, log=True)
    assert d["optimizer.weight_decay"] == FloatDistribution(0.0, 0.05)
    assert d["data.batch_size"] == CategoricalDistribution([4, 8])
    assert d["model"] == CategoricalDistribution(["unet", "fpn"])
    assert d["trainer.max_epochs"] == IntDistribution(2, 8, step=3)  # range's stop is excluded, as in Hydra
    assert d["epochs"] == IntDistribution(1, 5)
    assert [round(x, 6) for x in d["loss.label_smoothing"].choices] == [0.0, 0.1, 0.2]
    assert space.fixed == ["seed=7", "~search_space"]
    with pytest.raises(UnosatError, match=r"search space: cannot parse 'lr=interval\(1'"):
        parse_search_space(["lr=interval(1"])
    with pytest.raises(UnosatError, match="shuffle"):
        parse_search_space(["a=shuffle(1,2)"])


def test_sampled_values_are_written_as_overrides_hydra_reads_back_unchanged():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for value in (
        0.000123,
        1e-05,
        3,
        "unet",
        "1e-3",
        "it's",
        "a b",
        None,
        True,
        0.1 + 0.2,
        {"_target_": "optuna.pruners.MedianPruner", "n_warmup_steps": 2},
    ):
        assert parser.parse_override(f"k={override_value(value)}").value() == value


# ------------------------------------------------------------------------------------- resume


@pytest.mark.slow
def test_a_killed_study_resumes_to_n_trials_without_replay_or_reused_job_numbers(tmp_path, caplog):
    params = {"optimizer.lr": "interval(0.0001, 0.01)", "loss.label_smoothing": "choice(0.0, 0.05, 0.1)"}

    def objective(o):
        return float(o["optimizer.lr"]) * 100

    first = FakeLauncher(objective)
    run_study(settings(tmp_path, 2, params), [], first)
    # the sweep is killed while its third trial runs: the trial stays RUNNING in the storage
    study = optuna.load_study(study_name="unosat", storage=f"sqlite:///{tmp_path}/optuna.db")
    study.ask(parse_search_space([f"{k}={v}" for k, v in params.items()]).distributions)
    assert states(tmp_path) == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "RUNNING")]

    again = FakeLauncher(objective)
    with caplog.at_level(logging.INFO, logger="unosat.sweeps"):
        run_study(settings(tmp_path, 4, params), ["seed=5"], again)
    # the killed trial is FAIL, and only the 2 missing trials ran: 4 finished trials in all
    assert states(tmp_path) == [
        (0, "COMPLETE"),
        (1, "COMPLETE"),
        (2, "FAIL"),
        (3, "COMPLETE"),
        (4, "COMPLETE"),
    ]
    assert first.numbers == [0, 1] and again.numbers == [3, 4]  # job n is trial n: no directory is reused
    assert all("seed=5" in o for o in again.overrides)
    assert "trial 2 was left RUNNING by an interrupted sweep; marked FAIL" in caplog.text
    assert "reseeded with 6 (seed + 3 trials already in the study)" in caplog.text
    # the seeded sampler did not replay the first sweep's draws
    lrs = [
        t.params["optimizer.lr"]
        for t in optuna.load_study(study_name="unosat", storage=f"sqlite:///{tmp_path}/optuna.db").trials
        if t.state == TrialState.COMPLETE
    ]
    assert len(set(lrs)) == 4
    # re-running a finished study runs nothing
    done = FakeLauncher(objective)
    run_study(settings(tmp_path, 4, params), [], done)
    assert done.numbers == [] and len(states(tmp_path)) == 5


@pytest.mark.slow
def test_failed_jobs_are_recorded_fail_and_the_sweep_goes_on_up_to_max_failure_rate(tmp_path):
    def objective(o):
        if float(o["loss.label_smoothing"]) >= 1:
            raise ValueError("label_smoothing must be in [0, 1)")
        return None if o["loss.label_smoothing"] == "0.5" else 0.5

    params = {"loss.label_smoothing": "choice(0.0, 0.5, 1.5)"}
    study = run_study(
        settings(tmp_path, 3, params, sampler={"_target_": "optuna.samplers.GridSampler", "seed": 0}),
        [],
        FakeLauncher(objective),
    )
    by_value = {t.params["loss.label_smoothing"]: t.state.name for t in study.trials}
    # the grid ran each value once and stopped when exhausted (two failures do not count towards n_trials)
    assert by_value == {0.0: "COMPLETE", 0.5: "FAIL", 1.5: "FAIL"} and len(study.trials) == 3
    with pytest.raises(UnosatError, match=r"trials failed, more than hydra.sweeper.max_failure_rate=0.1"):
        (tmp_path / "strict").mkdir()
        run_study(
            settings(
                tmp_path / "strict", 3, {"loss.label_smoothing": "choice(1.5, 2.0)"}, max_failure_rate=0.1
            ),
            [],
            FakeLauncher(objective),
        )


# ------------------------------------------------------------------------------------ pruning


class MetricSequenceModel(BoringModel):
    """Logs ``metric`` = ``values[epoch]`` at every validation epoch."""

    def __init__(self, values: list[float]):
        super().__init__()
        self.values = values

    def validation_step(self, batch, batch_idx):
        self.log("metric", self.values[self.current_epoch])
        return super().validation_step(batch, batch_idx)

    def train_dataloader(self):
        return DataLoader(RandomDataset(32, 4), batch_size=2)

    def val_dataloader(self):
        return DataLoader(RandomDataset(32, 2), batch_size=2)


@pytest.mark.slow
def test_a_hopeless_trial_is_pruned_by_the_lightning_callback_and_told_pruned(tmp_path):
    # values exact in float32 (Lightning logs float32 tensors)
    sequences = {
        0: [0.5, 0.625, 0.75, 0.875],
        1: [0.375, 0.5, 0.625, 0.75],
        2: [0.125] * 4,
        3: [0.625, 0.75, 0.875, 1.0],
    }
    epochs_run = {}

    def job(o):
        """What a sweep job does: a training run whose pruning callback re-attaches to its trial."""
        number = int(o["++optuna.trial"])
        callback = OptunaPruning(
            monitor="metric",
            trial=number,
            storage=o["++optuna.storage"].strip("'"),
            study_name="unosat",
            pruner=MEDIAN,
        )
        trainer = pl.Trainer(
            max_epochs=4,
            callbacks=[callback],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            accelerator="cpu",
            devices=1,
            default_root_dir=tmp_path,
        )
        trainer.fit(MetricSequenceModel(sequences[number]))
        epochs_run[number] = trainer.current_epoch
        return max(sequences[number][: trainer.current_epoch])

    launcher = FakeLauncher(job)
    study = run_study(settings(tmp_path, 4, {"x": "choice(1,2)"}, pruner=MEDIAN), [], launcher)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"]
    # trial 2 reported epochs 0 and 1 (warm-up: 1 step), was below the median at epoch 1 (0.5625) and stopped there
    pruned = study.trials[2]
    assert pruned.intermediate_values == {0: 0.125, 1: 0.125} and pruned.user_attrs[PRUNED_ATTR] == 1
    assert pruned.value == 0.125  # Optuna keeps the last reported value of a pruned trial
    assert epochs_run == {0: 4, 1: 4, 2: 2, 3: 4}
    assert study.trials[3].intermediate_values == {0: 0.625, 1: 0.75, 2: 0.875, 3: 1.0}
    assert study.best_value == 1.0
    # the pruner reaches the job through the overrides (a study loaded in another process has none)
    assert (
        "++optuna.pruner={_target_:'optuna.pruners.MedianPruner',n_startup_trials:2,n_warmup_steps:1}"
        in launcher.overrides[0]
    )


def test_without_a_pruner_or_a_storage_jobs_get_no_trial_and_the_callback_does_nothing(tmp_path):
    assert identity_overrides(settings(tmp_path, 1, {}, pruner=None), 0) == []
    assert identity_overrides(StudySettings("s", None, "maximize", 1, pruner=MEDIAN), 0) == []
    callback = OptunaPruning(monitor="metric")
    trainer = pl.Trainer(
        max_epochs=2,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        default_root_dir=tmp_path,
    )
    trainer.fit(MetricSequenceModel([0.0, 0.0]))
    assert trainer.current_epoch == 2 and callback.pruned_at is None
    with pytest.raises(UnosatError, match="optuna.trial=3 needs optuna.storage and optuna.study_name"):
        OptunaPruning(monitor="metric", trial=3)
    optuna.create_study(study_name="unosat", storage=f"sqlite:///{tmp_path}/optuna.db")
    with pytest.raises(UnosatError, match=r"study 'unosat' has no trial 0"):
        attach_trial(f"sqlite:///{tmp_path}/optuna.db", "unosat", 0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tpe_seeded", "tpe", "random", "cmaes", "grid"])
def test_each_configured_sampler_runs_a_study(tmp_path, name):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from unosat.config import CONF_DIR

    if name == "cmaes":
        pytest.importorskip("cmaes")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train", ["hparams_search=optuna", f"hydra/sweeper/sampler={name}"], return_hydra_config=True
        )
    sampler = OmegaConf.to_container(cfg.hydra.sweeper.sampler)
    params = {"x": "choice(1, 2, 3)"} if name == "grid" else {"x": "interval(0.0, 1.0)", "y": "choice(1, 2)"}
    study = run_study(
        settings(tmp_path, 5, params, sampler=sampler), [], FakeLauncher(lambda o: float(o["x"]))
    )
    # the grid stops when exhausted (3 points), the others run the 5 trials asked for
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * (3 if name == "grid" else 5)
    assert len({t.params["x"] for t in study.trials}) == len(study.trials)
