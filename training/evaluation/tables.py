"""Paper-shaped tables of a benchmark evaluation: averages over the ID / OOD benchmarks and
markdown tables laid out like the paper's Tables 2–3, plus the pass@k table with its CIs."""
from __future__ import annotations

from . import datasets as bm


def averages(results: dict) -> dict:
    """Unweighted mean avg@n (in %) over the ID and OOD benchmarks evaluated (paper 'Avg')."""
    out = {}
    for group, names in (("avg_id", bm.ID_BENCHMARKS), ("avg_ood", bm.OOD_BENCHMARKS)):
        vals = [100 * results[b].avg for b in names if b in results]
        if vals:
            out[group] = {"value": sum(vals) / len(vals), "benchmarks": [b for b in names if b in results],
                          "complete": len(vals) == len(names)}
    return out


def format_tables(results: dict, label: str) -> str:
    """Markdown tables in the paper's layout: ID (Tables 2–3), OOD (Table 2), then pass@k."""
    avg = averages(results)
    lines = []
    for group, names, title in (("avg_id", bm.ID_BENCHMARKS, "In-distribution (avg@n, %)"),
                                ("avg_ood", bm.OOD_BENCHMARKS, "Out-of-distribution (avg@n, %)")):
        present = [b for b in names if b in results]
        if not present:
            continue
        star = "" if avg[group]["complete"] else "*"
        head = ["Model"] + [f"{bm.BENCHMARKS[b].display} (avg@{results[b].n})" for b in present] + [f"Avg{star}"]
        cells = [label] + [f"{100 * results[b].avg:.1f}" for b in present] + [f"{avg[group]['value']:.1f}"]
        lines += [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                  "| " + " | ".join(cells) + " |", ""]
        if star:
            lines += [f"\\* average over the {len(present)} benchmarks evaluated, not all {len(names)}.", ""]
    lines += ["### pass@k (%), 95% bootstrap CI over problems", "",
              "| Benchmark | k | pass@k | CI |", "|---|---|---|---|"]
    for b, r in results.items():
        for row in r.rows:
            if row["metric"] == "pass@k":
                ci = "—" if row["lo"] is None else f"[{100 * row['lo']:.1f}, {100 * row['hi']:.1f}]"
                lines.append(f"| {bm.BENCHMARKS[b].display} | {row['k']} | {100 * row['value']:.1f} | {ci} |")
    return "\n".join(lines) + "\n"
