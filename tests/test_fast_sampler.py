"""The fast rollout engine (training/rollout/fast.py) against HF ``generate`` (the reference
path) and the trainer: same greedy tokens, same processed log-probs, the model's exact
first-token distribution under sampling (χ²), stop ids and padding, early stop, seeding; and the
embedded base's cache key (training/base.py)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from scipy import stats
from transformers import TemperatureLogitsWarper, TopPLogitsWarper

from training import base, policy
from training.config import RunConfig
from training.rollout import engines, fast
from training.rollout.engines import SeededSampler, make_engine
from training.rollout.fast import FastSampler, UnsupportedModel
from training.rollout.hf import HFSampler

torch.set_num_threads(1)
EOS, PAD = 1, 0


def llama(seed=0, std=0.3):
    """A random Llama of the embedded family (char vocabulary, tied head), its matrices drawn
    with ``std`` (HF's 0.02 gives a model that repeats one token forever)."""
    tok = base.char_tokenizer()
    cfg = base.BaseConfig(hidden_size=32, layers=2, heads=2, kv_heads=2, intermediate_size=64,
                          seed=seed)
    model = base.build_model(cfg, tok).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, std)
    return model


def qwen(seed=0, vocab=96, std=0.3):
    """A random Qwen2 with grouped-query attention, q/k/v biases and an untied head."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False, pad_token_id=PAD, eos_token_id=EOS,
                      bos_token_id=EOS, attn_implementation="eager")
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std) if p.dim() == 2 else p.add_(torch.randn_like(p) * std)
    return model


def prompts(n=5, seed=0, vocab=96):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(8, vocab, (int(torch.randint(2, 9, (1,), generator=g)),),
                          generator=g).tolist() for _ in range(n)]


MODELS = {"llama": llama, "qwen2": qwen}


@pytest.mark.parametrize("kind", MODELS)
def test_greedy_decoding_gives_hf_generates_tokens(kind):
    """Left-padded prompts of different lengths, 20 new tokens: token for token the same."""
    model = MODELS[kind]()
    ps = prompts()
    want = HFSampler(model, EOS, PAD).generate(ps, 1, 0.0, 1.0, 20, seed=0)
    got = FastSampler(model, EOS, PAD).generate(ps, 1, 0.0, 1.0, 20, seed=0)
    assert got == want
    assert all(len(set(c[0])) > 3 for c in got)  # varied continuations, not one repeated token


@pytest.mark.parametrize("kind", MODELS)
def test_stop_ids_padding_and_early_stop_match_hf(kind, monkeypatch):
    """With stop ids that end the rows at different steps, both engines give the same (cut)
    completions; the fast loop runs no forward pass after every row has ended."""
    model = MODELS[kind]()
    ps = prompts(6, seed=1)
    free = FastSampler(model, EOS, PAD).generate(ps, 1, 0.0, 1.0, 24, seed=0)
    stops = sorted({c[0][2 + 3 * i] for i, c in enumerate(free)})  # each row emits one of them
    want = HFSampler(model, EOS, PAD, stop_ids=stops).generate(ps, 1, 0.0, 1.0, 24, seed=0)
    calls = []
    forward = fast.forward
    monkeypatch.setattr(fast, "forward", lambda *a: calls.append(1) or forward(*a))
    got = FastSampler(model, EOS, PAD, stop_ids=stops).generate(ps, 1, 0.0, 1.0, 24, seed=0)
    assert got == want
    lengths = [len(c[0]) for c in got]
    assert all(c[0][-1] in stops for c in got if len(c[0]) < 24)
    assert min(lengths) < max(lengths) < 24      # rows end at different steps, all before 24
    assert len(calls) == max(lengths)            # prefill + one pass per step until the last ends


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_sampled_logprobs_equal_the_trainers(kind, temperature):
    """The log-probs the engine records for its sampled tokens equal `policy.score`'s (the
    trainer's, at the rollout temperature) to 1e-5."""
    model = MODELS[kind]()
    ps = prompts()
    comps, lps = FastSampler(model, EOS, PAD).generate_with_logprobs(ps, 3, temperature, 1.0, 16, seed=5)
    flat_p = [p for p, cs in zip(ps, comps) for _ in cs]
    flat_c = [c for cs in comps for c in cs]
    engine = [lp for row in lps for lp in row]
    assert [len(x) for x in engine] == [len(c) for c in flat_c]
    with torch.no_grad():
        logp = policy.score(model, policy.pack(flat_p, flat_c, PAD), temperature=temperature).logp
    gaps = [abs(logp[i, t].item() - x) for i, row in enumerate(engine) for t, x in enumerate(row)]
    assert len(gaps) > 100 and max(gaps) < 1e-5, max(gaps)


def test_top_p_logprobs_are_hf_generates_processed_scores():
    """With top-p, each recorded log-prob is the log-softmax of the scores HF ``generate``
    samples from (transformers' temperature and top-p warpers on a full forward pass)."""
    model = qwen()
    ps = prompts(3)
    T, top_p = 0.8, 0.7
    comps, lps = FastSampler(model, EOS, PAD).generate_with_logprobs(ps, 4, T, top_p, 12, seed=2)
    gaps = []
    for p, cs, ls in zip(ps, comps, lps):
        for c, lp in zip(cs, ls):
            with torch.no_grad():
                logits = model(torch.tensor([p + c])).logits[0, len(p) - 1:-1]
            scores = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(T)(None, logits))
            want = torch.log_softmax(scores, -1).gather(-1, torch.tensor(c)[:, None]).squeeze(-1)
            assert torch.isfinite(want).all()  # every sampled token is inside the nucleus
            gaps += (want - torch.tensor(lp)).abs().tolist()
    assert len(gaps) > 50 and max(gaps) < 1e-5, max(gaps)


def first_token_chi2(model, prompt, temperature, top_p, N, want_T):
    """χ² p-value of N sampled first tokens against softmax(processed logits at ``want_T``)."""
    comps = FastSampler(model, EOS, PAD).generate([prompt], N, temperature, top_p, 1, seed=11)[0]
    first = [c[0] if c else PAD for c in comps]  # a sampled padding token is stripped
    counts = torch.bincount(torch.tensor(first), minlength=model.config.vocab_size)
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1]
    scores = TemperatureLogitsWarper(want_T)(None, logits[None].float())  # HF's processors
    probs = torch.softmax(TopPLogitsWarper(top_p)(None, scores)[0], -1).double()
    big = probs * N >= 5  # bins with enough expected counts; the rest pooled into one
    obs = torch.cat([counts[big].double(), counts[~big].sum(0, keepdim=True).double()])
    exp = torch.cat([probs[big] * N, probs[~big].sum(0, keepdim=True) * N])
    keep = exp > 0
    assert (obs[~keep] == 0).all()  # nothing sampled where the distribution has no mass
    exp = exp[keep] * obs.sum() / exp[keep].sum()  # float rounding of Σp = 1
    return stats.chisquare(obs[keep].numpy(), exp.numpy()).pvalue, int(big.sum())


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_first_token_frequencies_follow_the_models_distribution(temperature, top_p):
    """4000 samples of the first token: χ² against the exact distribution accepts it (p > 1e-3),
    and rejects the distribution of another temperature (the test can fail)."""
    model = llama(std=0.2)
    prompt = prompts(1, seed=3)[0]
    p, bins = first_token_chi2(model, prompt, temperature, top_p, 4000, temperature)
    assert bins >= 5 and p > 1e-3, (p, bins)
    wrong, _ = first_token_chi2(model, prompt, temperature, top_p, 4000, temperature * 1.5)
    assert wrong < 1e-6, wrong


def test_seeds_give_the_same_rollouts_whatever_the_batch():
    """Same seed, same rollouts; a prompt's rollouts depend on its own seed only (not on the other
    prompts of the call, nor on their padding), so per-prompt seeding is one batched call,
    equal to one call each."""
    model = qwen()
    ps = prompts(4)
    s = FastSampler(model, EOS, PAD)
    a = s.generate_with_logprobs(ps, 3, 1.0, 1.0, 10, seed=7)
    assert a == s.generate_with_logprobs(ps, 3, 1.0, 1.0, 10, seed=7)
    assert a[0] != s.generate(ps, 3, 1.0, 1.0, 10, seed=8)
    seeded = SeededSampler(s, per_prompt=True).sample(ps, 3, 1.0, 1.0, 10, seed=5, first=2)
    each = [s.generate_with_logprobs([p], 3, 1.0, 1.0, 10, seed=0, prompt_seeds=[5 + 2 + i])
            for i, p in enumerate(ps)]
    assert seeded[0] == [c[0] for c, _ in each]  # the same tokens; log-probs up to float
    flat = lambda lps: torch.tensor([x for p in lps for row in p for x in row])  # noqa: E731
    torch.testing.assert_close(flat(seeded[1]), flat([lp[0] for _, lp in each]), rtol=0, atol=1e-5)
    small = FastSampler(model, EOS, PAD, max_batch=3)  # one prompt per decode batch
    assert small.generate_with_logprobs(ps, 3, 1.0, 1.0, 10, seed=7)[0] == a[0]


def test_the_training_model_is_left_in_its_mode_and_lora_is_sampled():
    """Sampling leaves train mode as it was; a peft LoRA model samples with its adapter (greedy
    tokens equal HF ``generate``'s on the same wrapped model)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(qwen(), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    model.train()
    ps = prompts(3)
    got = FastSampler(model, EOS, PAD).generate(ps, 1, 0.0, 1.0, 12, seed=0)
    assert model.training
    assert got == HFSampler(model, EOS, PAD).generate(ps, 1, 0.0, 1.0, 12, seed=0)
    with model.disable_adapter():
        assert FastSampler(model, EOS, PAD).generate(ps, 1, 0.0, 1.0, 12, seed=0) != got


def test_auto_picks_fast_for_the_embedded_model_and_refuses_unsupported_models():
    tok = base.char_tokenizer()
    model = llama()
    assert engines.engine_for(RunConfig(), model) == "fast"
    assert engines.engine_for(RunConfig(model="some/dir"), model) == "hf"
    assert engines.engine_for(RunConfig(fsdp=True), model) == "hf"
    assert engines.engine_for(RunConfig(rollout_engine="hf"), model) == "hf"
    assert isinstance(make_engine("fast", tok, model), FastSampler)
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    assert engines.engine_for(RunConfig(), gpt2) == "hf"
    with pytest.raises(UnsupportedModel, match="model type 'gpt2'.*use --rollout-engine hf"):
        make_engine("fast", tok, gpt2)


def test_base_cache_key_changes_with_every_build_setting():
    """Every field of BaseConfig (architecture, sizes, recipe, seed) changes the cache key."""
    cfg = base.BaseConfig()
    other = {bool: lambda v: not v, int: lambda v: v + 1, float: lambda v: v * 2,
             str: lambda v: "qwen2" if v == "llama" else "llama", tuple: lambda v: v[:-1]}
    seen = {cfg.digest()}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        changed = dataclasses.replace(cfg, **{f.name: other[type(v)](v)})
        assert changed.digest() not in seen, f.name
        seen.add(changed.digest())
    assert base.base_path(cfg).name == f"base-{cfg.digest()}"


@pytest.mark.slow
def test_a_training_run_samples_and_evaluates_with_the_fast_engine(tmp_path, monkeypatch):
    """`training.run` with ``--rollout-engine fast``: the trainer's log-probs equal the engine's
    (``rollout/logp_gap`` ≈ 0 at every step) and every evaluation reports its CI half-width."""
    import records
    from training import run, task

    task.export(tmp_path / "heldout.jsonl", "test", count=10)
    monkeypatch.setenv("UPGE_CACHE", str(tmp_path / "cache"))
    tiny = base.BaseConfig(hidden_size=32, layers=2, heads=2, kv_heads=2, intermediate_size=64,
                           pretrain_steps=5, pretrain_batch=8)
    model = str(base.ensure_base(tiny, log=lambda s: None))
    trainer = run.main(["grpo", "--model", model, "--rollout-engine", "fast", "--runs-dir", str(tmp_path),
                        "--run-id", "r", "--eval-data", str(tmp_path / "heldout.jsonl"), "--steps", "2", "--prompts-per-step", "3", "--n", "4",
                        "--max-new-tokens", "16", "--eval-k", "1", "--eval-every", "0",
                        "--save-every", "0", "--progress", "false", "--threads", "1"])
    assert isinstance(trainer.sampler.inner, FastSampler)
    metrics, _ = records.read_metrics(tmp_path / "r")
    gaps = [m[records.ROLLOUT_LOGP_GAP] for m in metrics if records.ROLLOUT_LOGP_GAP in m]
    assert len(gaps) == 2 and max(gaps) < 1e-5, gaps
    evals = [m for m in metrics if records.EVAL_CI95 in m]
    assert len(evals) == 2 and all(0 <= m[records.EVAL_CI95] < 1 for m in evals)


def test_eval_ci_half_width_is_stratified_by_level():
    """The 'all' row's ci95 = 1.96·√(Σ_l (n_l/N)² s_l²/n_l) over the levels (the split's fixed
    strata), a level's = 1.96 · its plain standard error; `eval/ci95` is the 'all' avg@k's."""
    import math
    import statistics

    import records
    from training.evaluation.heldout import EvalResult

    correct = [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    res = EvalResult([1, 1, 1, 2, 2, 2], correct)
    avg = [sum(c) / 4 for c in correct]
    se2 = [statistics.variance(avg[:3]) / 3, statistics.variance(avg[3:]) / 3]
    want = 1.96 * math.sqrt(sum((3 / 6) ** 2 * v for v in se2))
    rows = {(r["level"], r["metric"], r["k"]): r for r in res.rows(0)}
    assert rows[("all", "avg@k", 4)]["ci95"] == pytest.approx(want, rel=1e-12)
    assert rows[("1", "avg@k", 4)]["ci95"] == pytest.approx(1.96 * math.sqrt(se2[0]), rel=1e-12)
    assert want < 1.96 * statistics.stdev(avg) / math.sqrt(6)  # the between-level spread is left out
    assert res.metrics()[records.EVAL_CI95] == pytest.approx(want, rel=1e-12)
