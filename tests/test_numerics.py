"""Real-scale numerics of the policy side: the sampling temperature in scoring, memory-bounded
log-probs and entropies, mixed precision with float32 master weights, the attention kernel and
gradient checkpointing (issue 12)."""
from __future__ import annotations

import pytest
import torch

from training import policy, precision
from training.logprobs import token_logp_entropy
from training.rollout.hf import HFSampler

torch.set_num_threads(1)


def naive(hidden, weight, bias, targets, mask, temperature):
    """log_softmax of the whole [B, T, V] logits in float64, gathered; entropy likewise."""
    z = (hidden.double() @ weight.double().T + (bias.double() if bias is not None else 0)) / temperature
    lp = torch.log_softmax(z, -1)
    logp = lp.gather(-1, targets[..., None]).squeeze(-1) * mask
    ent = -(lp.exp() * lp).sum(-1) * mask
    return logp, ent


def leaves(dtype, V=50_257, B=3, T=7, H=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(B, T, H, generator=g, dtype=dtype) * 2).requires_grad_()
    weight = torch.randn(V, H, generator=g, dtype=dtype).requires_grad_()
    bias = (torch.randn(V, generator=g, dtype=dtype) * 0.5).requires_grad_()
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=dtype)
    mask[0, 5:] = 0
    mask[1] = 0  # a row that is all padding
    return hidden, weight, bias, targets, mask, g


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_logprobs_and_entropy_equal_the_naive_float64_path(temperature):
    """Values and gradients (in hidden states, W and b) of Σ a·log p + Σ c·H, chunked over 4 tokens
    at a time, against the whole-vocabulary float64 computation (V = 50,257), to 1e-6."""
    hidden, weight, bias, targets, mask, g = leaves(torch.float64)
    V = weight.shape[0]
    a, c = (torch.randn(mask.shape, generator=g, dtype=torch.float64) for _ in range(2))
    logp, ent = token_logp_entropy(hidden, weight, bias, targets, mask, temperature,
                                   chunk_bytes=4 * 4 * V)  # 4 tokens per chunk
    want_logp, want_ent = naive(hidden, weight, bias, targets, mask, temperature)
    torch.testing.assert_close(logp, want_logp, rtol=0, atol=1e-6)
    torch.testing.assert_close(ent, want_ent, rtol=0, atol=1e-6)
    assert (logp[1] == 0).all() and (ent[1] == 0).all()
    got = torch.autograd.grad((a * logp).sum() + (c * ent).sum(), (hidden, weight, bias))
    want = torch.autograd.grad((a * want_logp).sum() + (c * want_ent).sum(), (hidden, weight, bias))
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)
    assert (got[0][1] == 0).all()  # padding gets exactly zero gradient


def test_chunked_float32_is_as_accurate_as_the_whole_vocabulary_float32_path():
    """In float32 (the training dtype) the chunked values are no further from float64 than
    ``log_softmax(logits.float())`` over the whole vocabulary (today's path) is."""
    hidden, weight, bias, targets, mask, _ = leaves(torch.float32)
    logp, ent = token_logp_entropy(hidden, weight, bias, targets, mask, 0.7, chunk_bytes=1 << 20)
    want_logp, want_ent = naive(hidden, weight, bias, targets, mask, 0.7)
    z = (hidden @ weight.T + bias) / 0.7
    lp = torch.log_softmax(z, -1)
    old_logp = lp.gather(-1, targets[..., None]).squeeze(-1) * mask
    old_ent = -(lp.exp() * lp).sum(-1) * mask
    for ours, old, want in ((logp, old_logp, want_logp), (ent, old_ent, want_ent)):
        assert (ours.double() - want).abs().max() <= 2 * (old.double() - want).abs().max() + 1e-6


def test_gradient_of_log_probs_alone_and_of_an_all_padding_batch():
    """An entropy no loss uses costs no backward work and changes nothing; a batch of padding
    only gives zeros and a zero (not a missing) gradient."""
    hidden, weight, bias, targets, mask, _ = leaves(torch.float64, V=50_000)
    logp, _ = token_logp_entropy(hidden, weight, None, targets, mask, 1.0, chunk_bytes=1 << 20)
    want_logp, _ = naive(hidden, weight, None, targets, mask, 1.0)
    got = torch.autograd.grad(logp.sum(), (hidden, weight))
    want = torch.autograd.grad(want_logp.sum(), (hidden, weight))
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)
    empty = torch.zeros_like(mask)
    logp, ent = token_logp_entropy(hidden, weight, bias, targets, empty)
    assert (logp == 0).all() and (ent == 0).all()
    (logp.sum() + ent.sum()).backward()
    assert (hidden.grad == 0).all() and (weight.grad == 0).all()


# --------------------------------------------------------------------- models from a config

def tiny_qwen(attn="eager", seed=0, vocab=96, head_scale=30.0):
    """A random Qwen2-architecture model (untied head scaled so that its distributions are far
    from uniform: temperature then changes log-probs by far more than the tolerances)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, bos_token_id=1,
                      attn_implementation=attn)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
    return model


def prompts(n=4, seed=0, vocab=96):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, vocab, (int(torch.randint(3, 7, (1,), generator=g)),),
                          generator=g).tolist() for _ in range(n)]


@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_trainer_logprobs_are_the_samplers_at_temperature(temperature):
    """HF ``generate`` samples from softmax(logits / T); the trainer's log-probs of the sampled
    tokens (``policy.score``) equal the sampler's own (its processed scores) to 1e-5."""
    model = tiny_qwen().eval()
    sampler = HFSampler(model, eos_id=1, pad_id=0)
    ps = prompts()
    comps, lps = sampler.generate_with_logprobs(ps, 3, temperature, 1.0, 12, seed=5)
    flat_p = [p for p, cs in zip(ps, comps) for _ in cs]
    flat_c = [c for cs in comps for c in cs]
    engine = [lp for row in lps for lp in row]
    assert [len(x) for x in engine] == [len(c) for c in flat_c]
    with torch.no_grad():
        logp = policy.score(model, policy.pack(flat_p, flat_c, 0), temperature=temperature).logp
    got = [logp[i, :len(c)].tolist() for i, c in enumerate(flat_c)]
    gaps = [abs(x - y) for a, b in zip(got, engine) for x, y in zip(a, b)]
    assert len(gaps) > 20 and max(gaps) < 1e-5, max(gaps)


def test_sampler_records_nothing_when_greedy_and_samples_as_before():
    """Greedy decoding has no sampling distribution; the recorder leaves sampling unchanged
    (same tokens as plain ``generate`` with the same seed and warpers)."""
    model = tiny_qwen().eval()
    sampler = HFSampler(model, eos_id=1, pad_id=0)
    ps = prompts(3, seed=2)
    assert sampler.generate_with_logprobs(ps, 1, 0.0, 1.0, 8, seed=0)[1] is None
    comps = sampler.generate(ps[:1], 4, 0.7, 0.9, 8, seed=3)
    torch.manual_seed(3)
    ids = torch.tensor([ps[0]] * 4)
    with torch.no_grad():
        plain = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                               temperature=0.7, top_p=0.9, top_k=0, max_new_tokens=8,
                               eos_token_id=1, pad_token_id=0)
    from training.rollout.hf import strip_completion

    assert comps[0] == [strip_completion(r, 1, 0) for r in plain[:, len(ps[0]):].tolist()]


def batch(vocab=96, seed=1):
    ps = prompts(4, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    rs = [torch.randint(2, vocab, (n,), generator=g).tolist() for n in (5, 9, 1, 7)]
    return policy.pack(ps, rs, 0)


def test_sdpa_and_eager_attention_give_the_same_logprobs():
    packed = batch()
    eager, sdpa = tiny_qwen("eager"), tiny_qwen("sdpa")
    sdpa.load_state_dict(eager.state_dict())
    with torch.no_grad():
        a = policy.score(eager, packed, temperature=0.8)
        b = policy.score(sdpa, packed, temperature=0.8)
    assert sdpa.config._attn_implementation == "sdpa"
    torch.testing.assert_close(a.logp, b.logp, rtol=0, atol=1e-5)
    torch.testing.assert_close(a.entropy, b.entropy, rtol=0, atol=1e-5)


def grads(model, packed):
    model.zero_grad()
    s = policy.score(model, packed, temperature=0.9)
    (s.logp.sum() + 0.1 * s.entropy.sum()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_gradient_checkpointing_gives_the_same_gradient():
    packed = batch()
    plain = tiny_qwen("sdpa").train()
    ckpt = tiny_qwen("sdpa").train()
    policy.enable_gradient_checkpointing(ckpt)
    assert ckpt.is_activation_checkpointing
    a, b = grads(plain, packed), grads(ckpt, packed)
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=0, atol=1e-6, msg=n)


def test_load_model_options(tmp_path):
    tiny_qwen().save_pretrained(tmp_path)
    m = policy.load_model(str(tmp_path), attn_implementation="auto", gradient_checkpointing=True)
    assert m.config._attn_implementation == ("sdpa" if torch.cuda.is_available() else "eager")
    assert m.is_activation_checkpointing
    assert next(m.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="attn-implementation"):
        policy.load_model(str(tmp_path), attn_implementation="fast")
    with pytest.raises(ValueError, match="--dtype"):
        precision.autocast_forward(m, "fp8")


# ------------------------------------------------------------------------- mixed precision

def sft_step(model, packed, lr):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    loss = -policy.score(model, packed).logp.sum() / packed.mask.sum()
    loss.backward()
    opt.step()


def test_bf16_autocast_keeps_updates_below_bfloat16_resolution():
    """AdamW's first step moves every weight by ≈ lr. With lr = 1e-4 that is far below
    bfloat16's resolution at weights of size ~0.5 (2⁻⁸·0.5 ≈ 2e-3): bfloat16 parameters round
    the update away, float32 master weights under bf16 autocast keep it."""
    packed = batch()
    fp32 = tiny_qwen("sdpa")
    w = fp32.lm_head.weight
    big = w.detach().abs() > 0.25  # weights whose bf16 spacing (≥ 2⁻¹⁰) dwarfs lr = 1e-4
    # today's --dtype bfloat16 path: parameters stored in bfloat16, trained directly
    bf16 = tiny_qwen("sdpa").to(torch.bfloat16)
    before = bf16.lm_head.weight.detach().clone()
    sft_step(bf16, packed, 1e-4)
    assert (bf16.lm_head.weight.detach()[big] == before[big]).all()  # every update rounded away
    # the recipe: float32 parameters, bf16 autocast forward
    mixed = precision.autocast_forward(tiny_qwen("sdpa"), "bfloat16")
    before = mixed.lm_head.weight.detach().clone()
    sft_step(mixed, packed, 1e-4)
    moved = (mixed.lm_head.weight.detach() - before)[big].abs()
    assert mixed.lm_head.weight.dtype == torch.float32
    assert (moved > 5e-5).float().mean() > 0.9


def test_bf16_autocast_step_agrees_with_float32_to_bfloat16_tolerance():
    """One step in bf16 autocast vs float32: log-probs (float32 in both) and the updated
    weights agree to bfloat16's tolerance."""
    packed = batch()
    fp32, mixed = tiny_qwen("sdpa"), precision.autocast_forward(tiny_qwen("sdpa"), "bfloat16")
    with torch.no_grad():
        a, b = policy.score(fp32, packed).logp, policy.score(mixed, packed).logp
    assert b.dtype == torch.float32
    assert (a - b).abs().max() < 0.05 * a.abs().max()  # bf16 matmuls (8 mantissa bits)
    assert (a - b).abs().max() > 0  # autocast really ran in bf16
    sft_step(fp32, packed, 1e-3)
    sft_step(mixed, packed, 1e-3)
    for (n, p), q in zip(fp32.named_parameters(), mixed.parameters()):
        torch.testing.assert_close(q, p, rtol=1.6e-2, atol=2e-3, msg=n)
