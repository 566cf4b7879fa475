"""The report of ``dexhier eval hierarchy``: the hierarchy and its ablations on the same seeds.

One markdown file with the success table per variant and object-width bin, and beside it an SVG
bar chart of success by width (written by hand: no plotting library is a dependency).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

VARIANTS: dict[str, dict[str, Any]] = {
    "filter": {"subgoals": "generated", "selection": "progress"},
    "value": {"subgoals": "generated", "selection": "value"},
    "n1": {"subgoals": "generated", "selection": "first", "candidates": 1},
    "oracle": {"subgoals": "oracle"},
    "oracle_lowres": {"subgoals": "oracle_lowres"},
}
"""Ablation variants: options layered over the run's base options."""

DESCRIPTIONS = {
    "filter": "generated subgoals, N candidates, progress-classifier argmax",
    "value": "generated subgoals, N candidates, reachability (value) selection",
    "n1": "generated subgoals, N = 1 (filter off)",
    "oracle": "the expert's frames as subgoal images (tool goal and state still from perception)",
    "oracle_lowres": "the expert's frames at the generator's resolution (what the resolution costs)",
}

_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")


def success_svg(summaries: dict[str, dict[str, Any]]) -> str:
    """Grouped bars: success rate (%) per object-width bin (mm), one bar per variant."""
    names = list(summaries)
    bins = list(next(iter(summaries.values()))["success_by_width_mm"])
    w, h, left, bottom, top = 520, 260, 40, 40, 20
    group = (w - left - 10) / len(bins)
    bar = group * 0.8 / max(len(names), 1)
    plot_h = h - bottom - top
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h + 20 * len(names)}" '
           'font-family="sans-serif" font-size="11">',
           '<rect width="100%" height="100%" fill="white"/>']  # fmt: skip
    for pct in (0, 25, 50, 75, 100):
        y = top + plot_h * (1 - pct / 100)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{w - 10}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{pct}%</text>')
    for b, name in enumerate(bins):
        x0 = left + b * group + group * 0.1
        out.append(
            f'<text x="{x0 + group * 0.4:.1f}" y="{h - bottom + 16}" text-anchor="middle">{name} mm</text>'
        )
        for v, variant in enumerate(names):
            row = summaries[variant]["success_by_width_mm"][name]
            rate = row["success_rate"] or 0.0
            bh = plot_h * rate
            x = x0 + v * bar
            out.append(f'<rect x="{x:.1f}" y="{top + plot_h - bh:.1f}" width="{bar - 2:.1f}" '
                       f'height="{bh:.1f}" fill="{_COLOURS[v % len(_COLOURS)]}">'
                       f'<title>{variant}: {row["episodes"]} episodes</title></rect>')  # fmt: skip
    for v, variant in enumerate(names):
        y = h + 14 * v + 4
        out.append(f'<rect x="{left}" y="{y}" width="10" height="10" fill="{_COLOURS[v % len(_COLOURS)]}"/>')
        s = summaries[variant]
        out.append(f'<text x="{left + 16}" y="{y + 9}">{variant}: {s["successes"]}/{s["episodes"]} '
                   f'— {DESCRIPTIONS.get(variant, "")}</text>')  # fmt: skip
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_hierarchy_report(summaries: dict[str, dict[str, Any]], path: Path, command: str) -> None:
    """Markdown report + ``<path stem>_success.svg`` next to it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    svg = path.with_name(path.stem + "_success.svg")
    svg.write_text(success_svg(summaries))
    first = next(iter(summaries.values()))
    n, seed = first["episodes"], first["seed"]
    lines = [
        f"# Hierarchy on {first['task']}: variants on the same seeds",
        "",
        f"Command: `{command}`",
        "",
        f"Episodes per variant: {n} (seeds {seed}..{seed + n - 1}). Options: `{first['options']}` "
        "(plus each variant's).",
        "",
        "| variant | what | success | median episode wall (s) |",
        "|---|---|---|---|",
    ]
    for name, s in summaries.items():
        lines.append(f"| {name} | {DESCRIPTIONS.get(name, '')} | {s['successes']}/{s['episodes']} "
                     f"({100 * s['success_rate']:.1f}%) | {s['median_episode_wall_s']:.1f} |")  # fmt: skip
    bins = list(first["success_by_width_mm"])
    lines += ["", "Success by object width:", "", "| variant | " + " | ".join(f"{b} mm" for b in bins) + " |",
              "|---" * (len(bins) + 1) + "|"]  # fmt: skip
    for name, s in summaries.items():
        cells = []
        for b in bins:
            row = s["success_by_width_mm"][b]
            rate = (
                "-"
                if row["success_rate"] is None
                else f"{100 * row['success_rate']:.0f}% of {row['episodes']}"
            )
            cells.append(rate)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if all("furthest_stage" in s for s in summaries.values()):
        from policies.high_level.stages import STAGES

        lines += ["", "Furthest stage the stage tracker reached (episodes):", "",
                  "| variant | " + " | ".join(STAGES) + " |", "|---" * (len(STAGES) + 1) + "|"]  # fmt: skip
        for name, s in summaries.items():
            counts = [str(s["furthest_stage"].get(st, 0)) for st in STAGES]
            lines.append(f"| {name} | " + " | ".join(counts) + " |")
    lines += ["", f"![success by width]({svg.name})", ""]
    path.write_text("\n".join(lines))
