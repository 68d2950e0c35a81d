"""TRL plug-in: any preset of `estimators.PRESETS` (or any `Estimator`/`Hybrid`) inside TRL's
``GRPOTrainer``, hybrids included.

    from integrations.trl import UpgeGRPOTrainer
    trainer = UpgeGRPOTrainer(model="Qwen/Qwen2.5-0.5B", reward_funcs=my_reward, args=GRPOConfig(...),
                              train_dataset=ds, estimator="hpt", demo_column="solution")
    trainer.train()

Everything TRL does stays TRL's: generation (transformers or vLLM, ``rollout_func``), reward
functions and their weights, accelerate / DeepSpeed / FSDP, PEFT, checkpoints, ``report_to``.
Only the loss is ours, split where our estimator splits itself:

* **once per optimizer step** (`_generate_and_score_completions`, on TRL's generation batch,
  gathered over every rank): the preset's ``plan`` — advantages, the gate, row coefficients with
  the normaliser Z counted over the whole step (all gradient-accumulation micro-batches, all
  ranks). TRL's own ``bnpo``/``grpo`` losses normalise each micro-batch by itself, so their
  gradient changes with ``gradient_accumulation_steps``; ours does not (tested). The plan travels
  as per-row tensors ``upge_*`` through TRL's shuffle and split;
* **per micro-batch** (`_compute_loss`): the preset's ``terms`` on TRL's log-probs and entropies,
  summed, times the number of processes (DDP / DeepSpeed / FSDP average the ranks' gradients).

Demonstrations (the hybrids) come from a dataset column (``demo_column``, text):

* HPT (``TrainerSteps.gated_demos``): one demonstration row per prompt is added after TRL scored
  its n rollouts; the gate, on the rollouts' pass rate (reward ≥ 0.5 is correct), decides per
  prompt whether the rollouts (RL) or the demonstration (SFT) are trained (the demonstration
  row is not scored: samples.jsonl records it with reward 1);
* LUFFY / SRFT (``demo_in_group``): the last of each prompt's n completions is replaced by the
  demonstration before the reward functions run, so the group holds n−1 rollouts + 1
  demonstration, scored by TRL's own reward functions.

DAPO's dynamic sampling has no refill in TRL: groups whose rewards are all equal are left out of
the plan (not trained, not counted in Z). The preset replaces TRL's ``loss_type``, ``epsilon*``,
``scale_rewards``, ``entropy_coef``; TRL's ``beta`` becomes our KL part (k3, TRL's estimator);
with vLLM and ``vllm_importance_sampling_correction``, TRL's ratio multiplies Â, as TRL does.
Constant normalisers take C from ``max_completion_length`` (as ``training.run`` does from
``--max-new-tokens``). ``steps_per_generation`` must equal ``gradient_accumulation_steps`` (TRL's
default: one generation batch per optimizer step); ``num_iterations`` > 1 reuses the plan.

Logs: TRL's log history gets ``entropy``, ``gate/sft_fraction``, ``gate/mean_beta``,
``gate/offline_ratio`` beside its own metrics (evaluation, ``eval_dataset``, reports TRL's own
loss: its batches are not planned); with ``run_dir`` (default: ``args.output_dir``)
the run also writes our records there (config.json with the estimator's parts, metrics.jsonl
under our names, samples.jsonl with each prompt's gate decision), so the dashboard shows a TRL
run like ours.
"""
from __future__ import annotations

import hashlib
from typing import Optional, Union

import torch
from torch import Tensor
from trl import GRPOTrainer

import estimators
import records
from estimators import Batch, Estimator, Hybrid, Plan
from estimators.estimator import DEMOS, SFT_LABEL
from estimators.parts import KLPenalty
from records import foreign
from training.distributed import NullWriter
from training.stages import scale_constants

FIELDS = "upge_"
TRL_ENTROPY = "entropy"   # TRL's own log name of the mean token entropy (records.foreign maps it)


def resolve(estimator: Union[str, Estimator, Hybrid], max_completion_length: int, beta: float = 0.0):
    """The estimator to train: a preset name or an object, with constant normalisers scaled to
    ``max_completion_length`` and TRL's ``beta`` as a k3 KL part (none when 0)."""
    est = estimators.get(estimator) if isinstance(estimator, str) else estimator
    if not isinstance(est, (Estimator, Hybrid)):
        raise TypeError(f"estimator must be a preset name or an Estimator/Hybrid, got {type(est).__name__}")
    if "values" in est.needs:
        raise ValueError(f"{est.name} needs a critic's values; TRL's GRPOTrainer has no critic")
    if getattr(est, "rows", None) == DEMOS:
        raise ValueError(f"{est.name} trains demonstrations only; use TRL's SFTTrainer for that")
    est = scale_constants(est, max_completion_length)
    return est.with_kl(KLPenalty(coef=float(beta), kind="k3")) if beta else est


def _components(plan: Plan) -> list[Plan]:
    return list(plan.parts) if plan.parts else [plan]


def plan_fields(plan: Plan, T: int) -> dict[str, Tensor]:
    """A plan as per-row tensors ``upge_adv<i>`` [B, T], ``upge_coef<i>``, ``upge_ent<i>`` [B]
    per component and ``upge_ent`` [B] (they travel through TRL's shuffle and split)."""
    out = {}
    for i, part in enumerate(_components(plan)):
        adv = part.adv if part.adv.dim() == 2 else part.adv[:, None].expand(-1, T)
        out[f"{FIELDS}adv{i}"] = adv.contiguous()
        out[f"{FIELDS}coef{i}"] = part.coef
        out[f"{FIELDS}ent{i}"] = part.ent
    out[f"{FIELDS}ent"] = plan.ent
    return out


def plan_of(fields: dict, n: int, dtype) -> Plan:
    """The plan of a micro-batch rebuilt from its ``upge_*`` rows (``n`` components)."""
    get = lambda k: fields[f"{FIELDS}{k}"].to(dtype)  # noqa: E731
    parts = tuple(Plan(get(f"adv{i}"), get(f"coef{i}"), get(f"ent{i}")) for i in range(n))
    return Plan(parts[0].adv, parts[0].coef, get("ent"), parts if n > 1 else ())


def _scatter(plan: Plan, idx: Tensor, B: int) -> Plan:
    """``plan`` of rows ``idx`` placed into B rows (the others: weight 0, not trained)."""
    def put(x: Optional[Tensor]) -> Optional[Tensor]:
        if x is None:
            return None
        out = x.new_zeros((B, *x.shape[1:]))
        out[idx] = x
        return out
    return Plan(put(plan.adv), put(plan.coef), put(plan.ent),
                tuple(_scatter(p, idx, B) for p in plan.parts), plan.gate, put(plan.returns))


def step_plan(est, reward: Tensor, mask: Tensor, group: Tensor, is_demo: Tensor, planned: Tensor) -> Plan:
    """The preset's plan over the whole step (every rank's rows): rows where ``planned`` is False
    (padding, DAPO's all-equal groups) are left out, weight 0."""
    idx = planned.nonzero().squeeze(-1)
    zeros = torch.zeros_like(mask)
    if len(idx) == 0:  # nothing to train this step (e.g. every DAPO group all-equal)
        nothing = Plan(zeros, zeros[:, 0], zeros[:, 0])
        return Plan(zeros, zeros[:, 0], zeros[:, 0], (nothing,) * len(est.reductions()) if isinstance(est, Hybrid) else ())
    b = Batch(logp=zeros, mask=mask, reward=reward, group=group, is_demo=is_demo, logp_old=zeros,
              logp_ref=zeros)
    return _scatter(est.plan(b.select(idx)), idx, mask.shape[0])


def all_equal_groups(reward: Tensor, group: Tensor, rollouts: Tensor) -> Tensor:
    """[B] bool: the row's group has rollout rewards all equal (DAPO's dynamic sampling drops it)."""
    out = torch.zeros_like(rollouts)
    for g in group.unique():
        rows = (group == g) & rollouts
        if rows.any():
            r = reward[rows]
            out[group == g] = bool((r == r[0]).all())
    return out


def _pad_width(x: Tensor, T: int, value=0) -> Tensor:
    return torch.nn.functional.pad(x, (0, T - x.shape[1]), value=value) if x.shape[1] < T else x


class UpgeGRPOTrainer(GRPOTrainer):
    """TRL's ``GRPOTrainer`` training preset ``estimator`` (see the module docstring).

    estimator: a preset name or an `Estimator`/`Hybrid`. demo_column: the dataset column holding
    each prompt's demonstration (text; needed by hybrids). run_dir: where our records go (default
    ``args.output_dir``; ``False``: none). Every other argument is ``GRPOTrainer``'s."""

    def __init__(self, *args, estimator: Union[str, Estimator, Hybrid] = "grpo",
                 demo_column: str = "solution", run_dir=None, **kwargs):
        super().__init__(*args, **kwargs)
        a = self.args
        if a.steps_per_generation != a.gradient_accumulation_steps:
            raise ValueError(f"steps_per_generation={a.steps_per_generation} differs from "
                             f"gradient_accumulation_steps={a.gradient_accumulation_steps}: the plan is made "
                             "once per generation batch, which must be one optimizer step (leave "
                             "steps_per_generation and generation_batch_size unset)")
        self.est = resolve(estimator, self.max_completion_length, self.beta)
        self.preset = estimator if isinstance(estimator, str) else self.est.name
        self.demo_column = demo_column
        steps = self.est.trainer
        self.demo_in_group, self.gated_demos = steps.demo_in_group, steps.gated_demos
        self.drop_equal = steps.dynamic_sampling
        self.n_parts = len(self.est.reductions())
        main = self.accelerator.is_main_process and run_dir is not False
        self.records = records.RunWriter(run_dir or a.output_dir) if main else NullWriter()
        self.records.write_config(self.record_config())
        self._upge_inputs: list = []
        self._upge_rewards: Optional[Tensor] = None

    # ------------------------------------------------------------------------ records
    def record_config(self) -> dict:
        a = self.args
        keep = ("num_generations", "max_completion_length", "learning_rate", "per_device_train_batch_size",
                "gradient_accumulation_steps", "num_iterations", "beta", "temperature", "seed", "max_steps",
                "use_vllm", "loss_type")
        model = getattr(getattr(self.model, "config", None), "_name_or_path", "")
        return {"preset": self.preset, "framework": "trl", "model": model,
                "estimator": {self.preset: self.est.parts()},
                "config": {k: getattr(a, k, None) for k in keep} | {"demo_column": self.demo_column},
                "world_size": self.accelerator.num_processes, "git_commit": records.git_commit()}

    def train(self, *args, **kwargs):
        self.records.set_status("running", self.state.global_step)
        try:
            out = super().train(*args, **kwargs)
        except BaseException as e:
            self.records.set_status("failed", self.state.global_step, f"{type(e).__name__}: {e}")
            raise
        self.records.set_status("finished", self.state.global_step, "done")
        return out

    def log(self, logs: dict, start_time: Optional[float] = None) -> None:
        training = self.model.training
        super().log(logs, start_time)
        row = self.state.log_history[-1] if self.state.log_history else {}
        if training and "step" in row and not (foreign.TRL_SUMMARY & set(row)):
            body = {k: v for k, v in row.items() if k not in ("step", "epoch") and v is not None}
            self.records.log_metrics(row["step"], foreign.renamed(body, foreign.TRL_NAMES))

    # ------------------------------------------------------------------ demonstrations
    def demo_ids(self, example: dict) -> list[int]:
        """The example's demonstration as completion token ids (+ eos, cut to the budget)."""
        if self.demo_column not in example:
            raise KeyError(f"{self.est.name} trains demonstrations, but the dataset row has no column "
                           f"{self.demo_column!r} (columns: {sorted(example)}); pass demo_column=...")
        tok = self._tokenizer
        ids = tok(str(example[self.demo_column]), add_special_tokens=False)["input_ids"]
        return (list(ids) + [tok.eos_token_id])[:self.max_completion_length]

    def _global_rows(self, n_local: int) -> int:
        return self.accelerator.process_index * n_local

    def _generate(self, prompts: list):
        out = list(super()._generate(prompts))
        if not (self.demo_in_group and self.model.training):
            return tuple(out)
        _, completion_ids, _, completions, logprobs, *_ = out
        n, first = self.num_generations, self._global_rows(len(prompts))
        for i, example in enumerate(self._upge_inputs):
            if (first + i) % n == n - 1:  # the group's last completion becomes its demonstration
                ids = self.demo_ids(example)
                text = self._tokenizer.decode(ids, skip_special_tokens=True)
                completion_ids[i] = ids
                completions[i] = ([{"role": "assistant", "content": text}]
                                  if isinstance(completions[i], list) else text)
                if logprobs is not None:
                    logprobs[i] = [None] * len(ids)   # no sampling log-prob: ratio 1
        return tuple(out)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        w = self.reward_weights.to(per_func.device)
        reward = (per_func * w).nansum(dim=1)
        self._upge_rewards = torch.where(torch.isnan(per_func).all(1), torch.zeros_like(reward), reward)
        return per_func

    def _generate_and_score_completions(self, inputs: list) -> dict:
        self._upge_inputs = inputs
        out = super()._generate_and_score_completions(inputs)
        if not self.model.training:
            return out
        B, n = len(inputs), self.num_generations
        first = self._global_rows(B)
        dev = out["completion_ids"].device
        gidx = torch.arange(first, first + B, device=dev)
        group = gidx // n
        is_demo = (gidx % n == n - 1) if self.demo_in_group else torch.zeros(B, dtype=torch.bool, device=dev)
        reward = self._upge_rewards.to(dev)[first:first + B]
        src = list(range(B))      # the input row each batch row belongs to (None: padding)
        if self.gated_demos:      # HPT: one demonstration row per prompt, on the rank of its first row
            heads = [i for i in range(B) if (first + i) % n == 0]
            out = self._append_rows(out, heads, [self.demo_ids(inputs[i]) for i in heads])
            group = torch.cat([group, group[heads]])
            is_demo = torch.cat([is_demo, torch.ones(len(heads), dtype=torch.bool, device=dev)])
            reward = torch.cat([reward, torch.ones(len(heads), dtype=reward.dtype, device=dev)])
            src += heads
        pad = (-len(src)) % self.args.steps_per_generation  # TRL splits into equal micro-batches
        if pad:
            out = self._append_rows(out, [0] * pad, [[self._tokenizer.pad_token_id]] * pad, zero_mask=True)
            group = torch.cat([group, group.new_full((pad,), -1)])
            is_demo = torch.cat([is_demo, is_demo.new_zeros(pad)])
            reward = torch.cat([reward, reward.new_zeros(pad)])
            src += [None] * pad
        real = torch.tensor([i is not None for i in src], dtype=torch.bool, device=dev)
        mask = out["completion_mask"] * out.get("tool_mask", 1)
        plan, offset = self._plan_step(reward, mask, group, is_demo, real)
        out.update(self._local_fields(plan, offset, len(src), mask.shape[1], dev))
        out[f"{FIELDS}demo"] = is_demo
        self._log_step(plan, offset, src, mask, reward, group, is_demo)
        return out

    @staticmethod
    def _local_fields(plan: Plan, offset: int, B: int, T: int, dev) -> dict:
        """This rank's rows of the step's plan, as ``upge_*`` tensors of width T."""
        fields = plan_fields(plan, plan.adv.shape[1])
        return {k: (v[offset:offset + B, :T] if v.dim() == 2 else v[offset:offset + B]).to(dev)
                for k, v in fields.items()}

    def _plan_step(self, reward, mask, group, is_demo, real):
        """Gather every rank's rows, plan once on them (identically on every rank), and return
        (plan, total rows, this rank's first row)."""
        from accelerate.utils import gather_object

        mine = [(float(r), m.tolist(), bool(d), int(g), bool(k))
                for r, m, d, g, k in zip(reward.tolist(), mask.float(), is_demo.tolist(), group.tolist(),
                                         real.tolist())]
        sizes = gather_object([len(mine)])
        rows = gather_object(mine) if self.accelerator.num_processes > 1 else mine
        offset = sum(sizes[:self.accelerator.process_index])
        T = max(len(r[1]) for r in rows)
        f64 = torch.float64
        m = torch.tensor([r[1] + [0.0] * (T - len(r[1])) for r in rows], dtype=f64)
        rew = torch.tensor([r[0] for r in rows], dtype=f64)
        grp = torch.tensor([r[3] for r in rows], dtype=torch.long)
        demo = torch.tensor([r[2] for r in rows], dtype=torch.bool)
        planned = torch.tensor([r[4] for r in rows], dtype=torch.bool)
        if self.drop_equal:
            planned &= ~all_equal_groups(rew, grp, ~demo)
        self._step_demo, self._step_planned = demo, planned
        return step_plan(self.est, rew, m, grp, demo, planned), offset

    def _append_rows(self, out: dict, src: list, completions: list, zero_mask: bool = False) -> dict:
        """``out`` with one row per ``completions`` entry: the prompt of row ``src[j]``, the given
        completion ids; per-token fields of TRL padded (old/ref/sampling log-probs 0, IS ratio 1,
        advantage 0). ``zero_mask``: padding rows (mask 0, never trained)."""
        dev, k = out["completion_ids"].device, len(completions)
        T = max(out["completion_ids"].shape[1], max(len(c) for c in completions))
        idx = torch.tensor(src, dtype=torch.long, device=dev)
        new_ids = torch.full((k, T), self._tokenizer.pad_token_id, dtype=out["completion_ids"].dtype, device=dev)
        new_mask = torch.zeros((k, T), dtype=out["completion_mask"].dtype, device=dev)
        for j, c in enumerate(completions):
            new_ids[j, :len(c)] = torch.tensor(c, dtype=new_ids.dtype, device=dev)
            new_mask[j, :len(c)] = 0 if zero_mask else 1
        res = dict(out)
        res["prompt_ids"] = torch.cat([out["prompt_ids"], out["prompt_ids"][idx]])
        res["prompt_mask"] = torch.cat([out["prompt_mask"], out["prompt_mask"][idx]])
        res["completion_ids"] = torch.cat([_pad_width(out["completion_ids"], T, self._tokenizer.pad_token_id), new_ids])
        res["completion_mask"] = torch.cat([_pad_width(out["completion_mask"], T), new_mask])
        res["advantages"] = torch.cat([out["advantages"], out["advantages"].new_zeros((k, *out["advantages"].shape[1:]))])
        fill = {"old_per_token_logps": 0.0, "ref_per_token_logps": 0.0, "sampling_per_token_logps": 0.0,
                "importance_sampling_ratio": 1.0, "tool_mask": 1}
        for key, value in fill.items():
            x = out.get(key)
            if x is None:
                continue
            x = _pad_width(x, T, value) if x.dim() == 2 and x.shape[1] > 1 else x
            res[key] = torch.cat([x, x.new_full((k, *x.shape[1:]), value)])
        return res

    # ------------------------------------------------------------------------ the loss
    def _compute_loss(self, model, inputs):
        if f"{FIELDS}coef0" not in inputs:  # evaluation batches are not planned: TRL's own loss value
            return super()._compute_loss(model, inputs)
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        logp, entropy, _ = self._get_per_token_logps_and_entropies(
            model, torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1),
            completion_ids.size(1), compute_entropy=True)
        dtype = torch.float32 if logp.dtype in (torch.float16, torch.bfloat16) else logp.dtype
        logp, entropy, mask = logp.to(dtype), entropy.to(dtype), mask.to(dtype)
        plan = plan_of(inputs, self.n_parts, dtype)
        if self.use_vllm and self.vllm_importance_sampling_correction and "importance_sampling_ratio" in inputs:
            isw = inputs["importance_sampling_ratio"].to(dtype)   # TRL's ratio on Â, as TRL applies it
            plan = Plan(plan.adv * isw, plan.coef, plan.ent,
                        tuple(Plan(p.adv * isw, p.coef, p.ent) for p in plan.parts))
        old = inputs.get("old_per_token_logps")
        ref = inputs.get("ref_per_token_logps")
        demo = inputs[f"{FIELDS}demo"]
        if ref is not None:  # the KL term is the rollouts' (demonstration rows: KL 0, never inf · 0)
            ref = torch.where(demo[:, None], logp.detach(), ref.to(dtype))
        B = logp.shape[0]
        b = Batch(logp=logp, mask=mask, reward=torch.zeros(B, dtype=dtype, device=logp.device),
                  group=torch.arange(B, device=logp.device), is_demo=demo,
                  logp_old=logp.detach() if old is None else old.to(dtype),
                  logp_ref=ref,
                  entropy=entropy if self.est.uses_entropy else None)
        loss = self.est.terms(b, plan).sum() * self.accelerator.num_processes
        mode = "train" if self.model.training else "eval"
        with torch.no_grad():
            tot = self.accelerator.reduce(torch.stack([(entropy * mask).sum(), mask.sum()]), reduction="sum")
        self._metrics[mode][TRL_ENTROPY].append((tot[0] / tot[1].clamp(min=1.0)).item())
        return loss

    # ---------------------------------------------------------------------- step logs
    def _log_step(self, plan: Plan, offset: int, src: list, mask: Tensor, reward: Tensor, group: Tensor,
                  is_demo: Tensor) -> None:
        """The step's gate decisions and offline ratio: to TRL's metrics (its log history) and
        one samples.jsonl row per sequence of this step."""
        m = self._metrics["train"]
        trained = plan.trained & self._step_planned
        demo = self._step_demo[trained]
        m[records.GATE_OFFLINE_RATIO].append(float(demo.float().mean()) if len(demo) else 0.0)
        labels = plan.labels()
        if plan.gate:
            m[records.GATE_SFT_FRACTION].append(sum(v == SFT_LABEL for v in labels.values()) / len(labels))
            m[records.GATE_MEAN_BETA].append(sum(d["beta"] for d in plan.gate) / len(plan.gate))
        from accelerate.utils import gather_object

        n, step = self.num_generations, self.state.global_step + 1
        kept = trained[offset:offset + len(src)].tolist()
        rows = [{"step": step, "prompt_id": _prompt_id(self._upge_inputs[j].get("prompt")),
                 "sample_idx": (self._global_rows(len(self._upge_inputs)) + i) % n if i < len(self._upge_inputs) else n,
                 "source": "demo" if is_demo[i] else "rollout", "reward": float(reward[i]),
                 "correct": bool(reward[i] >= 0.5), "n_tokens": int(mask[i].sum()),
                 "gate": labels.get(int(group[i]), "rl"), "group": int(group[i]), "kept": kept[i]}
                for i, j in enumerate(src) if j is not None]
        self.records.log_samples(gather_object(rows) if self.accelerator.num_processes > 1 else rows)


def _prompt_id(prompt) -> str:
    """A stable id of a prompt (text or chat messages)."""
    return hashlib.sha1(repr(prompt).encode()).hexdigest()[:12]
