"""Faults around real runs (docs/reliability.md), on the very small model of the end-to-end tests
(marked slow): a corrupt latest checkpoint, a full disk at a checkpoint, two runs given the same
run directory."""
from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
import torch

import records
from test_training_e2e import ROOT, _metrics_without_time, _samples, tiny_model  # noqa: F401
from training import checkpoint, run

pytestmark = pytest.mark.slow
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def args(model: str, runs, *extra: str) -> list[str]:
    return ["grpo", "--model", model, "--runs-dir", str(runs), "--steps", "6", "--prompts-per-step", "3",
            "--n", "4", "--max-new-tokens", "24", "--eval-k", "1", "--eval-every", "3", "--save-every", "2",
            "--progress", "false", "--threads", "1", *extra]


def train(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training.run", *argv], env=ENV, capture_output=True,
                          text=True, check=check)


def test_a_corrupt_latest_checkpoint_resumes_from_the_previous_one_exactly(tiny_model, tmp_path):
    train(*args(tiny_model, tmp_path, "--run-id", "straight"))
    train(*args(tiny_model, tmp_path, "--run-id", "hit"))
    hit = tmp_path / "hit"
    assert [c.name for c in checkpoint.all_checkpoints(hit)] == ["step-000004", "step-000006"]
    weights = checkpoint.latest(hit) / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4096:] = bytes(4096)  # a zeroed tail: the header still loads
    weights.write_bytes(bytes(data))
    out = train("grpo", "--resume", str(hit), "--progress", "false")
    warnings = [line for line in out.stderr.splitlines() if "corrupt checkpoint" in line]
    assert len(warnings) == 1 and "step-000006" in warnings[0] and "model.safetensors" in warnings[0]
    assert _metrics_without_time(hit) == _metrics_without_time(tmp_path / "straight")
    assert _samples(hit) == _samples(tmp_path / "straight")
    final = [checkpoint.read_weights(checkpoint.latest(tmp_path / r)) for r in ("straight", "hit")]
    assert final[0].keys() == final[1].keys()
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])
    assert records.read_config(hit)["resumes"] == [{"step": 4, "changed": {}}]


def test_resume_with_a_changed_field_is_refused_and_more_steps_are_recorded(tiny_model, tmp_path):
    train(*args(tiny_model, tmp_path, "--run-id", "r", "--steps", "2"))
    run_dir = tmp_path / "r"
    out = train("grpo", "--resume", str(run_dir), "--lr", "1", check=False)
    assert out.returncode != 0 and "cannot change --lr 1.0 (the run has 0.0003)" in out.stderr
    assert "Traceback" not in out.stderr
    train("grpo", "--resume", str(run_dir), "--steps", "4", "--progress", "false")
    assert max(r["step"] for r in records.read_metrics(run_dir)[0]) == 4
    cfg = records.read_config(run_dir)
    assert cfg["config"]["steps"] == 4 and cfg["resumes"] == [{"step": 2, "changed": {"steps": [2, 4]}}]


def test_a_full_disk_at_a_checkpoint_stops_with_one_message(tiny_model, tmp_path, monkeypatch, capsys):
    real, calls = torch.save, []

    def fills_the_disk(*a, **k):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*a, **k)

    monkeypatch.setattr(torch, "save", fills_the_disk)
    with pytest.raises(SystemExit) as e:
        run.main(args(tiny_model, tmp_path, "--run-id", "full", "--steps", "4"))
    assert e.value.code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "No space left on device" in err[0] and "step-000002 is kept" in err[0]
    full = tmp_path / "full"
    assert [c.name for c in checkpoint.all_checkpoints(full)] == ["step-000002"]
    assert not list((full / records.CHECKPOINTS).glob(".tmp-*"))
    checkpoint.verify(checkpoint.latest(full))
    assert records.read_status(full)["state"] == "failed"


def test_two_runs_given_the_same_run_id_never_share_it(tiny_model, tmp_path):
    procs = [subprocess.Popen([sys.executable, "-m", "training.run",
                               *args(tiny_model, tmp_path, "--run-id", "same", "--steps", "2")],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes[0] == 0 and codes[1] != 0, outs
    loser = outs[[p.returncode for p in procs].index(codes[1])][1]
    assert "same exists already" in loser and "Traceback" not in loser
    steps = [r["step"] for r in records.read_metrics(tmp_path / "same")[0]]
    assert steps == [0, 1, 2]  # each step once


def test_two_runs_with_the_same_default_name_get_their_own_directories(tiny_model, tmp_path):
    procs = [subprocess.Popen([sys.executable, "-m", "training.run",
                               *args(tiny_model, tmp_path, "--steps", "1", "--save-every", "0")],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=600) == 0
    dirs = sorted(records.list_runs(tmp_path))
    assert len(dirs) == 2
    for d in dirs:
        assert [r["step"] for r in records.read_metrics(d)[0]] == [0, 1]
