"""Fast tests of the loop's parts: the values the step hands on (`Rollouts`), the rollout-engine
factory and per-prompt seeding shared by training and evaluation, one prompt template for both,
and the process-layout backends."""
from __future__ import annotations

import pytest
import torch

from training import base, data, task
from training.backends import Replicated, Sharded, make_backend
from training.batching import Row, Rollouts, chunks
from training.config import RunConfig
from training.evaluation import datasets, harness
from training.rollout import SeededSampler, make_engine, make_prompt_fn
from training.rollout.hf import HFSampler

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    tok = base.char_tokenizer()
    torch.manual_seed(0)
    cfg = base.BaseConfig(hidden_size=16, layers=1, heads=2, kv_heads=2, intermediate_size=16)
    return tok, base.build_model(cfg, tok).eval()


def _row(group: int, j: int, n: int, demo: bool = False, lp=None) -> Row:
    return Row((1, 2), tuple(range(3, 3 + n)), 1.0, True, group, demo, j, None, behavior_logp=lp)


def test_rollouts_carry_the_engine_logprobs_of_each_row():
    rows = [_row(0, 0, 3, lp=(-0.1, -0.2, -0.3)), _row(0, 1, 4, demo=True), _row(1, 0, 2, lp=(-1.0, -2.0))]
    old = -torch.arange(1, 13, dtype=torch.float64).reshape(3, 4) / 10
    got = Rollouts(rows, rows, {}).behavior_logp(old)
    want = old.clone()
    want[0, :3] = torch.tensor([-0.1, -0.2, -0.3], dtype=torch.float64)
    want[2, :2] = torch.tensor([-1.0, -2.0], dtype=torch.float64)   # the demo row keeps π_θold
    assert torch.equal(got, want)
    assert Rollouts(rows, rows, {}).engine_logp
    assert not Rollouts(rows[1:2], rows, {}).engine_logp


def test_per_prompt_seeding_equals_one_call_per_prompt(tiny):
    tok, model = tiny
    engine = make_engine("hf", tok, model, max_batch=3)
    assert isinstance(engine, HFSampler) and engine.max_batch == 3
    prompts = [base.prompt_ids(tok, [{"role": "user", "content": task.make_problem(0, i).prompt}])
               for i in range(3)]
    comps, lps = SeededSampler(engine, per_prompt=True).sample(prompts, 2, 1.0, 1.0, 6, seed=5, first=3)
    each = [engine.generate_with_logprobs([p], 2, 1.0, 1.0, 6, 5 + 3 + i) for i, p in enumerate(prompts)]
    assert comps == [c[0] for c, _ in each]
    assert lps == [lp[0] for _, lp in each]  # the sampler's log-probs travel with the completions
    assert SeededSampler(engine).generate(prompts, 2, 1.0, 1.0, 6, seed=5) == engine.generate(
        prompts, 2, 1.0, 1.0, 6, 5)
    with pytest.raises(ValueError, match="--rollout-engine must be one of .'fast', 'hf', 'vllm'., got 'tgi'"):
        make_engine("tgi", tok, model)


@pytest.mark.parametrize("template", ["chat", "zero"])
def test_training_and_the_harness_prompt_alike(tiny, template):
    tok, _ = tiny
    p = task.make_problem(1, 7)
    train = make_prompt_fn(RunConfig(prompt_template=template), tok)(data.from_problem(p, "x"))
    problem = datasets.Problem("arith", "x", p.prompt, str(p.answer), "math")
    assert harness.prompt_ids(tok, problem, template) == train


class TwoRanks:
    """The collective answers of a second rank that has 3 micro-batches."""

    world = 2

    def largest(self, x: int) -> int:
        return max(int(x), 3)


def test_backends_lay_out_the_passes():
    idx = torch.arange(5)
    one, fsdp = Replicated(TwoRanks()), Sharded(TwoRanks())
    assert [t.tolist() for t in one.micro_batches(idx, 4)] == [[0, 1, 2, 3], [4]]
    padded = fsdp.micro_batches(idx, 4)  # every rank runs the same number of passes
    assert [t.tolist() for t in padded[:2]] == [t.tolist() for t in chunks(idx, 4)] and padded[2:] == [None]
    assert (one.loss_scale, fsdp.loss_scale) == (1.0, 2.0)
    assert (one.prompts_to_sample(3), fsdp.prompts_to_sample(3)) == (3, 4)
    assert isinstance(make_backend(RunConfig(fsdp=True, prompts_per_step=4), TwoRanks()), Sharded)
    assert type(make_backend(RunConfig(prompts_per_step=4), TwoRanks())) is Replicated
    with pytest.raises(SystemExit, match="--fsdp does not support --lora-r > 0"):
        make_backend(RunConfig(fsdp=True, lora_r=8, prompts_per_step=4), TwoRanks())
