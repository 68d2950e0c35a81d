"""``python -m training.eval --model PATH_OR_HUB_ID --benchmarks all``: the paper's evaluation.

Protocol (paper §3.1, docs/paper-notes.md §4), every value overridable:
avg@32 for AIME24, AIME25 and AMC, avg@1 for MATH-500, Minerva, Olympiad, GPQA and ARC-c
(``--n``), temperature 0.6 (``--temperature``), top-p 0.95 (``--top-p``), at most 8192 new
tokens (``--max-new-tokens``). Prompts: ``--template chat`` (the model's chat template over the
question as the user message, the LUFFY system message dropped as in HPT's Qwen runs;
``--system-prompt file`` keeps it) or ``--template zero`` (the ``Question:/Answer:`` template
of HPT's LLaMA base-model runs). Grading: last ``\\boxed{}`` + math-verify for math,
letter grading for GPQA/ARC-c (`training.grading`), or any ``--reward module:function``.

Output (run records, ``--out``, default ``runs/eval-<model>-<time>``)::

    config.json            resolved options, model, data files, versions, git commit
    eval/<benchmark>.jsonl one row per generation: problem, sample_idx, completion, pred, correct, ...
    eval/scores.jsonl      avg@n and pass@k (k = 1, 2, 4, ..., n) per benchmark, with bootstrap CIs
    eval/tables.md         per-benchmark and average tables shaped like the paper's Tables 2–3
    eval/summary.json      scores, averages and throughput (problems/s, tokens/s)

Rollout engines: ``hf`` or ``vllm``, built by `training.rollout.make_engine` (the factory
training uses); prompts from `training.rollout.prompts` (the templates training uses); pass@k
and its bootstrap CIs from `records.passk` (the one implementation).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import records  # noqa: E402

from .. import grading  # noqa: E402
from ..machine import DeviceError, resolve_device, versions  # noqa: E402
from ..rollout import ENGINES, TEMPLATES, make_engine  # noqa: E402
from ..rollout import prompts as templates  # noqa: E402
from ..rollout.engines import EngineUnavailable  # noqa: E402
from . import datasets as bm  # noqa: E402
from .heldout import stderr  # noqa: E402
from .tables import averages, format_tables  # noqa: E402


class EvalError(ValueError):
    """Bad input to the evaluation: the message names what is missing and how to provide it."""


# =================================================================================== options

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--model", required=True, help="local model directory, or a hub id already in the local HF cache")
    a("--benchmarks", default="all", help=f"comma-separated: {', '.join(bm.BENCHMARKS)} (or all, id, ood)")
    a("--source", default="luffy", choices=bm.SOURCES,
      help="benchmark copies: luffy (the paper's layout: AMC = 83 AMC12 problems) or hpt (official json)")
    a("--data-dir", default=None, help=f"evaluation data folder (default ${bm.ENV_VAR} or ../shared/data/hpt_eval)")
    a("--n", type=int, default=None, help="samples per problem (default: the paper's, 32 for AIME/AMC, else 1)")
    a("--temperature", type=float, default=0.6, help="sampling temperature (0 = greedy)")
    a("--top-p", type=float, default=0.95, help="nucleus top-p")
    a("--max-new-tokens", type=int, default=8192, help="generation budget per sample")
    a("--limit", type=int, default=None, help="first N problems per benchmark (a smoke test)")
    a("--template", default="chat", choices=TEMPLATES, help="chat (model's chat template) | zero (Question:/Answer:)")
    a("--system-prompt", default="none",
      help="chat template only: none | file (the data file's system message, LUFFY's) | any text")
    a("--chat-template", default=None, help="a Jinja chat-template file for a tokenizer that has none")
    a("--reward", default=None, help="module:function reward (TRL signature); default: training.grading")
    a("--rollout-engine", default="hf", choices=tuple(ENGINES), help="hf (transformers generate) | fast (static KV cache, small models) | vllm")
    a("--device", default="auto", help="auto | cpu | cuda | cuda:N (hf engine)")
    a("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
      help="model dtype (auto: bfloat16 on GPU, float32 on CPU)")
    a("--batch-size", type=int, default=64, help="sequences per generate call (hf engine)")
    a("--tensor-parallel-size", type=int, default=1, help="vllm engine only (GPUs)")
    a("--gpu-memory-utilization", type=float, default=0.85, help="vllm engine only")
    a("--bootstrap", type=int, default=1000, help="bootstrap resamples for the pass@k CIs")
    a("--seed", type=int, default=0, help="sampling seed")
    a("--label", default=None, help="row label in the tables (default: the model name)")
    a("--out", default=None, help="run directory (default runs/eval-<model>-<time>)")
    a("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    return p


# ============================================================================= bad-input checks

def resolve_model(name: str) -> str:
    """A local directory for ``name``: the directory itself, or the hub id's snapshot in the
    local HF cache. Nothing is downloaded; a miss raises `EvalError` saying how to provide it."""
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise EvalError(f"--model {name}: {path} has no config.json (nor adapter_config.json); "
                            "give a directory saved with save_pretrained (model + tokenizer)")
        return str(path)
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") != 1
    if looks_like_path:
        raise EvalError(f"--model {name}: no such directory")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=True)
    except Exception:  # noqa: BLE001 - any miss of the offline cache means the same thing
        from huggingface_hub import constants

        raise EvalError(
            f"--model {name}: not a local directory and not in the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}); nothing is downloaded here (HF_HUB_OFFLINE="
            f"{os.environ.get('HF_HUB_OFFLINE', '')}). On a machine with network run "
            f"`huggingface-cli download {name} --local-dir DIR`, copy DIR here and pass --model DIR "
            "(or point HF_HOME at a cache that holds it).") from None


def check_device(args) -> str:
    """The torch device for the hf engine (`training.machine.resolve_device`); GPU-only options
    on a machine without the GPUs raise."""
    import torch

    if args.rollout_engine != "vllm" and args.tensor_parallel_size != 1:
        raise EvalError("--tensor-parallel-size is a vllm option (GPUs); add --rollout-engine vllm "
                        "on a multi-GPU machine, or drop it")
    device = str(resolve_device(args.device))
    if args.rollout_engine == "vllm" and args.tensor_parallel_size > max(1, torch.cuda.device_count()):
        raise EvalError(f"--tensor-parallel-size {args.tensor_parallel_size}: only "
                        f"{torch.cuda.device_count()} CUDA device(s) visible")
    return device


def check_args(args) -> None:
    for name in ("n", "limit", "max_new_tokens", "batch_size", "bootstrap", "tensor_parallel_size"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise EvalError(f"--{name.replace('_', '-')} must be ≥ 1, got {v}")
    for name in ("threads", "seed"):
        if getattr(args, name) < 0:
            raise EvalError(f"--{name} must be ≥ 0, got {getattr(args, name)}")
    if not 0 < args.gpu_memory_utilization <= 1:
        raise EvalError(f"--gpu-memory-utilization must be in (0, 1], got {args.gpu_memory_utilization}")
    if not 0 < args.top_p <= 1:
        raise EvalError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.temperature < 0:
        raise EvalError(f"--temperature must be ≥ 0, got {args.temperature}")
    if args.template == "zero" and args.system_prompt != "none":
        raise EvalError("--system-prompt applies to --template chat only")


def load_tokenizer(path: str, template: str, chat_template_file: Optional[str]):
    """The model's tokenizer (left padding); a chat template is required for ``--template chat``."""
    from ..policy import load_tokenizer as _load

    tok = _load(path)
    if chat_template_file:
        f = Path(chat_template_file)
        if not f.is_file():
            raise EvalError(f"--chat-template {f}: no such file")
        tok.chat_template = f.read_text(encoding="utf-8")
    if template == "chat" and not getattr(tok, "chat_template", None):
        raise EvalError(f"the tokenizer of {path} has no chat template (tokenizer_config.json "
                        "'chat_template'); use --template zero (the paper's Question:/Answer: "
                        "template for base models) or give one with --chat-template FILE.jinja")
    return tok


# =================================================================================== prompts

def prompt_text(p: bm.Problem, template: str, system_prompt: str = "none") -> list | str:
    """Chat messages (``chat``) or the plain string (``zero``) for one problem."""
    messages = problem_messages(p, system_prompt)
    return templates.zero_text(messages) if template == "zero" else messages


def problem_messages(p: bm.Problem, system_prompt: str = "none") -> list:
    """The problem as chat messages: the question as the user message, after the system message
    that ``--system-prompt`` asks for (none | file | any text)."""
    system = {"none": "", "file": p.system}.get(system_prompt, system_prompt)
    return ([{"role": "system", "content": system}] if system else []) + \
        [{"role": "user", "content": p.question}]


def prompt_ids(tok, p: bm.Problem, template: str, system_prompt: str = "none") -> list[int]:
    return templates.prompt_ids(tok, problem_messages(p, system_prompt), template)


# =================================================================================== engines

def load_model(path: str, device: str, dtype: str):
    """The model at ``path`` for sampling on ``device`` (a LoRA checkpoint merged into its base)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = {"auto": torch.bfloat16 if device.startswith("cuda") else torch.float32,
                   "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if (Path(path) / "adapter_config.json").is_file():   # a LoRA checkpoint: merge into its base
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=torch_dtype).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    return model.to(device).eval()


def engine_options(args, device: str, stops: list[int]) -> dict:
    """`make_engine` options: hf — batch size and stop tokens; vllm — dtype, seed and, on a GPU,
    CUDA graphs on, the KV cache sized by ``--gpu-memory-utilization``, tensor parallelism."""
    gpu = device.startswith("cuda")
    extra = {"tensor_parallel_size": args.tensor_parallel_size}
    if gpu:
        extra.update(enforce_eager=False, kv_cache_memory_bytes=None,
                     gpu_memory_utilization=args.gpu_memory_utilization)
    return {"max_batch": args.batch_size, "stop_ids": stops, "seed": args.seed,
            "dtype": args.dtype if args.dtype != "auto" else ("bfloat16" if gpu else "float32"),
            "engine_kwargs": extra}


def model_stops(path: str, tok, log=print) -> tuple[list[int], object]:
    """(stop token ids, model config or None for a bare LoRA adapter directory)."""
    from transformers import AutoConfig, GenerationConfig

    lora = Path(path, "adapter_config.json").is_file() and not Path(path, "config.json").is_file()
    cfg = None if lora else AutoConfig.from_pretrained(path)
    try:
        gen_cfg = GenerationConfig.from_pretrained(path)
    except OSError:
        gen_cfg = None
    return templates.stop_ids(tok, cfg, gen_cfg), cfg


# ================================================================================== scoring

@dataclass
class BenchResult:
    """One benchmark's per-problem correctness, generation counts and timing."""

    name: str
    ids: list
    correct: list                       # [P][n] bools
    tokens: int = 0
    seconds: float = 0.0
    truncated: int = 0
    rows: list = field(default_factory=list)   # eval/scores.jsonl rows

    @property
    def n(self) -> int:
        return len(self.correct[0]) if self.correct else 0

    @property
    def avg(self) -> float:
        return sum(sum(c) / len(c) for c in self.correct) / len(self.correct)


def pass_k_rows(name: str, ids: list, correct: list, B: int, seed: int) -> list[dict]:
    """avg@n and pass@k (k = 1, 2, 4, ..., n) rows with bootstrap CIs over problems
    (`records.passk`, the one implementation of pass@k)."""
    import numpy as np

    from records import passk

    n = len(correct[0])
    ks = passk.ks_powers_of_two_and_n(n)
    counts = np.array([sum(c) for c in correct])
    per = [sum(c) / n for c in correct]
    meta = {"step": 0, "benchmark": name, "level": "all", "n": len(correct),
            "display": bm.BENCHMARKS[name].display, "samples": n}
    res = passk.analyse([passk.Counts(list(ids), np.full(len(ids), n), counts)], [name], ks,
                        B=B, seed=seed)
    m = res["models"][name]
    rows = [{**meta, "metric": "avg@k", "k": n, "value": sum(per) / len(per), "stderr": stderr(per),
             "lo": m["lo"][0], "hi": m["hi"][0]}]                        # pass@1 == avg@n
    return rows + [{**meta, "metric": "pass@k", "k": k, "value": m["pass@k"][i], "stderr": m["se"][i],
                    "lo": m["lo"][i], "hi": m["hi"][i]} for i, k in enumerate(ks)]


def _seed(base: int, name: str, chunk: int) -> int:
    return (base * 1_000_003 + zlib.crc32(name.encode()) + 7919 * chunk) % (2 ** 31)


def run_benchmark(name: str, problems: list, engine, tok, args, reward: Callable, writer,
                  n: int, stops: set, log=print) -> BenchResult:
    """Generate ``n`` samples per problem in chunks, grade them, stream the generations."""
    per_call = max(1, args.batch_size // n)
    res = BenchResult(name, [p.id for p in problems], [])
    for c, start in enumerate(range(0, len(problems), per_call)):
        chunk = problems[start:start + per_call]
        prompts = [prompt_ids(tok, p, args.template, args.system_prompt) for p in chunk]
        t0 = time.time()
        out = engine.generate(prompts, n, args.temperature, args.top_p, args.max_new_tokens,
                              _seed(args.seed, name, c))
        res.seconds += time.time() - t0
        texts = [[tok.decode(ids, skip_special_tokens=True) for ids in row] for row in out]
        flat = [t for row in texts for t in row]
        kw = {"kind": [p.kind for p in chunk for _ in range(n)],
              "choices": [p.choices for p in chunk for _ in range(n)],
              "benchmark": [name] * len(flat)}
        scores = grading.call_reward(reward, flat, [p.answer for p in chunk for _ in range(n)], **kw)
        gens = []
        for i, p in enumerate(chunk):
            verdicts = [s >= 0.5 for s in scores[i * n:(i + 1) * n]]
            res.correct.append(verdicts)
            for j in range(n):
                ids = out[i][j]
                finished = bool(ids) and ids[-1] in stops
                res.tokens += len(ids)
                res.truncated += not finished
                gens.append({"step": 0, "benchmark": name, "problem": p.id, "prompt_id": p.id,
                             "sample_idx": j, "answer": p.answer, "pred": _pred(p, texts[i][j]),
                             "correct": verdicts[j], "reward": scores[i * n + j],
                             "n_tokens": len(ids), "finished": finished, "completion": texts[i][j]})
        writer.log_generations(name, gens)
        log(f"  {name}: {start + len(chunk)}/{len(problems)} problems, "
            f"{sum(map(sum, res.correct))}/{len(res.correct) * n} correct, {res.seconds:.1f} s")
    res.rows = pass_k_rows(name, res.ids, res.correct, args.bootstrap, args.seed)
    return res


def _pred(p: bm.Problem, text: str) -> Optional[str]:
    if p.kind == "mc":
        return grading.extract_choice(text)
    from ..reward import last_boxed

    return last_boxed(text)


# ===================================================================================== main

def _default_out(model: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model.rstrip("/")).name or model)
    return Path("runs") / f"eval-{slug}-{time.strftime('%Y%m%d-%H%M%S')}"


def evaluate(args, log=print) -> dict:
    """Run the evaluation described by parsed ``args``; returns the summary (also written)."""
    import torch

    check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = bm.parse_names(args.benchmarks)
    data = bm.data_dir(args.data_dir)
    problems = {b: bm.load_benchmark(b, args.source, args.data_dir, args.limit) for b in names}
    device = check_device(args)
    path = resolve_model(args.model)
    tok = load_tokenizer(path, args.template, args.chat_template)
    reward = grading.load_reward(args.reward) if args.reward else grading.BenchmarkReward()
    stops, cfg = model_stops(path, tok)
    limit = getattr(cfg, "max_position_embeddings", None)
    if limit and args.max_new_tokens > limit:
        log(f"warning: --max-new-tokens {args.max_new_tokens} exceeds the model's "
            f"max_position_embeddings {limit} (HPT/LUFFY edit it to 16384 for Qwen2.5-Math)")
    on_model = args.rollout_engine != "vllm"  # hf and fast sample with the loaded model itself
    model = load_model(path, device, args.dtype) if on_model else None
    engine = make_engine(args.rollout_engine, tok, model, path, **engine_options(args, device, stops))
    stops = set(stops if on_model else templates.stop_ids(tok))
    out = Path(args.out) if args.out else _default_out(args.model)
    writer = records.RunWriter(out)
    ns = {b: args.n or bm.BENCHMARKS[b].paper_n for b in names}
    writer.write_config({"kind": "eval", "model": args.model, "model_path": path,
                         "options": vars(args), "samples_per_problem": ns, "device": device,
                         "data_dir": str(data), "problems": {b: len(p) for b, p in problems.items()},
                         "files": {b: bm.BENCHMARKS[b].files[args.source][0] for b in names},
                         "stop_ids": sorted(stops), "versions": versions(), "git_commit": records.git_commit()})
    writer.set_status("running")
    log(f"evaluating {args.model} on {', '.join(names)} -> {out}")
    results = {}
    for b in names:
        results[b] = run_benchmark(b, problems[b], engine, tok, args, reward, writer, ns[b], stops, log)
        writer.log_eval(results[b].rows)
    label = args.label or Path(args.model.rstrip("/")).name
    tables = format_tables(results, label)
    (out / records.EVAL_DIR / "tables.md").write_text(tables, encoding="utf-8")
    secs = sum(r.seconds for r in results.values())
    toks = sum(r.tokens for r in results.values())
    probs = sum(len(r.correct) for r in results.values())
    summary = {"label": label, "scores": {b: {"avg": r.avg, "n": r.n, "problems": len(r.correct),
                                              "truncated": r.truncated} for b, r in results.items()},
               "averages": averages(results),
               "throughput": {"seconds": secs, "problems": probs, "tokens": toks,
                              "problems_per_second": probs / secs if secs else float("nan"),
                              "tokens_per_second": toks / secs if secs else float("nan")},
               "verifier_timeouts": getattr(reward, "timeouts", 0)}
    records.write_json(out / records.EVAL_DIR / "summary.json", summary)
    writer.set_status("finished", 0, f"{probs} problems")
    log(tables)
    log(f"records: {out}")
    return summary


def main(argv: Optional[list] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        evaluate(args)
    except (EvalError, bm.BenchmarkError, grading.RewardError, DeviceError, EngineUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
