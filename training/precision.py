"""``--dtype``: the precision of the forward pass; parameters stay float32.

The standard mixed-precision recipe (Micikevicius et al. 2018, "Mixed Precision Training";
``accelerate``'s ``mixed_precision="bf16"``; FSDP2's ``MixedPrecisionPolicy`` with
``param_dtype=bfloat16, reduce_dtype=float32``): the parameters, their gradients and AdamW's
moments are float32 *master weights*; each forward runs under ``torch.autocast`` so the matrix
multiplications take bfloat16 inputs. An update smaller than bfloat16's resolution (a relative
2⁻⁸ ≈ 0.4 % of the weight) then still changes the weight, where training bfloat16 parameters
directly rounds it away. Log-probs stay float32: ``training.logprobs`` runs the output layer
in float32 outside autocast.

    model = precision.autocast_forward(model, "bfloat16")   # after moving it to its device

Every call of the model's ``forward`` — scoring and HF ``generate`` alike — then runs under
autocast. ``float16`` is accepted for inference-like use but has no loss scaling: train in
``bfloat16``.
"""
from __future__ import annotations

import types

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def compute_dtype(name: str) -> torch.dtype:
    """The ``torch.dtype`` of a ``--dtype`` name; a clear error for anything else."""
    if name not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def autocast_forward(model, dtype: str):
    """Make every forward of ``model`` (the innermost HF model of a peft wrapper, so that
    ``generate`` is covered too) run under ``torch.autocast`` in ``dtype`` on the model's
    device; float32 leaves the model as it is. Returns the model."""
    dt = compute_dtype(dtype)
    if dt == torch.float32:
        return model
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    device = next(inner.parameters()).device.type
    forward = type(inner).forward
    inner.forward = types.MethodType(torch.autocast(device_type=device, dtype=dt)(forward), inner)
    return model
