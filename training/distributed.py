"""Data parallelism behind one small object, picked once in `training.run.build`.

    dist = distributed.make()          # SingleProcess(), or TorchDistributed() under
                                       # torchrun / accelerate launch (WORLD_SIZE > 1)
    start, mine = dist.share(examples) # this rank's contiguous block of whole prompts (groups)
    plan = est.plan(batch, all_reduce=dist.reducer)   # normalisers become global
    ... backward ...
    dist.sum_grads(params)             # SUM over ranks: each rank's loss is its share of the
                                       # global surrogate (docs/estimators.md)

`SingleProcess` is the null object: every method is the identity, so a one-process run is the
plain loop. `TorchDistributed` uses ``torch.distributed`` (gloo on CPU, NCCL with CUDA) and is
initialised from the launcher's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...),
which both ``torchrun`` and ``accelerate launch`` set.

What makes N processes equal one process with the same global batch:
* every rank reads the same data stream and takes the same global prompts, then keeps its own
  block (`share`), so the union of the ranks' prompts is the single-process batch;
* rollouts are seeded per prompt (``seed_per_prompt``), never per rank;
* the plan's normalisers and batch statistics are summed over ranks (``all_reduce``);
* gradients are summed over ranks before clipping, so the clip norm, the skip decision and the
  optimizer step are the same on every rank;
* every decision that ends a loop early (empty batch, non-finite log-probs or loss) is agreed
  on by all ranks (`all_true`), so the ranks never disagree on how many collectives they run.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import torch


class SingleProcess:
    """One process: the null object (no communication)."""

    rank = 0
    world = 1
    is_main = True
    reducer: Optional[Callable] = None  # est.plan(..., all_reduce=None): nothing to sum

    def share(self, items: list) -> tuple[int, list]:
        return 0, list(items)

    def sum_tensor(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def total(self, x: float) -> float:
        return float(x)

    def smallest(self, x: int) -> int:
        return int(x)

    def largest(self, x: int) -> int:
        return int(x)

    def all_true(self, ok: bool) -> bool:
        return bool(ok)

    def gather(self, items: list) -> list:
        return list(items)

    def sum_grads(self, params: list, scale: float = 1.0) -> None:
        pass

    def sync_params(self, params: list) -> None:
        pass

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return "single process"


class TorchDistributed:
    """``torch.distributed`` data parallelism (one process per rank)."""

    def __init__(self, backend: Optional[str] = None):
        import torch.distributed as dist

        self._d = dist
        if not dist.is_initialized():
            backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
            dist.init_process_group(backend)
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.is_main = self.rank == 0
        self.backend = dist.get_backend()
        self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) \
            if self.backend == "nccl" else torch.device("cpu")

    # -- the estimator's all_reduce (sum over ranks) --------------------------------------
    def reducer(self, t: torch.Tensor) -> torch.Tensor:
        return self.sum_tensor(t)

    def sum_tensor(self, t: torch.Tensor) -> torch.Tensor:
        buf = t.detach().to(self.device).clone()
        self._d.all_reduce(buf)
        return buf.to(t.device)

    def total(self, x: float) -> float:
        return float(self.sum_tensor(torch.tensor(float(x), dtype=torch.float64)))

    def smallest(self, x: int) -> int:
        buf = torch.tensor(int(x), dtype=torch.long, device=self.device)
        self._d.all_reduce(buf, op=self._d.ReduceOp.MIN)
        return int(buf)

    def largest(self, x: int) -> int:
        return -self.smallest(-int(x))

    def all_true(self, ok: bool) -> bool:
        return self.total(0.0 if ok else 1.0) == 0.0

    # -- data ------------------------------------------------------------------------------
    def share(self, items: list) -> tuple[int, list]:
        """(start, items[start:end]): this rank's contiguous block; blocks differ by ≤ 1 item."""
        k = len(items)
        lo, hi = k * self.rank // self.world, k * (self.rank + 1) // self.world
        return lo, list(items[lo:hi])

    def gather(self, items: list) -> list:
        """Every rank's ``items`` concatenated in rank order (pickled: keep them small)."""
        out = [None] * self.world
        self._d.all_gather_object(out, list(items))
        return [x for part in out for x in part]

    # -- parameters --------------------------------------------------------------------------
    def sum_grads(self, params: list, scale: float = 1.0) -> None:
        """Sum gradients over ranks in one flat buffer (a missing grad counts as zero), times
        ``scale``. FSDP-sharded parameters are skipped: FSDP has already reduce-scattered theirs
        (under FSDP the loss is scaled by the world size, so the unsharded rest, e.g. the PPO
        critic, is summed with ``scale`` = 1/world)."""
        params = [p for p in params if not is_sharded(p)]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads]).to(self.device)
        self._d.all_reduce(flat)
        flat = flat.to(params[0].device) * scale
        i = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[i:i + n].view_as(p).to(p.dtype).clone()
            i += n

    def sync_params(self, params: list) -> None:
        """Start every rank from rank 0's weights (FSDP shards were made from synced weights)."""
        with torch.no_grad():
            for p in params:
                if is_sharded(p):
                    continue
                buf = p.data.to(self.device)
                self._d.broadcast(buf, 0)
                p.data.copy_(buf.to(p.device))

    def close(self) -> None:
        if self._d.is_initialized():
            self._d.destroy_process_group()

    def describe(self) -> str:
        return f"rank {self.rank} of {self.world} ({self.backend})"


def world_size() -> int:
    """The launcher's world size (1 when not launched by torchrun / accelerate)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def make(backend: Optional[str] = None):
    """`TorchDistributed` when launched with more than one process, else `SingleProcess`."""
    return TorchDistributed(backend) if world_size() > 1 else SingleProcess()


class NullWriter:
    """The record writer of every rank but 0: accepts every `records.RunWriter` call, writes
    nothing."""

    def __getattr__(self, name):
        return lambda *a, **k: None


# ----------------------------------------------------------------------------------- FSDP

def is_sharded(p) -> bool:
    """True for a parameter that FSDP2 has turned into a sharded ``DTensor``."""
    from torch.distributed.tensor import DTensor

    return isinstance(p, DTensor)


def whole(t):
    """``t`` in full: an FSDP2 shard (``DTensor``) is all-gathered — a collective, so every rank
    must ask for the same tensors in the same order; a plain tensor is returned as it is."""
    return t.full_tensor() if is_sharded(t) else t


def shard(model):
    """FSDP2 (``torch.distributed.fsdp.fully_shard``): each decoder layer, then the root, so
    parameters, gradients and optimizer state are split over the ranks. FSDP *averages*
    gradients over ranks while each rank's loss is its share of the global surrogate (whose
    gradient is the sum), so the trainer multiplies the loss by the world size under FSDP (a
    divide factor of 1 would need ReduceOp.PREMUL_SUM, which gloo lacks). Transformers'
    ``generate`` then runs with
    ``synced_gpus`` (every rank keeps stepping until all are done), since each forward pass
    all-gathers the layers' weights."""
    from torch.distributed.fsdp import fully_shard

    for module in list(model.modules()):
        if type(module).__name__.endswith("DecoderLayer"):
            fully_shard(module)
    fully_shard(model)
    model._is_fsdp_managed_module = True  # read by transformers' generate (synced_gpus)
    return model


def _root(model, critic):
    """The module whose parameters are the optimizer's: the policy, or policy + PPO critic."""
    return model if critic is None else torch.nn.ModuleDict({"policy": model, "critic": critic})


def full_state_dicts(model, optimizer, critic=None) -> tuple[dict, dict]:
    """(model, optimizer) state dicts gathered in full onto rank 0's CPU (empty elsewhere); a
    collective: every rank must call it. With a ``critic`` (its parameters are in the same
    optimizer) the optimizer state is keyed ``policy.*`` / ``critic.*`` and the model state is
    the policy's alone (the critic is saved on its own)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    msd, osd = get_state_dict(_root(model, critic), optimizer,
                              options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if critic is not None:
        msd = {k.removeprefix("policy."): v for k, v in msd.items() if k.startswith("policy.")}
    return msd, osd


def load_full_state_dicts(model, optimizer, model_state: dict, optimizer_state: dict,
                          critic=None) -> None:
    """Load gathered (full) model and optimizer state dicts — as `full_state_dicts` wrote them —
    into the sharded model and optimizer: each rank keeps its shard. Tied weights that the
    checkpoint leaves out are tied again by the model; the critic's weights are loaded on their
    own. A collective: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    if critic is not None:
        model_state = {f"policy.{k}": v for k, v in model_state.items()}
    set_state_dict(_root(model, critic), optimizer, model_state_dict=model_state,
                   optim_state_dict=optimizer_state,
                   options=StateDictOptions(full_state_dict=True, strict=False))


def clip_grad_norm(params: list, max_norm: float) -> float:
    """``clip_grad_norm_`` over parameters that may mix FSDP shards (``DTensor``) and plain
    tensors (e.g. the PPO critic beside a sharded policy), which torch's version refuses to
    combine: each kind's norm separately, then one total norm, one clip coefficient."""
    groups = [[p for p in params if p.grad is not None and is_sharded(p) == sharded]
              for sharded in (True, False)]
    groups = [g for g in groups if g]
    norms = []
    for g in groups:
        norms.append(whole(torch.nn.utils.get_total_norm([p.grad for p in g])))
    if not norms:
        return 0.0
    total = torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]))
    for g in groups:
        torch.nn.utils.clip_grads_with_norm_(g, max_norm, total)
    return float(total)
