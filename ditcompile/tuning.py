"""What `ditaccel autotune` does: find the attention problems of a model (or a preset) at a
resolution, tune each distinct one within a time budget, and describe the results.

    recorded = model_problems(spec, options, latent=(F, H, W), batch=1, dtype=..., device=...)
    recorded = preset_problems("wan2.1", grid=(21, 30, 52), options={...}, batch=1, ...)
    run = tune_recorded(recorded, tuner, budget_s=170, progress=tqdm_factory)
    print(winners_table(run.results)); print(cache_table(store))

`model_problems` runs the model once through the ditaccel backend (no Inductor) while
`autotune.recording()` collects every attention call's problem (weights do not matter, shapes
do): the sites, plans and masks are the model's own. `preset_problems` needs no model: it builds
random q/k/v of the shapes the preset's main model has at that grid (`heads`, `head_dim`, joint
`text_tokens`, `cross_text_tokens`, `factorized` in the preset's [preset] table); it covers the
dense and 8-bit plans, while sparse shapes need the model (or autotune.mode="online").
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from .autotune import Autotuner, Recorded, TuneKey, TuneResult, TuneStore, recording
from .autotune.store import header_mismatch, read_cache_file
from .config import ConfigError, resolve_config
from .config.preset_files import preset_metadata
from .explain import explain
from .geometry import heads_dim, seq_dim
from .ops.impl.dense import default_candidate
from .ops.impl.masks import CallMask
from .ops.select import select_impl
from .ops.tunables import TUNABLES, AttentionProblem, clone_problem

MIN_CANDIDATE_MS, MAX_CANDIDATE_MS = 5.0, 100.0  # timing budget per candidate (median of what fits)


def trace_model(spec: Any, options: Any, latent: Optional[Sequence[int]] = None, batch: int = 1,
                dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> tuple[list[Recorded], Any]:
    """The distinct attention problems of one forward of `spec`'s model (a `TinyModel`-like spec:
    build(), make_inputs(...)), with `options` (preset and overrides) at `latent` = (frames,
    height, width) in latent pixels (None: the spec's example size); and the explain report of
    that forward (which sites were rewritten, and why others were not).

    Raises ValueError when the spec cannot make inputs of another size (its `make_inputs` has no
    `latent` argument) or rejects the size."""
    kwargs: dict = dict(batch_size=batch, seed=0, dtype=dtype, device=device)
    if latent is not None:
        if not _accepts(spec.make_inputs, "latent"):
            raise ValueError(f"model {getattr(spec, 'name', spec)!r} makes inputs of one size only; omit "
                             "--resolution (its example size is used), or tune by --preset")
        kwargs["latent"] = tuple(int(x) for x in latent)
    model = spec.build()
    if dtype != torch.float32 or torch.device(device).type != "cpu":
        model = model.to(device=device, dtype=dtype)
    inputs = spec.make_inputs(**kwargs)
    config = resolve_config(options)
    options = dataclasses.replace(config, autotune=dataclasses.replace(config.autotune, mode="off"))
    with recording(clone_problem) as recorder:
        report = explain(model, **inputs, options=options)
    return list(recorder.problems.values()), report


def model_problems(spec: Any, options: Any, latent: Optional[Sequence[int]] = None, batch: int = 1,
                   dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> list[Recorded]:
    """The problems of `trace_model` (see there)."""
    return trace_model(spec, options, latent, batch, dtype, device)[0]


def _accepts(fn: Callable, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class PresetShape:
    """One attention shape of a preset's model: batch, heads, query and key lengths, head dim."""

    label: str
    batch: int
    heads: int
    q_len: int
    kv_len: int
    head_dim: int


def preset_shapes(preset: str, grid: Sequence[int], batch: int = 1) -> list[PresetShape]:
    """The attention shapes of `preset`'s main model at a token grid (frames, height, width).

    Raises ConfigError when the preset's [preset] table lacks `heads` / `head_dim`."""
    meta = preset_metadata(preset)
    try:
        heads, head_dim = int(meta["heads"]), int(meta["head_dim"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"preset {preset!r} does not declare its attention shape (heads, head_dim in its "
                          "[preset] table); tune with --model instead") from None
    frames, height, width = (int(x) for x in grid)
    text, cross = int(meta.get("text_tokens", 0)), int(meta.get("cross_text_tokens", 0))
    shapes = []
    if meta.get("factorized"):
        shapes.append(PresetShape("spatial", batch * frames, heads, height * width, height * width, head_dim))
        shapes.append(PresetShape("temporal", batch * height * width, heads, frames, frames, head_dim))
        if cross:
            shapes.append(PresetShape("cross", batch * frames, heads, height * width, cross, head_dim))
        return shapes
    video = frames * height * width
    shapes.append(PresetShape("joint" if text else "self", batch, heads, video + text, video + text, head_dim))
    if cross:
        shapes.append(PresetShape("cross", batch, heads, video, cross, head_dim))
    return shapes


def preset_problems(preset: str, grid: Sequence[int], options: Any, batch: int = 1,
                    dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu") -> list[Recorded]:
    """Problems of random q/k/v of every `preset_shapes` shape, in the layout diffusers' attention
    processors hand to SDPA ("bshd": [B, S, H, D] permuted), under the plan the options give
    (attention.backend, attention.quant). Joint attention of a preset with `joint_mask =
    "key_padding"` (HunyuanVideo: padded prompts) carries a key-padding mask over its text."""
    meta = preset_metadata(preset)
    config = resolve_config(options)
    quant, backend = config.attention.quant, config.attention.backend
    text = int(meta.get("text_tokens", 0))
    generator = torch.Generator().manual_seed(0)
    recorded = []
    for shape in preset_shapes(preset, grid, batch):
        def tensor(length: int) -> torch.Tensor:
            x = torch.randn(shape.batch, length, shape.heads, shape.head_dim, generator=generator)  # [B, S, H, D]
            return x.to(device=device, dtype=dtype)
        q, k, v = tensor(shape.q_len), tensor(shape.kv_len), tensor(shape.kv_len)
        call_mask = CallMask()
        if shape.label == "joint" and meta.get("joint_mask") == "key_padding":
            keep = torch.ones(shape.batch, 1, 1, shape.kv_len, dtype=torch.bool, device=device)
            keep[..., shape.kv_len - text // 2:] = False  # half the prompt is padding (where the text is last)
            call_mask = CallMask("key_padding", keep)
        impl = select_impl(q, k, v, is_causal=False, backend="triton" if quant != "none" else backend,
                           block_sparse=False)
        problem = AttentionProblem(q, k, v, "bshd", None, False, quant if impl.impl != "sdpa" else "none",
                                   call_mask, None, None, default_candidate(impl))
        recorded.append(Recorded(TUNABLES[problem.op], problem, [shape.label]))
    return recorded


@dataclass
class TuneRun:
    """results: one TuneResult per tuned problem (with its sites); skipped: problems left untuned
    (budget spent) or failed, with why; seconds: wall time."""

    results: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    seconds: float = 0.0


def _candidate_budget_ms(remaining_s: float, problems_left: int, candidates: int) -> float:
    """Timing budget per candidate: about half the remaining budget spread over what is left
    (validation and warm-up take the rest), within [5, 100] ms."""
    share = remaining_s * 1e3 / max(problems_left, 1) / max(candidates, 1) / 2
    return min(max(share, MIN_CANDIDATE_MS), MAX_CANDIDATE_MS)


def tune_recorded(recorded: Sequence[Recorded], tuner: Autotuner, budget_s: float,
                  progress: Optional[Callable[[int], Any]] = None) -> TuneRun:
    """Tune every recorded problem with `tuner` (results persisted in its cache) until `budget_s`
    seconds are spent (checked between problems: the first always runs); the rest are listed as
    skipped. progress(total) -> a tqdm-like bar. Raises OSError when the cache cannot be written."""
    run, start = TuneRun(), time.perf_counter()
    bar = progress(len(recorded)) if progress is not None else None
    try:
        for i, rec in enumerate(recorded):
            elapsed = time.perf_counter() - start
            if elapsed >= budget_s:
                run.skipped.extend((r, "time budget spent") for r in recorded[i:])
                break
            if bar is not None:
                bar.set_postfix_str(f"{rec.tunable.op} {describe_problem(rec.problem)}")
            tuner.budget_ms = _candidate_budget_ms(budget_s - elapsed, len(recorded) - i, len(rec.tunable.candidates))
            try:
                run.results.append((rec, tuner.tune(rec.tunable, rec.problem, strict=True)))
            except RuntimeError as err:  # no valid candidate
                run.skipped.append((rec, str(err)))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    run.seconds = time.perf_counter() - start
    return run


def describe_problem(problem: Any) -> str:
    """"B=1 H=12 Sq=32760 Skv=32760 D=128 bf16" (+ mask, quant)."""
    q, k, layout = problem.q, problem.k, problem.layout
    sd, hd = seq_dim(layout), heads_dim(layout)
    text = (f"B={q.shape[0]} H={q.shape[hd]} Sq={q.shape[sd]} Skv={k.shape[sd]} D={q.shape[-1]} "
            f"{str(q.dtype).replace('torch.', '')}")
    if problem.mask_kind != "none":
        text += f" mask={problem.mask_kind}"
    if problem.block_mask is not None:
        text += f" blocks={problem.block_mask.block_m} density={problem.block_mask.density():.2f}"
    if problem.quant != "none":
        text += f" {problem.quant}"
    return text


def _table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(head, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3f}"


def winners_table(results: Sequence[tuple[Recorded, TuneResult]]) -> str:
    """One row per tuned problem: op, shape, sites, the default and its time, the winner and its
    time, speed-up over the default, candidates timed / dropped."""
    rows = []
    for rec, r in results:
        base = r.times_ms.get(r.default)
        speedup = f"{r.speedup:.2f}x" if r.speedup is not None else "-"
        sites = ", ".join(rec.sites[:2]) + (f" (+{len(rec.sites) - 2})" if len(rec.sites) > 2 else "")
        rows.append([r.op, describe_problem(rec.problem), sites or "-", r.default, _ms(base), r.winner,
                     _ms(r.times_ms[r.winner]), speedup, f"{len(r.times_ms)}/{len(r.dropped)}"])
    return _table(["op", "shape", "sites", "default", "ms", "winner", "ms", "speed-up", "timed/dropped"], rows)


SHOWN_FIELDS = ("dtype", "layout", "batch", "heads", "q_len", "kv_len", "head_dim", "causal", "mask", "quant",
                "blocks", "density")


def _sort_value(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0, str(value))


def cache_table(store: TuneStore) -> str:
    """The entries of a tuning cache file: op, key fields, winner, speed-up over the default, when
    tuned; a note when the file's header does not match this machine (its entries are ignored)."""
    try:
        data = read_cache_file(store.path)
    except FileNotFoundError:
        return f"no tuning cache yet at {store.path}"
    except (OSError, ValueError) as err:
        return f"{store.path} is not a usable tuning cache ({err}); it is set aside at the next use"
    header = data["header"]
    lines = [f"tuning cache {store.path}",
             f"  device {header.get('device')} {header.get('capability') or ''}; torch {header.get('torch')}, "
             f"triton {header.get('triton')}, CUDA {header.get('cuda')}, ditaccel {header.get('ditaccel')}; "
             f"{len(data['entries'])} entries"]
    mismatch = header_mismatch(header, store.identity)
    if mismatch:
        lines.append(f"  NOTE: written for another device or software stack ({'; '.join(mismatch)}): these entries "
                     "are ignored, and the file is set aside at the next use")
    rows = []
    for name, entry in data["entries"].items():
        fields = dict(TuneKey.from_str(name).fields)
        shape = " ".join(f"{k}={fields[k]}" for k in SHOWN_FIELDS if fields.get(k) not in (None, "none", False))
        times = entry.get("times_ms", {})
        base, best = times.get(entry.get("default")), times.get(entry["winner"])
        speedup = f"{base / best:.2f}x" if base and best else "-"
        order = (entry["op"], tuple((k, _sort_value(fields.get(k))) for k in SHOWN_FIELDS))
        rows.append((order, [entry["op"], shape.replace("torch.", ""), entry["winner"], speedup,
                             entry.get("tuned_at", "")]))
    if rows:
        lines.append(_table(["op", "key (lengths bucketed)", "winner", "vs default", "tuned at"],
                            [row for _, row in sorted(rows, key=lambda r: r[0])]))
    return "\n".join(lines)


def cache_dict(store: TuneStore) -> dict:
    """`cache_table` as data: path, header, whether it matches this machine, entries."""
    try:
        data = read_cache_file(store.path)
    except FileNotFoundError:
        return {"cache": str(store.path), "exists": False, "entries": {}}
    except (OSError, ValueError) as err:
        return {"cache": str(store.path), "exists": True, "error": str(err), "entries": {}}
    return {"cache": str(store.path), "exists": True, "header": data["header"],
            "matches_this_machine": not header_mismatch(data["header"], store.identity),
            "entries": data["entries"]}


def latent_for_resolution(preset: str, height: int, width: int, frames: int) -> tuple[int, int, int]:
    """(latent frames, latent height, latent width) of a pixel resolution under the preset's VAE
    stride (before patching). Raises ConfigError for a preset without `vae_stride`."""
    meta = preset_metadata(preset)
    if "vae_stride" not in meta:
        raise ConfigError(f"preset {preset!r} has no vae_stride")
    vt, vh, vw = meta["vae_stride"]
    return (frames - 1) // vt + 1, math.ceil(height / vh), math.ceil(width / vw)


__all__ = ["trace_model", "cache_dict", "model_problems", "preset_problems", "preset_shapes", "PresetShape", "tune_recorded", "TuneRun",
           "winners_table", "cache_table", "describe_problem", "latent_for_resolution"]
