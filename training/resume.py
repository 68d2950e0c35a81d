"""Resuming a run: which fields a resume may change, and the resumed run's config.

A resumed run keeps the config it recorded in its config.json (:func:`saved_config`), except
for the changes :data:`RESUME_MAY_CHANGE` allows (more steps, progress, threads, checkpoint
cadence, trackers); :func:`resume_config` refuses any other change with one message naming each
field.
"""
from __future__ import annotations

from dataclasses import fields, replace
from typing import TYPE_CHECKING, Optional

import records

from .ranges import flag

if TYPE_CHECKING:  # the config module imports this one; a resume works on the config it is given
    from .config import RunConfig

# Fields a resume may change (anything else would make the run a different run than its records
# say): field -> the condition on (before, after) under which the change is accepted.
RESUME_MAY_CHANGE = {
    "steps": lambda before, after: after >= before,  # more steps extend the run
    "progress": lambda before, after: True,
    "threads": lambda before, after: True,
    "save_every": lambda before, after: True,
    "keep_checkpoints": lambda before, after: True,
    "diagnostics_every": lambda before, after: True,  # measures the update, never changes it
    "resume": lambda before, after: True,
    "report_to": lambda before, after: True,         # trackers only mirror metrics.jsonl
    "tracker_project": lambda before, after: True,
}


def saved_config(run_dir: str) -> dict:
    """The resolved config a run recorded in its config.json (for `resume_config`)."""
    saved = records.read_config(run_dir).get("config")
    if not saved:
        raise FileNotFoundError(f"{run_dir}: no {records.CONFIG} to resume from")
    return saved


def resume_config(now: RunConfig, saved: dict, given: Optional[set] = None) -> tuple[RunConfig, dict]:
    """(config of the resumed run, {field: [before, after]} of the accepted changes): the saved
    config, with the ``given`` fields of ``now`` (default: those that differ from RunConfig's
    defaults) that differ from it applied when `RESUME_MAY_CHANGE` allows it. Any other change
    is refused with one message naming every such field."""
    config = type(now)
    unknown = sorted(set(saved) - {f.name for f in fields(config)})
    if unknown:
        raise SystemExit(f"--resume {now.resume}: its config has fields this version does not know: "
                         f"{', '.join(unknown)}")
    before = config(**{**saved, "resume": now.resume})
    default = config()
    if given is None:
        given = {f.name for f in fields(config) if getattr(now, f.name) != getattr(default, f.name)}
    changed = {k: [getattr(before, k), getattr(now, k)] for k in sorted(given)
               if getattr(now, k) != getattr(before, k)}
    refused = [k for k, (b, a) in changed.items() if not RESUME_MAY_CHANGE.get(k, lambda *_: False)(b, a)]
    if refused:
        what = ", ".join(f"{k if k == 'preset' else flag(k)} {changed[k][1]!r} (the run has {changed[k][0]!r})" for k in refused)
        raise SystemExit(f"--resume {now.resume}: cannot change {what}; a resumed run keeps its "
                         "config except more --steps, --progress, --threads, --save-every, "
                         "--keep-checkpoints and --diagnostics-every (start a new run to change anything else)")
    changed.pop("resume", None)
    return replace(before, **{k: a for k, (_, a) in changed.items()}), changed

