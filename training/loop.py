"""The training loop. `Trainer.step` is the paper's Algorithm 1, one line per phase::

    rollouts = collect(stage, step)      sample n completions per prompt → score (reward) →
                                         groups (dynamic sampling drops and refills)
    m = update(stage, rollouts, step)    π_θold pass → per mini-batch: gate + plan once over every
                                         rank → micro-batches → backward → optimizer step
    sampler.sync_weights(model)          the rollout engine samples from the new weights
    log_samples(step, rollouts, gates)   one samples.jsonl row per generated sequence

Everything method-specific was chosen at construction (`training.run.build`): the stage's
estimator and batch-level steps (`training.stages`), the process layout and the critic
(`training.backends`), the rollout engine (`training.rollout`). A `Rollouts` value carries the
rows with the engine's behaviour log-probs; a `StepMetrics` accumulates the step's metrics.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

import records

from . import batching, checkpoint, data, diagnostics
from .backends import NoCritic, Replicated
from .batching import (MiniBatch, Row, Rollouts, StepBatch, StepMetrics, _first_groups,
                       _gate_metrics, _rollout_metrics, _select_packed)
from .config import RunConfig
from .distributed import SingleProcess, clip_grad_norm
from .evaluation import heldout
from .policy import Packed, pack, score
from .progress import Timers, postfix, progress_bar
from .stages import Stage


class RunStopped(RuntimeError):
    """The run stopped early (e.g. consecutive non-finite losses); records are kept."""


@dataclass
class Trainer:
    cfg: RunConfig
    run_dir: Path
    writer: records.RunWriter
    model: object
    tok: object
    critic: object                                # `Critic` of the run, or `NoCritic`
    reference: object
    sampler: object
    reward_fn: Callable
    stages: list
    stream: object
    eval_examples: list
    optimizer: torch.optim.Optimizer
    scheduler: object
    timers: Timers
    dist: object = field(default_factory=SingleProcess)
    backend: object = None                        # `Replicated` (default) or `Sharded`
    prompt_fn: Optional[Callable] = None          # Example -> prompt token ids
    save_checkpoint: Callable = checkpoint.save   # rank 0; a no-op on the other ranks
    completed: int = 0                            # steps done (resume continues after it)
    bad_in_row: int = 0
    demos_truncated: int = 0

    def __post_init__(self):
        self.backend = self.backend or Replicated(self.dist)
        self.critic = self.critic or NoCritic()

    # ------------------------------------------------------------------------- the loop
    def step(self, step: int) -> StepMetrics:
        """One iteration of Algorithm 1."""
        t0 = time.time()
        stage = self.stage_at(step)
        rollouts = self.collect(stage, step)                 # sample → score → groups
        m = self.update(stage, rollouts, step)               # gate → plan → micro-batches → step
        self.sampler.sync_weights(self.model)                # vLLM: push the new weights
        self.log_samples(step, rollouts, m.gates or stage.default_gate)
        m[records.STEP_SECONDS] = time.time() - t0
        return m

    def train(self) -> dict:
        """Run from ``self.completed`` to ``cfg.steps`` with evaluation, records and checkpoints;
        returns the last metrics row."""
        cfg = self.cfg
        self.writer.set_status("running", self.completed)
        if self.completed == 0:
            self.evaluate(0)
        bar = progress_bar(cfg, self.completed)
        last = {}
        for step in range(self.completed + 1, cfg.steps + 1):
            m = self.step(step)
            self.completed = step
            if cfg.eval_every and step % cfg.eval_every == 0 or step == cfg.steps:
                m.update(self.evaluate(step, log=False))
            self.writer.log_metrics(step, m)
            last = m
            self.stop_if_diverged(step)
            if cfg.save_every and step % cfg.save_every == 0 or step == cfg.steps:
                self.save(step)
            bar.update(1)
            bar.set_postfix(postfix(m))
        bar.close()
        self.writer.set_status("finished", self.completed, "done")
        return last

    def stage_at(self, step: int) -> Stage:
        return next(s for s in self.stages if s.first <= step <= s.last).at_step(step)

    # ------------------------------------------------------------------- sample and score
    def collect(self, stage: Stage, step: int) -> Rollouts:
        """This rank's groups, sampled and scored; with dynamic sampling, groups are dropped
        and refilled."""
        P = self.cfg.prompts_per_step
        mine = len(self.dist.share(range(P))[1])  # this rank's share of the step's prompts
        kept, generated, timeouts0 = [], [], getattr(self.reward_fn, "timeouts", 0)
        for rnd in range(1 + stage.refill_rounds):
            missing = int(self.dist.total(max(0, mine - len(batching.groups_of(kept)))))
            if missing <= 0:
                break
            missing = self.backend.prompts_to_sample(missing)
            start, examples = self.dist.share(self.stream.take(missing))  # every rank reads all
            new = stage.shape(self.sample_groups(stage, examples, step, rnd, offset=rnd * P + start))
            generated += new
            kept += stage.keep(new)
        kept = _first_groups(kept, mine)
        m = _rollout_metrics(self.dist.gather(generated), self.cfg.max_new_tokens)
        m[records.ROLLOUT_VERIFIER_TIMEOUTS] = self.dist.total(
            getattr(self.reward_fn, "timeouts", 0) - timeouts0)
        m[records.DATA_DEMOS_TRUNCATED] = self.demos_truncated
        return Rollouts(kept, generated, m)

    def sample_groups(self, stage: Stage, examples: list, step: int, rnd: int, offset: int) -> list[Row]:
        need = stage.need
        prompts = [self.prompt_fn(e) for e in examples]
        with self.timers("sample"):
            comps, lps = (self.sampler.sample(prompts, need.rollouts, self.cfg.temperature,
                                              self.cfg.top_p, self.cfg.max_new_tokens,
                                              _seed(self.cfg.seed, step, rnd), first=offset)
                          if need.rollouts else ([[] for _ in examples], None))
        raw = []
        for g, (e, p, cs) in enumerate(zip(examples, prompts, comps)):
            raw += [(e, p, c, False, j, g + offset, tuple(lps[g][j]) if lps else None)
                    for j, c in enumerate(cs)]
            if need.demo:
                raw.append((e, p, self.demo_ids(e), True, len(cs), g + offset, None))
        with self.timers("score"):
            texts = [self.tok.decode(c, skip_special_tokens=True) for _, _, c, *_ in raw]
            rewards = self.reward_fn(texts, [e.answer for e, *_ in raw])
        eos = self.tok.eos_token_id
        base = self.greedy_rewards(stage, examples, prompts, step, rnd, offset)
        return [Row(tuple(p), tuple(c), float(r), r >= 0.5, g, demo, j, e,
                    clipped=bool(c) and c[-1] != eos, behavior_logp=lp,
                    reward_baseline=base[g - offset] if base else None)
                for (e, p, c, demo, j, g, lp), r in zip(raw, rewards)]

    def greedy_rewards(self, stage: Stage, examples: list, prompts: list, step: int, rnd: int,
                       offset: int) -> Optional[list]:
        """ReMax's baseline (``Batch.reward_baseline``): the reward of one greedy (temperature 0)
        rollout per prompt; None when the estimator does not need it."""
        if "reward_baseline" not in stage.est.needs:
            return None
        with self.timers("sample"):
            comps, _ = self.sampler.sample(prompts, 1, 0.0, 1.0, self.cfg.max_new_tokens,
                                           _seed(self.cfg.seed, step, rnd), first=offset)
        with self.timers("score"):
            texts = [self.tok.decode(c[0], skip_special_tokens=True) for c in comps]
            return [float(r) for r in self.reward_fn(texts, [e.answer for e in examples])]

    def demo_ids(self, e: data.Example) -> list[int]:
        ids = self.tok(e.demo, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
        if len(ids) > self.cfg.max_new_tokens:
            self.demos_truncated += 1
            ids = ids[:self.cfg.max_new_tokens]
        return ids

    # ------------------------------------------------------------------------- optimise
    def update(self, stage: Stage, rollouts: Rollouts, step: int) -> StepMetrics:
        """π_θold → Batch → per mini-batch: plan once, micro-batches, one optimizer step."""
        m = StepMetrics(rollouts.metrics)
        rows = rollouts.rows
        if not self.dist.all_true(bool(rows)):  # with several ranks: any rank empty skips
            m[records.TRAIN_SKIPPED] = 1.0
            return m
        with self.timers("train"):
            packed = pack([r.prompt_ids for r in rows], [r.response_ids for r in rows],
                          self.tok.pad_token_id).to(self.model.device)
            k = self.dist.smallest(min(self.cfg.mini_batches, len(batching.groups_of(rows))))
            sb = self.old_batch(stage, rollouts, packed, self.one_pass(stage, k, rollouts), m)
            if sb is None:
                return self.skip_nonfinite(m, "log-probs of the batch are not finite")
            gen = torch.Generator().manual_seed(_seed(self.cfg.seed, step, 99))
            diag = diagnostics.for_step(self.cfg.diagnostics_every, step, rows,
                                        stage.need.rollouts, stage.est)
            for epoch in range(stage.epochs):
                for mb in batching.minibatches(rows, k, gen):
                    if not self.optimise(self.mini_batch(stage, sb, mb, m, diag), m, diag):
                        return self.skip_nonfinite(m, "the loss is not finite")
            m.update(m.token_means(self.dist))
            m.update(diag.metrics(self.dist))
            self.scheduler.step()
        m[records.TRAIN_LOSS] = self.dist.total(m.get(records.TRAIN_LOSS, 0.0))  # global surrogate
        self.bad_in_row = 0
        m[records.TRAIN_LR] = self.scheduler.get_last_lr()[0]
        decisions = self.dist.gather(list(m.gates.values()))  # every rank's prompts
        if decisions:  # only gated (Hybrid) estimators decide per prompt
            m[records.GATE_SFT_FRACTION] = sum(v == "sft" for v in decisions) / len(decisions)
        return m

    def one_pass(self, stage: Stage, k: int, rollouts: Rollouts) -> bool:
        """One epoch over one mini-batch, no old values (critic), no plan that reads π_θold:
        every row is scored once with gradients, at θ = θ_old, so that pass also gives π_θold
        (as TRL does with ``num_iterations=1``) and the separate no-grad scoring pass is
        skipped; the sampler's log-probs (``rollout/logp_gap``) are compared with it there, over
        the rows trained. An engine with its own copy of the weights (vLLM) is checked over every
        rollout of the step instead, so its steps keep the separate pass."""
        return (stage.epochs == 1 and k == 1 and not stage.critic.needs_old_values
                and not stage.est.plan_reads_old
                and not (rollouts.engine_logp and self.sampler.own_weights))

    def old_batch(self, stage: Stage, rollouts: Rollouts, packed: Packed, one_pass: bool,
                  m: StepMetrics) -> Optional[StepBatch]:
        """The step's Batch with π_θold (and old values, the sampler's log-probs); None when
        the log-probs are not finite on some rank."""
        rows, known = rollouts.rows, rollouts.engine_logp
        if one_pass:  # π_θold = π_θ: the grad pass gives the old log-probs
            full = batching.to_batch(rows, torch.zeros_like(packed.mask), packed.mask,
                                     None, self.reference.logp(packed))
            if known:
                full = full.replace(logp_behavior=rollouts.behavior_logp(full.logp_old))
            return StepBatch(packed, full, True, known)
        old = self.score_no_grad(packed, stage.critic.head, "sum_pi_squared" in stage.est.needs)
        if not self.dist.all_true(bool(torch.isfinite(old.logp).all())):
            return None
        full = batching.to_batch(rows, old.logp, packed.mask, old.values, self.reference.logp(packed))
        full = full.replace(entropy=old.entropy)  # π_θold's entropy, for a plan that reads it
        if old.sum_pi_squared is not None:  # Σ_v π_θold(v)² per token (optimal token baseline)
            full = full.replace(sum_pi_squared=old.sum_pi_squared)
        if known:
            full = full.replace(logp_behavior=rollouts.behavior_logp(old.logp))
        m.tokens(old, full, known, stage.correction)
        return StepBatch(packed, full, False, known)

    def mini_batch(self, stage: Stage, sb: StepBatch, mb: torch.Tensor, m: StepMetrics,
                   diag=diagnostics.NoDiagnostics()) -> MiniBatch:
        """Rows ``mb`` planned once (normalisers over every rank); the gate decides here."""
        sub = sb.batch.select(mb)
        plan = stage.est.plan(sub, all_reduce=self.dist.reducer)
        diag.weights(sub, plan, mb)
        trained = plan.trained.nonzero().squeeze(-1)
        n_tok = self.dist.sum_tensor(sub.mask[trained].sum()).clamp_min(1)
        _gate_metrics(sub, trained, m)
        m.gates.update(plan.labels())
        return MiniBatch(stage, _select_packed(sb.packed, mb, trim=False), sub, plan, trained,
                         stage.critic.target(stage, plan, n_tok), sb.one_pass, sb.sampler_logp)

    def optimise(self, mini: MiniBatch, m: StepMetrics, diag=diagnostics.NoDiagnostics()) -> bool:
        """Accumulate the gradient of one mini-batch over micro-batches (rollouts and
        demonstrations apart), then one optimizer step. False on a non-finite loss (gradients
        discarded). ``diag`` measures each micro-batch's gradient (`training.diagnostics`)."""
        finite = True
        diag.start(self.params, self.backend.per_pass)
        passes = self.backend.micro_batches(mini.trained, self.cfg.micro_batch, mini.batch.is_demo)
        for micro, demo in zip(passes, passes.demo):
            if micro is None:  # FSDP: this rank has fewer micro-batches than another
                with diag.pass_of(0, demo):
                    self.zero_pass(mini.packed, grad=True)
                continue
            s = score(self.model, _select_packed(mini.packed, micro), mini.stage.critic.head,
                      temperature=self.cfg.temperature)
            loss = self.micro_loss(mini, micro, s, m)
            if loss is None:  # non-finite log-probs or loss: the step is dropped
                finite = False
                (s.logp.nan_to_num() * 0.0).sum().backward()  # every rank runs as many passes
                continue
            with diag.pass_of(len(micro), demo):
                (loss * self.backend.loss_scale).backward()
        if not self.dist.all_true(finite):
            self.optimizer.zero_grad(set_to_none=True)
            return False
        norm, skipped = self.optimizer_step(diag)
        m[records.GRAD_NORM] = norm
        m[records.TRAIN_SKIPPED] = max(m.get(records.TRAIN_SKIPPED, 0.0), float(skipped))
        return True

    def micro_loss(self, mini: MiniBatch, micro: torch.Tensor, s, m: StepMetrics):
        """The loss of micro-batch ``micro`` (rows of the mini-batch) scored as ``s``: the
        estimator's surrogate plus the critic's term; None when the log-probs or the loss are
        not finite. In a one-pass step the scored log-probs are also π_θold."""
        if not bool(torch.isfinite(s.logp).all()):
            return None
        b = mini.batch.select(micro)
        T = b.mask.shape[1]
        b = b.replace(logp=F.pad(s.logp, (0, T - s.logp.shape[1])),
                      entropy=F.pad(s.entropy, (0, T - s.entropy.shape[1])) if mini.stage.entropy else None)
        if mini.one_pass:  # π_θold = these log-probs; rows without sampler log-probs: ratio 1
            old = b.logp.detach()
            b = b.replace(logp_old=old, logp_behavior=torch.where(
                b.is_demo[:, None] | (not mini.sampler_logp), old, b.logp_behavior))
            m.tokens(s, b, mini.sampler_logp, mini.stage.correction)
        out = mini.stage.est(b, mini.plan.select(micro))
        loss = out.loss + mini.target.loss(s, micro, b.mask, m)
        if not bool(torch.isfinite(loss)):
            return None
        m.add(records.TRAIN_LOSS, loss.item())
        if out.kl is not None:
            m[records.TRAIN_KL] = out.kl
        return loss

    @property
    def params(self) -> list:
        """The optimizer's parameters (the policy's trainable ones, and the critic's)."""
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def optimizer_step(self, diag=diagnostics.NoDiagnostics()) -> tuple[float, bool]:
        """Clip the gradient norm; skip the step when it is not finite or > max_grad_norm."""
        params = self.params
        # each rank's loss is its share of the global surrogate (× world size under FSDP)
        self.dist.sum_grads(params, scale=1.0 / self.backend.loss_scale)
        diag.gradient(params, self.dist, self.backend.per_pass)  # the summed gradient, unclipped
        norm = clip_grad_norm(params, self.cfg.grad_clip)
        skipped = not math.isfinite(norm) or norm > self.cfg.max_grad_norm
        if not skipped:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm, skipped

    def score_no_grad(self, packed: Packed, critic_head, sum_pi_squared: bool = False):
        """π_θold log-probs (and old values, Σ_v π_θold(v)²) of every row, in micro-batches,
        without grad."""
        parts = []
        with torch.no_grad():
            for idx in self.backend.micro_batches(torch.arange(packed.ids.shape[0]), self.cfg.micro_batch):
                if idx is None:
                    self.zero_pass(packed, grad=False)
                    continue
                parts.append(score(self.model, _select_packed(packed, idx, trim=False), critic_head,
                                   temperature=self.cfg.temperature, sum_pi_squared=sum_pi_squared))
        cat = lambda xs: torch.cat(xs) if xs[0] is not None else None  # noqa: E731
        return type(parts[0])(cat([p.logp for p in parts]), cat([p.entropy for p in parts]),
                              cat([p.values for p in parts]), cat([p.sum_pi_squared for p in parts]))

    def zero_pass(self, packed: Packed, grad: bool) -> None:
        """A forward (and, with ``grad``, backward) pass on one row with zero weight: it takes
        part in FSDP's collectives and adds nothing to the gradient."""
        s = score(self.model, _select_packed(packed, torch.arange(1)), temperature=self.cfg.temperature)
        if grad:
            (s.logp.sum() * 0.0).backward()

    def skip_nonfinite(self, m: StepMetrics, why: str) -> StepMetrics:
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_in_row += 1
        self.scheduler.step()
        m.update({records.TRAIN_SKIPPED: 1.0, records.TRAIN_NONFINITE_LOSS: 1.0,
                  records.TRAIN_LR: self.scheduler.get_last_lr()[0]})
        m[records.TRAIN_SKIP_REASON] = why
        return m

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
            res, gens = heldout.evaluate(
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
        if self.cfg.eval_split:  # a split of --dataset, or a file with its columns
            return data.benchmark_name(self.cfg.dataset, self.cfg.eval_split)
        return Path(self.cfg.eval_data).stem if self.cfg.eval_data else "arith"

    def log_samples(self, step: int, rollouts: Rollouts, gates) -> None:
        """One samples.jsonl row per generated sequence (``kept``: trained this step); ``gates``
        maps group → "sft"/"rl", or is one label for every row."""
        kept_ids = {id(r) for r in rollouts.rows}
        self.writer.log_samples(self.dist.gather([
            {"step": step, "prompt_id": r.example.uid, "sample_idx": r.sample_idx,
             "source": r.source, "reward": r.reward, "correct": r.correct,
             "n_tokens": len(r.response_ids),
             "gate": gates.get(r.group, "rl") if isinstance(gates, dict) else gates,
             "level": r.example.level,
             "group": r.group, "kept": id(r) in kept_ids} for r in rollouts.generated]))

    def save(self, step: int) -> None:
        with self.timers("checkpoint"):
            full = self.backend.full_state(self.model, self.optimizer, self.critic.head)
            self.save_checkpoint(self.run_dir, step, self.model, self.tok, self.critic.head,
                                 self.optimizer, self.scheduler,
                                 {"data": self.stream.cursor, "demos_truncated": self.demos_truncated},
                                 keep=self.cfg.keep_checkpoints, full_state=full)

    def restore(self, log=print) -> None:
        """Continue from the run directory's latest intact checkpoint (weights, optimizer, RNG,
        data cursor)."""
        ckpt = checkpoint.latest_intact(self.run_dir, warn=log)  # checksums verified, newest first
        if ckpt is None:
            raise FileNotFoundError(f"{self.run_dir}: no intact checkpoint to resume from")
        state = checkpoint.restore(ckpt, self.model, self.critic.head, self.optimizer, self.scheduler,
                                   load_full=self.backend.load_full(self.critic.head))
        self.completed = state["step"]
        self.stream.cursor = state["cursor"]["data"]
        self.demos_truncated = state["cursor"]["demos_truncated"]
        self.writer.truncate_after(self.completed)


# ------------------------------------------------------------------------------- helpers

def _seed(seed: int, step: int, salt: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + salt * 104_729) % (2 ** 31 - 1)
