"""Other trainers' logs beside ours (records.foreign): a verl run written by verl's own FileLogger
and a TRL run's trainer_state.json written by transformers' own TrainerState are read as
series under our metric names (the rest under their own names), listed as runs, tabled by
``training.compare --read`` and charted by the dashboard. (The trainer_state.json of a real TRL
run of the plug-in is read in tests/test_trl_plugin.py, slow.)"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import records
from records import foreign, tables

if os.environ.get("UPGE_REQUIRE_VERL") == "1":
    import verl.utils.tracking  # noqa: F401
tracking = pytest.importorskip("verl.utils.tracking")
from transformers import TrainerState  # noqa: E402

VERL_STEPS = [
    {"actor/entropy": 0.9, "critic/score/mean": 0.25, "actor/pg_clipfrac": 0.01, "response_length/mean": 40.0,
     "val-core/math/acc/mean@4": 0.3},
    {"actor/entropy": 0.8, "critic/score/mean": 0.5, "actor/pg_clipfrac": 0.02, "response_length/mean": 44.0},
    {"actor/entropy": 0.7, "critic/score/mean": 0.75, "actor/pg_clipfrac": 0.03, "response_length/mean": 48.0},
]
TRL_HISTORY = [
    {"step": 1, "loss": 0.1, "grad_norm": 2.0, "learning_rate": 1e-3, "entropy": 1.5, "reward": 0.2,
     "rewards/accuracy/mean": 0.2, "epoch": 0.5},
    {"step": 2, "loss": 0.05, "grad_norm": 1.0, "learning_rate": 1e-3, "entropy": 1.4, "reward": 0.4,
     "rewards/accuracy/mean": 0.4, "epoch": 1.0},
    {"step": 2, "train_runtime": 3.0, "train_loss": 0.075, "total_flos": 0.0, "epoch": 1.0},
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    (root / "verl-grpo").mkdir()
    old = os.environ.get("VERL_FILE_LOGGER_PATH")
    os.environ["VERL_FILE_LOGGER_PATH"] = str(root / "verl-grpo" / "verl.jsonl")
    try:
        log = tracking.FileLogger(project_name="p", experiment_name="e")
        for step, data in enumerate(VERL_STEPS, 1):
            log.log(data=data, step=step)
        log.finish()
    finally:
        os.environ.pop("VERL_FILE_LOGGER_PATH") if old is None else os.environ.update(VERL_FILE_LOGGER_PATH=old)
    ckpt = root / "trl-grpo" / "checkpoint-2"
    ckpt.mkdir(parents=True)
    TrainerState(global_step=2, log_history=TRL_HISTORY[:2]).save_to_json(str(ckpt / foreign.TRAINER_STATE))
    TrainerState(global_step=2, log_history=TRL_HISTORY).save_to_json(str(root / "trl-grpo" / foreign.TRAINER_STATE))
    return root


def test_verl_file_logger_read_as_our_series(runs):
    rows, notes = records.read_metrics(runs / "verl-grpo")
    assert not notes
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r[records.TRAIN_ENTROPY] for r in rows] == [d["actor/entropy"] for d in VERL_STEPS]
    assert [r[records.ROLLOUT_REWARD] for r in rows] == [d["critic/score/mean"] for d in VERL_STEPS]
    assert [r[records.ROLLOUT_LENGTH] for r in rows] == [d["response_length/mean"] for d in VERL_STEPS]
    assert [r["actor/pg_clipfrac"] for r in rows] == [d["actor/pg_clipfrac"] for d in VERL_STEPS]  # as it is
    assert rows[0]["val-core/math/acc/mean@4"] == 0.3 and "actor/entropy" not in rows[0]


def test_trl_trainer_state_read_as_our_series(runs):
    assert foreign.kind(runs / "trl-grpo") == foreign.TRL
    rows, notes = records.read_metrics(runs / "trl-grpo")
    assert [r["step"] for r in rows] == [1, 2]            # the summary row is not a step
    assert [r[records.TRAIN_ENTROPY] for r in rows] == [1.5, 1.4]
    assert [r[records.GRAD_NORM] for r in rows] == [2.0, 1.0]
    assert [r[records.ROLLOUT_REWARD] for r in rows] == [0.2, 0.4]
    assert [r["rewards/accuracy/mean"] for r in rows] == [0.2, 0.4]
    assert foreign.config_of(runs / "trl-grpo")["checkpoints"] == [2]


def test_foreign_runs_are_listed_and_loaded_beside_ours(runs):
    assert [p.name for p in records.list_runs(runs)] == ["trl-grpo", "verl-grpo"]
    rec = tables.load_run(runs / "verl-grpo", runs)
    assert list(rec.metrics["step"]) == [1, 2, 3]
    assert list(rec.metrics[records.ROLLOUT_REWARD]) == [0.25, 0.5, 0.75]
    assert rec.config["framework"] == foreign.VERL


def test_a_corrupt_verl_line_is_a_note_not_an_error(tmp_path):
    run = tmp_path / "verl-bad"
    run.mkdir()
    (run / "verl.jsonl").write_text('{"step": 1, "data": {"actor/entropy": 1.0}}\n{"step": 2, "da\n')
    rows, notes = records.read_metrics(run)
    assert [r[records.TRAIN_ENTROPY] for r in rows] == [1.0]
    assert "line 2" in notes.items[0]


def test_compare_reads_runs_of_every_trainer(runs, capsys):
    from training import compare

    out = compare.main(["--read", str(runs / "trl-grpo"), str(runs / "verl-grpo")])
    lines = out.splitlines()
    assert lines[0].startswith("| run | trainer | steps | rollout/reward")
    assert lines[2].startswith("| trl-grpo | trl | 2 | 0.4 |")
    assert lines[3].startswith("| verl-grpo | verl | 3 | 0.75 |")
    with pytest.raises(SystemExit):
        compare.main(["--read", str(runs / "nothing-here")])


def test_dashboard_charts_a_verl_run(runs, monkeypatch):
    from test_dashboard import charts, open_app, select_runs

    at = open_app(runs, monkeypatch, page="Training")
    select_runs(at, ["trl-grpo", "verl-grpo"])
    _, data = charts(at)["Entropy"]
    got = {run: list(d.sort_values("step")["value"]) for run, d in data.groupby("run")}
    assert got == {"trl-grpo": [1.5, 1.4], "verl-grpo": [0.9, 0.8, 0.7]}
