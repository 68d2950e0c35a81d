"""Checkpoints in the ecosystem's formats, plus the trainer state needed for an exact resume.

    runs/<id>/checkpoints/step-000040/
        model/              save_pretrained: safetensors weights + config (full-parameter),
                            or a PEFT adapter dir (adapter_config.json + adapter_model.safetensors)
        tokenizer files     (save_pretrained)
        value_head.safetensors   PPO critic (when used)
        trainer_state.pt    step, data cursor, optimizer, scheduler, every RNG state

``AutoModelForCausalLM.from_pretrained(ckpt/"model")`` (full) or
``PeftModel.from_pretrained(base, ckpt/"model")`` (LoRA) load the weights with no project code.
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import records

STATE = "trainer_state.pt"
PREFIX = "step-"


def is_lora(model) -> bool:
    return hasattr(model, "peft_config")


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": np.random.get_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def save(run_dir, step: int, model, tok, value_head, optimizer, scheduler, cursor: dict,
         keep: int = 2, full_state: Optional[tuple] = None) -> Path:
    """Write checkpoint ``step`` atomically (temp dir + rename) and prune old ones.
    ``full_state``: (model, optimizer) state dicts already gathered from FSDP shards."""
    root = Path(run_dir) / records.CHECKPOINTS
    final = root / f"{PREFIX}{step:06d}"
    tmp = root / f".tmp-{PREFIX}{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if full_state is None:
        model.save_pretrained(tmp / "model")
    else:
        # gathered copies no longer share storage: drop the tied ones, as save_pretrained does
        tied = getattr(model, "all_tied_weights_keys", None) or {}
        state = {k: v for k, v in full_state[0].items() if k not in tied}
        model.save_pretrained(tmp / "model", state_dict=state)
        _plain_architecture(tmp / "model" / "config.json")
    tok.save_pretrained(tmp / "model")
    if value_head is not None:
        save_file(value_head.state_dict(), str(tmp / "value_head.safetensors"))
    optimizer_state = optimizer.state_dict() if full_state is None else full_state[1]
    torch.save({"step": step, "cursor": cursor, "optimizer": optimizer_state,
                "scheduler": scheduler.state_dict(), "rng": rng_state()}, tmp / STATE)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in all_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _plain_architecture(config_path: Path) -> None:
    """FSDP2 renames the model class (``FSDPLlamaForCausalLM``); the saved config names the
    plain one, which transformers and vLLM know."""
    import json

    cfg = json.loads(config_path.read_text())
    cfg["architectures"] = [a.removeprefix("FSDP") for a in cfg.get("architectures") or []]
    config_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def all_checkpoints(run_dir) -> list[Path]:
    root = Path(run_dir) / records.CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob(f"{PREFIX}*") if (p / STATE).exists())


def latest(run_dir) -> Optional[Path]:
    ckpts = all_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def read_weights(ckpt: Path) -> dict:
    """The full-parameter weights of checkpoint ``ckpt`` as one state dict."""
    state = {}
    for f in sorted((Path(ckpt) / "model").glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state


def load_weights(model, ckpt: Path) -> None:
    """Load checkpoint weights into an already built model (full or LoRA)."""
    mdir = Path(ckpt) / "model"
    if is_lora(model):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(mdir / "adapter_model.safetensors")))
        return
    missing, unexpected = model.load_state_dict(read_weights(ckpt), strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    bad = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
    if bad or unexpected:
        raise RuntimeError(f"{mdir}: checkpoint does not match the model "
                           f"(missing {bad[:5]}, unexpected {unexpected[:5]})")


def restore(ckpt: Path, model, value_head, optimizer, scheduler, load_full=None) -> dict:
    """Restore weights, optimizer, scheduler and RNG states; returns {step, cursor}.
    ``load_full(model, optimizer, weights, optimizer_state)``: loads the gathered (full) state
    into a sharded model and optimizer (FSDP) instead of ``load_state_dict``."""
    state = torch.load(Path(ckpt) / STATE, weights_only=False)
    if load_full is None:
        load_weights(model, ckpt)
        optimizer.load_state_dict(state["optimizer"])
    else:
        load_full(model, optimizer, read_weights(ckpt), state["optimizer"])
    if value_head is not None:
        value_head.load_state_dict(load_file(str(Path(ckpt) / "value_head.safetensors")))
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return {"step": state["step"], "cursor": state["cursor"]}
