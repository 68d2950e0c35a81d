"""The paper profiles (training/profiles.py): values, printed differences, CPU refusal."""
from __future__ import annotations

import io

import pytest

from training import profiles
from training.config import parse_args


def _apply(argv, cuda=True):
    out = io.StringIO()
    from training.config import RunConfig, build_parser, explicit_fields

    cfg = RunConfig(**vars(build_parser().parse_args(argv)))
    return profiles.apply_profile(cfg, explicit_fields(argv), cuda_available=cuda, out=out), out.getvalue()


def test_qwen_profile_values():
    cfg, _ = _apply(["hpt", "--profile", "paper-qwen2.5-math-1.5b"])
    assert (cfg.model, cfg.gate_gamma, cfg.n, cfg.temperature, cfg.lr, cfg.schedule) == \
        ("Qwen/Qwen2.5-Math-1.5B", 0, 8, 1.0, 5e-6, "constant")
    assert (cfg.prompts_per_step, cfg.mini_batches, cfg.entropy_coef, cfg.kl_coef) == (128, 2, 0.001, 0.0)
    assert (cfg.grad_clip, cfg.max_grad_norm, cfg.max_prompt_tokens, cfg.max_new_tokens) == (1.0, 80.0, 1024, 8192)
    assert (cfg.rope_theta, cfg.max_position_embeddings, cfg.prompt_template) == (40000.0, 16384, "chat")
    assert cfg.sft_coef == 1.0 and cfg.rollout_engine == "vllm"


def test_llama_profile_values():
    cfg, _ = _apply(["hpt", "--profile", "paper-llama-3.1-8b"])
    assert cfg.gate_gamma == 2 and cfg.max_grad_norm == float("inf")
    assert cfg.prompt_template == "zero" and cfg.rope_theta is None


def test_explicit_flags_win():
    cfg, text = _apply(["hpt", "--profile", "paper-qwen2.5-math-1.5b", "--sft-coef", "0.3"])
    assert cfg.sft_coef == 0.3 and "given on the command line" in text


def test_differences_printed():
    _, text = _apply(["hpt", "--profile", "paper-qwen2.5-math-1.5b"])
    assert "advantage: R − mean(R), no std" in text and "grpo_use_std=False" in text
    assert "0.3" in text and "sft_coef" in text and "rope_theta" in text
    _, text = _apply(["hpt", "--profile", "paper-llama-3.1-8b"])
    assert "data.zero=True" in text and "rope_theta" not in text


def test_cpu_refusal():
    with pytest.raises(SystemExit, match="needs a CUDA GPU .found none.; pass --device cpu"):
        _apply(["hpt", "--profile", "paper-qwen2.5-math-7b"], cuda=False)
    cfg, _ = _apply(["hpt", "--profile", "paper-qwen2.5-math-7b", "--device", "cpu"], cuda=False)
    assert cfg.device == "cpu"


def test_unknown_profile():
    with pytest.raises(SystemExit, match="unknown profile"):
        parse_args(["hpt", "--profile", "nope"])


def test_vllm_missing_message(monkeypatch):
    import builtins

    from training.rollout import engines

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "vllm":
            raise ImportError("No module named 'vllm'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(SystemExit, match="pip install vllm.*setup_vllm_cpu.sh"):
        engines._vllm_sampler(None, None, None, "x")


def test_tis_wraps_rl_denominator():
    import estimators
    from estimators.parts import TruncatedIS

    from training.rollout import engines

    est = engines.with_tis(estimators.get("hpt"), 3.0)
    assert isinstance(est.rl.denominator, TruncatedIS) and est.rl.denominator.cap == 3.0
    assert not isinstance(est.sft.denominator, TruncatedIS)
