"""``python -m training.run PRESET [--field value ...]``: post-train with one estimator preset.

With no other flag it runs the embedded default: the tiny base model (built and cached on first
use) on the built-in arithmetic task, on a CPU, in minutes. The loop, top to bottom::

    for step:  sample → score → build groups (TrainerSteps) → Batch → plan once per optimizer
               step → micro-batches → backward → clip/skip → optimizer step → log → eval → save

Every method-specific choice (rows per group, dynamic sampling, overlong shaping, critic, KL,
two stages) is an object picked in `build`; the loop never asks which preset it runs.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import platform
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import estimators  # noqa: E402
import records  # noqa: E402
from estimators import Hybrid  # noqa: E402
from estimators.parts import ConstantNormaliser, KLPenalty, Switch  # noqa: E402

from . import base, batching, checkpoint, data, distributed, engines, evaluate, precision, task  # noqa: E402
from .batching import Row  # noqa: E402
from .config import TWO_STAGE, RunConfig, parse_args  # noqa: E402
from .policy import Packed, Reference, ValueHead, load_model, load_tokenizer, pack, score  # noqa: E402
from .reward import BoxedReward  # noqa: E402

OFFICIAL_RANKS = 8  # HPT/LUFFY: Σ tokens / max_response_length per rank, averaged over 8 ranks
DEMOS_TRUNCATED = "data/demos_truncated"  # count of demonstrations cut to max_new_tokens
ROLLOUT_SAMPLES = "rollout/samples"       # sequences generated this step (sample budget)
TRAIN_STOPPED_BAD = "train/nonfinite_loss"  # 1 when the step's loss was not finite


class RunStopped(RuntimeError):
    """The run stopped early (e.g. consecutive non-finite losses); records are kept."""


# =============================================================================== construction

def scale_constants(est, max_new_tokens: int):
    """Replace every `ConstantNormaliser`'s generation budget C with this run's: per-row
    (Dr. GRPO) C = max_new_tokens; pooled (official HPT/LUFFY, C = 8192·8) C = max_new_tokens·8."""
    changes = {}
    for f in dataclasses.fields(est):
        v = getattr(est, f.name)
        if isinstance(v, ConstantNormaliser):
            c = max_new_tokens * (1 if v.per_row else OFFICIAL_RANKS)
            changes[f.name] = dataclasses.replace(v, constant=float(c))
        elif isinstance(v, (estimators.Estimator, Hybrid)):
            changes[f.name] = scale_constants(v, max_new_tokens)
    return dataclasses.replace(est, **changes) if changes else est


def with_options(est, cfg: RunConfig):
    """Apply the run's overrides: entropy bonus, KL to the initial policy, gate γ."""
    if cfg.entropy_coef is not None:
        est = est.replace(entropy_coef=cfg.entropy_coef)
    if cfg.kl_coef > 0:
        kl = KLPenalty(coef=cfg.kl_coef, kind="k3")
        est = est.replace(rl=est.rl.replace(kl=kl)) if isinstance(est, Hybrid) else est.replace(kl=kl)
    if cfg.gate_gamma is not None and isinstance(getattr(est, "gate", None), Switch):
        est = est.replace(gate=dataclasses.replace(est.gate, gamma=cfg.gate_gamma))
    if cfg.sft_coef is not None and hasattr(getattr(est, "gate", None), "beta"):
        est = est.replace(gate=dataclasses.replace(est.gate, beta=cfg.sft_coef))
    if cfg.rollout_engine == "vllm":  # the engine returns behaviour log-probs: TIS
        est = engines.with_tis(est, cfg.tis_cap)
    return est


def uses_entropy(est) -> bool:
    return bool(est.entropy_coef) or any(uses_entropy(getattr(est, n)) for n in ("rl", "sft")
                                         if hasattr(est, n))


@dataclass
class Stage:
    """One estimator and the batch-level steps it needs, for steps [first, last]."""

    name: str
    est: object
    first: int
    last: int
    need: batching.Need
    shape: Callable[[list[Row]], list[Row]]
    keep: Callable[[list[Row]], list[Row]]
    refill_rounds: int
    epochs: int
    critic: bool
    entropy: bool

    @property
    def default_gate(self) -> str:
        """The samples' gate label when no gate decides: "sft" for demo-only training."""
        return "sft" if self.need.rollouts == 0 else "rl"


def make_stage(name: str, cfg: RunConfig, first: int, last: int) -> Stage:
    est = with_options(scale_constants(estimators.get(name), cfg.max_new_tokens), cfg)
    t = est.trainer
    buffer = batching.scaled_buffer(t.overlong_buffer, cfg.max_new_tokens)
    return Stage(
        name, est, first, last, batching.group_layout(est, cfg.n),
        shape=lambda rows: batching.shape_overlong(rows, cfg.max_new_tokens, buffer, t.overlong_penalty),
        keep=batching.group_filter(t),
        refill_rounds=cfg.dynamic_sampling_rounds if t.dynamic_sampling else 0,
        epochs=cfg.epochs if cfg.epochs is not None else t.epochs,
        critic=t.value_head, entropy=uses_entropy(est))


def make_stages(cfg: RunConfig) -> list[Stage]:
    """One stage per preset; a two-stage name (``sft_then_grpo``) splits the steps."""
    names = TWO_STAGE.get(cfg.preset, (cfg.preset,))
    if len(names) == 1:
        return [make_stage(names[0], cfg, 1, cfg.steps)]
    split = max(1, min(cfg.steps - 1, round(cfg.steps * cfg.stage_split)))
    return [make_stage(names[0], cfg, 1, split), make_stage(names[1], cfg, split + 1, cfg.steps)]


class NoReference:
    """Null object: no KL term, so no reference log-probs."""

    def logp(self, packed: Packed):
        return None


class Timers(defaultdict):
    """Wall time per phase (seconds)."""

    def __init__(self):
        super().__init__(float)

    @contextmanager
    def __call__(self, phase: str):
        t0 = time.time()
        yield
        self[phase] += time.time() - t0


@dataclass
class Trainer:
    cfg: RunConfig
    run_dir: Path
    writer: records.RunWriter
    model: object
    tok: object
    critic: Optional[ValueHead]
    reference: object
    sampler: object
    reward_fn: Callable
    stages: list
    stream: object
    eval_examples: list
    optimizer: torch.optim.Optimizer
    scheduler: object
    timers: Timers
    dist: object = field(default_factory=distributed.SingleProcess)
    prompt_fn: Optional[Callable] = None          # Example -> prompt token ids
    save_checkpoint: Callable = checkpoint.save   # rank 0; a no-op on the other ranks
    behavior: dict = field(default_factory=dict)  # (group, sample_idx) -> engine log-probs
    sharded: bool = False                         # FSDP: parameters split over the ranks
    step: int = 0
    bad_in_row: int = 0
    demos_truncated: int = 0
    stats: dict = field(default_factory=dict)

    @property
    def loss_scale(self) -> float:
        """World size under FSDP (it averages gradients; the global surrogate sums them)."""
        return float(self.dist.world) if self.sharded else 1.0

    # ------------------------------------------------------------------------- the loop
    def train(self) -> dict:
        """Run from ``self.step`` to ``cfg.steps``; returns the last metrics row."""
        cfg = self.cfg
        self.writer.set_status("running", self.step)
        if self.step == 0:
            self.evaluate(0)
        bar = _progress(cfg, self.step)
        last = {}
        for step in range(self.step + 1, cfg.steps + 1):
            t0 = time.time()
            stage = self.stage_at(step)
            rows, generated, m = self.collect(stage, step)   # sample → score → groups
            gates = {}                                       # group → "sft" | "rl" (HPT gate)
            m.update(self.update(stage, rows, step, gates))  # Batch → plan → micro-batches → step
            self.sampler.sync_weights(self.model)            # vLLM: push the new weights
            self.log_samples(step, generated, rows, gates or stage.default_gate)
            m[records.STEP_SECONDS] = time.time() - t0
            self.step = step
            if cfg.eval_every and step % cfg.eval_every == 0 or step == cfg.steps:
                m.update(self.evaluate(step, log=False))
            self.writer.log_metrics(step, m)
            last = m
            self.stop_if_diverged(step)
            if cfg.save_every and step % cfg.save_every == 0 or step == cfg.steps:
                self.save(step)
            bar.update(1)
            bar.set_postfix(_postfix(m))
        bar.close()
        self.writer.set_status("finished", self.step, "done")
        return last

    def stage_at(self, step: int) -> Stage:
        return next(s for s in self.stages if s.first <= step <= s.last)

    # ------------------------------------------------------------------- sample and score
    def collect(self, stage: Stage, step: int) -> tuple[list[Row], list[Row], dict]:
        """(rows to train, every generated row, metrics): groups sampled and scored; with
        dynamic sampling, groups are dropped and refilled."""
        P = self.cfg.prompts_per_step
        mine = len(self.dist.share(range(P))[1])  # this rank's share of the step's prompts
        kept, generated, timeouts0 = [], [], getattr(self.reward_fn, "timeouts", 0)
        self.behavior.clear()
        for rnd in range(1 + stage.refill_rounds):
            missing = int(self.dist.total(max(0, mine - len(batching.groups_of(kept)))))
            if missing <= 0:
                break
            if self.sharded:  # FSDP: generate is a collective, so every rank samples as many prompts
                missing = -(-missing // self.dist.world) * self.dist.world
            start, examples = self.dist.share(self.stream.take(missing))  # every rank reads all
            new = stage.shape(self.sample_groups(stage, examples, step, rnd, offset=rnd * P + start))
            generated += new
            kept += stage.keep(new)
        kept = _first_groups(kept, mine)
        m = _rollout_metrics(self.dist.gather(generated), self.cfg.max_new_tokens)
        m[records.ROLLOUT_VERIFIER_TIMEOUTS] = self.dist.total(
            getattr(self.reward_fn, "timeouts", 0) - timeouts0)
        m[DEMOS_TRUNCATED] = self.demos_truncated
        return kept, generated, m

    def sample_groups(self, stage: Stage, examples: list, step: int, rnd: int, offset: int) -> list[Row]:
        need = stage.need
        prompts = [self.prompt_fn(e) for e in examples]
        with self.timers("sample"):
            comps = (self.sampler.generate(prompts, need.rollouts, self.cfg.temperature,
                                           self.cfg.top_p, self.cfg.max_new_tokens,
                                           _seed(self.cfg.seed, step, rnd), first=offset)
                     if need.rollouts else [[] for _ in examples])
        lps = getattr(self.sampler, "last_logprobs", None) if need.rollouts else None
        for g, group_lps in enumerate(lps or []):
            self.behavior.update({(g + offset, j): lp for j, lp in enumerate(group_lps)})
        raw = []
        for g, (e, p, cs) in enumerate(zip(examples, prompts, comps)):
            raw += [(e, p, c, False, j, g + offset) for j, c in enumerate(cs)]
            if need.demo:
                raw.append((e, p, self.demo_ids(e), True, len(cs), g + offset))
        with self.timers("score"):
            texts = [self.tok.decode(c, skip_special_tokens=True) for _, _, c, _, _, _ in raw]
            rewards = self.reward_fn(texts, [e.answer for e, *_ in raw])
        eos = self.tok.eos_token_id
        return [Row(tuple(p), tuple(c), float(r), r >= 0.5, g, demo, j, e,
                    clipped=bool(c) and c[-1] != eos)
                for (e, p, c, demo, j, g), r in zip(raw, rewards)]

    def demo_ids(self, e: data.Example) -> list[int]:
        ids = self.tok(e.demo, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
        if len(ids) > self.cfg.max_new_tokens:
            self.demos_truncated += 1
            ids = ids[:self.cfg.max_new_tokens]
        return ids

    # ------------------------------------------------------------------------- optimise
    def update(self, stage: Stage, rows: list[Row], step: int, gates: dict) -> dict:
        """Old log-probs/values → Batch → per mini-batch: plan once, micro-batches, one
        optimizer step. Returns train/grad metrics; fills ``gates`` (group → "sft"/"rl")."""
        m = defaultdict(float)
        if not self.dist.all_true(bool(rows)):  # with several ranks: any rank empty skips
            m[records.TRAIN_SKIPPED] = 1.0
            return dict(m)
        with self.timers("train"):
            packed = pack([r.prompt_ids for r in rows], [r.response_ids for r in rows],
                          self.tok.pad_token_id).to(self.model.device)
            k = self.dist.smallest(min(self.cfg.mini_batches, len(batching.groups_of(rows))))
            sums = torch.zeros(6, dtype=torch.float64)  # see `_token_sums`
            one_pass = self.one_pass(stage, k)
            if one_pass:  # π_θold = π_θ: the grad pass gives the old log-probs
                full = batching.to_batch(rows, torch.zeros_like(packed.mask), packed.mask,
                                         None, self.reference.logp(packed))
            else:
                old = self.score_no_grad(packed, stage.critic)
                if not self.dist.all_true(bool(torch.isfinite(old.logp).all())):
                    return self.skip_nonfinite(m, "log-probs of the batch are not finite")
                full = batching.to_batch(rows, old.logp, packed.mask, old.values,
                                         self.reference.logp(packed))
            if self.behavior:  # the sampler's log-probs (π_θold's for demonstrations)
                full = full.replace(logp_behavior=_behavior_logp(rows, full.logp_old, self.behavior))
            if not one_pass:
                sums += _token_sums(old, packed.mask, full, bool(self.behavior))
            gen = torch.Generator().manual_seed(_seed(self.cfg.seed, step, 99))
            for epoch in range(stage.epochs):
                for mb in batching.minibatches(rows, k, gen):
                    if not self.optimise(stage, packed, full, mb, m, gates, sums, one_pass):
                        return self.skip_nonfinite(m, "the loss is not finite")
            m.update(self.token_means(sums))
            self.scheduler.step()
        m[records.TRAIN_LOSS] = self.dist.total(m[records.TRAIN_LOSS])  # the global surrogate
        self.bad_in_row = 0
        m[records.TRAIN_LR] = self.scheduler.get_last_lr()[0]
        decisions = self.dist.gather(list(gates.values()))  # every rank's prompts
        if decisions:  # only gated (Hybrid) estimators decide per prompt
            m[records.GATE_SFT_FRACTION] = sum(v == "sft" for v in decisions) / len(decisions)
        return dict(m)

    def micro_loss(self, stage: Stage, b, plan, s, returns, n_tok, m: dict, sums):
        """(loss, estimator output) of one micro-batch ``b`` scored as ``s`` (padded to the
        batch width), with the critic's loss when there is one; (None, None) when the
        log-probs or the loss are not finite. ``sums`` (a `one_pass` step): the scored
        log-probs are also π_θold, and feed the entropy/NLL sums."""
        if not bool(torch.isfinite(s.logp).all()):
            return None, None
        T = b.mask.shape[1]
        b = b.replace(logp=F.pad(s.logp, (0, T - s.logp.shape[1])),
                      entropy=F.pad(s.entropy, (0, T - s.entropy.shape[1])) if stage.entropy else None)
        if sums is not None:
            old = b.logp.detach()
            known = bool(self.behavior)  # rows without sampler log-probs: ratio 1
            b = b.replace(logp_old=old, logp_behavior=torch.where(
                b.is_demo[:, None] | (not known), old, b.logp_behavior))
            sums += _token_sums(s, b.mask, b, known)
        out = stage.est(b, plan)
        loss = out.loss
        if stage.critic:
            v = F.pad(s.values, (0, T - s.values.shape[1]))
            vloss = 0.5 * (((v - returns) ** 2) * b.mask).sum() / n_tok
            loss = loss + self.cfg.value_coef * vloss
            m[records.TRAIN_VALUE_LOSS] += vloss.item() / stage.epochs
        return (loss, out) if bool(torch.isfinite(loss)) else (None, None)

    def one_pass(self, stage: Stage, k: int) -> bool:
        """One epoch over one mini-batch, no critic: every row is scored once with gradients,
        at θ = θ_old, so that pass also gives π_θold (as TRL does with ``num_iterations=1``;
        the sampler's log-probs, for TIS and ``rollout/logp_gap``, are compared with it there)
        and the separate no-grad scoring pass is skipped."""
        return stage.epochs == 1 and k == 1 and not stage.critic

    def token_means(self, sums: torch.Tensor) -> dict:
        """train/entropy over the response tokens scored this step, train/demo_nll over
        their demonstration tokens and rollout/logp_gap over their rollout tokens, over all
        ranks (``sums`` from `_token_sums`)."""
        ent, n, nll, n_demo, gap, n_gap = self.dist.sum_tensor(sums).tolist()  # one collective
        out = {records.TRAIN_ENTROPY: ent / max(n, 1.0)}
        if n_demo > 0:
            out[records.TRAIN_DEMO_NLL] = nll / n_demo
        if n_gap > 0:
            out[records.ROLLOUT_LOGP_GAP] = gap / n_gap
        return out

    def optimise(self, stage: Stage, packed: Packed, full, mb: torch.Tensor, m: dict,
                 gates: dict, sums: torch.Tensor, one_pass: bool) -> bool:
        """One optimizer step on mini-batch ``mb``: plan on it once, then accumulate gradients
        over micro-batches. Returns False on a non-finite loss (gradients discarded). In a
        `one_pass` step the micro-batches' own log-probs are π_θold and feed ``sums``."""
        sub = full.select(mb)
        plan = stage.est.plan(sub, all_reduce=self.dist.reducer)
        trained = _trained_rows(plan)
        returns = stage.est.advantage.advantages_and_returns(sub)[1] if stage.critic else None
        n_tok = self.dist.sum_tensor(sub.mask[trained].sum()).clamp_min(1)
        _gate_metrics(sub, trained, m)
        gates.update({d["group"]: "sft" if d["beta"] > 0 and d["alpha"] == 0 else "rl" for d in plan.gate})
        finite = True
        for micro in self.micro_batches(trained):
            if micro is None:  # FSDP: this rank has fewer micro-batches than another
                self.zero_pass(packed, grad=True)
                continue
            part = _select_packed(packed, mb[micro])
            s = score(self.model, part, self.critic if stage.critic else None,
                      temperature=self.cfg.temperature)
            loss, out = self.micro_loss(stage, sub.select(micro), plan.select(micro), s,
                                        returns[micro] if returns is not None else None,
                                        n_tok, m, sums if one_pass else None)
            if loss is None:  # non-finite log-probs or loss: the step is dropped
                finite = False
                if not self.sharded:
                    break
                (s.logp.nan_to_num() * 0.0).sum().backward()  # FSDP: keep ranks in step
                continue
            (loss * self.loss_scale).backward()
            m[records.TRAIN_LOSS] += loss.item()
            kl = out.stats.get("kl", out.stats.get("rl/kl"))
            if kl is not None:
                m[records.TRAIN_KL] = kl
        if not self.dist.all_true(finite):
            self.optimizer.zero_grad(set_to_none=True)
            return False
        norm, skipped = self.optimizer_step()
        m[records.GRAD_NORM] = norm
        m[records.TRAIN_SKIPPED] = max(m[records.TRAIN_SKIPPED], float(skipped))
        return True

    def optimizer_step(self) -> tuple[float, bool]:
        """Clip the gradient norm; skip the step when it is not finite or > max_grad_norm."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        # each rank's loss is its share of the global surrogate (× world size under FSDP)
        self.dist.sum_grads(params, scale=1.0 / self.loss_scale)
        norm = distributed.clip_grad_norm(params, self.cfg.grad_clip)
        skipped = not math.isfinite(norm) or norm > self.cfg.max_grad_norm
        if not skipped:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm, skipped

    def score_no_grad(self, packed: Packed, critic: bool):
        """π_θold log-probs (and old values) of every row, in micro-batches, without grad."""
        parts = []
        with torch.no_grad():
            for idx in self.micro_batches(torch.arange(packed.ids.shape[0])):
                if idx is None:
                    self.zero_pass(packed, grad=False)
                    continue
                parts.append(score(self.model, _select_packed(packed, idx, trim=False),
                                   self.critic if critic else None, temperature=self.cfg.temperature))
        cat = lambda xs: torch.cat(xs) if xs[0] is not None else None  # noqa: E731
        return type(parts[0])(cat([p.logp for p in parts]), cat([p.entropy for p in parts]),
                              cat([p.values for p in parts]))

    def micro_batches(self, idx: torch.Tensor) -> list:
        """``idx`` in chunks of ``--micro-batch``. Under FSDP every forward/backward pass
        all-gathers weights, so all ranks must run the same number: a rank with fewer chunks
        gets ``None`` entries (see `zero_pass`)."""
        parts = batching.chunks(idx, self.cfg.micro_batch)
        if self.sharded:
            parts += [None] * (self.dist.largest(len(parts)) - len(parts))
        return parts

    def zero_pass(self, packed: Packed, grad: bool) -> None:
        """A forward (and, with ``grad``, backward) pass on one row with zero weight: it takes
        part in FSDP's collectives and adds nothing to the gradient."""
        s = score(self.model, _select_packed(packed, torch.arange(1)))
        if grad:
            (s.logp.sum() * 0.0).backward()

    def skip_nonfinite(self, m: dict, why: str) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_in_row += 1
        self.scheduler.step()
        m.update({records.TRAIN_SKIPPED: 1.0, TRAIN_STOPPED_BAD: 1.0,
                  records.TRAIN_LR: self.scheduler.get_last_lr()[0]})
        m["train/skip_reason"] = why
        return dict(m)

    def stop_if_diverged(self, step: int) -> None:
        if self.bad_in_row >= self.cfg.max_bad_steps:
            msg = (f"stopped at step {step}: {self.bad_in_row} consecutive steps with a non-finite "
                   "loss (every record so far is kept; lower --lr or check the data)")
            self.writer.set_status("failed", step, msg)
            raise RunStopped(msg)

    # -------------------------------------------------------------------- eval and records
    def evaluate(self, step: int, log: bool = True) -> dict:
        """Held-out avg@k / pass@k. Every evaluation of a run uses the same sampling seed
        (common random numbers): the change between two evaluations is the model's, not the
        sampler's luck, which at eval_k = 8 on 200 problems alone moves avg@k by ±2 points."""
        cfg = self.cfg
        with self.timers("eval"):
            res, gens = evaluate.evaluate(
                self.sampler, self.tok, self.eval_examples, self.reward_fn, cfg.eval_k,
                cfg.eval_temperature, cfg.eval_top_p, cfg.max_new_tokens,
                _seed(cfg.seed, 0, 7), self.prompt_fn)
        self.writer.log_eval(res.rows(step, self.benchmark))
        self.writer.log_generations(self.benchmark, [{"step": step, **g} for g in gens])
        metrics = res.metrics()
        if log:
            self.writer.log_metrics(step, metrics)
        return metrics

    @property
    def benchmark(self) -> str:
        return Path(self.cfg.eval_data).stem if self.cfg.eval_data else "arith"

    def log_samples(self, step: int, generated: list[Row], kept: list[Row], gates) -> None:
        """One samples.jsonl row per generated sequence (``kept``: trained this step); ``gates``
        maps group → "sft"/"rl", or is one label for every row."""
        kept_ids = {id(r) for r in kept}
        self.writer.log_samples(self.dist.gather([
            {"step": step, "prompt_id": r.example.uid, "sample_idx": r.sample_idx,
             "source": r.source, "reward": r.reward, "correct": r.correct,
             "n_tokens": len(r.response_ids),
             "gate": gates.get(r.group, "rl") if isinstance(gates, dict) else gates,
             "level": r.example.level,
             "group": r.group, "kept": id(r) in kept_ids} for r in generated]))

    def save(self, step: int) -> None:
        with self.timers("checkpoint"):
            # FSDP: every rank takes part in gathering the full state; rank 0 writes it
            full = (distributed.full_state_dicts(self.model, self.optimizer, self.critic)
                    if self.sharded else None)
            self.save_checkpoint(self.run_dir, step, self.model, self.tok, self.critic, self.optimizer,
                                 self.scheduler, {"data": self.stream.cursor,
                                                  "demos_truncated": self.demos_truncated},
                                 keep=self.cfg.keep_checkpoints, full_state=full)


# ------------------------------------------------------------------------------- helpers

def _seed(seed: int, step: int, salt: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + salt * 104_729) % (2 ** 31 - 1)


def _behavior_logp(rows: list[Row], logp_old: torch.Tensor, table: dict) -> torch.Tensor:
    """[B,T] behaviour log-probs: the engine's where it returned them, else π_θold's (ratio 1)."""
    out = logp_old.detach().clone()
    for i, r in enumerate(rows):
        lp = None if r.is_demo else table.get((r.group, r.sample_idx))
        if lp is not None:
            n = min(len(lp), out.shape[1])
            out[i, :n] = torch.tensor(lp[:n], dtype=out.dtype, device=out.device)
    return out


def _token_sums(scored, mask: torch.Tensor, b, known: bool) -> torch.Tensor:
    """[Σ entropy, Σ tokens, Σ demo NLL, Σ demo tokens, Σ |log p_sampler − log π_θold|,
    Σ rollout tokens] of scored rows (see `token_means`); the last two only when the sampler
    returned its log-probs (``known``). ``b``: the rows' Batch (π_θold = the scored log-probs)."""
    T = scored.logp.shape[1]
    mask = mask[:, :T]
    demo = b.is_demo[:, None] * mask
    roll = b.rollouts[:, None] * mask * float(known)
    gap = (b.logp_behavior[:, :T] - b.logp_old[:, :T]).abs() * roll
    with torch.no_grad():
        return torch.stack([(scored.entropy * mask).sum(), mask.sum(),
                            -(scored.logp * demo).sum(), demo.sum(), gap.sum(),
                            roll.sum()]).double().cpu()


def _first_groups(rows: list[Row], k: int) -> list[Row]:
    keep = set(batching.groups_of(rows)[:k])
    return [r for r in rows if r.group in keep]


def _select_packed(p: Packed, idx: torch.Tensor, trim: bool = True) -> Packed:
    """Rows ``idx`` of a packed batch; ``trim`` drops response columns that are all padding."""
    mask = p.mask[idx]
    T = max(1, int(mask.sum(-1).max())) if trim and len(idx) else p.width
    P = p.prompt_width
    return Packed(p.ids[idx, :P + T], p.attention[idx, :P + T], p.positions[idx, :P + T],
                  mask[:, :T], P)


def _trained_rows(plan) -> torch.Tensor:
    """Indices of rows with a non-zero weight in the plan (other rows are skipped)."""
    w = (plan.coef != 0) | (plan.ent != 0)
    for part in plan.parts:
        w = w | (part.coef != 0)
    return w.nonzero().squeeze(-1)


def _gate_metrics(sub, trained: torch.Tensor, m: dict) -> None:
    """gate/offline_ratio: demo rows / all rows trained in the (mini-)batch."""
    demo = sub.is_demo[trained]
    m[records.GATE_OFFLINE_RATIO] = float(demo.float().mean()) if len(trained) else 0.0


def _rollout_metrics(rows: list[Row], max_new_tokens: int) -> dict:
    roll = [r for r in rows if not r.is_demo]
    if not roll:
        return {ROLLOUT_SAMPLES: 0}
    return {records.ROLLOUT_REWARD: sum(r.reward for r in roll) / len(roll),
            records.ROLLOUT_ACCURACY: sum(r.correct for r in roll) / len(roll),
            records.ROLLOUT_LENGTH: sum(len(r.response_ids) for r in roll) / len(roll),
            records.ROLLOUT_CLIP_FRACTION: sum(r.clipped for r in roll) / len(roll),
            records.ROLLOUT_ALL_EQUAL: batching.all_equal_fraction(roll),
            ROLLOUT_SAMPLES: len(roll)}


def _progress(cfg: RunConfig, start: int):
    from tqdm import tqdm

    return tqdm(total=cfg.steps, initial=start, desc=cfg.preset, disable=not cfg.progress,
                dynamic_ncols=True, file=sys.stderr)


def _postfix(m: dict) -> dict:
    keys = {records.ROLLOUT_ACCURACY: "acc", records.GATE_SFT_FRACTION: "sft",
            records.EVAL_ACCURACY: "eval"}
    return {short: f"{m[k]:.2f}" for k, short in keys.items() if k in m}


def _versions() -> dict:
    import peft
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__}


def make_schedule(opt, cfg: RunConfig):
    """constant | cosine | linear decay after a linear warm-up (per training step)."""
    decay = {"constant": lambda f: 1.0, "cosine": lambda f: 0.5 * (1 + math.cos(math.pi * f)),
             "linear": lambda f: 1.0 - f}
    if cfg.schedule not in decay:
        raise ValueError(f"--schedule must be one of {sorted(decay)}, got {cfg.schedule!r}")
    fn, w, total = decay[cfg.schedule], cfg.warmup_steps, max(1, cfg.steps)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / w) if w and s < w else fn(min(1.0, s / total)))


def _eval_examples(cfg: RunConfig) -> list:
    if cfg.eval_data:
        return data.load_examples(cfg.eval_data)
    return [data.from_problem(p, f"arith-test:{i}") for i, p in enumerate(task.test_problems())]


def _stream(cfg: RunConfig):
    if cfg.train_data:
        return data.FileStream(data.load_examples(cfg.train_data), cfg.seed)
    return data.TaskStream(cfg.seed)


def build(cfg: RunConfig, reward_fn: Optional[Callable] = None, log=print) -> Trainer:
    """Every object of the run, chosen from the config (resuming when ``cfg.resume``)."""
    timers = Timers()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.resume:
        cfg = _resumed_config(cfg)
    dist = distributed.make()
    if dist.world > 1 and not cfg.seed_per_prompt:  # so that 1 and N processes sample alike
        log(f"{dist.describe()}: --seed-per-prompt forced on (rollouts seeded per prompt)")
        cfg = dataclasses.replace(cfg, seed_per_prompt=True)
    if cfg.prompts_per_step < dist.world * cfg.mini_batches:
        raise SystemExit(f"--prompts-per-step {cfg.prompts_per_step} is too small for "
                         f"{dist.world} processes x --mini-batches {cfg.mini_batches}")
    stages = make_stages(cfg)
    with timers("base model"):
        model_path = cfg.model or str(base.ensure_base(rebuild=cfg.rebuild_base, log=log))
        model_path = engines.edited_model_dir(model_path, cfg)  # rope_theta / max positions
    with timers("setup"):
        torch.manual_seed(cfg.seed)
        tok = load_tokenizer(model_path)
        device = resolve_device(cfg.device, dist)
        model = load_model(model_path, cfg.lora_r, cfg.lora_alpha,  # float32 master weights
                           attn_implementation=cfg.attn_implementation,
                           gradient_checkpointing=cfg.gradient_checkpointing).to(device)
        precision.autocast_forward(model, cfg.dtype)  # --dtype: the forward's compute precision
        model.train()
        dist.sync_params(list(model.parameters()))
        # π_ref: a frozen full copy made before sharding (FSDP shards it like the policy)
        reference = (Reference.of(model, checkpoint.is_lora(model), cfg.temperature)
                     if cfg.kl_coef > 0 else NoReference())
        sharded = check_fsdp(cfg, dist, stages)
        if sharded:
            model = distributed.shard(model)
            if isinstance(reference, Reference):
                distributed.shard(reference.model)
        critic = (ValueHead(model.config.hidden_size).to(device)
                  if any(s.critic for s in stages) else None)
        params = [p for p in model.parameters() if p.requires_grad]
        params += list(critic.parameters()) if critic is not None else []
        dist.sync_params(params)
        opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
        sched = make_schedule(opt, cfg)
        run_dir = Path(cfg.resume) if cfg.resume else Path(cfg.runs_dir) / (
            cfg.run_id or f"{cfg.preset}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir = Path(distributed_run_dir(dist, str(run_dir)))
        writer = records.RunWriter(run_dir) if dist.is_main else distributed.NullWriter()
        trainer = Trainer(cfg, run_dir, writer, model, tok, critic, reference,
                          engines.make_sampler(cfg, model, tok, model_path),
                          reward_fn or BoxedReward(time_limit=cfg.verifier_timeout), stages,
                          _stream(cfg), _eval_examples(cfg), opt, sched, timers, dist=dist,
                          prompt_fn=engines.make_prompt_fn(cfg, tok),
                          save_checkpoint=checkpoint.save if dist.is_main else _no_save,
                          sharded=sharded)
    if cfg.resume:
        _restore(trainer)
    else:
        writer.write_config({**_config_record(cfg, stages, model_path), "world_size": dist.world})
    return trainer


def check_fsdp(cfg: RunConfig, dist, stages: list) -> bool:
    """Whether to shard the model with FSDP (``--fsdp`` with several processes); the
    combinations not supported yet stop here with the reason."""
    if not cfg.fsdp:
        return False
    unsupported = {
        "--lora-r > 0 (LoRA adapters are small: plain data parallel is enough)": cfg.lora_r > 0,
        f"--prompts-per-step {cfg.prompts_per_step} not divisible by {dist.world} processes "
        "(every rank must sample as many prompts)": cfg.prompts_per_step % max(dist.world, 1) != 0,
    }
    bad = [what for what, hit in unsupported.items() if hit]
    if bad:
        raise SystemExit("--fsdp does not support " + "; ".join(bad))
    return dist.world > 1


def resolve_device(name: str, dist=None) -> torch.device:
    """``--device``: auto → this rank's CUDA device when CUDA is available, else the CPU;
    ``cuda`` without a GPU is an error that says so."""
    local = getattr(dist, "device", None)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {name}: this torch ({torch.__version__}) sees no CUDA GPU; "
                             "use --device cpu (or auto)")
        if name == "cuda" and local is not None and local.type == "cuda":
            return local  # one GPU per rank (torchrun / accelerate set LOCAL_RANK)
        return torch.device(name)
    if name != "cpu":
        raise SystemExit(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return torch.device("cpu")


def distributed_run_dir(dist, run_dir: str) -> str:
    """Rank 0's run directory on every rank (its name holds rank 0's clock)."""
    return dist.gather([run_dir])[0]


def _no_save(*args, **kwargs) -> None:
    """Checkpoints are written by rank 0 only."""


def _config_record(cfg: RunConfig, stages: list, model_path: str) -> dict:
    return {"config": cfg.resolved(), "preset": cfg.preset, "seed": cfg.seed,
            "estimator": {s.name: s.est.parts() for s in stages},
            "stages": [{"name": s.name, "first_step": s.first, "last_step": s.last} for s in stages],
            "model_path": model_path, "task_version": task.TASK_VERSION,
            "versions": _versions(), "git_commit": records.git_commit(), "command": sys.argv}


def _resumed_config(cfg: RunConfig) -> RunConfig:
    """The saved config of the run being resumed (only ``resume``/``progress`` come from now)."""
    saved = records.read_config(cfg.resume).get("config")
    if not saved:
        raise FileNotFoundError(f"{cfg.resume}: no {records.CONFIG} to resume from")
    return dataclasses.replace(RunConfig(**saved), resume=cfg.resume, progress=cfg.progress)


def _restore(t: Trainer) -> None:
    ckpt = checkpoint.latest(t.run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{t.run_dir}: no checkpoint to resume from")
    state = checkpoint.restore(ckpt, t.model, t.critic, t.optimizer, t.scheduler,
                               load_full=functools.partial(distributed.load_full_state_dicts, critic=t.critic)
                               if t.sharded else None)
    t.step = state["step"]
    t.stream.cursor = state["cursor"]["data"]
    t.demos_truncated = state["cursor"]["demos_truncated"]
    t.writer.truncate_after(t.step)


def main(argv: Optional[list[str]] = None, reward_fn: Optional[Callable] = None) -> Trainer:
    cfg = parse_args(argv)
    t0 = time.time()
    trainer = build(cfg, reward_fn, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(f"run directory: {trainer.run_dir}", file=sys.stderr)
    try:
        last = trainer.train()
    except RunStopped as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1)
    except BaseException as e:
        trainer.writer.set_status("failed", trainer.step, repr(e))
        raise
    finally:
        close = getattr(trainer.reward_fn, "close", None)
        if close:
            close()
        trainer.dist.close()
    _report(trainer, last, time.time() - t0)
    return trainer


def _report(t: Trainer, last: dict, total: float) -> None:
    phases = ", ".join(f"{k} {v:.1f}s" for k, v in t.timers.items())
    acc = {k: round(v, 3) for k, v in last.items() if k.startswith("eval/")}
    print(f"wall time {total:.1f}s ({phases})", file=sys.stderr)
    print(json.dumps({"run_dir": str(t.run_dir), "step": t.step, **acc}))


if __name__ == "__main__":
    main()
    # free the trainer (an FSDP model keeps its process group alive through its device mesh)
    # now, not during interpreter shutdown, where destroying gloo's threads can abort the process
    import gc

    gc.collect()
