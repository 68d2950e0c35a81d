"""Every number of the paper's result tables (arXiv 2509.04419 v2), copied exactly from
docs/paper-notes.md §5. Values are percentages. ∗ marks rows the paper copied from other papers.

The only data module of the paper's numbers: figure scripts read them from here.
"""
from __future__ import annotations

from dataclasses import dataclass

ID_BENCHMARKS = ("AIME24", "AIME25", "AMC", "MATH-500", "Minerva", "Olympiad", "Avg")


@dataclass(frozen=True)
class PaperTable:
    """One table: its caption, column names and rows (label -> values, in column order)."""

    name: str
    caption: str
    columns: tuple[str, ...]
    rows: dict[str, tuple[float, ...]]


TABLE2 = PaperTable(
    "Table 2", "Qwen2.5-Math-7B (ID benchmarks, then OOD ARC-c / GPQA)",
    ID_BENCHMARKS + ("ARC-c", "GPQA", "Avg (OOD)"),
    {
        "Qwen2.5-Math-7B": (12.3, 4.7, 33.0, 43.6, 8.8, 13.6, 19.3, 30.9, 28.3, 29.6),
        "SFT": (25.1, 22.8, 56.1, 84.2, 33.8, 44.7, 44.5, 67.4, 25.3, 46.4),
        "GRPO": (19.4, 13.8, 59.1, 81.8, 38.2, 46.2, 43.1, 81.2, 36.4, 58.8),
        "SFT → GRPO": (25.7, 21.6, 62.2, 84.6, 38.2, 46.8, 46.5, 67.7, 30.8, 49.3),
        "LUFFY": (26.1, 21.8, 66.2, 88.4, 41.9, 54.1, 49.8, 80.8, 39.4, 60.1),
        "SRFT": (18.4, 15.5, 55.9, 83.8, 42.6, 48.9, 44.2, 80.5, 36.8, 58.7),
        "HPT": (33.0, 21.9, 69.4, 89.2, 46.0, 56.9, 52.7, 81.6, 42.9, 62.3),
        "Qwen2.5-Math-7B-Ins.": (11.8, 9.8, 48.3, 83.2, 34.2, 39.3, 37.8, 72.7, 29.3, 51.0),
        "PRIME-Zero∗": (17.0, 12.8, 54.0, 81.4, 39.0, 40.3, 40.8, 73.3, 18.2, 45.8),
        "SimpleRL-Zero∗": (27.0, 6.8, 54.9, 76.0, 25.0, 34.7, 37.4, 30.2, 23.2, 26.7),
        "OpenReasoner-Zero∗": (16.5, 15.0, 52.1, 82.4, 33.1, 47.1, 41.0, 66.2, 29.8, 48.0),
        "Oat-Zero∗": (33.4, 11.9, 61.2, 78.0, 34.6, 43.4, 43.8, 70.1, 23.7, 46.9),
    },
)

TABLE3_LLAMA = PaperTable(
    "Table 3", "LLaMA3.1-8B (∗ = taken from the LUFFY paper)", ID_BENCHMARKS,
    {
        "LLaMA3.1-8B": (0.4, 0.1, 4.7, 13.8, 4.8, 3.9, 4.6),
        "SFT∗": (0.5, 0.1, 5.4, 20.2, 4.0, 5.3, 5.9),
        "GRPO∗": (0.3, 0.5, 9.4, 23.4, 17.6, 6.1, 9.6),
        "LUFFY∗": (1.9, 0.1, 13.5, 39.0, 15.1, 9.6, 13.2),
        "HPT": (2.1, 1.2, 18.6, 47.8, 18.8, 20.4, 18.2),
    },
)

TABLE3_QWEN_1_5B = PaperTable(
    "Table 3", "Qwen2.5-Math-1.5B", ID_BENCHMARKS,
    {
        "Qwen2.5-Math-1.5B": (2.8, 6.1, 24.5, 32.8, 11.0, 16.4, 15.6),
        "SFT": (14.7, 17.6, 45.4, 78.4, 29.4, 35.7, 36.9),
        "GRPO": (12.2, 8.5, 43.8, 71.0, 33.1, 35.3, 34.0),
        "LUFFY": (14.1, 9.4, 43.5, 75.2, 26.1, 39.7, 34.7),
        "HPT": (16.6, 17.8, 51.0, 81.0, 37.5, 47.3, 41.9),
    },
)

TABLE5 = PaperTable(
    "Table 5", "Role of off-policy RL, Qwen2.5-Math-1.5B", ID_BENCHMARKS,
    {
        "OFF/ON": (16.6, 11.8, 47.3, 76.2, 35.3, 41.6, 38.1),
        "Mix/ON": (16.7, 17.2, 46.9, 79.4, 37.5, 43.9, 40.3),
        "SFT/ON (= HPT)": (16.6, 17.8, 51.0, 81.0, 37.5, 47.3, 41.9),
    },
)

TABLE6 = PaperTable(
    "Table 6", "Gate γ ablation, Qwen2.5-Math-1.5B", ID_BENCHMARKS,
    {
        "γ = 2/8": (15.8, 13.0, 49.0, 77.6, 34.6, 44.1, 39.0),
        "γ = 1/8": (18.1, 14.2, 46.0, 75.4, 35.7, 42.5, 38.7),
        "γ = 0": (16.6, 17.8, 51.0, 81.0, 37.5, 47.3, 41.9),
    },
)

ALL_TABLES = (TABLE2, TABLE3_LLAMA, TABLE3_QWEN_1_5B, TABLE5, TABLE6)

