"""The demo's table: one row per variant, then a legend that says how to read it.

Works on any object shaped like ``trained.TrainedDemoResult`` (rows with ``title``, ``runs_on``,
``median_s``, ``speedup``, ``psnr_db``, ``ssim``, ``steps_computed``, ``steps_reused``,
``density``, ``compile_s``, ``first_call_s``, ``note``, ``key``).
"""
from __future__ import annotations

import math
from typing import Any, Optional

DASH = "-"
NOISY_SPREAD = 1.5
"""A row whose slowest timed generation is more than this times its fastest makes the legend warn."""

COLUMNS = (  # header, width, alignment
    ("variant", 25, "<"), ("runs on", 21, "<"), ("s/gen", 6, ">"), ("speed-up", 8, ">"), ("PSNR dB", 7, ">"),
    ("SSIM", 6, ">"), ("steps c/r", 9, ">"), ("density", 7, ">"), ("compile s", 9, ">"),
)


def _num(value: Optional[float], spec: str) -> str:
    if value is None:
        return DASH
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, spec)


def row_cells(row: Any, reference_key: str) -> list[str]:
    """The table cells of one row (strings, unpadded)."""
    psnr = "ref" if row.key == reference_key else _num(row.psnr_db, ".2f")
    ssim = "ref" if row.key == reference_key else _num(row.ssim, ".4f")
    steps = DASH if row.steps_computed is None else f"{row.steps_computed}/{row.steps_reused}"
    if row.runs_on == "eager":  # nothing to compile
        compile_s = DASH
    elif row.compile_s is not None:
        compile_s = _num(row.compile_s, ".1f")
    else:  # untimed: only the first call (compile + one generation) is known, an upper bound
        compile_s = f"<{row.first_call_s:.1f}"
    speed = DASH if row.speedup is None else f"{row.speedup:.2f}x"
    return [row.title, row.runs_on, _num(row.median_s, ".2f"), speed, psnr, ssim, steps, _num(row.density, ".3f"),
            compile_s]


def format_table(result: Any) -> str:
    lines = ["  ".join(f"{h:{a}{w}}" for h, w, a in COLUMNS)]
    lines.append("-" * len(lines[0]))
    for row in result.rows:
        cells = row_cells(row, "eager")
        line = "  ".join(f"{c:{a}{w}}" for c, (_, w, a) in zip(cells, COLUMNS))
        lines.append(line + (f"  {row.note}" if row.note else ""))
    return "\n".join(lines)


def legend(result: Any) -> list[str]:
    """How to read the table, for the rows and device of this result."""
    base = "torch.compile" if result.baseline == "compile" else "eager"
    out = [
        f"s/gen: median seconds per generation over {_plural(result.rounds, 'round')}, interleaved; speed-up: {base}'s "
        "median / the row's (measured side by side in this process).",
        "PSNR / SSIM: each row's videos against eager dense from the same noise (inf dB / 1.0000: identical; "
        "above ~30 dB differences are hard to see).",
        "steps c/r: denoising steps computed / reused by the step cache; density: share of self-attention "
        "blocks computed (dense warm-up steps count 1).",
        "compile s: first call minus a steady generation ('<' : the first call with its generation, for an "
        "untimed row).",
    ]
    if any(r.note.startswith("reference path") for r in result.rows):
        out.append("reference path: on this device sparse / 8-bit attention runs the kernels' pure-torch reference "
                   "(the same function, much slower): the row shows quality, not speed; run on a GPU "
                   "(--device cuda) for the real kernels.")
    if any(r.runs_on == "ditaccel, no Inductor" for r in result.rows):
        compiled = "; torch.compile's row uses Inductor" if any(r.runs_on == "Inductor" for r in result.rows) else ""
        out.append("ditaccel rows ran their rewritten graph without Inductor (--compiler eager, the CPU default: a "
                   f"cold Inductor compile costs ~40 s per variant on 2 cores){compiled}. --compiler inductor "
                   "compiles them with Inductor.")
    noisy = [r for r in result.rows if r.spread is not None and r.spread > NOISY_SPREAD]
    if noisy:
        worst = max(noisy, key=lambda r: r.spread)
        out.append(f"WARNING: the timings were noisy ({worst.title}: {min(worst.times_s):.2f} to "
                   f"{max(worst.times_s):.2f} s over {len(worst.times_s)} rounds): something else was using this "
                   "machine; the speed-ups are unreliable. Rerun on an idle machine or with more --rounds.")
    return out


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def format_result(result: Any) -> str:
    """Header line, table, legend and the files written."""
    labels = ", ".join(f"{label} ({name})" for label, name in zip(result.labels, result.label_names()))
    head = (f"ditaccel demo: the trained fidelity model (diffusers Wan DiT, 8x32x32 RGB videos, 512 tokens), "
            f"{_plural(len(result.labels), 'video')} x {_plural(result.steps, 'step')}, seed {result.seed}, on {result.device} "
            f"({result.device_name}), {result.dtype}, torch {result.versions.get('torch')}\nlabels: {labels}")
    parts = [head, "", format_table(result), ""] + legend(result)
    if result.files:
        parts += ["", "wrote: " + ", ".join(result.files)]
    return "\n".join(parts)


__all__ = ["format_result", "format_table", "legend", "row_cells", "COLUMNS"]
