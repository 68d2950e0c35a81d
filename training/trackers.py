"""Experiment trackers (``--report-to tensorboard,mlflow,...``): every metrics row the run writes
to ``metrics.jsonl`` also goes to each tracker, through the tracker's own API::

    writer = reporting(records.RunWriter(run_dir), cfg.report_to, run_dir, cfg.tracker_project,
                       cfg.resolved())      # rank 0; the other ranks keep their NullWriter

``metrics.jsonl`` stays the source of truth (the dashboard, ``training.compare`` and resume read
it); a tracker receives the numeric values of each row (text such as ``train/skip_reason`` is
left out) at the row's step, and the resolved config once. Without network every tracker works
locally:

============  ===========================================================================
tensorboard   ``torch.utils.tensorboard.SummaryWriter``: event files in ``<run>/tensorboard``
              (``tensorboard --logdir runs``)
mlflow        ``mlflow`` fluent API: ``$MLFLOW_TRACKING_URI`` when set, else MLflow's local
              store ``sqlite:///<runs_dir>/mlflow.db`` (its file store is deprecated;
              ``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db``);
              ``@`` (not allowed in MLflow names) is written ``_at_``: ``eval/pass_at_4``
wandb         ``wandb.init``: ``$WANDB_MODE`` when set, else online only with an API key
              configured, offline otherwise (``<run>/wandb``; ``wandb sync`` uploads it later)
trackio       ``trackio.init``: trackio's local database (``$TRACKIO_DIR``; ``trackio show``)
============  ===========================================================================

A tracker that is requested but not installed is refused before the run starts, naming the
extra that installs it. Each tracker is a small class with ``start`` / ``log`` / ``finish``;
adding one is one class and one row of ``TRACKERS``.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Optional

EXTRA = "pip install 'upge[trackers]'"


def _quiet():
    """Trackers' chatter goes to stderr: stdout carries the run's one-line JSON summary."""
    return contextlib.redirect_stdout(sys.stderr)


class TensorBoard:
    """Event files of ``torch.utils.tensorboard.SummaryWriter`` in ``<run_dir>/tensorboard``."""

    module = "tensorboard"

    def start(self, run_dir: Path, project: str, config: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        self.writer.add_text("config", "```\n" + _config_text(config) + "\n```", 0)

    def log(self, step: int, values: dict) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()  # a live `tensorboard --logdir` sees every step

    def finish(self) -> None:
        self.writer.close()


class MLflow:
    """An MLflow run (named after the run directory) in experiment ``project``."""

    module = "mlflow"

    @staticmethod
    def key(name: str) -> str:
        """The MLflow name of a metric: ``@`` is not allowed there (``eval/pass@4`` ->
        ``eval/pass_at_4``)."""
        return re.sub(r"[^\w./\- :]", "_", name.replace("@", "_at_"))

    def start(self, run_dir: Path, project: str, config: dict) -> None:
        import mlflow

        if not os.environ.get("MLFLOW_TRACKING_URI"):
            mlflow.set_tracking_uri(f"sqlite:///{Path(run_dir).resolve().parent / 'mlflow.db'}")
        with _quiet():
            mlflow.set_experiment(project)
            self.run = mlflow.start_run(run_name=Path(run_dir).name)
            mlflow.log_params({k: str(v)[:6000] for k, v in config.items()})
        self.mlflow = mlflow

    def log(self, step: int, values: dict) -> None:
        self.mlflow.log_metrics({self.key(k): v for k, v in values.items()}, step=step)

    def finish(self) -> None:
        with _quiet():
            self.mlflow.end_run()


class WandB:
    """A W&B run; offline (``<run_dir>/wandb``) unless ``$WANDB_MODE`` says otherwise or an API
    key is configured."""

    module = "wandb"

    def start(self, run_dir: Path, project: str, config: dict) -> None:
        import wandb

        mode = os.environ.get("WANDB_MODE") or ("online" if _wandb_key(wandb) else "offline")
        with _quiet():
            self.run = wandb.init(project=project, name=Path(run_dir).name, dir=str(run_dir),
                                  config=config, mode=mode)

    def log(self, step: int, values: dict) -> None:
        self.run.log(values, step=step)

    def finish(self) -> None:
        with _quiet():
            self.run.finish()


def _wandb_key(wandb) -> Optional[str]:
    try:
        return wandb.api.api_key
    except Exception:  # noqa: BLE001 - no settings, no netrc: no key
        return None


class Trackio:
    """A trackio run in trackio's local database (``$TRACKIO_DIR``), project ``project``."""

    module = "trackio"

    def start(self, run_dir: Path, project: str, config: dict) -> None:
        import trackio

        with _quiet():
            self.run = trackio.init(project=project, name=Path(run_dir).name, config=config)
        self.trackio = trackio

    def log(self, step: int, values: dict) -> None:
        self.run.log(values, step=step)

    def finish(self) -> None:
        with _quiet():
            self.run.finish()


TRACKERS = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": WandB, "trackio": Trackio}
TRACKER_NAMES = ("none", *TRACKERS)
_NAME = "|".join(TRACKER_NAMES)
REPORT_TO = rf"\s*({_NAME})\s*(,\s*({_NAME})\s*)*"   # --report-to's allowed values


def requested(report_to: str) -> list[str]:
    """The tracker names of a ``--report-to`` value (``none`` and repeats dropped)."""
    names = [n.strip() for n in report_to.split(",") if n.strip()]
    return [n for n in dict.fromkeys(names) if n != "none"]


def missing(report_to: str) -> Optional[str]:
    """A message naming the requested trackers that are not installed (and the extra that
    installs them), or None."""
    absent = [n for n in requested(report_to) if importlib.util.find_spec(TRACKERS[n].module) is None]
    return (f"{', '.join(absent)} not installed: {EXTRA} (or pip install {' '.join(absent)})"
            if absent else None)


class ReportTo:
    """``--report-to``'s allowed values (a `training.ranges` range type): a comma list of
    tracker names, each installed."""

    def problem(self, v) -> Optional[str]:
        if not isinstance(v, str) or not re.fullmatch(REPORT_TO, v):
            return f"must be a comma list of {', '.join(TRACKER_NAMES)}"
        return missing(v)


def scalars(metrics: dict) -> dict:
    """The numeric values of a metrics row (text such as a skip reason is left out)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def _config_text(config: dict) -> str:
    return "\n".join(f"{k}: {v}" for k, v in sorted(config.items()))


class Reporting:
    """A `records.RunWriter` that also sends each metrics row to ``trackers``; every other
    call goes to the writer. A terminal status (finished / failed) closes the trackers."""

    def __init__(self, writer, trackers: list):
        self.writer, self.trackers = writer, trackers

    def __getattr__(self, name):
        return getattr(self.writer, name)

    def log_metrics(self, step: int, metrics: dict) -> None:
        self.writer.log_metrics(step, metrics)  # the record first: it is the source of truth
        values = scalars(metrics)
        for t in self.trackers:
            t.log(int(step), values)

    def set_status(self, state: str, step: int = 0, message: str = "") -> bool:
        ok = self.writer.set_status(state, step, message)
        if state in ("finished", "failed"):
            trackers, self.trackers = self.trackers, []
            for t in trackers:
                t.finish()
        return ok


def reporting(writer, report_to: str, run_dir, project: str, config: dict):
    """``writer`` reporting to the trackers of ``report_to`` (started now); ``writer`` itself
    when there are none."""
    names = requested(report_to)
    if not names:
        return writer
    problem = missing(report_to)
    if problem:
        raise SystemExit(f"error: --report-to {report_to}: {problem}")
    trackers = [TRACKERS[n]() for n in names]
    for t in trackers:
        t.start(Path(run_dir), project, config)
    return Reporting(writer, trackers)
