"""The TRL plug-in (integrations/trl.py): TRL's own GRPOTrainer really runs, on CPU, with a tiny
model built from a config and the character tokenizer made here.

* step-1 gradient == our trainer's (`training.loop.Trainer.update`) on the same rollouts, fed to
  both (TRL through its own ``rollout_func``), for grpo, dapo, hpt and luffy;
* our normaliser is planned once per optimizer step: the gradient does not change with
  gradient_accumulation_steps, while TRL's own ``bnpo`` (normalised per micro-batch) does;
* (slow) a 3-step hpt run writes gate decisions to TRL's log history and to our records, and
  the dashboard's Training page shows them; its trainer_state.json is read back by
  records.foreign as the same series;
* (slow) hpt on 2 CPU ranks, a group split across them, gives the single-process gradient.

TRL is imported once for this module; a missing TRL skips, unless UPGE_REQUIRE_TRL=1.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

if os.environ.get("UPGE_REQUIRE_TRL") == "1":
    import trl  # noqa: F401
pytest.importorskip("trl")
from datasets import Dataset  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

import records  # noqa: E402
from estimators import Batch  # noqa: E402
from integrations.trl import UpgeGRPOTrainer  # noqa: E402
from records import foreign  # noqa: E402
from training import base  # noqa: E402
from training.batching import Row, Rollouts  # noqa: E402
from training.config import RunConfig  # noqa: E402
from training.loop import Trainer  # noqa: E402
from training.progress import Timers  # noqa: E402
from training.stages import make_stage  # noqa: E402

torch.set_num_threads(1)
N = 4            # rows per prompt
MAX_LEN = 12     # max_completion_length / max_new_tokens
# three prompts of equal length (no prompt padding: TRL passes no position ids), their answers,
# demonstrations, and four fixed completions each: lengths differ, some end with eos; on two
# ranks "3+3=" is split, its only correct rollout on rank 0 (a per-rank gate would differ)
PROMPTS = ["1+2=", "3+3=", "2+2="]
ANSWERS = ["3", "6", "4"]
DEMOS = ["\\boxed{3}", "\\boxed{6}", "\\boxed{4}"]
COMPLETIONS = {"1+2=": ["3", "so 3", "4 4 4", "x"], "3+3=": ["6", "5", "7 six", "nine 9 9"],
               "2+2=": ["5", "7 7", "five", "nine 9 9"]}   # all wrong: HPT's gate sends it to SFT


def tiny():
    tok = base.char_tokenizer()
    cfg = base.BaseConfig(hidden_size=16, layers=1, heads=2, kv_heads=2, intermediate_size=16)
    return tok, base.build_model(cfg, tok)


def reward(completions, answer, **kwargs):
    """1 when the answer string appears in the completion."""
    return [float(a in c) for c, a in zip(completions, answer)]


def dataset():
    return Dataset.from_dict({"prompt": PROMPTS, "answer": ANSWERS, "solution": DEMOS})


def completion_ids(tok, prompt: str, j: int) -> list[int]:
    text = COMPLETIONS[prompt][j]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return ids + ([tok.eos_token_id] if j % 2 == 0 else [])


def fixed_rollouts(prompts, trainer):
    """TRL rollout_func: the same completions for every run, by the row's place in its group
    (TRL's global row order: rank r holds rows r·B ... r·B + B − 1)."""
    tok = trainer.processing_class
    first = trainer.accelerator.process_index * len(prompts)
    out = {"prompt_ids": [], "completion_ids": [], "logprobs": None}
    for i, p in enumerate(prompts):
        out["prompt_ids"].append(tok(p, add_special_tokens=False)["input_ids"])
        out["completion_ids"].append(completion_ids(tok, p, (first + i) % N))
    return out


class Grads(TrainerCallback):
    """The gradient of the first optimizer step (clipping is off), before the update."""

    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def trl_grads(tmp_path: Path, cls=UpgeGRPOTrainer, ga: int = 1, steps: int = 1, ranks: int = 1,
              **kw) -> tuple[dict, object]:
    tok, model = tiny()
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=len(PROMPTS) * N // ga // ranks,
                      gradient_accumulation_steps=ga, num_generations=N, max_completion_length=MAX_LEN,
                      max_steps=steps, learning_rate=1e-2, max_grad_norm=0.0, use_cpu=True, bf16=False,
                      fp16=False, report_to=[], logging_steps=1, save_strategy="no", seed=0,
                      temperature=1.0, shuffle_dataset=False, dataloader_num_workers=0,
                      **{k: v for k, v in kw.items() if k in ("loss_type", "save_steps")})
    if kw.get("save_steps"):
        args.save_strategy = "steps"
    extra = {k: v for k, v in kw.items() if k in ("estimator", "run_dir")}
    cb = Grads()
    trainer = cls(model=model, reward_funcs=reward, args=args, train_dataset=dataset(),
                  processing_class=tok, rollout_func=fixed_rollouts, callbacks=[cb], **extra)
    trainer.train()
    return cb.grads, trainer


# ----------------------------------------------------------------- our trainer, same rollouts


class Capture(torch.optim.SGD):
    """An optimizer that records the gradient it is asked to apply, and applies nothing."""

    def __init__(self, params):
        super().__init__(params, lr=0.0)
        self.grads = None

    def step(self, closure=None):
        if self.grads is None:
            self.grads = [p.grad.detach().clone() if p.grad is not None else None
                          for g in self.param_groups for p in g["params"]]


class NoScheduler:
    def step(self):
        pass

    def get_last_lr(self):
        return [0.0]


class NoReference:
    def logp(self, packed):
        return None


def our_rows(tok, stage) -> list[Row]:
    """The rollouts TRL trained on, as our rows: LUFFY's group holds n−1 rollouts + the demo
    (TRL's last completion replaced), HPT's n rollouts + the demo."""
    rows = []
    for g, (p, a, demo) in enumerate(zip(PROMPTS, ANSWERS, DEMOS)):
        pid = tuple(tok(p, add_special_tokens=False)["input_ids"])
        n_roll = stage.need.rollouts
        for j in range(n_roll):
            ids = completion_ids(tok, p, j)
            r = reward([tok.decode(ids, skip_special_tokens=True)], [a])[0]
            rows.append(Row(pid, tuple(ids), r, r >= 0.5, g, False, j, None))
        if stage.need.demo:
            ids = tok(demo, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            r = reward([demo], [a])[0]
            rows.append(Row(pid, tuple(ids), r, r >= 0.5, g, True, n_roll, None))
    return rows


def our_grads(preset: str) -> dict:
    tok, model = tiny()
    cfg = RunConfig(preset=preset, n=N, max_new_tokens=MAX_LEN, temperature=1.0, grad_clip=1e9,
                    max_grad_norm=1e9, micro_batch=64, prompts_per_step=len(PROMPTS))
    stage = make_stage(preset, cfg, 1, 1)
    opt = Capture(list(model.parameters()))
    t = Trainer(cfg, Path("."), None, model, tok, None, NoReference(), None, None, [stage], None, [],
                opt, NoScheduler(), Timers())
    rows = stage.keep(our_rows(tok, stage))   # DAPO: drops the all-equal group, as `collect` does
    t.update(stage, Rollouts(rows, rows, {}), 1)
    return {n: g for (n, _), g in zip(model.named_parameters(), opt.grads) if g is not None}


@pytest.mark.parametrize("preset", ["grpo", "dapo", "hpt", "luffy"])
def test_step_one_gradient_equals_our_trainer(preset, tmp_path):
    theirs, trainer = trl_grads(tmp_path, estimator=preset, run_dir=False)
    ours = our_grads(preset)
    assert set(ours) <= set(theirs)
    total = sum(float(g.abs().sum()) for g in ours.values())
    assert total > 1e-3  # a gradient that can tell them apart
    for name, g in ours.items():
        assert torch.allclose(theirs[name], g, atol=1e-6, rtol=0), (name, (theirs[name] - g).abs().max())
    if preset in ("hpt", "luffy"):
        gates = trainer.state.log_history[0]
        assert records.GATE_OFFLINE_RATIO in gates


def test_normaliser_is_planned_per_optimizer_step_unlike_trls_bnpo(tmp_path):
    """Splitting the step into 2 accumulation micro-batches: ours (dapo's token mean over the
    step) gives the same gradient; TRL's bnpo (a token mean per micro-batch) does not."""
    one, _ = trl_grads(tmp_path / "a", estimator="dapo", run_dir=False)
    two, _ = trl_grads(tmp_path / "b", estimator="dapo", run_dir=False, ga=2)
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-6, rtol=0), name
    b1, _ = trl_grads(tmp_path / "c", cls=GRPOTrainer, loss_type="bnpo")
    b2, _ = trl_grads(tmp_path / "d", cls=GRPOTrainer, loss_type="bnpo", ga=2)
    gap = max(float((b1[n] - b2[n]).abs().max()) for n in b1)
    scale = max(float(b1[n].abs().max()) for n in b1)
    assert gap > 1e-3 * scale  # TRL's per-micro-batch normaliser moves the gradient


def test_step_plan_leaves_unplanned_rows_out():
    """Rows left out of the plan (padding, DAPO's all-equal groups) get weight 0 and are not
    counted; the others get the plan of the batch without them. Nothing planned: all zero."""
    from estimators import get
    from integrations.trl import all_equal_groups, plan_fields, step_plan

    g = torch.Generator().manual_seed(0)
    B, T = 12, 5
    mask = (torch.rand(B, T, generator=g) > 0.3).double()
    mask[:, 0] = 1
    reward = torch.tensor([1., 0, 1, 0, 1, 1, 1, 1, 0, 1, 1, 0], dtype=torch.float64)
    group = torch.arange(B) // 4
    demo = torch.zeros(B, dtype=torch.bool)
    planned = ~all_equal_groups(reward, group, ~demo)
    assert planned.tolist() == [True] * 4 + [False] * 4 + [True] * 4
    est = get("dapo")
    got = step_plan(est, reward, mask, group, demo, planned)
    keep = planned.nonzero().squeeze(-1)
    zeros = torch.zeros_like(mask)
    want = est.plan(Batch(logp=zeros[keep], mask=mask[keep], reward=reward[keep], group=group[keep],
                          logp_old=zeros[keep]))
    assert torch.equal(got.coef[keep], want.coef) and torch.equal(got.coef[~planned], torch.zeros(4, dtype=torch.float64))
    assert float(got.coef[keep].sum()) != float(est.plan(Batch(logp=zeros, mask=mask, reward=reward, group=group)).coef.sum())
    none = step_plan(get("hpt"), reward, mask, group, demo, torch.zeros(B, dtype=torch.bool))
    assert all(float(v.abs().sum()) == 0 for v in plan_fields(none, T).values())


def test_demonstration_column_missing_is_a_clear_error(tmp_path):
    tok, model = tiny()
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=len(PROMPTS) * N,
                      num_generations=N, max_completion_length=MAX_LEN, max_steps=1, use_cpu=True,
                      bf16=False, report_to=[], save_strategy="no")
    trainer = UpgeGRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=dataset(),
                              processing_class=tok, rollout_func=fixed_rollouts, estimator="hpt",
                              demo_column="worked_solution", run_dir=False)
    with pytest.raises(KeyError, match="worked_solution"):
        trainer.train()


# --------------------------------------------------------------------------- end to end


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_give_the_single_process_gradient(tmp_path):
    """hpt on 2 CPU ranks (gloo, DDP through TRL's accelerate), groups split across the ranks:
    the gate and the normalisers are planned over both ranks, so the averaged gradient equals
    one process's on the whole batch."""
    import subprocess
    import sys

    out = tmp_path / "grads.pt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), __file__, "hpt", str(out), str(tmp_path / "ranks")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = torch.load(out)
    one, _ = trl_grads(tmp_path / "one", estimator="hpt", run_dir=False)
    assert set(two) == set(one)
    for name in one:
        assert torch.allclose(two[name], one[name], atol=1e-6, rtol=0), (name, (two[name] - one[name]).abs().max())


def _rank_main(preset: str, out: str, run: str) -> None:
    """One rank of test_two_ranks_give_the_single_process_gradient (run by torch.distributed.run)."""
    grads, trainer = trl_grads(Path(run), estimator=preset, run_dir=False, ranks=2)
    if trainer.accelerator.is_main_process:
        torch.save(grads, out)


if __name__ == "__main__":
    import sys

    _rank_main(*sys.argv[1:4])


@pytest.mark.slow
def test_three_step_hpt_run_shows_gates_on_the_dashboard(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    run = tmp_path / "runs" / "trl-hpt"
    _, trainer = trl_grads(run, estimator="hpt", steps=3, save_steps=3)
    history = [r for r in trainer.state.log_history if records.GATE_SFT_FRACTION in r]
    assert [r["step"] for r in history] == [1, 2, 3]
    assert [r[records.GATE_SFT_FRACTION] for r in history] == pytest.approx([1 / 3] * 3)  # 2+2=: all wrong
    # our records, under our names
    rows, _ = records.read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r[records.GATE_SFT_FRACTION] for r in rows] == [r[records.GATE_SFT_FRACTION] for r in history]
    assert all(math.isfinite(r[records.TRAIN_ENTROPY]) for r in rows)
    samples, _ = records.read_samples(run)
    assert {s["gate"] for s in samples} <= {"sft", "rl"} and len(samples) == 3 * len(PROMPTS) * (N + 1)
    assert records.read_config(run)["preset"] == "hpt"
    # TRL's own trainer_state.json of the checkpoint, read as a foreign run: the same series
    state = run / "checkpoint-3" / foreign.TRAINER_STATE
    assert state.is_file()
    trl_rows = foreign.read_trl(run)
    assert [r["step"] for r in trl_rows] == [1, 2, 3]
    for ours_row, theirs in zip(rows, trl_rows):
        for key in (records.GATE_SFT_FRACTION, records.TRAIN_ENTROPY, records.ROLLOUT_REWARD,
                    records.TRAIN_LOSS, records.TRAIN_LR):
            assert theirs[key] == pytest.approx(ours_row[key]), key
    # the checkpoint folder alone (a TRL run without our records) is a run the dashboard reads
    import shutil

    from records import tables
    shutil.copytree(run / "checkpoint-3", run.parent / "trl-plain" / "checkpoint-3")
    plain = tables.load_run(run.parent / "trl-plain", run.parent)
    assert list(plain.metrics["step"]) == [1, 2, 3]
    assert list(plain.metrics[records.GATE_SFT_FRACTION]) == pytest.approx([1 / 3] * 3)
    # the dashboard's Training page charts the gate decisions of the TRL run
    monkeypatch.setenv("UPGE_RUNS_DIR", str(run.parent))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "dashboards" / "app.py"),
                           default_timeout=60)
    at.run()
    at.sidebar.radio(key="page").set_value("Training").run()
    assert not at.exception, [e.value for e in at.exception]
    from test_dashboard import charts

    spec, data = charts(at)["Offline / SFT data ratio"]
    sft = data[data["metric"] == records.GATE_SFT_FRACTION].sort_values("step")
    for name in ("trl-hpt", "trl-plain"):
        got = sft[sft["run"] == name]
        assert list(got["value"]) == pytest.approx([r[records.GATE_SFT_FRACTION] for r in rows]), name
