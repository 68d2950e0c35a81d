"""Faults a user hits without trying (docs/reliability.md): run directories that collide,
checkpoints that are corrupt, crafted or cannot be written, resumes that change the run, a stale
"running" status, the dashboard's network exposure, the torch thread count."""
from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import records
from training import base, checkpoint, resources
from training.config import RunConfig, parse_args, resume_config

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


# ------------------------------------------------------------------------- run directories

RACE = """
import sys, time
import records
start = float(sys.argv[2])
while time.time() < start:
    pass
print(records.create_run_dir(sys.argv[1], "grpo-s0-20260101-000000"))
"""


def test_two_processes_with_the_same_name_get_different_directories(tmp_path):
    start = f"{time.time() + 1.5:.3f}"  # both processes spin until the same instant
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(tmp_path), start], env=ENV,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    dirs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(dirs)) == 2 and all(Path(d).is_dir() for d in dirs)
    assert sorted(Path(d).name for d in dirs) == ["grpo-s0-20260101-000000", "grpo-s0-20260101-000000-2"]


def test_an_explicit_run_id_that_exists_is_a_clear_error(tmp_path):
    first = records.create_run_dir(tmp_path, "mine", unique=False)
    (first / records.METRICS).write_text('{"step": 0}\n')
    with pytest.raises(records.RunDirExists, match=r"mine exists already.*--resume"):
        records.create_run_dir(tmp_path, "mine", unique=False)
    assert (first / records.METRICS).read_text() == '{"step": 0}\n'  # untouched


# ----------------------------------------------------------------------------- checkpoints

TINY = base.BaseConfig(hidden_size=8, layers=1, heads=2, kv_heads=2, intermediate_size=16)


@pytest.fixture()
def parts():
    """A tiny real model, tokenizer, optimizer (with state) and scheduler."""
    torch.manual_seed(0)
    tok = base.char_tokenizer()
    model = base.build_model(TINY, tok)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return model, tok, opt, sched


def save(run_dir, step, parts, **kw):
    model, tok, opt, sched = parts
    return checkpoint.save(run_dir, step, model, tok, None, opt, sched, {"data": step}, **kw)


def test_checkpoints_carry_checksums_and_a_zeroed_tail_is_detected(tmp_path, parts):
    ckpt = save(tmp_path, 1, parts)
    checkpoint.verify(ckpt)
    manifest = json.loads((ckpt / checkpoint.MANIFEST).read_text())["sha256"]
    assert checkpoint.STATE in manifest and "model/model.safetensors" in manifest
    weights = ckpt / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-256:] = bytes(256)  # the header stays valid: safetensors loads it silently
    weights.write_bytes(bytes(data))
    checkpoint.read_weights(ckpt)
    with pytest.raises(checkpoint.CorruptCheckpoint, match="model.safetensors does not match"):
        checkpoint.verify(ckpt)


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, parts):
    first, second = save(tmp_path, 1, parts), save(tmp_path, 2, parts)
    (second / checkpoint.STATE).write_bytes((second / checkpoint.STATE).read_bytes()[:100])
    warnings = []
    assert checkpoint.latest_intact(tmp_path, warn=warnings.append) == first
    assert len(warnings) == 1 and "step-000002" in warnings[0] and "\n" not in warnings[0]


def test_the_default_keeps_two_checkpoints_and_saves_within_a_minute_of_work():
    assert RunConfig().keep_checkpoints >= 2  # a corrupt latest one has a predecessor
    assert RunConfig().save_every <= 10       # the embedded default: ~5-6 s per step


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARK}",))


MARK = ""


def test_a_crafted_trainer_state_is_refused_without_running_it(tmp_path, parts, monkeypatch):
    ckpt = save(tmp_path, 1, parts)
    mark = tmp_path / "pwned"
    monkeypatch.setattr(sys.modules[__name__], "MARK", str(mark))
    torch.save({"step": 1, "x": Payload()}, ckpt / checkpoint.STATE)
    checkpoint.write_manifest(ckpt)  # the attacker rewrites the manifest too
    model, tok, opt, sched = parts
    with pytest.raises(checkpoint.CorruptCheckpoint, match="refused"):
        checkpoint.restore(ckpt, model, None, opt, sched)
    assert not mark.exists()
    torch.load(ckpt / checkpoint.STATE, weights_only=False)  # what resume did before: it runs
    assert mark.exists()


def test_restore_round_trips_every_rng_state(tmp_path, parts):
    import random

    import numpy as np

    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    ckpt = save(tmp_path, 1, parts)
    expect = (torch.rand(2), random.random(), np.random.rand())
    torch.manual_seed(9), random.seed(9), np.random.seed(9)
    model, tok, opt, sched = parts
    assert checkpoint.restore(ckpt, model, None, opt, sched)["step"] == 1
    assert torch.equal(torch.rand(2), expect[0]) and random.random() == expect[1]
    assert np.random.rand() == expect[2]


def test_a_full_disk_keeps_the_earlier_checkpoint_and_says_so(tmp_path, parts, monkeypatch):
    first = save(tmp_path, 1, parts)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(checkpoint.SaveFailed) as e:
        save(tmp_path, 2, parts)
    msg = str(e.value)
    assert "No space left on device" in msg and "step-000001 is kept" in msg and "\n" not in msg
    assert e.value.__cause__ is None and e.value.__suppress_context__
    assert checkpoint.all_checkpoints(tmp_path) == [first]
    assert not list((tmp_path / records.CHECKPOINTS).glob(".tmp-*"))
    checkpoint.verify(first)


# ----------------------------------------------------------------------------------- resume

def saved_run(tmp_path, **fields) -> Path:
    run = tmp_path / "run"
    records.RunWriter(run).write_config({"config": RunConfig(preset="grpo", steps=6, **fields).resolved()})
    return run


def test_resume_refuses_a_changed_field_and_names_it(tmp_path):
    run = saved_run(tmp_path)
    with pytest.raises(SystemExit, match=r"--lr 1\.0 \(the run has 0\.0003\)"):
        parse_args(["--resume", str(run), "--lr", "1"])
    with pytest.raises(SystemExit, match=r"preset 'hpt' \(the run has 'grpo'\), --profile"):
        parse_args(["hpt", "--resume", str(run), "--profile", "paper-qwen2.5-math-1.5b"])
    with pytest.raises(SystemExit, match="--steps 3"):  # fewer steps than the run has
        parse_args(["--resume", str(run), "--steps", "3"])


def test_resume_accepts_more_steps_and_keeps_everything_else(tmp_path):
    run = saved_run(tmp_path, lr=1e-3)
    cfg = parse_args(["grpo", "--resume", str(run), "--steps", "20", "--progress", "false"])
    assert (cfg.preset, cfg.steps, cfg.lr, cfg.progress, cfg.resume) == ("grpo", 20, 1e-3, False, str(run))
    again, changed = resume_config(cfg, RunConfig(preset="grpo", steps=6, lr=1e-3).resolved())
    assert again == cfg and changed == {"steps": [6, 20], "progress": [True, False]}
    records.RunWriter(run).record_resume(4, cfg.resolved(), changed)
    saved = records.read_config(run)
    assert saved["config"]["steps"] == 20 and saved["resumes"] == [{"step": 4, "changed": changed}]


# ---------------------------------------------------------------------------------- status

def test_a_killed_run_reads_as_stopped(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c",
                             "import records, sys, time; w = records.RunWriter(sys.argv[1]); "
                             "w.set_status('running', 3); print('ok', flush=True); time.sleep(60)",
                             str(tmp_path)], env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ok"
    status = records.read_status(tmp_path)
    assert status["pid"] == proc.pid and status["host"] == socket.gethostname()
    assert records.run_state(status) == "running"
    proc.kill()
    proc.wait()
    assert records.read_status(tmp_path)["state"] == "running"  # the file is as the run left it
    assert records.run_state(records.read_status(tmp_path)) == "stopped"


def test_the_heartbeat_follows_the_steps_and_goes_stale(tmp_path):
    w = records.RunWriter(tmp_path)
    w.set_status("running", 0)
    beat = records.read_status(tmp_path)["heartbeat"]
    time.sleep(0.01)
    w.log_metrics(1, {})
    status = records.read_status(tmp_path)
    assert status["step"] == 1 and status["heartbeat"] > beat
    remote = {**status, "host": "another-machine", "pid": 1}
    assert records.run_state(remote, now=status["heartbeat"] + 60) == "running"
    assert records.run_state(remote, now=status["heartbeat"] + records.STALE_AFTER_S + 1) == "stopped"
    w.set_status("finished", 1)
    w.log_metrics(2, {})  # a finished run's status is not rewritten
    assert records.run_state(records.read_status(tmp_path)) == "finished"


# ----------------------------------------------------------------------------------- threads

@pytest.mark.parametrize("cores,load,threads", [(2, 0.0, 2), (2, 1.0, 1), (2, 3.5, 1), (16, 4.2, 12),
                                                (8, 0.4, 8)])
def test_threads_follow_free_cores(cores, load, threads):
    assert resources.choose_threads(cores, load) == threads


def test_auto_threads_never_exceed_the_affinity():
    n, why = resources.auto_threads()
    assert 1 <= n <= len(os.sched_getaffinity(0)) and "cores" in why


# ----------------------------------------------------------------------------------- rewards

# (answer, ground truth, score a mathematician gives)
HARD_CASES = [
    ("12345678901234567890", "12345678901234567891", 0.0),
    ("12345678901234567891", "12345678901234567891", 1.0),
    ("10000000000000001", "10000000000000000", 0.0),
    ("1" * 400, "2" * 400, 0.0),
    ("1" * 400, "1" * 400 + ".0", 1.0),
    ("1" * 5000, "1" * 4999 + "2", 0.0),  # beyond int()'s default 4300-digit limit
    ("12345678901234567890", "1.2345678901234567891e19", 0.0),
    ("1/3", "0.333", 0.0),
    ("\\frac{1}{3}", "0.333", 0.0),
    ("3/6", "\\frac{1}{2}", 1.0),
    ("\\dfrac{3}{6}", "0.5", 1.0),
    ("-\\frac{1}{2}", "-0.5", 1.0),
    ("\\frac{-1}{2}", "\\frac{1}{-2}", 1.0),
    ("1e-300", "0", 0.0),
    ("1e-300", "10^{-300}", 1.0),
    ("0.0", "-0", 1.0),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", 1.0),
    ("2\\pi", "\\pi \\cdot 2", 1.0),
    ("(x+1)^2", "x^2+2x+1", 1.0),
    ("\\sqrt{2}", "1.414", 0.0),
    ("\\pi", "3.14159", 0.0),
    ("10^{20}+1", "100000000000000000001", 1.0),
    ("10^{20}", "100000000000000000001", 0.0),
    ("(1,2)", "(2,1)", 0.0),
    ("\\{1,2\\}", "\\{2,1\\}", 1.0),
]


@pytest.fixture(scope="module")
def reward():
    from training.reward import BoxedReward

    r = BoxedReward(time_limit=10.0)
    yield r
    r.close()


@pytest.mark.parametrize("answer,truth,score", HARD_CASES)
def test_the_reward_scores_hard_cases_as_a_mathematician_would(reward, answer, truth, score):
    assert reward([f"so \\boxed{{{answer}}}"], [truth]) == [score]


def test_exact_numbers_never_go_through_floats():
    from fractions import Fraction

    from training.reward import exact_number

    assert exact_number("1" * 400) == int("1" * 400)
    assert exact_number("1e99999999") is None  # not built: left to math-verify
    assert exact_number("1e-300") == Fraction(1, 10 ** 300)
    assert exact_number("\\tfrac{2}{-4}") == Fraction(-1, 2) and exact_number("-\\frac{1}{3}") == Fraction(-1, 3)
    assert exact_number("1/0") is None and exact_number("x") is None and exact_number("\\sqrt{2}") is None


def test_the_time_limit_is_cpu_time_not_wall_time(reward):
    """A worker that gets no CPU for 4/3 of the limit (as on a loaded machine) still finishes a
    cheap true check: the limit counts the check's CPU seconds (the wall-clock backstop is
    WALL_FACTOR = 2 times the limit)."""
    import signal
    import threading

    r, limit = reward, reward.time_limit
    r.time_limit, before = 3.0, r.timeouts
    try:
        assert r.score("\\boxed{\\sqrt{4}}", "2") == 1.0  # the worker is up
        pid = r._worker.proc.pid
        os.kill(pid, signal.SIGSTOP)
        threading.Timer(4.0, os.kill, (pid, signal.SIGCONT)).start()
        t0 = time.time()
        assert r.score("\\boxed{\\frac{\\sqrt{3}}{3}}", "\\frac{1}{\\sqrt{3}}") == 1.0
        assert time.time() - t0 >= 4.0 and r.timeouts == before
    finally:
        r.time_limit = limit


def test_a_check_that_runs_out_of_time_is_counted_as_a_timeout():
    from training.reward import BoxedReward

    r = BoxedReward(time_limit=0.2)
    try:
        r.score("\\boxed{\\sqrt{4}}", "2")  # starts the worker (not timed)
        assert r.score("\\boxed{\\int_0^\\infty e^{-x^2}\\,dx}", "\\frac{\\sqrt{\\pi}}{2}") == 0.0
        assert r.timeouts == 1
    finally:
        r.close()


# -------------------------------------------------------------------------------- dashboard

def listening(port: int) -> set[str]:
    """Local addresses with a socket listening on ``port`` (from /proc/net/tcp and tcp6)."""
    import ipaddress

    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(addr)
                # /proc writes each 32-bit word in host (little-endian) order
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(str(ipaddress.ip_address(raw)))
    return found


def test_the_dashboard_listens_on_loopback_only_from_any_directory(tmp_path):
    from streamlit.testing.v1 import AppTest  # noqa: F401 - the dashboard extra is installed

    (tmp_path / "runs").mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "dashboards", "--runs", "runs", "--port", str(port)],
                            cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 90
        while not listening(port) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert listening(port) == {"127.0.0.1"}, proc.poll()
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert b"--browser.gatherUsageStats=false" in cmdline
        assert str((tmp_path / "runs").resolve()).encode() in cmdline
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_dashboard_entry_point_refuses_a_missing_runs_directory(tmp_path):
    out = subprocess.run([sys.executable, "-m", "dashboards", "--runs", str(tmp_path / "nope")],
                         env=ENV, capture_output=True, text=True)
    assert out.returncode == 2 and "nope: not a directory" in out.stderr


def test_the_dashboard_shows_a_killed_run_as_stopped(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    import fixtures_records as fx

    for name in ("live", "killed"):
        fx.write_run(tmp_path, fx.RunSpec(name, "hpt", steps=2, state="running"))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    status = records.read_status(tmp_path / "killed")
    (tmp_path / "killed" / records.STATUS).write_text(json.dumps({**status, "pid": int(gone)}))
    monkeypatch.setenv("UPGE_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(str(ROOT / "dashboards" / "app.py"), default_timeout=60)
    at.run()
    table = at.dataframe[0].value.set_index("run")
    assert table.loc["live", "state"] == "running" and table.loc["killed", "state"] == "stopped"
