"""Model cards of checkpoints, and ``--push-to-hub``.

    text = render(run_dir, step)    # README.md of checkpoint ``step``, from the run's records
    url = push(ckpt / "model", "user/name")   # raises PushFailed with one message (offline, no token)

Every checkpoint's ``model/`` folder (the one ``from_pretrained`` loads) holds a ``README.md``
written from the run's records: base model, preset and its parts per stage, data, steps, the
training hyper-parameters and the last held-out evaluation at or before the step, in the Hugging
Face model-card layout (YAML metadata, then Markdown). It is written before the checkpoint's
manifest, so ``manifest.json`` checks it like every other file. ``push`` uploads that folder with
``huggingface_hub``; it never raises anything but `PushFailed`, whose message says how to push
the saved checkpoint later.
"""
from __future__ import annotations

from pathlib import Path

import yaml

import records

CARD = "README.md"
HYPER = ("steps", "prompts_per_step", "n", "lr", "schedule", "warmup_steps", "max_new_tokens",
         "temperature", "mini_batches", "micro_batch", "entropy_coef", "kl_coef", "gate", "lora_r",
         "dtype", "seed")


class PushFailed(RuntimeError):
    """The checkpoint could not be pushed to the Hub (it is kept on disk)."""


def _base(cfg: dict, model_path: str) -> tuple[str, str]:
    """(what the card says the base model is, its hub id or "")."""
    model = cfg.get("model", "")
    if not model:
        return (f"The embedded tiny base model (`{Path(model_path).name or 'base'}`, built by "
                "training/base.py on the built-in arithmetic task).", "")
    if Path(model).expanduser().exists():
        return f"A local model (`{Path(model).name}`).", ""
    return f"[{model}](https://huggingface.co/{model}).", model


def _data(cfg: dict) -> str:
    train = f"`{Path(cfg['train_data']).name}`" if cfg.get("train_data") else \
        "the built-in verifiable arithmetic task (training/task.py)"
    held = f"`{Path(cfg['eval_data']).name}`" if cfg.get("eval_data") else "its fixed held-out split"
    return f"Trained on {train}; evaluated on {held}"


def _evaluation(run_dir: Path, step: int) -> list[str]:
    rows, _ = records.read_eval(run_dir)
    rows = [r for r in rows if r.get("step", step + 1) <= step and r.get("level") == "all"]
    if not rows:
        return ["No held-out evaluation was recorded up to this step."]
    at = max(r["step"] for r in rows)
    first = min(r["step"] for r in rows)
    lines = [f"Held-out evaluation at step {at} (step {first}: before training).", "",
             "| benchmark | metric | k | value | stderr | at step " + str(first) + " |",
             "|---|---|---|---|---|---|"]
    before = {(r["benchmark"], r["metric"], r["k"]): r["value"] for r in rows if r["step"] == first}
    for r in (r for r in rows if r["step"] == at):
        ref = before.get((r["benchmark"], r["metric"], r["k"]))
        lines.append(f"| {r['benchmark']} | {r['metric']} | {r['k']} | {r['value']:.4f} | "
                     f"{r.get('stderr', float('nan')):.4f} | {'' if ref is None else f'{ref:.4f}'} |")
    return lines


def _parts(estimator: dict) -> list[str]:
    out = []
    for stage, parts in estimator.items():
        out += [f"Stage `{stage}`:", "", "| part | value |", "|---|---|"]
        out += [f"| {k} | `{v}` |" for k, v in parts.items()]
        out.append("")
    return out


def render(run_dir, step: int) -> str:
    """README.md of checkpoint ``step`` of the run in ``run_dir``, from its records (what is
    not recorded is left out)."""
    run_dir = Path(run_dir)
    try:
        record = records.read_config(run_dir)
    except records.RecordError:
        record = {}
    cfg = record.get("config", {})
    base, hub_id = _base(cfg, record.get("model_path", ""))
    lora = bool(cfg.get("lora_r"))
    preset = record.get("preset", cfg.get("preset", "unknown"))
    meta = {"library_name": "peft" if lora else "transformers", **({"base_model": hub_id} if hub_id else {}),
            "tags": ["upge", "post-training", str(preset)]}
    stages = record.get("stages", [])
    total = cfg.get("steps")
    load = (["from peft import AutoPeftModelForCausalLM",
             "model = AutoPeftModelForCausalLM.from_pretrained(FOLDER)"] if lora else
            ["from transformers import AutoModelForCausalLM, AutoTokenizer",
             "model = AutoModelForCausalLM.from_pretrained(FOLDER)",
             "tokenizer = AutoTokenizer.from_pretrained(FOLDER)"])
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip("\n"), "---", "",
             f"# {run_dir.name}, step {step}" + (f" of {total}" if total else ""), "",
             f"Post-trained with **upge** (LLM post-training as gradient estimation, arXiv 2509.04419), "
             f"preset **`{preset}`**" + (f" (`--estimator {cfg['estimator']}`)" if cfg.get("estimator") else "")
             + f", {'LoRA r=' + str(cfg['lora_r']) if lora else 'full-parameter'}.", "",
             "## Base model", "", base, "",
             "## Data", "", _data(cfg) + (f"; reward `{cfg['reward']}`" if cfg.get("reward") else
                                         "; reward: the last `\\boxed{}` answer checked with math-verify") + ".", "",
             "## Training", "",
             f"Step {step}" + (f" of {total}" if total else "") + (": " + ", ".join(
                 f"`{s['name']}` steps {s['first_step']}–{s['last_step']}" for s in stages) if stages else "") + ".",
             "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {cfg[k]} |" for k in HYPER if k in cfg and cfg[k] not in ("", None)]
    lines += ["", "### Estimator parts", ""] + _parts(record.get("estimator", {}))
    lines += ["## Evaluation", ""] + _evaluation(run_dir, step) + [""]
    lines += ["## Use", "", "```python", 'FOLDER = "."  # this folder, or the Hub repo id'] + load + ["```", ""]
    command = record.get("command") or [""]
    if str(command[0]).endswith(("training/run.py", "training.run")):
        lines += ["## Reproduce", "", f"git commit `{record.get('git_commit', '')}`:", "",
                  "```", " ".join(["python -m training.run", *map(str, command[1:])]), "```", ""]
    return "\n".join(lines)


def push(folder, repo: str) -> str:
    """Upload ``folder`` (a checkpoint's ``model/``) to the Hub model repo ``repo`` (created if
    needed); its URL. Any failure (offline, no token, no network) is `PushFailed` with one
    message that names the folder to push later."""
    from huggingface_hub import HfApi, constants

    later = (f"the checkpoint is saved in {folder}; push it later with "
             f"`hf upload {repo} {folder}` on a machine with network")
    if constants.HF_HUB_OFFLINE:
        raise PushFailed(f"--push-to-hub {repo}: not pushed, HF_HUB_OFFLINE is set (training.run sets "
                         f"it unless the environment has HF_HUB_OFFLINE=0); {later}")
    try:
        api = HfApi()
        api.create_repo(repo, exist_ok=True)
        info = api.upload_folder(repo_id=repo, folder_path=str(folder),
                                 commit_message=f"upge checkpoint {Path(folder).parent.name}")
    except Exception as e:  # noqa: BLE001 - whatever the hub or the network says, the run is kept
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PushFailed(f"--push-to-hub {repo}: not pushed ({type(e).__name__}: {why}); {later}") from None
    return str(getattr(info, "commit_url", None) or f"https://huggingface.co/{repo}")
