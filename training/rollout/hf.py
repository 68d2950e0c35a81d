"""The HF ``generate`` rollout engine, and the interface every engine has.

    sampler.generate(prompts_token_ids, n, temperature, top_p, max_new_tokens, seed)
        -> completions[i][j] = token ids of the j-th completion of prompt i (eos included when
           generated, padding removed)
    sampler.generate_with_logprobs(...) -> (completions, the engine's log-probs [i][j][t] or None)
    sampler.sync_weights(model)   # after each optimizer step (a no-op for HF generate)

`HFSampler` uses ``model.generate`` (KV cache, batched, left-padded). Sampling is seeded with
its own forked RNG, so a step's rollouts depend only on (weights, prompts, seed) and never on
the global RNG: this is what makes a resumed run sample exactly what it would have.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import torch


class Sampler(Protocol):
    seeds_per_prompt: bool  # accepts ``prompt_seeds=`` (one seed per prompt, one call)
    own_weights: bool       # samples from its own copy of the weights (synced after each step)

    def generate(self, prompts_token_ids: list[list[int]], n: int, temperature: float, top_p: float,
                 max_new_tokens: int, seed: int) -> list[list[list[int]]]: ...

    def generate_with_logprobs(self, prompts_token_ids, n, temperature, top_p, max_new_tokens,
                               seed) -> tuple[list, Optional[list]]: ...

    def sync_weights(self, model) -> None: ...


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask) of left-padded sequences."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s)
            att[i, width - len(s):] = 1
    return ids, att


def strip_completion(row: list[int], eos_id: int, pad_id: int) -> list[int]:
    """Cut a generated row after its first eos (kept) and drop trailing padding."""
    if eos_id in row:
        return row[:row.index(eos_id) + 1]
    while row and row[-1] == pad_id and pad_id != eos_id:
        row = row[:-1]
    return row


class SampledLogProbs:
    """A logits processor put *last* in ``generate``'s list: it sees the scores the next token is
    drawn from (after temperature and top-p) and records, one step late, the log-prob of the
    token that was drawn — the sampler's own log p of each token, for ``rollout/logp_gap``.
    Keeps one [B, V] tensor, not the whole ``output_scores`` history."""

    def __init__(self):
        self.prev: Optional[torch.Tensor] = None
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids, scores):
        self.take(input_ids[:, -1])
        self.prev = torch.log_softmax(scores.float(), -1)
        return scores

    def take(self, tokens) -> None:
        if self.prev is not None:
            self.steps.append(self.prev.gather(-1, tokens[:, None]).squeeze(-1))
            self.prev = None

    def finish(self, generated: torch.Tensor) -> list[list[float]]:
        """[row][t] log-probs of the generated tokens (the last step taken from ``generated``)."""
        n = len(self.steps)
        if self.prev is not None and generated.shape[1] > n:
            self.take(generated[:, n])
        if not self.steps:
            return [[] for _ in range(generated.shape[0])]
        return torch.stack(self.steps, 1).tolist()


@dataclass
class HFSampler:
    """Batched HF ``generate`` with sampling on the model's device; ``max_batch`` sequences per
    call; ``stop_ids`` (default: ``eos_id`` alone) end a sequence. Its log-probs [i][j][t] are
    the sampler's log-prob of each sampled token, from the processed scores (softmax of
    logits / temperature, top-p applied) it drew the token from; None after greedy decoding."""

    model: object
    eos_id: int
    pad_id: int
    max_batch: int = 256
    stop_ids: Optional[list] = None

    seeds_per_prompt = False
    own_weights = False  # samples from the training model itself

    def generate(self, prompts_token_ids, n, temperature, top_p, max_new_tokens, seed):
        return self.generate_with_logprobs(prompts_token_ids, n, temperature, top_p,
                                           max_new_tokens, seed)[0]

    def generate_with_logprobs(self, prompts_token_ids, n, temperature, top_p, max_new_tokens, seed):
        """(completions[i][j], the sampled tokens' log-probs [i][j][t] or None when greedy)."""
        flat = [p for p in prompts_token_ids for _ in range(n)]
        out: list[list[int]] = []
        lps: list[list[float]] = []
        was_training = self.model.training
        self.model.eval()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            for start in range(0, len(flat), self.max_batch):
                ids, lp = self._generate(flat[start:start + self.max_batch], temperature, top_p,
                                         max_new_tokens)
                out += ids
                lps += lp
        self.model.train(was_training)
        shape = lambda xs: [xs[i * n:(i + 1) * n] for i in range(len(prompts_token_ids))]  # noqa: E731
        return shape(out), (shape(lps) if temperature > 0 else None)

    def _generate(self, seqs, temperature, top_p, max_new_tokens):
        """(completions, their sampled-token log-probs). Sampling processors are passed in
        generate's order (temperature, then top-p) so that the recorder comes after them."""
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

        ids, att = left_pad(seqs, self.pad_id)
        ids, att = ids.to(self.model.device), att.to(self.model.device)
        greedy = temperature <= 0
        record = SampledLogProbs()
        warpers = [] if greedy else (
            ([TemperatureLogitsWarper(temperature)] if temperature != 1.0 else [])
            + ([TopPLogitsWarper(top_p)] if top_p < 1.0 else []))
        gen = self.model.generate(
            input_ids=ids, attention_mask=att, max_new_tokens=max_new_tokens,
            do_sample=not greedy, temperature=None if greedy else 1.0,
            top_p=None if greedy else 1.0, top_k=0 if not greedy else None,
            logits_processor=LogitsProcessorList(warpers + [record]),
            eos_token_id=self.stop_ids or self.eos_id, pad_token_id=self.pad_id, use_cache=True)
        new = gen[:, ids.shape[1]:]
        comps = [strip_completion(r, self.eos_id, self.pad_id) for r in new.tolist()]
        lps = record.finish(new)
        return comps, [lp[:len(c)] for lp, c in zip(lps, comps)]

    def sync_weights(self, model) -> None:
        """HF generate samples from the training model itself: nothing to copy."""
        self.model = model
