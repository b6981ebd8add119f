"""`ditaccel demo`: real videos from the shipped, trained fidelity model, one row per variant.

For the same labels and seeds, each variant of :mod:`.variants` generates the videos once (its
first call, compile included: the quality sample), then the variants with a speed claim are timed
over interleaved rounds. Each row gets the median time per generation, the speed-up over
``torch.compile`` (over eager when that row is not run), PSNR and SSIM against eager dense, the
steps computed / reused, the self-attention density and the compile time.

Honest on every device: a variant whose sparse or 8-bit attention runs the kernels' pure-torch
reference (the CPU, or a GPU without Triton) is not timed; its row says "reference path: quality
only, no speed claim". Which implementation runs is asked of ``ops.select.select_impl``, the same
decision the op makes at run time.

    result = run_trained_demo(labels=[1, 10], steps=10)   # -> TrainedDemoResult
    print(result.format())
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from typing import Any, Callable, Optional

import torch

from ..fidelity import FIDELITY_CONFIG, NUM_CLASSES, label_name, load_fidelity_model, psnr, sample, ssim, token_grid
from ..ops.select import REFERENCE, SDPA, select_impl
from ..runtime.state import cache_stats, new_generation, sparse_stats
from .devices import device_name, positive_int, resolve_device, resolve_dtype, sync
from .table import format_result
from .timing import interleaved_times, median
from .variants import COMPILE, EAGER, Variant, as_run, select_variants

DEFAULT_LABELS = (1, 10)
"""disc moving left, triangle moving down."""
DEFAULT_STEPS, DEFAULT_ROUNDS = 10, 3
QUICK_STEPS, QUICK_ROUNDS = 8, 1
COMPILERS = ("auto", "inductor", "eager")

REFERENCE_NOTE = "reference path: quality only, no speed claim"


@dataclass
class Row:
    """One variant's results. Times in seconds; ``times_s`` empty for a row without a speed claim."""

    key: str
    title: str
    runs_on: str                     # "eager", "Inductor", "ditaccel + Inductor", "ditaccel, no Inductor"
    note: str = ""                   # e.g. REFERENCE_NOTE
    first_call_s: float = 0.0        # compile (if any) + one generation
    times_s: list = field(default_factory=list)
    psnr_db: Optional[float] = None  # against eager dense (inf: identical)
    ssim: Optional[float] = None
    steps_computed: Optional[int] = None
    steps_reused: Optional[int] = None
    density: Optional[float] = None  # self-attention blocks computed / all, over the generation's calls
    speedup: Optional[float] = None  # baseline median / this median

    @property
    def timed(self) -> bool:
        return bool(self.times_s)

    @property
    def median_s(self) -> Optional[float]:
        return median(self.times_s)

    @property
    def compile_s(self) -> Optional[float]:
        """First call minus a steady generation (None for the eager row, which compiles nothing,
        and for an untimed row: only ``first_call_s`` is known)."""
        if not self.timed or self.runs_on == "eager":
            return None
        return max(0.0, self.first_call_s - self.median_s)

    @property
    def spread(self) -> Optional[float]:
        """Slowest / fastest timed generation (1.0: perfectly steady; None: untimed)."""
        return max(self.times_s) / min(self.times_s) if self.timed and min(self.times_s) > 0 else None


@dataclass
class TrainedDemoResult:
    rows: list[Row]
    device: str
    device_name: str
    dtype: str
    labels: list[int]
    steps: int
    seed: int
    rounds: int
    compiler: str                    # what the ditaccel rows ran on: "inductor" or "eager"
    baseline: str                    # key of the row speed-ups are relative to
    versions: dict
    files: list[str] = field(default_factory=list)
    videos: dict = field(default_factory=dict, repr=False)  # key -> [B, 3, F, H, W] float32 on the CPU

    def label_names(self) -> list[str]:
        return [label_name(label) for label in self.labels]

    def format(self) -> str:
        """The table, a legend, and where the files are (see :mod:`.table`)."""
        return format_result(self)

    def to_dict(self) -> dict:
        """Everything but the videos, as strict-JSON-ready values: ``psnr_db`` is None (null) for
        videos identical to the reference (an infinite PSNR)."""
        rows = []
        for r in self.rows:
            row = {**asdict(r), "median_s": r.median_s, "compile_s": r.compile_s, "spread": r.spread}
            if row["psnr_db"] is not None and math.isinf(row["psnr_db"]):
                row["psnr_db"] = None
            rows.append(row)
        meta = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name not in ("rows", "videos")}
        meta["label_names"] = self.label_names()
        return {"meta": meta, "rows": rows}


def check_labels(labels: Any) -> list[int]:
    """The labels as a list of distinct ints, each in [0, 16) (a list, tuple or 1-D tensor).

    Raises:
        ValueError: not a sequence, empty, a label out of range, not an integer, or given twice
            (naming it).
    """
    if isinstance(labels, torch.Tensor):
        labels = labels.reshape(-1).tolist()  # float labels are refused below, naming the value
    if isinstance(labels, (str, bytes)) or not isinstance(labels, (list, tuple)):
        raise ValueError(f"labels must be a list of integers in [0, {NUM_CLASSES}), e.g. [1, 10], got {labels!r}")
    out = []
    for label in labels:
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < NUM_CLASSES:
            raise ValueError(f"labels must be integers in [0, {NUM_CLASSES}), got {label!r} "
                             f"(e.g. 1 = {label_name(1)!r}, 10 = {label_name(10)!r})")
        if label in out:
            raise ValueError(f"label {label} is given twice (each label is one video and one set of files)")
        out.append(int(label))
    if not out:
        raise ValueError("labels must name at least one label")
    return out


MAX_SEED = 2 ** 63 - 1


def reference_reason(variant: Variant, device: str, dtype: torch.dtype, q_shape: tuple[int, ...]) -> str:
    """"" when the variant's attention runs real kernels (or plain SDPA); otherwise the row's note.

    Asks ``select_impl`` -- the choice the op makes at run time -- with a tensor of the model's
    attention shape ``q_shape`` ([B, H, S, D]) on ``device``.
    """
    if not (variant.sparse or variant.quant != "none"):
        return ""
    q = torch.empty(q_shape, device=device, dtype=dtype)
    choice = select_impl(q, q, q, is_causal=False, backend="triton", block_sparse=variant.sparse)
    if choice.impl == REFERENCE:
        return REFERENCE_NOTE
    if choice.impl == SDPA:  # the 8-bit kernel cannot run: the row computed dense SDPA
        return f"8-bit kernel unavailable ({choice.fallback}): ran dense SDPA"
    return ""


def _cache_steps(wrapper: Any) -> tuple[Optional[int], Optional[int]]:
    states = cache_stats(wrapper)
    branches = list(states[0]["current"].values()) if states else []  # per CFG branch
    if not branches:
        return None, None
    return sum(b["computed"] for b in branches), sum(b["reused"] for b in branches)


def _density(wrapper: Any) -> tuple[Optional[float], int]:
    """Self-attention density of the current generation (sparse calls count their mask's density,
    dense calls -- warm-up steps, guard -- count 1) and the number of sparse calls."""
    states = sparse_stats(wrapper)
    done = total = 0.0
    sparse_calls = 0
    for state in states:
        for site in state["current"].values():
            dense, sparse = site["dense_calls"], site["sparse_calls"]
            done += dense + sparse * (site["density"] if site["density"] is not None else 1.0)
            total += dense + sparse
            sparse_calls += sparse
    return (done / total if total else None), sparse_calls


def _runs_on(variant: Variant) -> str:
    if variant.compiler is None:
        return "eager"
    if variant.compiler == "torch.compile":
        return "Inductor"
    return "ditaccel + Inductor" if variant.options.get("compiler") == "inductor" else "ditaccel, no Inductor"


def _make_call(model: torch.nn.Module, variant: Variant) -> Any:
    """What `sample` calls for the variant (None: the model itself); ``variant`` as run (`as_run`)."""
    if variant.compiler is None:
        return None
    if variant.compiler == "torch.compile":
        return torch.compile(model)
    return torch.compile(model, backend="ditaccel", options=variant.options)


def run_trained_demo(labels: Optional[Sequence[int]] = None, steps: Optional[int] = None, seed: int = 0,
                     variants: Optional[Sequence[str]] = None, device: str = "auto", dtype: str = "auto",
                     compiler: str = "auto", rounds: Optional[int] = None, options: Optional[dict] = None,
                     quick: bool = False, weights: Optional[str] = None,
                     progress: Optional[Callable[[int], Any]] = None) -> TrainedDemoResult:
    """Generate the same labelled videos with each variant and measure them side by side.

    Args:
        labels: class labels of the videos (ints in [0, 16), see ``fidelity.label_name``; default
            (1, 10), ``quick``: the first of them).
        steps: Euler steps per generation (default 10; ``quick``: 8).
        seed: seed of the starting noise (the same for every variant).
        variants: keys of :data:`.variants.VARIANT_KEYS` (default: all; ``quick``:
            :data:`.variants.QUICK_KEYS`); eager always runs, as the quality reference.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N``.
        dtype: ``auto`` (bfloat16 on CUDA, float32 on the CPU), ``float32``, ``bfloat16``, ``float16``.
        compiler: what the ditaccel rows compile with: ``inductor``, ``eager`` (the rewritten graph
            run as is) or ``auto`` (Inductor on CUDA; on the CPU eager, because a cold Inductor
            compile of each variant takes ~40 s on 2 cores). torch.compile's row always uses Inductor.
        rounds: timed generations per timed variant, interleaved (default 3; ``quick``: 1).
        options: ditaccel options applied on top of every ditaccel variant's (e.g.
            ``{"cache.threshold": 0.2}``); checked before anything runs.
        weights: a fidelity-weights file instead of the shipped one.
        progress: makes a progress object from the number of generations; it gets ``update(1)``
            and ``set_postfix_str(key)`` per generation (e.g. ``lambda n: tqdm(total=n)``).

    Returns:
        a :class:`TrainedDemoResult`; ``format()`` gives the table.

    Raises:
        ValueError: a bad label, count, variant, device, dtype or compiler spelling.
        ConfigError: a bad option.
        DeviceUnavailableError: the device does not exist here.
        FileNotFoundError, WeightsFileError: the weights cannot be used.
        ImportError: diffusers is not installed.
    """
    labels = check_labels(labels if labels is not None else list(DEFAULT_LABELS[:1] if quick else DEFAULT_LABELS))
    steps = positive_int("steps", steps if steps is not None else (QUICK_STEPS if quick else DEFAULT_STEPS))
    rounds = positive_int("rounds", rounds if rounds is not None else (QUICK_ROUNDS if quick else DEFAULT_ROUNDS))
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, 2**63 - 1], got {seed!r}")
    if compiler not in COMPILERS:
        raise ValueError(f"compiler must be one of {', '.join(COMPILERS)}, got {compiler!r}")
    if options is not None and not isinstance(options, Mapping):
        raise ValueError(f"options must be a dict of ditaccel options (e.g. {{'cache.threshold': 0.2}}), "
                         f"got {options!r}")
    overrides = dict(options or {})
    if "compiler" in overrides:
        raise ValueError("options['compiler']: the demo sets each row's compiler; pass compiler='inductor' or "
                         "'eager' (the ditaccel rows) instead")
    chosen = select_variants(variants, steps, quick=quick)
    device = resolve_device(str(device), hint="use --device cpu")
    torch_dtype = resolve_dtype(dtype, device)
    if compiler == "auto":
        compiler = "inductor" if device.startswith("cuda") else "eager"
    # every option checked before the model loads (ConfigError names the key); rows named after
    # what the merged options really enable
    chosen = [as_run(v, compiler, overrides)[0] for v in chosen]

    model = load_fidelity_model(weights, device=device, dtype=torch_dtype)
    grid = token_grid()
    q_shape = (len(labels), FIDELITY_CONFIG["num_attention_heads"], grid[0] * grid[1] * grid[2],
               FIDELITY_CONFIG["attention_head_dim"])
    rows = {v.key: Row(v.key, v.title, _runs_on(v), reference_reason(v, device, torch_dtype, q_shape)) for v in chosen}
    timed = [v for v in chosen if not rows[v.key].note]
    bar = progress(len(chosen) + rounds * len(timed)) if progress is not None else None

    def tick(key: str) -> None:
        if bar is not None:
            bar.set_postfix_str(key)
            bar.update(1)

    calls = {v.key: _make_call(model, v) for v in chosen}

    def generate(key: str) -> torch.Tensor:
        call = calls[key]
        if call is not None:
            new_generation(call)  # step counting (cache, dense warm-up) restarts for this generation
        return sample(model, labels, steps=steps, seed=seed, transformer_call=call)

    videos: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for v in chosen:  # first call: compile + the quality sample
            sync(device)
            start = time.perf_counter()
            videos[v.key] = generate(v.key).float().cpu()
            sync(device)
            row = rows[v.key]
            row.first_call_s = time.perf_counter() - start
            if v.cached:
                row.steps_computed, row.steps_reused = _cache_steps(calls[v.key])
            else:
                row.steps_computed, row.steps_reused = steps, 0
            if v.sparse:
                row.density, sparse_calls = _density(calls[v.key])
                if sparse_calls == 0:
                    row.note = "; ".join(filter(None, [row.note, f"no sparse call: all {steps} steps were dense "
                                                                 "(the warm-up covers them)"]))
            tick(v.key)
        times = interleaved_times({v.key: (lambda key=v.key: generate(key)) for v in timed}, rounds,
                                  sync=lambda: sync(device), after_each=tick)
    if bar is not None and hasattr(bar, "close"):
        bar.close()

    reference = videos[EAGER]
    for key, row in rows.items():
        row.times_s = times.get(key, [])
        row.psnr_db, row.ssim = psnr(videos[key], reference), ssim(videos[key], reference)
    baseline = COMPILE if COMPILE in rows else EAGER
    base = rows[baseline].median_s
    for row in rows.values():
        row.speedup = base / row.median_s if row.timed and base else None
    versions = {"torch": torch.__version__, "ditaccel": _package_version()}
    return TrainedDemoResult(list(rows.values()), device, device_name(device), str(torch_dtype).replace("torch.", ""),
                             labels, steps, seed, rounds, compiler, baseline, versions, videos=videos)


def _package_version() -> str:
    try:
        return metadata.version("ditaccel")
    except metadata.PackageNotFoundError:  # a source tree on PYTHONPATH
        return "source"


__all__ = ["run_trained_demo", "TrainedDemoResult", "Row", "check_labels", "reference_reason", "DEFAULT_LABELS",
           "REFERENCE_NOTE", "COMPILERS"]
