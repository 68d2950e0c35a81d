"""Checkpoints in the ecosystem's formats, plus the trainer state needed for an exact resume.

    runs/<id>/checkpoints/step-000040/
        model/              save_pretrained: safetensors weights + config (full-parameter),
                            or a PEFT adapter dir (adapter_config.json + adapter_model.safetensors)
        tokenizer files     (save_pretrained)
        model/README.md     the model card (training/model_card.py: base model, preset and its
                            parts, data, steps, the last evaluation), from the run's records
        value_head.safetensors   PPO critic (when used)
        trainer_state.pt    step, data cursor, optimizer, scheduler, every RNG state (tensors and
                            plain values only: loaded with ``torch.load(weights_only=True)``, so a
                            crafted file cannot run code)
        manifest.json       sha256 of every other file (the model card too), written last;
                            verified on load

A checkpoint is written into ``.tmp-step-N`` and renamed when complete; a write that fails (disk
full) removes the partial directory, keeps the earlier checkpoints and raises `SaveFailed` with one
message. `latest_intact` verifies checksums newest first and falls back, with a one-line warning,
to the previous checkpoint when the newest is corrupt (a torn file, a zeroed tail of the weights).

``AutoModelForCausalLM.from_pretrained(ckpt/"model")`` (full) or
``PeftModel.from_pretrained(base, ckpt/"model")`` (LoRA) load the weights with no project code.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import records

from . import model_card

STATE = "trainer_state.pt"
MANIFEST = "manifest.json"
PREFIX = "step-"


class SaveFailed(RuntimeError):
    """A checkpoint could not be written (the partial one is removed, earlier ones are kept)."""


class CorruptCheckpoint(RuntimeError):
    """A checkpoint whose files do not match its manifest (or that has none)."""


def is_lora(model) -> bool:
    return hasattr(model, "peft_config")


def rng_state() -> dict:
    """Every RNG state as tensors and plain values (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)}}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["gauss"]))


def save(run_dir, step: int, model, tok, value_head, optimizer, scheduler, cursor: dict,
         keep: int = 2, full_state: Optional[tuple] = None) -> Path:
    """Write checkpoint ``step`` atomically (temp dir + manifest + rename) and prune old ones.
    ``full_state``: (model, optimizer) state dicts already gathered from FSDP shards. A failed
    write (``OSError``, e.g. a full disk) removes the temp dir and raises `SaveFailed`."""
    root = Path(run_dir) / records.CHECKPOINTS
    final = root / f"{PREFIX}{step:06d}"
    tmp = root / f".tmp-{PREFIX}{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        _write(tmp, step, model, tok, value_head, optimizer, scheduler, cursor, full_state)
        (tmp / "model" / model_card.CARD).write_text(model_card.render(run_dir, step), encoding="utf-8")
        write_manifest(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = latest(run_dir)
        why = os.strerror(e.errno) if e.errno else str(e)
        full = " (free space, then resume with --resume RUN_DIR)" if e.errno == errno.ENOSPC else ""
        raise SaveFailed(f"checkpoint {final} not written: {why}{full}; "
                         + (f"the last checkpoint {kept.name} is kept" if kept else
                            "no earlier checkpoint exists")) from None
    for old in all_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write(tmp: Path, step: int, model, tok, value_head, optimizer, scheduler, cursor: dict,
           full_state: Optional[tuple]) -> None:
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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(ckpt: Path) -> list[Path]:
    return sorted(p for p in Path(ckpt).rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(ckpt: Path) -> None:
    """``manifest.json``: {relative path: sha256} of every file of the checkpoint (fsynced)."""
    ckpt = Path(ckpt)
    sums = {str(p.relative_to(ckpt)): _sha256(p) for p in _files(ckpt)}
    with open(ckpt / MANIFEST, "w", encoding="utf-8") as f:
        json.dump({"sha256": sums}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def verify(ckpt: Path) -> None:
    """Raise `CorruptCheckpoint` naming the first file that is missing, extra or changed."""
    ckpt = Path(ckpt)
    try:
        sums = json.loads((ckpt / MANIFEST).read_text(encoding="utf-8"))["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpoint(f"{ckpt}: no readable {MANIFEST} ({e})") from None
    have = {str(p.relative_to(ckpt)) for p in _files(ckpt)}
    for name in sorted(set(sums) | have):
        if name not in have:
            raise CorruptCheckpoint(f"{ckpt}: {name} is missing")
        if name not in sums:
            raise CorruptCheckpoint(f"{ckpt}: {name} is not in {MANIFEST}")
        if _sha256(ckpt / name) != sums[name]:
            raise CorruptCheckpoint(f"{ckpt}: {name} does not match its sha256 in {MANIFEST}")


def latest_intact(run_dir, warn=print) -> Optional[Path]:
    """The newest checkpoint whose files match their manifest; each corrupt newer one is
    skipped with a one-line ``warn``. None when there is no intact checkpoint."""
    for ckpt in reversed(all_checkpoints(run_dir)):
        try:
            verify(ckpt)
            return ckpt
        except CorruptCheckpoint as e:
            warn(f"warning: skipping corrupt checkpoint: {e}")
    return None


def _plain_architecture(config_path: Path) -> None:
    """FSDP2 renames the model class (``FSDPLlamaForCausalLM``); the saved config names the
    plain one, which transformers and vLLM know."""
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


def load_state(ckpt: Path) -> dict:
    """trainer_state.pt, unpickled with ``weights_only=True`` (tensors and plain values only)."""
    path = Path(ckpt) / STATE
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CorruptCheckpoint(f"{path}: refused (it holds more than tensors and plain values; "
                                f"a checkpoint of this project never does): {str(e).splitlines()[0]}") from None


def restore(ckpt: Path, model, value_head, optimizer, scheduler, load_full=None) -> dict:
    """Restore weights, optimizer, scheduler and RNG states; returns {step, cursor}.
    ``load_full(model, optimizer, weights, optimizer_state)``: loads the gathered (full) state
    into a sharded model and optimizer (FSDP) instead of ``load_state_dict``."""
    state = load_state(ckpt)
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
