"""The embedded base model: a character-level tokenizer and a small Llama built from a config,
briefly pre-trained (SFT on the task's demonstrations) so that it starts *partially* competent —
good on the easy levels, near zero on the hardest — which is the regime where HPT's gate switches.

Built deterministically on first use and cached under ``$UPGE_CACHE`` (default
``~/.cache/upge``) as ``base-<hash>``, the hash covering the tokenizer, model config, pre-training
recipe and task version. The directory is a plain ``save_pretrained`` model + tokenizer, so
``AutoModelForCausalLM.from_pretrained(path)`` / ``AutoTokenizer.from_pretrained(path)`` load it.
Nothing is downloaded.

The architecture is Llama, not Qwen2: transformers 5's ``AutoTokenizer`` replaces the tokenizer
of any ``model_type == "qwen2"`` directory by ``Qwen2Tokenizer`` (byte-level pre-tokenizer), which
silently drops the spaces and newlines of a character-level vocabulary. Llama keeps the saved one.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import task

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
CHARS = "\n" + "".join(chr(c) for c in range(32, 127))
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}<eos>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@dataclass(frozen=True)
class BaseConfig:
    """Architecture and pre-training recipe of the embedded base model (all in the cache hash)."""

    architecture: str = "llama"
    hidden_size: int = 128
    layers: int = 3
    heads: int = 4          # head_dim 32: vLLM's CPU attention needs ≥ 32
    kv_heads: int = 4
    intermediate_size: int = 384
    max_positions: int = 128
    pretrain_steps: int = 300
    pretrain_batch: int = 32
    pretrain_lr: float = 3e-3
    pretrain_final_lr: float = 1e-3
    pretrain_levels: tuple = task.LEVELS
    seed: int = 1234

    def digest(self) -> str:
        blob = json.dumps({**asdict(self), "task": task.TASK_VERSION, "chars": CHARS,
                           "template": CHAT_TEMPLATE, "held_out": task.HELD_OUT_SPLITS},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def char_tokenizer():
    """A `PreTrainedTokenizerFast` over single characters (WordLevel model, one token per char),
    with pad/eos/unk and role tokens and a chat template: ``<|user|>question<|assistant|>``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, EOS, UNK, *ROLE_TOKENS]
    vocab = {t: i for i, t in enumerate(specials + list(CHARS))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                  additional_special_tokens=list(ROLE_TOKENS),
                                  padding_side="left", model_max_length=4096)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_model(cfg: BaseConfig, tok):
    """A freshly initialised causal LM (``cfg.architecture``: llama | qwen2) of the configured size
    (seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM),
                             "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[cfg.architecture]
    conf = config_cls(vocab_size=len(tok), hidden_size=cfg.hidden_size,
                       intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.layers,
                       num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
                       max_position_embeddings=cfg.max_positions, tie_word_embeddings=True,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                       bos_token_id=tok.eos_token_id, attn_implementation="eager")
    torch.manual_seed(cfg.seed)
    return model_cls(conf)


def encode_demo_batch(tok, problems: list, device="cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels) for prompt + demonstration + eos, left-padded, with
    labels −100 on the prompt and padding (SFT on the response only)."""
    seqs, labs = [], []
    for p in problems:
        prompt = prompt_ids(tok, [{"role": "user", "content": p.prompt}])
        resp = tok(p.demo, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        seqs.append(prompt + resp)
        labs.append([-100] * len(prompt) + resp)
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tok.pad_token_id)
    labels = torch.full((len(seqs), width), -100)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, lab) in enumerate(zip(seqs, labs)):
        ids[i, width - len(s):] = torch.tensor(s)
        labels[i, width - len(s):] = torch.tensor(lab)
        att[i, width - len(s):] = 1
    return ids.to(device), att.to(device), labels.to(device)


def prompt_ids(tok, messages: list) -> list[int]:
    """Token ids of a chat prompt with the generation prompt appended."""
    out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from the first real token of each left-padded row."""
    return (attention_mask.cumsum(-1) - 1).clamp_min(0)


def pretrain(model, tok, cfg: BaseConfig, log=print) -> None:
    """SFT on demonstrations of fresh problems, cosine LR from ``pretrain_lr`` down to
    ``pretrain_final_lr`` (not to zero): the 'pre-training' of the base.

    *Brief* on purpose: 300 steps leave the model on the steep part of its learning curve
    (held-out avg@8 at T = 0.6 ≈ 23 %: ≈ 68 % on level 1, ≤ 7 % on levels 4–5), and the
    decay stops at 1e-3 so that post-training at 3e-4 continues that curve. A base annealed to
    lr 0 on these demonstrations (the first recipe: 600 steps, 0.17 M parameters) sat in a
    narrow minimum that every post-training method only left: see docs/training.md."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain_lr, weight_decay=0.01)
    floor = cfg.pretrain_final_lr / cfg.pretrain_lr
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * (
            floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * s / cfg.pretrain_steps))))
    model.train()
    for step in range(cfg.pretrain_steps):
        probs = task.train_problems(cfg.seed, cfg.pretrain_batch, start=step * cfg.pretrain_batch,
                                    levels=tuple(cfg.pretrain_levels))
        ids, att, labels = encode_demo_batch(tok, probs)
        loss = model(input_ids=ids, attention_mask=att, position_ids=position_ids(att),
                     labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == cfg.pretrain_steps - 1:
            log(f"  base pre-training step {step:4d}/{cfg.pretrain_steps}  loss {loss.item():.3f}")
    model.eval()


def config_for(variant: str = "arith") -> BaseConfig:
    """The base model of a task variant (`training.task.VARIANTS`): the default recipe with the
    variant's changes (part of the cache hash like every field)."""
    return BaseConfig(**dict(task.get_variant(variant).base_recipe))


def cache_root() -> Path:
    return Path(os.environ.get("UPGE_CACHE", Path.home() / ".cache" / "upge"))


def base_path(cfg: BaseConfig = BaseConfig()) -> Path:
    return cache_root() / f"base-{cfg.digest()}"


def ensure_base(cfg: BaseConfig = BaseConfig(), rebuild: bool = False, log=print) -> Path:
    """Path of the cached base model, building it first if missing (or if ``rebuild``)."""
    path = base_path(cfg)
    if path.exists() and not rebuild and (path / "config.json").exists():
        return path
    t0 = time.time()
    log(f"building the embedded base model -> {path}")
    with torch.random.fork_rng(devices=[]):
        tok = char_tokenizer()
        model = build_model(cfg, tok)
        pretrain(model, tok, cfg, log)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "upge_base.json").write_text(json.dumps({**asdict(cfg), "task": task.TASK_VERSION}))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    log(f"base model built in {time.time() - t0:.1f} s")
    return path
