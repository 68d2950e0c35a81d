"""The variance probe on a training run's checkpoints, or on any HF causal LM and data file.

    python -m probes.variance --run runs/<id> [--steps 0,40 | --checkpoints all] --estimators all
    python -m probes.variance --model PATH --data FILE --estimators grpo,rloo
    python -m probes.variance --run runs/<id> --steps 40,80 --stale 1,10 --estimators grpo,seq_is

For each checkpoint (a run's ``checkpoints/step-N``, full-parameter or a LoRA adapter; with
``--model`` the model itself) this loads the policy, takes the run's first ``--prompts`` training
prompts, prompt template, sampling temperature / top-p, response length and reward function
from its ``config.json``, and samples one pool of rollouts per prompt from the checkpoint (common
random numbers: every estimator sees the same rollouts). Each estimator's M = ``--updates``
updates are disjoint slices of the pool: per update P prompts × R = budget/G groups of G rows
(rollouts and/or the prompt's demonstration, as the estimator's trainer lays them out). The
update's Batch (π_θold = π_θ: on-policy; π_ref = the run's initial model; critic values from the
checkpoint's value head) goes through the project's estimator object, and the per-token
coefficients d = −∂loss/∂logp are mapped to parameters by batched backward passes of Σ d·log π:
one per update (``--trcov updates``, the default) or one per group (``--trcov groups``), giving
the update's or the group's gradient h (only the trainable parameters: for LoRA the adapter's),
the sum of its rows' per-sample gradients g_i (the per-sample machinery of `probes.lm`
materialises those one by one; a sum per backward fits any model size).

Reference gradient g* (probes-spec §1.2 method 2): the unbiased RLOO estimator over ``--ref``
further rollouts per prompt, in K independent chunks c_k, g* = mean_k c_k, tr Cov(g*) =
Σ_k‖c_k − g*‖²/(K(K−1)).

Columns (per checkpoint × estimator; ĝ_u the M updates, m their mean):

* ``scale``     ⟨m, g*⟩ / (‖g*‖² − tr Cov g*)   (the denominator de-noised: E‖g*‖² = ‖∇J‖² + tr Cov)
* ``cos``       ⟨m, g*⟩ / √((‖m‖² − trCov/M)(‖g*‖² − tr Cov g*))   (both norms de-noised)
* ``rel_bias``  √max(0, ‖m − g*‖² − trCov/M − tr Cov g*) / √(‖g*‖² − tr Cov g*); the estimate
                of ‖E ĝ − ∇J‖²/‖∇J‖² inside the root is unbiased; ``bias_z`` is it over its
                standard error: |bias_z| < 3 means the bias is not distinguishable from the
                reference's and the updates' noise (``bias_sig`` 0), else ``bias_sig`` 1;
                likewise ``cos_z`` = (cos − 1)/SE and ``cos_sig``
* ``trCov``     tr Cov of one update: Σ_u‖ĝ_u − m‖²/(M−1) over the independent updates, or with
                ``--trcov groups`` R·Σ_x Var(h_x) over the M·R independent groups of each prompt
                when the estimator's coefficients are group-local (`moments.exact_support`);
                ``trcov`` in the setting says which
* ``SNR``       (‖m‖² − trCov/M)/trCov;  ``B_simple`` N·trCov/(‖m‖² − trCov/M) (N rows per update)
* ``E[cos]``    mean_u cos(ĝ_u, g*);  ``clip_frac`` fraction of trained tokens whose stabilisation
                mask is not 1 (0 on-policy: the probe evaluates at θ = θ_old)

Stale rows (``--stale K[,K2..]``, runs only): at each measured step s the estimators are measured
again on a pool sampled from the run's checkpoint of step s − K (step 0: the initial model), as a
trainer whose sampler lags K steps sees it: π_θold = that checkpoint (its log-probs of the rows),
while π_θ, the gradient, π_ref, the critic and the reference g* (fresh rollouts at s) stay at step
s, so every estimator sees the real ratios π_θ/π_θold. The stale pool is drawn by the same seeded
call as the fresh one (equal weights give the same rollouts and the same rows). Beside the columns
above (``clip_frac`` now counts real clipping) each stale row has, estimated over the stale pool's
rollouts: ``KL`` = KL(π_old‖π_θ) (mean sequence log-ratio), ``max_rho`` (largest token ratio),
``ESS`` = 1/E_old[ρ_seq²] (self-normalised: (mean ρ_seq)²/mean ρ_seq²), mean over prompts; the
setting ends in ``stale=K``. Under ``--stale`` the estimators may also be the testbeds'
off-policy probes (`registry.stale`): ``ppo[eps=0.2]``, ``ppo[eps=0.05]``, ``token_is``, ``seq_is``
(sequence-level IS, unbiased under staleness), ``tis[C=2]``; ``all`` adds them. A missing step
s − K is an error naming it and listing the available ones; ``--model`` (one model) refuses
``--stale``.

Standard errors: delete-one jackknife over the updates plus over the reference chunks (the two
are independent, so the variances add), computed from the Gram matrix of all group and chunk
gradients. Results are tidy records ``probes/variance.jsonl`` under the run (setting
``step=N,G=..,N=..``; stale rows ``..,stale=K``) or under ``--out`` for ``--model``; every check
runs before any work and the rows are written in one append once every checkpoint is measured.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor

import estimators
import records
from estimators import Batch, Hybrid

from . import moments as Mo
from . import registry as Rg

PROBE = records.PROBE_VARIANCE
REFERENCE = "rloo"
NOISY_REFERENCE = 0.5  # relative SE of g* above which the table warns


class ProbeInputError(ValueError):
    """Bad input to the run probe (a run, checkpoint, data file or estimator); the message
    names the file or field and the problem. Raised before anything is written."""


# ----------------------------------------------------------------------------- options


@dataclass
class RunOptions:
    estimators: str = "all"
    G: Optional[int] = None        # default: the run's n
    budget: Optional[int] = None   # samples per prompt per update; default G (one group)
    updates: int = 8               # M independent updates per estimator
    prompts: int = 8               # P probe prompts (the run's first training prompts)
    ref: int = 128                 # rollouts per prompt for the reference gradient
    ref_chunks: int = 8            # K independent chunks of the reference
    seed: int = 0
    trcov: str = "updates"         # "groups": per-group gradients, tr Cov from independent groups
    micro_batch: int = 64          # rows per forward/backward
    dtype: torch.dtype = torch.float32
    stale: tuple = ()              # K: rows whose rollouts come from the checkpoint K steps earlier

    def groups_per_prompt(self, G: int) -> int:
        return (self.budget or G) // G


# ----------------------------------------------------------------------------- sources


@dataclass
class Source:
    """What to measure: a model (and, for a run, its checkpoints), prompts and reward."""

    name: str
    model_path: str                     # the initial policy (π_ref; the base of a LoRA run)
    lora: Optional[dict]                # {"r", "alpha"} for a LoRA run
    checkpoints: list                   # [(label, step or None, checkpoint dir or None)]
    examples: list
    reward_fn: Callable
    template: str = "chat"
    max_prompt_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 48
    n: int = 8
    run_dir: Optional[Path] = None
    data: str = ""
    available: Optional[dict] = None    # a run's {step: checkpoint dir (None: the initial model)}


def run_source(run_dir, steps: str = "all", P: int = 8) -> Source:
    """A run directory: its config, its checkpoints (``steps``: "all" or "0,40,..."), its first
    ``P`` training prompts and its reward. Step 0 is the initial model when no checkpoint of step
    0 exists. Raises `ProbeInputError` naming the problem."""
    from training import checkpoint, data

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ProbeInputError(f"--run {run_dir}: no such directory")
    try:
        rec = records.read_config(run_dir)
    except records.RecordError as e:
        raise ProbeInputError(f"--run {run_dir}: {e}") from None
    cfg = rec.get("config")
    if not isinstance(cfg, dict) or not rec.get("model_path"):
        raise ProbeInputError(f"--run {run_dir}: not a training run ({records.CONFIG} has no "
                              "'config' and 'model_path'; probe a model with --model PATH --data FILE)")
    ckpts = {int(c.name[len(checkpoint.PREFIX):]): c for c in checkpoint.all_checkpoints(run_dir)}
    if not ckpts:
        raise ProbeInputError(f"--run {run_dir}: the run has no checkpoints ({records.CHECKPOINTS}/"
                              f"{checkpoint.PREFIX}N is empty or missing); train with --save-every N")
    available = {0: None, **ckpts}
    chosen = _choose_steps(steps, available, run_dir)
    examples = (data.load_examples(cfg["train_data"]) if cfg.get("train_data")
                else data.TaskStream(int(cfg.get("seed", 0)), variant=cfg.get("task", "arith")).take(P))[:P]
    return Source(run_dir.name, rec["model_path"], {"r": cfg["lora_r"], "alpha": cfg.get("lora_alpha", 16)}
                  if cfg.get("lora_r") else None,
                  [(f"step={s}", s, available[s]) for s in chosen], examples, reward_of(cfg),
                  cfg.get("prompt_template", "chat"), cfg.get("max_prompt_tokens", 0),
                  cfg.get("temperature", 1.0), cfg.get("top_p", 1.0), cfg.get("max_new_tokens", 48),
                  cfg.get("n", 8), run_dir, available=available)


def _choose_steps(steps: str, available: dict, run_dir: Path) -> list:
    if steps in ("all", "", None):
        return sorted(available)
    try:
        want = [int(s) for s in str(steps).split(",") if s.strip()]
    except ValueError:
        raise ProbeInputError(f"--steps {steps!r}: expected comma-separated step numbers like 0,40") from None
    missing = [s for s in want if s not in available]
    if missing or not want:
        raise ProbeInputError(f"--steps {steps}: {run_dir} has no checkpoint of step(s) "
                              f"{', '.join(map(str, missing)) or repr(steps)}; available: "
                              f"{', '.join(map(str, sorted(available)))} (0 = the initial model)")
    return want


def model_source(model: str, data_file: str, P: int = 8, temperature: float = 1.0,
                 max_new_tokens: int = 48, n: int = 8) -> Source:
    """Any local HF causal LM and a data file (rows in the training format, see
    `training.data`), scored with the boxed-answer reward."""
    from training import data

    if not Path(model, "config.json").exists():
        raise ProbeInputError(f"--model {model}: not a local HF model directory (no config.json)")
    try:
        examples = data.load_examples(data_file)[:P]
    except data.DataError as e:
        raise ProbeInputError(f"--data: {e}") from None
    return Source(Path(model).name, str(model), None, [("model", None, None)], examples,
                  reward_of({}), temperature=temperature, max_new_tokens=max_new_tokens, n=n,
                  data=str(data_file))


def reward_of(cfg: dict) -> Callable:
    """The run's reward function: the verifiable boxed-answer reward, with the run's verifier
    time limit (the only reward a run of this toolkit records)."""
    from training.reward import BoxedReward

    return BoxedReward(time_limit=float(cfg.get("verifier_timeout", 2.0)))


# ----------------------------------------------------------------------------- policies


def load_policy(src: Source, ckpt: Optional[Path], dtype=torch.float32):
    """The policy at checkpoint ``ckpt`` (None: the initial model), in eval mode, with only the
    measured parameters trainable (a LoRA run's adapter). A checkpoint of another model (another
    architecture or size, another LoRA rank) raises `ProbeInputError` naming both."""
    from training import checkpoint, policy

    model = policy.load_model(src.model_path, src.lora["r"] if src.lora else 0,
                              src.lora["alpha"] if src.lora else 16, attn_implementation="eager")
    if ckpt is not None:
        check_checkpoint(model.config.to_dict(), Path(ckpt), src)
        try:
            checkpoint.load_weights(model, ckpt)
        except (RuntimeError, ValueError, KeyError, OSError) as e:
            raise ProbeInputError(f"{ckpt}: checkpoint does not fit the run's model "
                                  f"{src.model_path}: {str(e).splitlines()[0][:300]}") from None
    return model.to(dtype).eval()


def check_checkpoint(mine: dict, ckpt: Path, src: Source) -> None:
    """Refuse a checkpoint that is not of the run's model: another architecture or size
    (``mine``: the run's model config), a full checkpoint in a LoRA run or the reverse, another
    LoRA rank."""
    mdir = ckpt / "model"
    adapter = mdir / "adapter_config.json"
    if src.lora:
        if not adapter.exists():
            raise ProbeInputError(f"{ckpt}: not a LoRA adapter checkpoint (no model/adapter_config.json), "
                                  f"but the run trains a LoRA adapter (lora_r={src.lora['r']})")
        r = json.loads(adapter.read_text()).get("r")
        if r != src.lora["r"]:
            raise ProbeInputError(f"{ckpt}: a LoRA adapter of rank {r}, but the run's lora_r is {src.lora['r']}")
        return
    path = mdir / "config.json"
    if not path.exists():
        raise ProbeInputError(f"{ckpt}: no model/config.json (a full-parameter checkpoint of this run has one)")
    saved = json.loads(path.read_text())
    keys = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size",
            "num_attention_heads", "num_key_value_heads")
    diff = [f"{k} {saved.get(k)} ≠ {mine.get(k)}" for k in keys if saved.get(k) != mine.get(k)]
    if diff:
        raise ProbeInputError(f"{ckpt}: checkpoint from another model than the run's {src.model_path} "
                              f"({'; '.join(diff)})")


def trainable(model) -> list:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def flat_grad(model, params: list) -> Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for _, p in params])


# ----------------------------------------------------------------------------- the pool


@dataclass
class Pool:
    """The sampled rows of one checkpoint: per prompt x, ``rollouts[x]`` (response ids, reward),
    and the demonstration; ``ref`` the reference pool."""

    prompts: list            # token ids per prompt
    rollouts: list           # [x] -> list of (ids, reward)
    ref: list                # [x] -> list of (ids, reward)
    demos: list              # [x] -> (ids, reward)
    pass_rate: list          # [x] mean reward of the estimator pool
    greedy: list             # [x] reward of the prompt's greedy (temperature 0) rollout (ReMax)


def sample_pool(model, tok, src: Source, n_pool: int, n_ref: int, seed: int) -> Pool:
    from training.rollout import make_engine, prompt_ids

    eng = make_engine("hf", tok, model, src.model_path)
    prompts = [prompt_ids(tok, e.messages, src.template) for e in src.examples]
    if src.max_prompt_tokens > 0:
        prompts = [p[-src.max_prompt_tokens:] for p in prompts]
    comps = eng.generate(prompts, n_pool + n_ref, src.temperature, src.top_p, src.max_new_tokens, seed)
    texts = [tok.decode(c, skip_special_tokens=True) for cs in comps for c in cs]
    truth = [e.answer for e, cs in zip(src.examples, comps) for _ in cs]
    rewards = src.reward_fn(texts, truth)
    k = n_pool + n_ref
    rows = [[(tuple(c), float(rewards[x * k + j])) for j, c in enumerate(cs)] for x, cs in enumerate(comps)]
    demos = []
    for e in src.examples:
        ids = tok(e.demo, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = ids[:src.max_new_tokens]
        demos.append((tuple(ids), float(src.reward_fn([tok.decode(ids, skip_special_tokens=True)], [e.answer])[0])))
    greedy = eng.generate(prompts, 1, 0.0, 1.0, src.max_new_tokens, seed)
    greedy = [float(r) for r in src.reward_fn([tok.decode(cs[0], skip_special_tokens=True) for cs in greedy],
                                              [e.answer for e in src.examples])]
    return Pool(prompts, [r[:n_pool] for r in rows], [r[n_pool:] for r in rows], demos,
                [sum(r for _, r in xs[:n_pool]) / max(n_pool, 1) for xs in rows], greedy)


# ----------------------------------------------------------------------------- estimators


def without_entropy(est):
    """The estimator without its entropy bonus (the probe measures the policy gradient)."""
    if isinstance(est, Hybrid):
        return est.replace(entropy_coef=0.0, rl=without_entropy(est.rl), sft=without_entropy(est.sft))
    return est.replace(entropy_coef=0.0) if est.entropy_coef else est


def off_policy_probes() -> dict:
    """The testbeds' off-policy family (`registry.stale`) that is not a preset, by name without
    its ``K=``: ``ppo[eps=0.2]``, ``ppo[eps=0.05]``, ``token_is``, ``seq_is`` (sequence-level IS,
    the unbiased reference), ``tis[C=2]``; each is RLOO exactly at θ = θ_old."""
    out = {}
    for p in Rg.stale(0):
        name = p.name.replace(",K=0]", "]").replace("[K=0]", "")
        if name not in estimators.PRESETS:
            out[name] = dataclasses.replace(p, name=name, stale=0)
    return out


def probe_of(name: str) -> Rg.Probe:
    """The registry probe of a preset or of an off-policy probe name (its unit, its Batch hook)."""
    return off_policy_probes().get(name) or Rg.Probe(name, Rg.preset(name))


def probed_estimator(name: str, max_new_tokens: int, P: int = 1, R: int = 1, G: int = 2):
    """Preset (or off-policy probe) ``name`` as the run trained it (constant normalisers at the
    run's response length), without entropy bonus."""
    from training.stages import scale_constants

    return without_entropy(scale_constants(probe_of(name).estimator(P, R, G), max_new_tokens))


def select(names: str, stale: bool = False) -> list:
    """``all`` (every preset; with ``stale`` also the off-policy probes) or a comma list of
    preset / off-policy probe names; unknown → `ProbeInputError`."""
    extra = sorted(off_policy_probes())
    if names == "all":
        return sorted(estimators.PRESETS) + (extra if stale else [])
    out = [n.strip() for n in re.split(r",(?![^\[]*\])", names) if n.strip()]
    bad = [n for n in out if n not in estimators.PRESETS and n not in extra]
    if bad or not out:
        raise ProbeInputError(f"--estimators: unknown preset(s) {', '.join(bad) or names!r}; valid: all, "
                              f"{', '.join(sorted(estimators.PRESETS))} (off-policy probes: {', '.join(extra)})")
    return out


def missing_fields(est, ckpt: Optional[Path]) -> list:
    """Batch fields ``est`` needs that the run did not record: critic values need the
    checkpoint's value head (a PPO run saves ``value_head.safetensors``)."""
    needs = set(est.needs)
    out = []
    if "values" in needs and (ckpt is None or not (Path(ckpt) / "value_head.safetensors").exists()):
        out.append("values (critic values: no value_head.safetensors in the checkpoint; only a run "
                   "trained with a critic, e.g. ppo, records one)")
    return out


# ----------------------------------------------------------------------------- measuring


def score_rows(model, prompts: list, responses: list, pad_id: int, temperature: float,
               value_head=None, grad: bool = False):
    from training import policy

    packed = policy.pack(prompts, [list(r) for r in responses], pad_id)
    with torch.set_grad_enabled(grad):
        return packed, policy.score(model, packed, value_head, temperature=temperature)


def update_rows(pool: Pool, est, G: int, R: int, u: int) -> tuple[list, list, list, list, list]:
    """Rows of update ``u``: per prompt R groups of G rows laid out as the estimator's trainer
    does (rollouts and/or the demonstration), taken from disjoint slices of the pool."""
    nR, nD = Mo.layout(est, G)
    prompts, resp, group, demo, reward = [], [], [], [], []
    for x, p in enumerate(pool.prompts):
        for r in range(R):
            k = u * R + r
            rows = pool.rollouts[x][k * G:k * G + nR] + [pool.demos[x]] * nD
            for j, (ids, rew) in enumerate(rows):
                prompts.append(p)
                resp.append(ids)
                group.append(x * R + r)
                demo.append(j >= nR)
                reward.append(rew)
    return prompts, resp, group, demo, reward


@dataclass
class Measured:
    """One estimator at one checkpoint: group gradients H [M, P·R, D] (×unit), the mean update
    m [D], rows per update, the tr Cov method, clip fraction."""

    name: str
    H: Tensor
    N: int
    demos: int
    trcov_from: str
    clip_frac: float

    @property
    def mean(self) -> Tensor:
        """m = mean over the updates of ĝ_u = Σ_groups h."""
        return self.H.sum(1).mean(0)


class Measurer:
    """Gradients of one checkpoint's policy: the pool, π_ref and the value head are fixed.
    Log-probs of every pool row are scored once (no grad) and shared by every estimator.
    With ``old_model`` (stale rows: the pool was sampled from it) π_θold is that policy's
    log-probs of the rows; without, π_θold = π_θ (on-policy)."""

    def __init__(self, model, ref_model, value_head, tok, src: Source, pool: Pool, o: RunOptions, G: int,
                 old_model=None):
        self.model, self.ref_model, self.value_head, self.tok = model, ref_model, value_head, tok
        self.src, self.pool, self.o, self.G = src, pool, o, G
        self.old_model = old_model
        self.params = trainable(model)
        self.R = o.groups_per_prompt(G)
        self._logp: dict = {}
        self._logp_old: dict = {}

    @property
    def D(self) -> int:
        return sum(p.numel() for _, p in self.params)

    def grads(self, prompts, resp, group, d: Tensor, per_group: bool) -> Tensor:
        """[n, D] gradients ∇_θ Σ_i Σ_t d_{i,t} log π_θ(y_{i,t}) over the rows of each group
        (``per_group``), or of the whole update (n = 1, in micro-batches of ``micro_batch``
        rows): a batched backward each, the sum of the rows' per-sample gradients."""
        gid = torch.tensor(group) if per_group else torch.zeros(len(group), dtype=torch.long)
        ids = sorted(set(gid.tolist()))
        out = torch.zeros(len(ids), self.D, dtype=self.o.dtype)
        for k, g in enumerate(ids):
            rows = [i for i in (gid == g).nonzero().flatten().tolist() if bool(d[i].any())]
            self.model.zero_grad(set_to_none=True)
            for c in range(0, len(rows), self.o.micro_batch):
                idx = rows[c:c + self.o.micro_batch]
                _, s = score_rows(self.model, [prompts[i] for i in idx], [resp[i] for i in idx],
                                  self.tok.pad_token_id, self.src.temperature, grad=True)
                T = s.logp.shape[1]
                (s.logp * d[idx, :T].to(s.logp.dtype)).sum().backward()
            out[k] = flat_grad(self.model, self.params)
        self.model.zero_grad(set_to_none=True)
        return out

    def logp(self, prompts, resp) -> Tensor:
        """[B, T] log π_θ of the rows (cached per (prompt, response)), right-padded with 0."""
        return self._scored(self.model, self._logp, prompts, resp)

    def logp_old(self, prompts, resp) -> Tensor:
        """[B, T] log π_θold of the rows: the sampling checkpoint's (stale rows), else log π_θ."""
        if self.old_model is None:
            return self.logp(prompts, resp)
        return self._scored(self.old_model, self._logp_old, prompts, resp)

    def _scored(self, model, cache: dict, prompts, resp, field: str = "logp") -> Tensor:
        """[B, T] per-token ``field`` of `policy.score` (logp, entropy or sum_pi_squared) under
        ``model``, cached per (field, prompt, response), right-padded with 0."""
        from training import policy

        keys = [(field, tuple(p), r) for p, r in zip(prompts, resp)]
        todo = [i for i, key in enumerate(keys) if key not in cache]
        for c in range(0, len(todo), self.o.micro_batch):
            idx = todo[c:c + self.o.micro_batch]
            packed = policy.pack([prompts[i] for i in idx], [list(resp[i]) for i in idx], self.tok.pad_token_id)
            with torch.no_grad():
                s = policy.score(model, packed, temperature=self.src.temperature,
                                 sum_pi_squared=field == "sum_pi_squared")
            for name in ("logp", "entropy", "sum_pi_squared"):  # what one pass gives, kept
                v = getattr(s, name)
                for j, i in enumerate(idx):
                    if v is not None:
                        cache[(name, *keys[i][1:])] = v[j, :int(packed.mask[j].sum())].double()
        T = max(1, max(len(r) for r in resp))
        out = torch.zeros(len(resp), T, dtype=torch.float64)
        for i, key in enumerate(keys):
            out[i, :len(cache[key])] = cache[key]
        return out

    def batch(self, est, prompts, resp, group, demo, reward, prepare=None) -> tuple[Batch, Tensor]:
        lp = self.logp(prompts, resp)
        leaf = lp.clone().requires_grad_(True)
        mask = torch.zeros_like(lp)
        for i, r in enumerate(resp):
            mask[i, :len(r)] = 1.0
        f = dict(logp=leaf, mask=mask, reward=torch.tensor(reward, dtype=torch.float64),
                 group=torch.tensor(group), is_demo=torch.tensor(demo), logp_old=self.logp_old(prompts, resp))
        if "logp_ref" in est.needs or getattr(est, "kl", None) is not None:
            f["logp_ref"] = self.ref_logp(prompts, resp)
        stats = [k for k in ("entropy", "sum_pi_squared") if k in est.needs]
        if stats:  # π_θold's next-token entropy / Σ_v π(v)² at each response token
            f.update(self.old_token_stats(prompts, resp, stats))
        if "reward_baseline" in est.needs:  # ReMax: the sampling policy's greedy reward per prompt
            greedy = {tuple(p): r for p, r in zip(self.pool.prompts, self.pool.greedy)}
            f["reward_baseline"] = torch.tensor([greedy[tuple(p)] for p in prompts], dtype=torch.float64)
        if "values" in est.needs:
            with torch.no_grad():
                f["values"] = score_rows(self.model, prompts, resp, self.tok.pad_token_id,
                                         self.src.temperature, self.value_head)[1].values.double()
        return Batch(**(prepare(f) if prepare else f)), leaf

    def old_token_stats(self, prompts, resp, names: list) -> dict:
        """{name: [B, T]} of the sampling policy (the old checkpoint for stale rows, else π_θ):
        ``entropy`` and/or ``sum_pi_squared`` of its next-token distribution at each token."""
        if self.old_model is None:
            return {k: self._scored(self.model, self._logp, prompts, resp, k) for k in names}
        return {k: self._scored(self.old_model, self._logp_old, prompts, resp, k) for k in names}

    def ref_logp(self, prompts, resp) -> Tensor:
        """log π_ref: the run's initial model (a LoRA run: the adapter disabled)."""
        if self.ref_model is None:  # LoRA: the base is the model without its adapter
            with self.model.disable_adapter():
                return score_rows(self.model, prompts, resp, self.tok.pad_token_id, self.src.temperature)[1].logp.double()
        return score_rows(self.ref_model, prompts, resp, self.tok.pad_token_id, self.src.temperature)[1].logp.double()

    def measure(self, name: str, est) -> Measured:
        G, R, P = self.G, self.R, len(self.pool.prompts)
        probe = probe_of(name)
        unit = probe.unit(est, P, R, G)
        per_group = self.o.trcov == "groups" and Mo.exact_support(est)[0]
        H, off, tokens = [], 0.0, 0.0
        for u in range(self.o.updates):
            prompts, resp, group, demo, reward = update_rows(self.pool, est, G, R, u)
            b, leaf = self.batch(est, prompts, resp, group, demo, reward, probe.prepare)
            rg = Mo.row_grads(est, b, leaf)
            off, tokens = off + float(rg.off.sum()), tokens + float(rg.tokens.sum())
            H.append(self.grads(prompts, resp, group, rg.d, per_group) * unit)
        nR, nD = Mo.layout(est, G)
        return Measured(name, torch.stack(H), P * R * nR, P * R * nD, "groups" if per_group else "updates",
                        off / tokens if tokens else 0.0)

    def reference(self) -> Tensor:
        """[K, D] chunk estimates of ∇J: RLOO over n_ref/K rollouts per prompt each."""
        rloo = estimators.get(REFERENCE)
        K = self.o.ref_chunks
        n = self.o.ref // K
        out = []
        for k in range(K):
            prompts, resp, group, demo, reward = [], [], [], [], []
            for x, p in enumerate(self.pool.prompts):
                for ids, rew in self.pool.ref[x][k * n:(k + 1) * n]:
                    prompts.append(p)
                    resp.append(ids)
                    group.append(x)
                    demo.append(False)
                    reward.append(rew)
            b, leaf = self.batch(rloo, prompts, resp, group, demo, reward)
            d = Mo.row_grads(rloo, b, leaf).d
            out.append(self.grads(prompts, resp, group, d, per_group=False)[0])
        return torch.stack(out)

    def off_policy_extras(self) -> dict:
        """Sample estimates over the pool's rollouts (drawn from π_θold), as the tree testbed's
        `variance.off_policy_extras`: KL(π_old‖π_θ) = mean over prompts of the mean sequence
        log-ratio log π_old − log π_θ; ``max_rho`` the largest token ratio π_θ/π_old; ``ESS``
        the sequence-IS effective sample size fraction 1/E_old[ρ_seq²] (mean over prompts),
        estimated self-normalised (Kish): (mean ρ_seq)²/mean ρ_seq² — E_old[ρ_seq] = 1, so it is
        consistent, and it stays in (0, 1] (1 exactly on-policy) where 1/mean ρ_seq² could not."""
        kl, ess, rho = [], [], 0.0
        for x, p in enumerate(self.pool.prompts):
            resp = [ids for ids, _ in self.pool.rollouts[x]]
            lo, ln = self.logp_old([p] * len(resp), resp), self.logp([p] * len(resp), resp)
            mask = torch.zeros_like(lo)
            for i, r in enumerate(resp):
                mask[i, :len(r)] = 1.0
            log_rho = ((ln - lo) * mask).sum(-1)
            kl.append(float(-log_rho.mean()))
            rho_seq = torch.exp(log_rho)
            ess.append(float(rho_seq.mean() ** 2 / (rho_seq ** 2).mean()))
            if mask.any():
                rho = max(rho, float(torch.exp(ln - lo)[mask > 0].max()))
        return {"KL": sum(kl) / len(kl), "max_rho": rho, "ESS": sum(ess) / len(ess)}


# ----------------------------------------------------------------------------- metrics


def _metrics_from_gram(Q: Tensor, M: int, PR: int, K: int, R: int, N: int, upd: list, chunks: list,
                       trcov_from: str) -> dict:
    """Metrics from the Gram matrix Q of [group gradients (M·PR, update-major); chunk
    gradients (K)], using updates ``upd`` and reference chunks ``chunks`` (for the jackknife)."""
    Q = Q.double()
    A = torch.zeros(M, M * PR + K, dtype=torch.float64)
    for u in range(M):
        A[u, u * PR:(u + 1) * PR] = 1.0
    C = torch.zeros(K, M * PR + K, dtype=torch.float64)
    C[torch.arange(K), M * PR + torch.arange(K)] = 1.0
    Au, Cc = A[upd], C[chunks]
    Mu, Kc = len(upd), len(chunks)
    UU = Au @ Q @ Au.T            # update Gram
    UC = Au @ Q @ Cc.T
    CC = Cc @ Q @ Cc.T
    mm, mg, gg = UU.mean(), UC.mean(), CC.mean()
    tr_g = (torch.diagonal(CC).sum() - Kc * gg) / (Kc - 1) / Kc
    if trcov_from == "groups":   # R·Σ_x Var(h_x) over the M·R groups of each prompt
        P = PR // R
        tr = 0.0
        for x in range(P):
            idx = torch.tensor([u * PR + x * R + r for u in upd for r in range(R)])
            q = Q[idx][:, idx]
            n = len(idx)
            tr += (torch.diagonal(q).sum() - q.sum() / n) / (n - 1)
        tr = R * tr
    else:
        tr = (torch.diagonal(UU).sum() - Mu * mm) / (Mu - 1)
    tr = float(tr)
    n2 = float(gg - tr_g)
    m2 = float(mm) - tr / Mu
    d2 = float(mm - 2 * mg + gg) - tr / Mu - float(tr_g)
    un = torch.sqrt(torch.diagonal(UU)).clamp_min(1e-300)
    ecos = float((UC.mean(1) / (un * math.sqrt(max(float(gg), 1e-300)))).mean())
    sq = lambda v: math.sqrt(v) if v > 0 else float("nan")  # noqa: E731
    return {"scale": float(mg) / n2 if n2 > 0 else float("nan"),
            "cos": float(mg) / (sq(m2) * sq(n2)) if m2 > 0 and n2 > 0 else float("nan"),
            "bias2": d2 / n2 if n2 > 0 else float("nan"),
            "trCov": tr, "SNR": m2 / tr if tr > 0 else float("inf"),
            "B_simple": N * tr / m2 if m2 > 0 else float("inf"), "E[cos]": ecos,
            "norm_m": sq(m2), "ref_trcov_rel": float(tr_g) / n2 if n2 > 0 else float("nan")}


def metrics(meas: Measured, ref: Tensor, R: int) -> tuple[dict, dict]:
    """(values, standard errors) of every column; SEs by the delete-one jackknife over the
    updates plus over the reference chunks."""
    M, PR, D = meas.H.shape
    K = ref.shape[0]
    V = torch.cat([meas.H.reshape(M * PR, D), ref.to(meas.H.dtype)]).double()
    Q = V @ V.T
    f = lambda upd, ch: _metrics_from_gram(Q, M, PR, K, R, meas.N or meas.demos, upd, ch, meas.trcov_from)  # noqa: E731
    full = f(list(range(M)), list(range(K)))
    var = {k: 0.0 for k in full}
    for n, loo in ((M, lambda i: f([u for u in range(M) if u != i], list(range(K)))),
                   (K, lambda i: f(list(range(M)), [c for c in range(K) if c != i]))):
        reps = [loo(i) for i in range(n)]
        for k in full:
            vals = torch.tensor([r[k] for r in reps], dtype=torch.float64)
            var[k] += float((n - 1) / n * ((vals - vals.mean()) ** 2).sum()) if torch.isfinite(vals).all() else float("nan")
    se = {k: math.sqrt(v) if v == v and v >= 0 else float("nan") for k, v in var.items()}
    out = dict(full)
    b2, b2se = out.pop("bias2"), se.pop("bias2")
    out["rel_bias"] = math.sqrt(max(b2, 0.0))
    se["rel_bias"] = b2se / (2 * out["rel_bias"]) if out["rel_bias"] > 0 else math.sqrt(b2se) if b2se == b2se else float("nan")
    out["bias_z"] = b2 / b2se if b2se > 0 else (0.0 if b2 <= 0 else float("inf"))
    out["bias_sig"] = float(out["bias_z"] > 3)
    out["cos_z"] = (out["cos"] - 1) / se["cos"] if se["cos"] > 0 else 0.0
    out["cos_sig"] = float(abs(out["cos_z"]) > 3)
    out["clip_frac"] = meas.clip_frac
    return out, se


# ----------------------------------------------------------------------------- the probe


@dataclass
class CheckpointResult:
    label: str
    step: Optional[int]
    pass_rate: list
    D: int
    ref_norm: float
    ref_rel_se: float
    rows: list                  # [(name, values, se, Measured)]
    seconds: float
    stale: list = dataclasses.field(default_factory=list)   # [StaleResult]


@dataclass
class StaleResult:
    """Rows of one checkpoint (step s) whose rollouts were sampled from step s − K (π_θold);
    π_θ, g* and the gradient are at step s. ``extras``: KL, max_rho, ESS (`Measurer.off_policy_extras`)."""

    K: int
    old_step: int
    extras: dict
    rows: list                  # [(name, values, se, Measured)]


def plan(src: Source, o: RunOptions) -> tuple[list, int, int]:
    """Every check before any work: the estimators (and the fields they need), G, budget."""
    names = select(o.estimators, bool(o.stale))
    stale_steps(src, o)
    G = o.G or src.n
    if G < 2:
        raise ProbeInputError(f"--G {G}: group estimators need G ≥ 2")
    budget = o.budget or G
    if budget % G:
        raise ProbeInputError(f"--budget {budget} is not divisible by G={G}")
    if o.updates < 3 or o.ref_chunks < 3 or o.ref < 2 * o.ref_chunks:
        raise ProbeInputError(f"--updates {o.updates}, --ref-chunks {o.ref_chunks}, --ref {o.ref}: the "
                              "jackknife needs ≥ 3 updates and ≥ 3 reference chunks, and --ref ≥ 2·--ref-chunks")
    if o.trcov not in ("updates", "groups"):
        raise ProbeInputError(f"--trcov {o.trcov!r}: valid are updates, groups")
    if o.prompts < 1 or not src.examples:
        raise ProbeInputError("--prompts must be ≥ 1 and the data must hold prompts")
    from transformers import AutoConfig

    mine = AutoConfig.from_pretrained(src.model_path).to_dict()
    olds = [src.available[s - K] for _, s, _ in src.checkpoints for K in o.stale]
    for ckpt in [c for _, _, c in src.checkpoints] + olds:
        if ckpt is not None:
            check_checkpoint(mine, Path(ckpt), src)
    explicit = o.estimators != "all"
    kept = []
    for name in names:
        miss = [m for _, _, c in src.checkpoints for m in missing_fields(probed_estimator(name, src.max_new_tokens), c)]
        if miss and explicit:
            raise ProbeInputError(f"--estimators {name}: needs {miss[0]}")
        if not miss:
            kept.append(name)
    return kept, G, budget // G


def stale_steps(src: Source, o: RunOptions) -> None:
    """``--stale K``: every measured step s needs the run's checkpoint of step s − K (the
    sampling policy of a trainer that lags K steps); a single model has no earlier one."""
    if not o.stale:
        return
    if src.available is None:
        raise ProbeInputError(f"--stale {','.join(map(str, o.stale))}: stale rows need a run with two "
                              "checkpoints (rollouts from step s − K, gradient at step s); --model is a "
                              "single model (use --run DIR)")
    if any(K < 1 for K in o.stale):
        raise ProbeInputError(f"--stale {','.join(map(str, o.stale))}: every K must be ≥ 1")
    missing = sorted({s - K for _, s, _ in src.checkpoints for K in o.stale if s - K not in src.available})
    if missing:
        need = ", ".join(f"step={s} needs {s - K}" for _, s, _ in src.checkpoints for K in o.stale
                         if s - K not in src.available)
        raise ProbeInputError(f"--stale {','.join(map(str, o.stale))}: {src.run_dir} has no checkpoint of "
                              f"step(s) {', '.join(map(str, missing))} ({need}); available: "
                              f"{', '.join(map(str, sorted(src.available)))} (0 = the initial model); "
                              "give --steps whose step − K is among them")


def run_probe(src: Source, o: RunOptions, log=lambda s: None) -> dict:
    """Measure every checkpoint of ``src``; nothing is written here (see `write`)."""
    from training import policy
    from training.policy import ValueHead

    names, G, R = plan(src, o)
    skipped = sorted(set(select("all", bool(o.stale))) - set(names)) if o.estimators == "all" else []
    for name in skipped:
        log(f"skip {name}: needs fields the run did not record "
            f"({missing_fields(probed_estimator(name, src.max_new_tokens), None)[0]})")
    tok = policy.load_tokenizer(src.model_path)
    ref_model = None
    if not src.lora and any("logp_ref" in probed_estimator(n, src.max_new_tokens).needs for n in names):
        ref_model = policy.load_model(src.model_path, attn_implementation="eager").to(o.dtype).eval()
    results = []
    for ci, (label, step, ckpt) in enumerate(src.checkpoints):
        t0 = time.time()
        model = load_policy(src, ckpt)
        vh = None
        if ckpt is not None and (Path(ckpt) / "value_head.safetensors").exists():
            from safetensors.torch import load_file
            vh = ValueHead(model.config.hidden_size)
            vh.load_state_dict(load_file(str(Path(ckpt) / "value_head.safetensors")))
            vh = vh.to(o.dtype)
        n_pool = o.updates * R * G
        pool = sample_pool(model, tok, src, n_pool, o.ref, o.seed)  # float32 sampling
        model = model.to(o.dtype)
        meas = Measurer(model, ref_model, vh, tok, src, pool, o, G)
        ref = meas.reference()
        g = ref.double().mean(0)
        tr_g = float(((ref.double() - g) ** 2).sum()) / (len(ref) - 1) / len(ref)
        log(f"{label}: pool sampled, reference ‖g*‖={float(g.norm()):.4g} ({time.time() - t0:.1f} s)")
        P = len(pool.prompts)

        def measure_all(ms: Measurer, tag: str) -> list:
            return [measured(ms, name, probed_estimator(name, src.max_new_tokens, P, R, G), ref, R,
                             f"{label}{tag}", log) for name in names]

        rows = measure_all(meas, "")
        stale = []
        for K in o.stale:
            # π_θold = the checkpoint K steps earlier; its pool is drawn by the same call as the
            # fresh one (common random numbers: equal weights give the same rollouts)
            old = load_policy(src, src.available[step - K])
            old_pool = sample_pool(old, tok, src, n_pool, o.ref, o.seed)
            sm = Measurer(model, ref_model, vh, tok, src, old_pool, o, G, old_model=old.to(o.dtype))
            extras = sm.off_policy_extras()
            log(f"{label} stale={K} (π_θold = step {step - K}): KL={extras['KL']:.3g}, "
                f"max ρ={extras['max_rho']:.3g}, ESS={extras['ESS']:.3g}")
            stale.append(StaleResult(K, step - K, extras, measure_all(sm, f",stale={K}")))
        results.append(CheckpointResult(label, step, pool.pass_rate, meas.D, float(g.norm()),
                                        math.sqrt(tr_g) / max(float(g.norm()), 1e-300), rows,
                                        time.time() - t0, stale))
    close = getattr(src.reward_fn, "close", None)
    if close:
        close()
    return {"source": src, "options": o, "G": G, "R": R, "results": results, "skipped": skipped}


def measured(meas: Measurer, name: str, est, ref: Tensor, R: int, label: str, log) -> tuple:
    """(name, values, standard errors, Measured) of one estimator."""
    t = time.time()
    m = meas.measure(name, est)
    vals, se = metrics(m, ref, R)
    log(f"  {label} {name}: {time.time() - t:.1f} s")
    return name, vals, se, m


COLUMNS = ("scale", "cos", "rel_bias", "trCov", "SNR", "B_simple", "E[cos]", "clip_frac",
           "bias_z", "bias_sig", "cos_z", "cos_sig")
STALE_COLUMNS = ("KL", "max_rho", "ESS")   # stale rows only (one value per checkpoint and K)


def tidy_rows(res: dict) -> list:
    """Tidy records (probe, estimator, setting, metric, value, stderr)."""
    out = []
    G, R = res["G"], res["R"]
    for cr in res["results"]:
        where = f"step={cr.step}" if cr.step is not None else f"model={res['source'].name}"
        blocks = [(cr.rows, "", {})] + [(sr.rows, f",stale={sr.K}", sr.extras) for sr in cr.stale]
        for rows, tag, extras in blocks:
            for name, vals, se, m in rows:
                setting = (f"{where},G={G},N={m.N},demos={m.demos},budget={G * R},updates={res['options'].updates},"
                           f"grads={'per-group' if m.trcov_from == 'groups' else 'per-update'},trcov={m.trcov_from},"
                           f"ref={REFERENCE}({res['options'].ref}){tag}")
                for k in COLUMNS:
                    out.append({"probe": PROBE, "estimator": name, "setting": setting, "metric": k,
                                "value": vals[k], "stderr": se.get(k, float("nan"))})
                for k in STALE_COLUMNS if extras else ():
                    out.append({"probe": PROBE, "estimator": name, "setting": setting, "metric": k,
                                "value": extras[k], "stderr": float("nan")})
        base = f"{where},G={G}"
        out.append({"probe": PROBE, "estimator": "reference", "setting": base, "metric": "norm_ref",
                    "value": cr.ref_norm, "stderr": float("nan")})
        out.append({"probe": PROBE, "estimator": "reference", "setting": base, "metric": "ref_rel_se",
                    "value": cr.ref_rel_se, "stderr": float("nan")})
        for i, p in enumerate(cr.pass_rate):
            out.append({"probe": PROBE, "estimator": "reference", "setting": base, "metric": f"p_x/{i}",
                        "value": p, "stderr": float("nan")})
    return out


def write(res: dict, out: Path, argv: list) -> Path:
    """Append every row in one write (after every checkpoint was measured)."""
    src = res["source"]
    w = records.RunWriter(out)
    if src.run_dir is None:
        w.write_config({"probe": PROBE, "model": src.model_path, "data": src.data, "argv": argv})
    w.log_probe(PROBE, tidy_rows(res))
    return out


def format_table(res: dict) -> str:
    src = res["source"]
    lines = [f"{src.name}: G={res['G']}, {res['R']} group(s)/prompt/update, {res['options'].updates} updates, "
             f"{len(src.examples)} prompts, reference {REFERENCE} over {res['options'].ref} rollouts/prompt"]
    if res["skipped"]:
        lines.append(f"skipped (fields the run did not record): {', '.join(res['skipped'])}")
    cols = ("scale", "cos", "rel_bias", "trCov", "SNR", "B_simple", "E[cos]")
    for cr in res["results"]:
        lines += ["", f"{cr.label}: {cr.D} measured parameters, p_x = [{', '.join(f'{p:.2f}' for p in cr.pass_rate)}], "
                      f"‖g*‖ = {cr.ref_norm:.4g} (relative SE {cr.ref_rel_se:.3f}), {cr.seconds:.1f} s",
                  f"{'estimator':14s}" + "".join(f"{c:>20s}" for c in cols) + "  bias?"]
        if cr.ref_rel_se > NOISY_REFERENCE:
            lines.insert(-1, f"warning: the reference is noise-dominated (relative SE {cr.ref_rel_se:.2f} > "
                             f"{NOISY_REFERENCE}): scale and cos are not meaningful; raise --ref or probe "
                             "prompts with pass rates away from 0 and 1")
        for name, vals, se, m in cr.rows:
            cells = "".join(f"{_pm(vals[c], se.get(c)):>20s}" for c in cols)
            lines.append(f"{name:14s}{cells}  {'yes' if vals['bias_sig'] else 'no'}")
        for sr in cr.stale:
            e = sr.extras
            lines += ["", f"{cr.label}, stale={sr.K} (rollouts from step {sr.old_step}): "
                          f"KL(old‖new) = {e['KL']:.3g}, max ρ = {e['max_rho']:.3g}, ESS = {e['ESS']:.3g}",
                      f"{'estimator':14s}" + "".join(f"{c:>20s}" for c in cols) + f"{'clip_frac':>11s}  bias?"]
            for name, vals, se, m in sr.rows:
                cells = "".join(f"{_pm(vals[c], se.get(c)):>20s}" for c in cols)
                lines.append(f"{name:14s}{cells}{vals['clip_frac']:>11.3g}  {'yes' if vals['bias_sig'] else 'no'}")
    return "\n".join(lines) + "\n"


def _pm(v, s) -> str:
    if v is None or v != v:
        return "—"
    return f"{v:.4g}±{s:.2g}" if s is not None and s == s else f"{v:.4g}"


def parse_stale(s: Optional[str]) -> tuple:
    """``--stale 1,4`` → (1, 4); absent or empty: no stale rows."""
    try:
        return tuple(int(k) for k in (s or "").split(",") if k.strip())
    except ValueError:
        raise ProbeInputError(f"--stale {s!r}: expected comma-separated step lags like 1,4") from None


def main_variance(args, argv: list) -> int:
    """Entry from ``python -m probes.variance --run DIR`` or ``--model PATH --data FILE``."""
    import sys

    log = (lambda m: print(m, file=sys.stderr)) if args.verbose else (lambda m: None)
    o = RunOptions(estimators=args.estimators, G=args.G, budget=args.budget, updates=args.updates,
                   prompts=args.prompts, ref=args.ref, ref_chunks=args.ref_chunks, seed=args.seed,
                   trcov=args.trcov, micro_batch=args.micro_batch)
    try:
        if args.run and args.model:
            raise ProbeInputError("give --run DIR or --model PATH --data FILE, not both")
        o.stale = parse_stale(args.stale)
        if args.steps and args.checkpoints:
            raise ProbeInputError("give --steps or --checkpoints all, not both")
        if args.run:
            src = run_source(args.run, args.steps or "all", args.prompts)
        else:
            if not args.data:
                raise ProbeInputError("--model needs --data FILE (prompts in the training-data format)")
            src = model_source(args.model, args.data, args.prompts, args.temperature, args.max_new_tokens,
                               args.G or 8)
        plan(src, o)
    except ProbeInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        res = run_probe(src, o, log)
    except ProbeInputError as e:   # a checkpoint that does not fit, found while loading it
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(res), end="")
    if not args.no_records:
        from .common import default_out
        out = src.run_dir if src.run_dir is not None else (Path(args.out) if args.out else
                                                            default_out(f"variance-{src.name}"))
        write(res, out, argv)
        print(f"records: {out / records.PROBES_DIR / (PROBE + '.jsonl')}", file=sys.stderr)
    return 0
