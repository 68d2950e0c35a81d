"""Allowed values of the run configuration's fields: small range types, each with
``problem(value)`` returning ``None`` or what is wrong ("must be ≥ 1"), and the common ranges.

``training.config.ALLOWED`` maps every field to one of these; ``training.config.check`` applies
them and raises :class:`ConfigError` naming the flag (:func:`flag`), the value and the range.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional


class ConfigError(ValueError):
    """A field outside its allowed range; the message names the flag, the value and the range."""


@dataclass(frozen=True)
class Between:
    """A number in [lo, hi] (an end may be open or absent); NaN never, ±inf only if ``inf``."""

    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    inf: bool = False

    def problem(self, v: Any) -> Optional[str]:
        number = isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)
        ok = (number and (self.inf or math.isfinite(v))
              and (self.lo is None or (v > self.lo if self.lo_open else v >= self.lo))
              and (self.hi is None or v <= self.hi))
        return None if ok else f"must be {self}"

    def __str__(self) -> str:
        show = lambda x: str(x) if isinstance(x, int) else f"{x:g}"  # noqa: E731
        if self.lo is None and self.hi is None:
            return "a finite number"
        if self.hi is None:
            return f"{'>' if self.lo_open else '≥'} {show(self.lo)}" + (" (or inf)" if self.inf else "")
        return f"in {'(' if self.lo_open else '['}{show(self.lo)}, {show(self.hi)}]"


@dataclass(frozen=True)
class OneOf:
    choices: tuple

    def problem(self, v: Any) -> Optional[str]:
        return None if v in self.choices else "must be one of " + ", ".join(
            repr(c) if c == "" else str(c) for c in self.choices)


@dataclass(frozen=True)
class Matches:
    """A string matching ``pattern`` (described as ``what``)."""

    pattern: str
    what: str

    def problem(self, v: Any) -> Optional[str]:
        return None if isinstance(v, str) and re.fullmatch(self.pattern, v) else f"must be {self.what}"


@dataclass(frozen=True)
class ExistingPath:
    """Empty, or an existing file or directory (``dir_only``: a directory)."""

    dir_only: bool = False

    def problem(self, v: Any) -> Optional[str]:
        if not v:
            return None
        path = Path(v).expanduser()
        if self.dir_only and not path.is_dir():
            return "no such directory"
        return None if path.exists() else "no such file or directory"


class ModelSource:
    """Empty (the embedded base), a local model directory, or a Hugging Face hub id; offline
    (HF_HUB_OFFLINE) the id must already be in the local cache."""

    def problem(self, v: Any) -> Optional[str]:
        if not v:
            return None
        path = Path(v).expanduser()
        if path.exists():
            saved = any((path / f).is_file() for f in ("config.json", "adapter_config.json"))
            return None if saved else (f"{path} has no config.json (nor adapter_config.json): "
                                       "give a directory saved with save_pretrained")
        if v.startswith((".", "/", "~")) or v.count("/") > 1:
            return "no such directory"
        from huggingface_hub import constants, snapshot_download

        if not constants.HF_HUB_OFFLINE:
            return None                        # a hub id: downloaded (or taken from the cache)
        try:
            snapshot_download(v, local_files_only=True)
        except Exception:  # noqa: BLE001 - any miss of the offline cache means the same thing
            return (f"not a local directory, and HF_HUB_OFFLINE is set but the hub id is not in "
                    f"the local cache ({constants.HF_HUB_CACHE}); download it where there is "
                    "network and pass the directory")
        return None


FLAG = OneOf((False, True))
AT_LEAST_0, AT_LEAST_1, POSITIVE = Between(0), Between(1), Between(0, lo_open=True)
FRACTION, PROBABILITY = Between(0, 1), Between(0, 1, lo_open=True)


def flag(name: str) -> str:
    """The command-line spelling of a field (``max_new_tokens`` -> ``--max-new-tokens``)."""
    return "--" + name.replace("_", "-")
