"""Parity with TRL 1.16's own loss code: truncated importance sampling (TIS) composed with the
PPO clip, as ``GRPOTrainer`` runs it with ``vllm_importance_sampling_mode="token_truncate"``.

TRL computes its loss only inside ``GRPOTrainer._compute_loss``. The test calls that method on
a trainer object created without ``__init__`` (no model download, no vLLM): its attributes are
set to TRL's own defaults (a real ``GRPOConfig`` and ``Accelerator``), and the one call that
runs the policy, ``_get_per_token_logps_and_entropies``, returns the test's log-probs — so
everything from log-probs to the loss (ratio, clip, ``* importance_sampling_ratio``,
normaliser) is TRL's code. The importance-sampling ratio itself TRL forms while generating
(``_generate_and_score_completions``, which needs vLLM); the test forms it as that branch does:
``clamp(exp(old − sampling), max=vllm_importance_sampling_clip_max)``.
"""
from __future__ import annotations

import os
from collections import defaultdict

import pytest
import torch

import estimators
from estimators import Batch
from training.rollout import engines

if os.environ.get("UPGE_REQUIRE_TRL") == "1":  # CI installs TRL: the test must run there
    import trl  # noqa: F401
trl = pytest.importorskip("trl")
from accelerate import Accelerator  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

DT = torch.float64


def trl_trainer(loss_type: str, tmp_path, eps_low: float, eps_high: float) -> GRPOTrainer:
    args = GRPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, loss_type=loss_type,
                      epsilon=eps_low, epsilon_high=eps_high, beta=0.0,
                      vllm_importance_sampling_mode="token_truncate")
    t = GRPOTrainer.__new__(GRPOTrainer)
    t.args, t.accelerator, t.model = args, Accelerator(cpu=True), torch.nn.Linear(1, 1)
    t.loss_type, t.epsilon_low, t.epsilon_high, t.beta = loss_type, args.epsilon, args.epsilon_high, args.beta
    t.importance_sampling_level, t.top_entropy_quantile = args.importance_sampling_level, args.top_entropy_quantile
    t.off_policy_mask_threshold = args.off_policy_mask_threshold
    t.use_vllm, t.vllm_importance_sampling_correction = True, True
    t.vllm_importance_sampling_mode = args.vllm_importance_sampling_mode
    t.vllm_importance_sampling_clip_max = args.vllm_importance_sampling_clip_max
    t.current_gradient_accumulation_steps, t._entropy_bonus_enabled, t.aux_loss_enabled = 1, False, False
    t._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    return t


def tensors(B=12, T=9, G=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).to(DT)
    logp = (-torch.rand(B, T, generator=g, dtype=DT) * 2 - 0.05).requires_grad_()
    old = logp.detach() + 0.15 * torch.randn(B, T, generator=g, dtype=DT)
    engine = old + 0.5 * torch.randn(B, T, generator=g, dtype=DT)        # sampler ≠ trainer
    reward = torch.randint(0, 2, (B,), generator=g).to(DT)
    reward[:G] = torch.tensor([1.0, 0.0, 0.0, 1.0])
    return Batch(logp=logp, mask=mask, reward=reward, group=torch.arange(B) // G, logp_old=old,
                 logp_behavior=engine)


def trl_loss(t: GRPOTrainer, b: Batch, adv: torch.Tensor) -> torch.Tensor:
    B, T = b.logp.shape
    is_ratio = torch.clamp(torch.exp((b.logp_old - b.logp_behavior) * b.mask),
                           max=t.vllm_importance_sampling_clip_max)
    t._get_per_token_logps_and_entropies = lambda *a, **k: (b.logp, torch.zeros_like(b.logp), None)
    inputs = {"prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
              "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": b.mask,
              "advantages": adv, "old_per_token_logps": b.logp_old, "importance_sampling_ratio": is_ratio,
              "num_items_in_batch": b.mask.sum()}
    return t._compute_loss(t.model, inputs)


@pytest.mark.parametrize("name, eps", [("grpo", (0.2, 0.2)), ("dapo", (0.2, 0.28))])
def test_tis_wrapped_gradient_equals_trl_token_truncate(name, eps, tmp_path):
    t = trl_trainer(name, tmp_path, *eps)
    est = engines.with_tis(estimators.get(name), cap=t.vllm_importance_sampling_clip_max)
    b = tensors(seed=1)
    ours = torch.autograd.grad(est(b).loss, b.logp)[0]
    theirs = torch.autograd.grad(trl_loss(t, b, est.advantage(b)), b.logp)[0]
    w = torch.exp(b.logp_old - b.logp_behavior)
    assert ((w * torch.exp(b.logp - b.logp_old) > 1 + eps[1]) & (b.mask > 0)).sum() > 5  # ρ·w leaves the band
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert ours.abs().sum() > 0


def test_tis_at_theta_old_keeps_every_token_gradient(tmp_path):
    """At θ = θ_old no token is clipped, whatever the engine's weights (the clip sees ρ = 1)."""
    b = tensors(seed=2)
    b = b.replace(logp_old=b.logp.detach())
    est = engines.with_tis(estimators.get("grpo"), cap=3.0)
    g = torch.autograd.grad(est(b).loss, b.logp)[0]
    adv = est.advantage(b)[:, None].expand_as(g)
    assert torch.all((g != 0) == ((b.mask > 0) & (adv != 0)))
