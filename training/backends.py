"""The objects a run picks once at construction so that the loop never asks what it runs on.

Process layout — how the step's forward/backward passes are spread over the processes:

    backend = make_backend(cfg, dist)   # Replicated (one process, or data parallel)
                                        # Sharded (FSDP2: --fsdp with several processes)

Value model and reference policy — null objects where the method has none:

    Critic(head, coef) | NoCritic()     # PPO's value head V(s), trained with ½(V − R)²
    policy.Reference | NoReference()    # π_ref for a KL term

Each rank's loss is its share of the global surrogate, whose gradient is the *sum* over ranks
(docs/estimators.md). `Replicated` sums gradients explicitly (`distributed.sum_grads`); FSDP
*averages* them while reduce-scattering, so `Sharded` multiplies the loss by the world size.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import records

from . import batching, distributed


class Replicated:
    """Every rank holds the whole model: one process, or data parallel with gradients summed
    over ranks before the optimizer step. Ranks may run different numbers of passes."""

    loss_scale = 1.0

    def __init__(self, dist):
        self.dist = dist

    def shard(self, module):
        """``module`` laid out for this backend (here: as it is)."""
        return module

    def prompts_to_sample(self, missing: int) -> int:
        """How many prompts the ranks sample together when ``missing`` are still needed."""
        return missing

    per_pass = False  # each pass's gradient is this rank's alone (summed over ranks at the step)

    def micro_batches(self, idx: torch.Tensor, size: int, is_demo=None) -> list:
        """``idx`` in chunks of ``size`` rows (with ``is_demo``: rollouts and demonstrations in
        separate chunks, `batching.source_chunks`), as `batching.Passes`."""
        return batching.source_chunks(idx, size, is_demo)

    def full_state(self, model, optimizer, critic_head):
        """The whole (model, optimizer) state for a checkpoint; None: the live objects are whole."""
        return None

    def load_full(self, critic_head):
        """How to load a checkpoint's whole state into sharded objects; None: load directly."""
        return None


class Sharded(Replicated):
    """FSDP2 (`distributed.shard`): parameters, gradients and optimizer state split over the
    ranks. Every forward/backward pass all-gathers weights, so all ranks run the same number
    of passes: generation samples equally many prompts on every rank, and a rank with fewer
    micro-batches gets ``None`` entries, on which the trainer runs a zero-weight pass."""

    @property
    def loss_scale(self) -> float:
        return float(self.dist.world)

    def shard(self, module):
        return distributed.shard(module)

    def prompts_to_sample(self, missing: int) -> int:
        return -(-missing // self.dist.world) * self.dist.world

    per_pass = True  # FSDP reduce-scatters every pass: its gradient is every rank's already

    def micro_batches(self, idx: torch.Tensor, size: int, is_demo=None) -> list:
        return batching.source_chunks(idx, size, is_demo, pad=self.dist.largest)

    def full_state(self, model, optimizer, critic_head):
        # every rank takes part in gathering the full state; rank 0 writes it
        return distributed.full_state_dicts(model, optimizer, critic_head)

    def load_full(self, critic_head):
        return functools.partial(distributed.load_full_state_dicts, critic=critic_head)


def make_backend(cfg, dist):
    """`Sharded` for ``--fsdp`` with several processes, else `Replicated`; the combinations
    FSDP does not support yet stop here with the reason."""
    if not cfg.fsdp:
        return Replicated(dist)
    unsupported = {
        "--lora-r > 0 (LoRA adapters are small: plain data parallel is enough)": cfg.lora_r > 0,
        f"--prompts-per-step {cfg.prompts_per_step} not divisible by {dist.world} processes "
        "(every rank must sample as many prompts)": cfg.prompts_per_step % max(dist.world, 1) != 0,
    }
    bad = [what for what, hit in unsupported.items() if hit]
    if bad:
        raise SystemExit("--fsdp does not support " + "; ".join(bad))
    return Sharded(dist) if dist.world > 1 else Replicated(dist)


# ------------------------------------------------------------------------------ value model

@dataclass
class Critic:
    """PPO's value head (`policy.ValueHead` on the policy's last hidden state), trained beside
    the surrogate with ``coef`` · ½ Σ_t mask·(V_t − R_t)² / (tokens trained, all ranks), where R
    are the advantage's returns (GAE)."""

    head: torch.nn.Module
    coef: float
    needs_old_values = True  # the GAE advantage reads V_θold: no single-pass steps

    def target(self, stage, plan, n_tok: torch.Tensor) -> "ValueTarget":
        return ValueTarget(plan.returns, n_tok, self.coef, stage.epochs)


@dataclass
class ValueTarget:
    """The returns of one mini-batch; `loss` is the critic's term of one micro-batch."""

    returns: torch.Tensor
    n_tok: torch.Tensor
    coef: float
    epochs: int

    def loss(self, scored, micro: torch.Tensor, mask: torch.Tensor, m) -> torch.Tensor:
        v = F.pad(scored.values, (0, mask.shape[1] - scored.values.shape[1]))
        vloss = 0.5 * (((v - self.returns[micro]) ** 2) * mask).sum() / self.n_tok
        m.add(records.TRAIN_VALUE_LOSS, vloss.item() / self.epochs)
        return self.coef * vloss


class NoCritic:
    """Null object: no value head, no value loss."""

    head = None
    needs_old_values = False

    def target(self, stage, plan, n_tok) -> "NoTarget":
        return NoTarget()


class NoTarget:
    def loss(self, scored, micro, mask, m) -> float:
        return 0.0


class NoReference:
    """Null object: no KL term, so no reference log-probs."""

    def logp(self, packed):
        return None
