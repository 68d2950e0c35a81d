"""Batch-level steps of the methods (`estimators.TrainerSteps`), as small functions the trainer
picks once at construction time:

=======================  ======================================================================
TrainerSteps flag        what the trainer does (function here)
=======================  ======================================================================
(rows = demos, SFT)      one demonstration row per prompt, no sampling (`demos_only`)
(none)                   n on-policy rollouts per prompt (`rollouts_only`)
``demo_in_group``        n−1 rollouts + the prompt's demonstration in one group (`demo_in_group`)
``gated_demos``          n rollouts + the demonstration, same group id; the Hybrid's gate
                         weights them (α on rollouts, β on the demo) (`gated_demos`)
``dynamic_sampling``     drop groups whose rewards are all equal, refill (`drop_all_equal`)
``overlong_buffer``      DAPO Eq. 13 soft length penalty on rollouts (`overlong_penalty`)
``value_head``           a critic head gives ``Batch.values`` (see `training.policy.ValueHead`)
=======================  ======================================================================

A `Row` is one sequence of the step; `to_batch` turns rows plus scored tensors into an
`estimators.Batch`. The values the loop's phases hand each other: `Rollouts` (the sampled rows,
with the engine's log-probs), `StepBatch` (the packed rows with π_θold), `MiniBatch` (one
optimizer step's rows and plan) and `StepMetrics` (the step's metrics, accumulated).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch

import records
from estimators import DEMOS, Batch, TrainerSteps

from .policy import Packed


# DAPO (arXiv 2503.14476 §3.4): L_max = 20480 generated tokens with an overlong buffer
# L_cache = 4096; a run with a different max length keeps the same ratio.
DAPO_MAX_RESPONSE = 20480


@dataclass(frozen=True)
class Row:
    """One sequence: its prompt/response token ids, reward, verdict and provenance."""

    prompt_ids: tuple
    response_ids: tuple
    reward: float
    correct: bool
    group: int
    is_demo: bool
    sample_idx: int
    example: object
    clipped: bool = False  # hit max_new_tokens without an eos (or a truncated demo)
    behavior_logp: Optional[tuple] = None  # the engine's log-probs of the response (vLLM)
    reward_baseline: Optional[float] = None  # reward of the prompt's greedy rollout (ReMax)

    @property
    def source(self) -> str:
        return "demo" if self.is_demo else "rollout"


@dataclass(frozen=True)
class Need:
    """What a group builder asks the sampler for: ``rollouts`` per prompt and whether to add
    the prompt's demonstration to its group."""

    rollouts: int
    demo: bool


def demos_only(n: int) -> Need:
    return Need(0, True)


def rollouts_only(n: int) -> Need:
    return Need(n, False)


def demo_in_group(n: int) -> Need:
    return Need(n - 1, True)


def gated_demos(n: int) -> Need:
    return Need(n, True)


def group_layout(est, n: int) -> Need:
    """The rows per prompt this estimator needs (read from its TrainerSteps / rows)."""
    t: TrainerSteps = est.trainer
    builder = (demos_only if getattr(est, "rows", None) == DEMOS else
               demo_in_group if t.demo_in_group else
               gated_demos if t.gated_demos else rollouts_only)
    return builder(n)


# ---------------------------------------------------------------------------- reward shaping

def overlong_penalty(length: int, max_len: int, buffer: int, penalty: float) -> float:
    """DAPO Eq. 13: 0 up to L_max − L_cache, then linear down to −penalty at L_max, −penalty
    beyond (L = response length, L_max = ``max_len``, L_cache = ``buffer``)."""
    start = max_len - buffer
    if length <= start:
        return 0.0
    if length <= max_len:
        return -penalty * (length - start) / buffer
    return -penalty


def scaled_buffer(buffer: int, max_new_tokens: int) -> int:
    """DAPO's L_cache scaled to this run's max length (same L_cache / L_max ratio)."""
    return max(1, round(buffer * max_new_tokens / DAPO_MAX_RESPONSE)) if buffer else 0


def shape_overlong(rows: list[Row], max_len: int, buffer: int, penalty: float) -> list[Row]:
    """Add the overlong penalty to every rollout's reward (demos are not shaped). The length
    counted is the response without its eos token."""
    if not buffer:
        return rows
    return [r if r.is_demo else
            replace(r, reward=r.reward + overlong_penalty(_length(r), max_len, buffer, penalty))
            for r in rows]


def _length(r: Row) -> int:
    return len(r.response_ids) - (0 if r.clipped else 1)


# --------------------------------------------------------------------------- group filtering

def keep_all(rows: list[Row]) -> list[Row]:
    return rows


def drop_all_equal(rows: list[Row]) -> list[Row]:
    """DAPO dynamic sampling (Eq. 11 constraint 0 < |{correct}| < G): drop every group whose
    rollout rewards are all equal (no learning signal)."""
    bad = {g for g in groups_of(rows) if _all_equal([r.reward for r in rows if r.group == g and not r.is_demo])}
    return [r for r in rows if r.group not in bad]


def _all_equal(xs: list[float]) -> bool:
    return len(xs) > 0 and max(xs) - min(xs) < 1e-12


def all_equal_fraction(rows: list[Row]) -> float:
    gs = groups_of(rows)
    eq = [_all_equal([r.reward for r in rows if r.group == g and not r.is_demo]) for g in gs]
    return sum(eq) / len(eq) if eq else 0.0


def groups_of(rows: list[Row]) -> list[int]:
    """Group ids in order of first appearance."""
    return list(dict.fromkeys(r.group for r in rows))


def group_filter(t: TrainerSteps) -> Callable[[list[Row]], list[Row]]:
    return drop_all_equal if t.dynamic_sampling else keep_all


# ---------------------------------------------------------------------------------- batches

def to_batch(rows: list[Row], logp, mask, values: Optional[torch.Tensor] = None,
             logp_ref: Optional[torch.Tensor] = None) -> Batch:
    """The estimator's Batch for ``rows`` (``logp`` also serves as π_θold: no-grad forward);
    ``reward_baseline`` when every row carries one."""
    dev = logp.device
    greedy = [r.reward_baseline for r in rows]
    return Batch(logp=logp, mask=mask,
                 reward=torch.tensor([r.reward for r in rows], dtype=logp.dtype, device=dev),
                 group=torch.tensor([r.group for r in rows], dtype=torch.long, device=dev),
                 is_demo=torch.tensor([r.is_demo for r in rows], dtype=torch.bool, device=dev),
                 logp_old=logp.detach(), values=values, logp_ref=logp_ref,
                 reward_baseline=(torch.tensor(greedy, dtype=logp.dtype, device=dev)
                                  if greedy and None not in greedy else None))


def minibatches(rows: list[Row], k: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Row indices of ``k`` mini-batches made of whole groups (shuffled with ``generator``)."""
    gs = groups_of(rows)
    order = [gs[i] for i in torch.randperm(len(gs), generator=generator).tolist()] if k > 1 else gs
    k = max(1, min(k, len(gs)))
    out = []
    for part in range(k):
        chosen = set(order[part::k])
        out.append(torch.tensor([i for i, r in enumerate(rows) if r.group in chosen], dtype=torch.long))
    return out


def chunks(idx: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [idx[i:i + size] for i in range(0, len(idx), size)] if len(idx) else []


class Passes(list):
    """Micro-batches (row indices, or None for a zero-weight pass) with ``demo``: per pass,
    whether it holds demonstration rows (never mixed with rollouts)."""

    def __init__(self, parts=(), demo=None):
        super().__init__(parts)
        self.demo = list(demo) if demo is not None else [False] * len(self)


def source_chunks(idx: torch.Tensor, size: int, is_demo: Optional[torch.Tensor] = None,
                  pad=lambda n: n) -> Passes:
    """``idx`` in chunks of ``size`` rows. With ``is_demo`` [B] (the gradient passes), the
    rollout rows' chunks then the demonstration rows': no chunk mixes the two, so the update
    splits exactly into their parts, and a source with two rows or more takes at least two
    chunks, so the spread of its micro-batch gradients can be measured
    (``training.diagnostics``). The gradient is a sum over rows: any partition gives it.
    ``pad(n)``: how many passes a source's n chunks take (FSDP: as many as on any rank; the
    extra passes are None)."""
    if is_demo is None:
        parts = chunks(idx, size)
        return Passes(parts + [None] * (pad(len(parts)) - len(parts)))
    demo = is_demo[idx].cpu()
    out = Passes()
    for flag in (False, True):
        rows = idx[demo == flag]
        parts = chunks(rows, min(size, max(1, -(-len(rows) // 2))))
        parts += [None] * (pad(len(parts)) - len(parts))
        out += parts
        out.demo += [flag] * len(parts)
    return out


# ------------------------------------------------------------------ the step's values

@dataclass
class Rollouts:
    """One step's sampled groups: ``rows`` to train (each rollout with the engine's log-probs
    when the engine returns them), every row ``generated`` (dynamic sampling drops some), and
    the rollout metrics."""

    rows: list[Row]
    generated: list[Row]
    metrics: dict

    @property
    def engine_logp(self) -> bool:
        return any(r.behavior_logp is not None for r in self.rows)

    def behavior_logp(self, logp_old: torch.Tensor) -> torch.Tensor:
        """[B,T] behaviour log-probs: the engine's where it returned them, else π_θold's (ratio 1)."""
        out = logp_old.detach().clone()
        for i, r in enumerate(self.rows):
            if r.behavior_logp is not None:
                n = min(len(r.behavior_logp), out.shape[1])
                out[i, :n] = torch.tensor(r.behavior_logp[:n], dtype=out.dtype, device=out.device)
        return out


class StepMetrics(dict):
    """The step's metrics row (records keys), filled by the phases of the step; also the gate's
    decisions (group → "sft" | "rl") and the token sums behind train/entropy, train/demo_nll,
    rollout/logp_gap and the rollout correction's statistics (rollout/is_*)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gates: dict = {}
        self.sums = torch.zeros(10, dtype=torch.float64)  # see `tokens`
        self.is_max = 0.0                                 # largest rollout-correction weight

    def add(self, key: str, value: float) -> None:
        self[key] = self.get(key, 0.0) + value

    def token_means(self, dist) -> dict:
        """train/entropy over the response tokens scored this step, train/demo_nll over their
        demonstration tokens and rollout/logp_gap over their rollout tokens, over all ranks."""
        ent, n, nll, n_demo, gap, n_gap, w, w2, n_is, changed = dist.sum_tensor(self.sums).tolist()  # one collective
        out = {records.TRAIN_ENTROPY: ent / max(n, 1.0)}
        if n_demo > 0:
            out[records.TRAIN_DEMO_NLL] = nll / n_demo
        if n_gap > 0:
            out[records.ROLLOUT_LOGP_GAP] = gap / n_gap
        if n_is > 0:  # the same on every rank (summed), so every rank gathers
            out[records.ROLLOUT_IS_ESS] = w * w / (n_is * w2) if w2 > 0 else 0.0
            out[records.ROLLOUT_IS_CORRECTED] = changed / n_is
            out[records.ROLLOUT_IS_WEIGHT_MAX] = max(dist.gather([self.is_max]))
        return out

    def tokens(self, scored, b: Batch, known: bool, correction=None) -> None:
        """Add the entropy and demonstration NLL of scored rows (``b``: their Batch, π_θold =
        the scored log-probs) to the step's sums, and, when the sampler returned its log-probs
        (``known``), Σ |log p_sampler − log π_θold| over their rollout tokens and the sums of
        the rollout ``correction``'s weights (`estimators.parts.RolloutIS.summary`)."""
        T = scored.logp.shape[1]
        mask = b.mask[:, :T]
        demo = b.is_demo[:, None] * mask
        roll = b.rollouts[:, None] * mask * float(known)
        with torch.no_grad():
            gap = (b.logp_behavior[:, :T] - b.logp_old[:, :T]).abs() * roll
            self.sums[:6] += torch.stack([(scored.entropy * mask).sum(), mask.sum(),
                                          -(scored.logp * demo).sum(), demo.sum(), gap.sum(),
                                          roll.sum()]).double().cpu()
            if correction is not None and known:
                w, w2, n, changed, top = correction.summary(b).double().cpu().tolist()
                self.sums[6:] += torch.tensor([w, w2, n, changed], dtype=torch.float64)
                self.is_max = max(self.is_max, top)


@dataclass
class StepBatch:
    """The step's rows as the model sees them (``packed``) and as the estimator sees them
    (``batch``, with π_θold); ``one_pass``: π_θold comes from the gradient pass itself;
    ``sampler_logp``: the rollouts carry the sampler's log-probs (``batch.logp_behavior``)."""

    packed: Packed
    batch: object
    one_pass: bool
    sampler_logp: bool = False


@dataclass
class MiniBatch:
    """One optimizer step's rows: their packed token ids, Batch and plan (normalisers over
    every rank), the rows with a non-zero weight (``trained``) and the critic's target."""

    stage: object  # training.stages.Stage
    packed: Packed
    batch: object
    plan: object
    trained: torch.Tensor
    target: object
    one_pass: bool
    sampler_logp: bool = False


def _first_groups(rows: list[Row], k: int) -> list[Row]:
    keep = set(groups_of(rows)[:k])
    return [r for r in rows if r.group in keep]


def _select_packed(p: Packed, idx: torch.Tensor, trim: bool = True) -> Packed:
    """Rows ``idx`` of a packed batch; ``trim`` drops response columns that are all padding."""
    mask = p.mask[idx]
    T = max(1, int(mask.sum(-1).max())) if trim and len(idx) else p.width
    P = p.prompt_width
    return Packed(p.ids[idx, :P + T], p.attention[idx, :P + T], p.positions[idx, :P + T],
                  mask[:, :T], P)


def _gate_metrics(sub, trained: torch.Tensor, m: dict) -> None:
    """gate/offline_ratio: demo rows / all rows trained in the (mini-)batch."""
    demo = sub.is_demo[trained]
    m[records.GATE_OFFLINE_RATIO] = float(demo.float().mean()) if len(trained) else 0.0


def _rollout_metrics(rows: list[Row], max_new_tokens: int) -> dict:
    roll = [r for r in rows if not r.is_demo]
    if not roll:
        return {records.ROLLOUT_SAMPLES: 0}
    return {records.ROLLOUT_REWARD: sum(r.reward for r in roll) / len(roll),
            records.ROLLOUT_ACCURACY: sum(r.correct for r in roll) / len(roll),
            records.ROLLOUT_LENGTH: sum(len(r.response_ids) for r in roll) / len(roll),
            records.ROLLOUT_CLIP_FRACTION: sum(r.clipped for r in roll) / len(roll),
            records.ROLLOUT_ALL_EQUAL: all_equal_fraction(roll),
            records.ROLLOUT_SAMPLES: len(roll)}
