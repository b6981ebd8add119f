"""The demo's files: a labelled PNG strip and an animated GIF per video, and the results as JSON.

    write_outputs(result, out_dir) -> [paths written]

Strip ``strip_label<L>.png``: one row per variant (eager dense first), the video's 8 frames left
to right. GIF ``video_label<L>.gif``: the same rows playing together. ``results.json``: the
table's numbers with device, versions, settings and the files written (strict JSON). Every file
is written atomically; images an earlier run left in the folder are listed by `stale_files`.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from ..fidelity import label_name, save_gif, save_strip
from ..fileio import atomic_write_text

log = logging.getLogger("ditcompile")

STRIP_SCALE, GIF_SCALE = 2, 3


STRIP_GLOB, GIF_GLOB = "strip_label*.png", "video_label*.gif"


def _finite(value: Any) -> Any:
    """A copy with every non-finite float replaced by None (strict JSON has no inf / NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        log.warning("ditaccel demo: results.json: a non-finite number (%s) is written as null", value)
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def prepare_out_dir(out_dir: str | Path) -> Path:
    """Create ``out_dir`` (and parents) and check a file can be written there, before a long run.

    Raises:
        OSError: naming the folder and the reason.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / ".ditaccel-write-test", "")
        (out / ".ditaccel-write-test").unlink()
    except OSError as err:
        raise OSError(err.errno, f"cannot write into the output folder {out} ({err.strerror or err})") from err
    return out


def stale_files(out_dir: str | Path, written: list[str]) -> list[str]:
    """Demo images in ``out_dir`` that this run did not write (left by an earlier run)."""
    out, fresh = Path(out_dir), {Path(p).name for p in written}
    return sorted(p.name for pattern in (STRIP_GLOB, GIF_GLOB) for p in out.glob(pattern) if p.name not in fresh)


def write_outputs(result: Any, out_dir: str | Path, command: str = "") -> list[str]:
    """Write the strips, GIFs and ``results.json`` of ``result`` into ``out_dir`` (created).

    Without pillow only ``results.json`` is written, and a warning says how to get the images.
    Returns the paths written; also stores them in ``result.files``.

    Raises:
        OSError: the folder cannot be created or a file cannot be written (files already there
            are left whole).
    """
    out = prepare_out_dir(out_dir)
    written: list[str] = []
    names = [row.title for row in result.rows]
    try:
        for i, label in enumerate(result.labels):
            stack = torch.stack([result.videos[row.key][i] for row in result.rows])  # [variants, 3, F, H, W]
            strip, gif = out / f"strip_label{label}.png", out / f"video_label{label}.gif"
            title = f"label {label}: {label_name(label)}, {result.steps} steps, seed {result.seed}"
            save_strip(stack, strip, scale=STRIP_SCALE, row_labels=names, title=title + " (frames left to right)")
            save_gif(stack, gif, scale=GIF_SCALE, row_labels=names, title=title)
            written += [str(strip), str(gif)]
    except ImportError as err:
        log.warning("ditaccel demo: no images written: %s", err)
    path = out / "results.json"
    written.append(str(path))
    result.files = written
    data = _finite(result.to_dict())
    data["meta"]["command"] = command
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
    return written


__all__ = ["write_outputs", "prepare_out_dir", "stale_files"]
