"""Prompt templates shared by training and evaluation: messages → prompt token ids.

    ids = prompt_ids(tok, messages, "chat")   # the tokenizer's chat template, generation prompt on
                                              # (a tokenizer without one: the messages' plain text)
    ids = prompt_ids(tok, messages, "zero")   # the official LLaMA base-model template (below)

``zero`` is HPT/LUFFY's prompt for base models (``data.zero=True``: ``zero_temp`` +
``suffix_prompt``, docs/paper-notes.md §2.2): the last user message becomes the question.
"""
from __future__ import annotations

from typing import Callable

from .. import base

TEMPLATES = ("chat", "zero")
ZERO_TEMPLATE = ("Question:\n{question}\nPlease reason step by step, and put your final answer "
                 "within \\boxed{{}}.\nAnswer:\nLet's think step by step.")


def zero_text(messages: list) -> str:
    """The ``zero`` template filled with the last user message."""
    q = next(m["content"] for m in reversed(list(messages)) if m["role"] == "user")
    return ZERO_TEMPLATE.format(question=q)


def plain_text(messages: list) -> str:
    """The messages' contents, one paragraph each: the prompt of a model without a chat template
    (one user message: its text as it is)."""
    return "\n\n".join(m["content"] for m in messages)


def prompt_ids(tok, messages: list, template: str) -> list[int]:
    """Token ids of the prompt for ``messages`` under ``template`` (chat | zero); ``chat`` with a
    tokenizer that has no chat template (a base model) is the messages' `plain_text`."""
    if template == "zero":
        return list(tok(zero_text(messages), add_special_tokens=True)["input_ids"])
    if template == "chat" and not getattr(tok, "chat_template", None):
        return list(tok(plain_text(messages), add_special_tokens=True)["input_ids"])
    if template == "chat":
        return base.prompt_ids(tok, list(messages))
    raise ValueError(f"prompt template must be one of {TEMPLATES}, got {template!r}")


def make_prompt_fn(cfg, tok) -> Callable:
    """Example → prompt token ids under ``--prompt-template``; kept to the last
    ``--max-prompt-tokens`` tokens when > 0."""
    if cfg.prompt_template not in TEMPLATES:
        raise ValueError(f"--prompt-template must be chat or zero, got {cfg.prompt_template!r}")
    cap = cfg.max_prompt_tokens
    ids = lambda e: prompt_ids(tok, e.messages, cfg.prompt_template)  # noqa: E731
    return (lambda e: list(ids(e))[-cap:]) if cap > 0 else ids


def stop_ids(tok, model_config=None, generation_config=None) -> list[int]:
    """Token ids that end a completion: the tokenizer's eos, the generation config's eos (one
    or a list) and a chat end-of-turn token (``<|im_end|>``, ``<|eot_id|>``) when present."""
    ids = {tok.eos_token_id}
    for cfg in (generation_config, model_config):
        eos = getattr(cfg, "eos_token_id", None) if cfg is not None else None
        ids |= set(eos) if isinstance(eos, (list, tuple)) else {eos}
    for t in ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>"):
        tid = tok.convert_tokens_to_ids(t) if t in tok.get_vocab() else None
        ids.add(tid)
    return sorted(i for i in ids if isinstance(i, int) and i >= 0)
