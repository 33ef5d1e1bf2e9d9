"""Which preparation steps a run redoes: the requested ones, every step downstream of them that is out of
date (or all of them with overwrite), and a refusal naming out-of-date steps nobody redoes."""

from __future__ import annotations

import pytest

from unosat.errors import UnosatError
from unosat.prepare.lineage import STEPS, downstream, plan_steps, step_tokens, upstream

SETTINGS = {
    "recipe": {"name": "3b"},
    "discovery": {},
    "labels": {},
    "quality": {"ring_px": 3},
    "tiling": {"train_size": 512},
    "split": {"test_cities": ["Samawah"], "folds": {}},
    "stats": {"min": 0.25},
}
SCENES = ["a", "b"]


def done_with(settings=SETTINGS, scenes=SCENES, steps=STEPS) -> dict[str, str]:
    tokens = step_tokens(settings, scenes, steps)
    return {s: tokens[s] for s in steps}


def changed(**parts) -> dict:
    return {**SETTINGS, **parts}


def test_the_declared_graph():
    assert upstream("stats") == {"bands", "labels", "tiles", "quality"}
    assert downstream("bands") == ["labels", "quality", "tiles", "stats", "report"]
    assert downstream("labels") == ["quality", "stats", "report"]
    assert downstream("report") == []


def test_an_up_to_date_dataset_redoes_only_what_is_asked():
    assert plan_steps(["bands"], done_with(), SETTINGS, SCENES, overwrite=False) == ["bands"]
    assert plan_steps(["stats", "report"], done_with(), SETTINGS, SCENES, overwrite=False) == [
        "stats",
        "report",
    ]


def test_overwrite_redoes_every_step_downstream_that_was_done():
    previous = done_with(steps=("bands", "labels", "tiles", "stats"))
    assert plan_steps(["labels"], previous, SETTINGS, SCENES, overwrite=True) == ["labels", "stats"]
    assert plan_steps(["bands"], previous, SETTINGS, SCENES, overwrite=True) == [
        "bands",
        "labels",
        "tiles",
        "stats",
    ]


def test_other_settings_or_scenes_redo_what_depends_on_them():
    db = changed(recipe={"name": "db"})
    assert plan_steps(["bands"], done_with(), db, SCENES, overwrite=True) == list(STEPS)
    assert plan_steps(["bands"], done_with(), SETTINGS, [*SCENES, "c"], overwrite=False) == list(STEPS)


def test_fold_changes_do_not_touch_the_tiles():
    folds = changed(split={"test_cities": ["Samawah"], "folds": {"Mosul": 1}})
    assert plan_steps(["stats"], done_with(), folds, SCENES, overwrite=True) == ["stats", "report"]
    test_cities = changed(split={"test_cities": ["Mosul"], "folds": {}})
    with pytest.raises(
        UnosatError, match=r"\['tiles'\] were done with other settings.*steps=\[tiles,stats,report\]"
    ):
        plan_steps(["stats"], done_with(), test_cities, SCENES, overwrite=True)


def test_a_newly_done_quality_step_redoes_the_statistics_that_carry_its_flags():
    previous = done_with(steps=("bands", "labels", "tiles", "stats"))
    assert plan_steps(["quality"], previous, SETTINGS, SCENES, overwrite=False) == ["quality", "stats"]


def test_steps_recorded_without_tokens_are_trusted():
    legacy = dict.fromkeys(STEPS)
    assert plan_steps(["report"], legacy, SETTINGS, SCENES, overwrite=False) == ["report"]


def test_prepare_runs_every_step_in_lineage_order():
    from unosat.prepare.run import STEP_FUNCTIONS

    assert tuple(name for name, _ in STEP_FUNCTIONS) == STEPS
