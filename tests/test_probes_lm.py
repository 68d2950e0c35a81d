"""The LM probe: per-sample gradients (vmap) equal single-sample backward(); ghost Gram equals
the Gram of materialised per-sample gradients; Σ_i g_i is the estimator's gradient."""
import pytest
import torch

import estimators
from probes import ghost, lm


@pytest.fixture(scope="module")
def setting():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    model = lm.tiny_lm(hidden=16, dtype=torch.float64)
    lm.pretrain(model, 10)
    gen = torch.Generator().manual_seed(0)
    yield lm.LMSetting(model, [(1, 2), (3, 4), (2, 5)], 4, gen)
    torch.set_num_threads(n)


@pytest.mark.parametrize("name", ["grpo", "luffy"])
def test_vmap_per_sample_grads_equal_backward_loop(setting, name):
    ids, resp, b, d = lm.estimator_rows(setting, estimators.get(name))
    d = d.double()
    v = lm.per_sample_grads(setting.model, ids, resp, d)
    loop = lm.per_sample_grads_loop(setting.model, ids, resp, d)
    for k in v:
        assert torch.allclose(v[k], loop[k], atol=1e-12, rtol=1e-9), k
    # the per-sample gradients sum to the gradient of the estimator's own loss
    model = setting.model
    model.zero_grad()
    with torch.no_grad():
        lp_old = lm.token_logp(model(input_ids=ids).logits, resp).double()
    lp = lm.token_logp(model(input_ids=ids).logits, resp).double() * b.mask
    full = b.replace(logp=lp, logp_old=lp_old * b.mask)
    estimators.get(name)(full).loss.backward()
    total = torch.cat([-p.grad.reshape(-1) for n, p in model.named_parameters()])
    assert torch.allclose(lm.flat(v).sum(0), total, atol=1e-12, rtol=1e-9)
    model.zero_grad()


def test_ghost_gram_and_dots_equal_materialised(setting):
    ids, resp, b, d = lm.estimator_rows(setting, estimators.get("rloo"))
    d = d.double()
    F = lm.flat(lm.per_sample_grads(setting.model, ids, resp, d))
    model = setting.model
    with ghost.GramHooks(model) as gh:
        model.zero_grad()
        (lm.token_logp(model(input_ids=ids).logits, resp).double() * d).sum().backward()
    K = gh.gram()
    assert torch.allclose(K, F @ F.T, atol=1e-12, rtol=1e-9)
    gen = torch.Generator().manual_seed(1)
    v = {n: torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in model.named_parameters()}
    vf = torch.cat([v[n].reshape(-1) for n in lm.trainable(model)])
    assert torch.allclose(gh.dots(v), F @ vf, atol=1e-12, rtol=1e-9)
    model.zero_grad()


def test_ghost_refuses_tied_embeddings():
    from transformers import Qwen2Config, Qwen2ForCausalLM
    cfg = Qwen2Config(vocab_size=lm.VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    with pytest.raises(ValueError, match="tied"):
        ghost.GramHooks(Qwen2ForCausalLM(cfg))


def test_lora_per_sample_grads(setting):
    """Only the trainable (adapter) parameters get per-sample gradients."""
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(lm.tiny_lm(hidden=16, dtype=torch.float64),
                                peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], lora_alpha=4))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    s = lm.LMSetting(model, setting.pairs, 3, torch.Generator().manual_seed(0))
    ids, resp, b, d = lm.estimator_rows(s, estimators.get("reinforce"))
    d = d.double()
    v = lm.per_sample_grads(model, ids, resp, d)
    assert v and all("lora" in k for k in v)
    loop = lm.per_sample_grads_loop(model, ids, resp, d)
    for k in v:
        assert torch.allclose(v[k], loop[k], atol=1e-12, rtol=1e-9)


@pytest.mark.slow
def test_lm_variance_cli(tmp_path, capsys):
    from probes import variance
    assert variance.main(["--testbed", "lm", "--estimators", "rloo,grpo", "--lm-ref", "64", "--lm-steps", "20",
                          "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "testbed lm" in out and "rloo" in out


@pytest.mark.parametrize("T", [3, 24])
def test_ghost_with_padding_tokens_and_both_gram_forms(T):
    """Random ids (PAD included, whose embedding row gets no gradient) at a short and a long
    length, so both the ghost and the per-layer form are exercised; equal to vmap."""
    torch.manual_seed(0)
    model = lm.tiny_lm(hidden=16, layers=1, dtype=torch.float64)
    ids = torch.randint(0, lm.VOCAB, (4, T))
    ids[:, 1] = lm.PAD
    d = torch.randn(4, T - 1, dtype=torch.float64)

    def loss(p, x, di):
        logits = torch.func.functional_call(model, p, (x[None],)).logits
        return (torch.log_softmax(logits[0, :-1], -1).gather(-1, x[1:, None])[:, 0] * di).sum()

    params = {n: p.detach() for n, p in model.named_parameters()}
    F = lm.flat(torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, ids, d))
    with ghost.GramHooks(model) as gh:
        logits = model(input_ids=ids).logits
        (torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0] * d).sum().backward()
    assert torch.allclose(gh.gram(), F @ F.T, atol=1e-11, rtol=1e-9)
