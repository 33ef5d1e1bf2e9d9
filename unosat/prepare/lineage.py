"""Which preparation steps read which, and which steps a run must (re)do so that the dataset's files all
describe one recipe.

Each step declares the steps whose outputs it reads (:data:`STEP_INPUTS`) and the settings it is made with
(:data:`STEP_SETTINGS`). Its *token* is a digest of those settings, the scene list and the tokens of the
steps it reads, so a step's token changes whenever anything it was made from changes. ``dataset.json``
records the token of every step done (``step_tokens``). A run redoes the steps asked for, then every step
downstream of one of them that was done before and would now be made differently (or every one, with
``overwrite=true``); a step done before that is now out of date but not downstream of a step being redone
is refused, naming it, since the run would otherwise leave it describing another recipe.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from unosat.errors import UnosatError
from unosat.io.provenance import digest

STEPS = ("bands", "labels", "quality", "tiles", "stats", "report")

#: step -> the steps whose outputs it reads (``quality`` is read by ``stats`` and ``report`` only when done)
STEP_INPUTS: dict[str, tuple[str, ...]] = {
    "bands": (),
    "labels": ("bands",),  # the mask is 255 where the stack is nodata; scenes.csv
    "quality": ("bands", "labels"),
    "tiles": ("bands",),  # scene grids from scenes.csv
    "stats": ("bands", "labels", "tiles", "quality"),
    "report": ("bands", "labels", "tiles", "stats", "quality"),
}

#: step -> the keys of the manifest's ``settings`` it is made with (``a.b``: key ``b`` of ``settings["a"]``)
STEP_SETTINGS: dict[str, tuple[str, ...]] = {
    "bands": ("recipe", "discovery"),
    "labels": ("labels",),
    "quality": ("quality",),
    "tiles": ("tiling", "split.test_cities"),  # test cities also get test tiles
    "stats": ("stats", "split"),
    "report": (),
}

OPTIONAL_INPUTS = {"quality"}


def upstream(step: str) -> set[str]:
    """Every step ``step`` reads, directly or through another step."""
    seen: set[str] = set()
    todo = list(STEP_INPUTS[step])
    while todo:
        s = todo.pop()
        if s not in seen:
            seen.add(s)
            todo.extend(STEP_INPUTS[s])
    return seen


def downstream(step: str) -> list[str]:
    """Every step that reads ``step``'s outputs, directly or not, in pipeline order."""
    return [s for s in STEPS if step in upstream(s)]


def step_tokens(settings: Mapping, scene_ids: Sequence[str], done: Iterable[str]) -> dict[str, str]:
    """The token of every step for these settings and scenes, given which steps are (or will be) done.

    ``settings`` is the manifest's ``settings`` (plain JSON data). An optional input that is not done does
    not enter its readers' tokens.
    """
    done = set(done)
    scenes = sorted(scene_ids)
    tokens: dict[str, str] = {}
    for step in STEPS:
        inputs = {s: tokens[s] for s in STEP_INPUTS[step] if s not in OPTIONAL_INPUTS or s in done}
        tokens[step] = digest(
            {
                "step": step,
                "settings": {k: setting(settings, k) for k in STEP_SETTINGS[step]},
                "scenes": scenes,
                "inputs": inputs,
            }
        )
    return tokens


def plan_steps(
    requested: Sequence[str],
    previous: Mapping[str, str | None],
    settings: Mapping,
    scene_ids: Sequence[str],
    overwrite: bool,
    where: str = "the dataset",
) -> list[str]:
    """The steps this run does, in order: ``requested`` plus the steps downstream of them that must be redone.

    Args:
        requested: the steps asked for (``steps=[...]``).
        previous: step -> recorded token of the steps done before (None: recorded by an older unosat that
            kept no tokens; taken as up to date).
        settings, scene_ids: this run's settings and scenes.
        overwrite: redo every step downstream of a requested one that was done, even if up to date.

    Raises :class:`UnosatError` naming the steps that were done, are out of date, and are neither asked for
    nor downstream of a step asked for.
    """
    run = set(requested)
    while True:
        tokens = step_tokens(settings, scene_ids, set(previous) | run)
        added = {
            s
            for s in previous
            if s not in run
            and any(u in run for u in upstream(s))
            and (overwrite or not _up_to_date(previous[s], tokens[s]))
        }
        if not added:
            break
        run |= added
    stale = [s for s in STEPS if s in previous and s not in run and not _up_to_date(previous[s], tokens[s])]
    if stale:
        readers = sorted({r for r in run for s in stale if s in upstream(r)}, key=STEPS.index)
        why = f"steps {readers} read them" if readers else "the dataset would mix recipes"
        raise UnosatError(
            f"{where}: step(s) {stale} were done with other settings or scenes than this run's and are not in steps "
            f"({why}); add them: steps=[{','.join(s for s in STEPS if s in run or s in stale)}]"
        )
    return [s for s in STEPS if s in run]


def setting(settings: Mapping, key: str):
    """``settings[key]``, where ``key`` may be dotted (``split.test_cities``); None when missing."""
    value = settings
    for part in key.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _up_to_date(recorded: str | None, current: str) -> bool:
    return recorded is None or recorded == current
