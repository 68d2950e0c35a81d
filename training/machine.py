"""Where this process runs: the one device resolver (training, evaluation, GPU profiles) and the
software versions every run records.

    device = resolve_device("auto" | "cpu" | "cuda" | "cuda:N", dist)
"""
from __future__ import annotations

import platform
from typing import Optional

import torch


class DeviceError(SystemExit):
    """``--device`` names a device this machine does not have (the message says which to use)."""


def resolve_device(name: str, dist=None, cuda_available: Optional[bool] = None) -> torch.device:
    """``--device``: auto → this rank's CUDA device when CUDA is available, else the CPU;
    ``cuda`` without a GPU is a `DeviceError` that says so. ``dist``: a data-parallel rank with a
    ``device`` (torchrun / accelerate set LOCAL_RANK) owns that GPU."""
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    local = getattr(dist, "device", None)
    if name == "auto":
        name = "cuda" if cuda else "cpu"
    if name.startswith("cuda"):
        if not cuda:
            raise DeviceError(
                f"--device {name}: this torch ({torch.__version__}) sees no CUDA GPU; use --device "
                "cpu (or auto) — no CUDA device is visible (torch.cuda.is_available() is False)")
        if name == "cuda" and local is not None and local.type == "cuda":
            return local  # one GPU per rank
        return torch.device(name)
    if name != "cpu":
        raise DeviceError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return torch.device("cpu")


def versions() -> dict:
    """Versions of python and the libraries a run's numbers depend on (for ``config.json``)."""
    import peft
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__}
