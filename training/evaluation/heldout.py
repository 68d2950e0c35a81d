"""Held-out evaluation: avg@k and unbiased pass@k per level and overall.

pass@k (Chen et al. 2021, arXiv 2107.03374) from n samples with c correct is
`records.passk.pass_at_k` (the stable product form 1 − Π_{i=n−c+1..n} (1 − k/i)), at
k = 1, 2, 4, … and n (`records.passk.ks_powers_of_two_and_n`).

Every row also carries ``ci95``, the half-width of its 95 % confidence interval (1.96 standard
errors over problems). The held-out split has a fixed number of problems per level (a
stratified sample), so the 'all' row's standard error is the stratified one,
√(Σ_l (n_l/N)² s_l²/n_l), which leaves out the spread *between* levels that the design fixes;
a single level's is the plain standard error. ``eval/ci95`` is the avg@k row's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import records
from records.passk import ks_powers_of_two_and_n, pass_at_k


def stderr(xs: list[float]) -> float:
    """Standard error of the mean of ``xs`` (nan for fewer than two values)."""
    if len(xs) < 2:
        return float("nan")
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))


@dataclass
class EvalResult:
    """Per problem: level and list of 0/1 verdicts over its k samples."""

    levels: list
    correct: list

    def rows(self, step: int, benchmark: str = "arith") -> list[dict]:
        """Tidy rows (records.EVAL_FIELDS): avg@k and pass@k per level and for 'all'."""
        out = []
        groups = {"all": list(range(len(self.levels)))}
        for i, lv in enumerate(self.levels):
            if str(lv) != "all":  # a problem without a level is counted once, in "all"
                groups.setdefault(str(lv), []).append(i)
        n = len(self.correct[0]) if self.correct else 0
        for level, idx in groups.items():
            strata = [idx] if level != "all" else [v for lv, v in groups.items() if lv != "all"]
            avg = {i: sum(self.correct[i]) / n for i in idx}
            out.append(_row(step, benchmark, level, "avg@k", n, avg, strata))
            for k in ks_powers_of_two_and_n(n):
                pk = {i: pass_at_k(n, int(sum(self.correct[i])), k) for i in idx}
                out.append(_row(step, benchmark, level, "pass@k", k, pk, strata))
        return out

    def metrics(self) -> dict:
        """records metric keys: eval/accuracy, eval/accuracy/<level>, eval/pass@k (overall)."""
        out = {}
        for r in self.rows(0):
            if r["metric"] == "avg@k":
                key = records.EVAL_ACCURACY if r["level"] == "all" else records.eval_accuracy_key(r["level"])
                out[key] = r["value"]
                if r["level"] == "all":
                    out[records.EVAL_CI95] = r["ci95"]
            elif r["level"] == "all":
                out[records.eval_passk_key(r["k"])] = r["value"]
        return out


def _row(step, benchmark, level, metric, k, per_problem: dict, strata: list) -> dict:
    values = list(per_problem.values())
    return {"step": step, "benchmark": benchmark, "level": level, "metric": metric, "k": k,
            "value": sum(values) / len(values), "stderr": stderr(values), "n": len(values),
            "ci95": 1.96 * stratified_stderr([[per_problem[i] for i in s] for s in strata])}


def stratified_stderr(strata: list[list[float]]) -> float:
    """Standard error of the mean over every value of ``strata`` when each stratum's size is
    fixed by design: √(Σ_l (n_l/N)² s_l²/n_l) (nan when a stratum has fewer than two values)."""
    N = sum(map(len, strata))
    return math.sqrt(sum((len(s) / N) ** 2 * stderr(s) ** 2 for s in strata))


def evaluate(sampler, tok, problems: list, reward_fn, k: int, temperature: float, top_p: float,
             max_new_tokens: int, seed: int, prompt_fn) -> tuple[EvalResult, list[dict]]:
    """Sample ``k`` completions per problem and score them; returns the result and one
    generation row per sample (for ``eval/<benchmark>.jsonl``)."""
    prompts = [prompt_fn(p) for p in problems]
    comps = sampler.generate(prompts, k, temperature, top_p, max_new_tokens, seed)
    texts = [[tok.decode(c, skip_special_tokens=True) for c in cs] for cs in comps]
    flat = [t for ts in texts for t in ts]
    truths = [str(p.answer) for p in problems for _ in range(k)]
    scores = reward_fn(flat, truths)
    correct = [[s >= 0.5 for s in scores[i * k:(i + 1) * k]] for i in range(len(problems))]
    gens = [{"prompt_id": i, "sample_idx": j, "level": p.level, "completion": texts[i][j],
             "correct": correct[i][j]} for i, p in enumerate(problems) for j in range(k)]
    return EvalResult([p.level for p in problems], correct), gens
