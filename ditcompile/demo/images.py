"""The demo's files: a labelled PNG strip and an animated GIF per video, and the results as JSON.

    write_outputs(result, out_dir) -> [paths written]

Strip ``strip_label<L>.png``: one row per variant (eager dense first), the video's 8 frames left
to right. GIF ``video_label<L>.gif``: the same rows playing together. ``results.json``: the
table's numbers with device, versions and settings. Every file is written atomically.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from ..fidelity import save_gif, save_strip
from ..fileio import atomic_write_text

log = logging.getLogger("ditcompile")

STRIP_SCALE, GIF_SCALE = 2, 3


def _json_safe(value: Any) -> Any:
    """inf / NaN floats -> strings (strict JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_outputs(result: Any, out_dir: str | Path, command: str = "") -> list[str]:
    """Write the strips, GIFs and ``results.json`` of ``result`` into ``out_dir`` (created).

    Without pillow only ``results.json`` is written, and a warning says how to get the images.
    Returns the paths written; also stores them in ``result.files``.

    Raises:
        OSError: the folder cannot be created or a file cannot be written (files already there
            are left whole).
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(err.errno, f"cannot create the output folder {out} ({err.strerror})") from err
    written: list[str] = []
    names = [row.title for row in result.rows]
    try:
        for i, label in enumerate(result.labels):
            stack = torch.stack([result.videos[row.key][i] for row in result.rows])  # [variants, 3, F, H, W]
            strip, gif = out / f"strip_label{label}.png", out / f"video_label{label}.gif"
            save_strip(stack, strip, scale=STRIP_SCALE, row_labels=names)
            save_gif(stack, gif, scale=GIF_SCALE, row_labels=names)
            written += [str(strip), str(gif)]
    except ImportError as err:
        log.warning("ditaccel demo: no images written: %s", err)
    data = _json_safe(result.to_dict())
    data["meta"]["command"] = command
    path = out / "results.json"
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    written.append(str(path))
    result.files = written
    return written


__all__ = ["write_outputs"]
