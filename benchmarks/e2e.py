"""End-to-end benchmark: one transformer step and a whole denoising loop, eager vs torch.compile vs ditaccel.

One process, one GPU, under 8 minutes (a time budget skips what would not fit)::

    python benchmarks/e2e.py                          # Wan2.1-1.3B 480p, every variant, 50 steps
    python benchmarks/e2e.py --quick                  # a subset, 20 steps, under 4 minutes
    python benchmarks/e2e.py --models wan2.1-1.3b,wan2.1-14b --variants 'compile,ditaccel-sparse-*'
    python benchmarks/e2e.py --cpu-smoke              # tiny Wan on CPU: checks this script, not speed

Models (``--models``): diffusers transformers from their published configs with random bf16
weights (``benchmarks/_e2e_models.py``) at the papers' resolutions -- Wan2.1-T2V-1.3B (default)
and 14B at 480x832x81 (21x30x52 = 32,760 tokens, 512 text tokens), HunyuanVideo at 720p
(118,800 tokens), CogVideoX-5B at 480x720x49 (17,550 tokens), FLUX.1-dev at 1024x1024, Mochi 1
(10B) at 480x848x163 (28x30x53 = 44,520 tokens; 256 text tokens, 64 of them valid).

For each variant, in this process, after ``torch._dynamo.reset()``:

* step: warm-up calls (the first one's wall time is the compile time), then the median of
  ``--step-iters`` timed calls (CUDA events). Calls get decreasing timesteps, like a real
  generation, so variants whose plan depends on the step run their steady state: sparse
  variants get their dense warm-up steps (``sparse.dense_steps``) as extra warm-up calls; for
  step-cache variants the median is over the timed calls that computed (reused calls are
  reported separately);
* loop: a whole ``--steps`` flow-matching Euler loop (diffusers' FlowMatchEulerDiscreteScheduler,
  scheduler included; ``--cfg`` calls the transformer twice per step like Wan's pipeline), timed
  with synchronize + perf_counter, from the same seeded noise for every variant; its final
  latents are compared with the ``torch.compile`` default variant's.

Prints a table (step ms, loop s, speedups over ``torch.compile`` default, compile time, peak
memory, cached steps, difference of the final latents), writes JSON to ``--out`` and a PNG bar
chart of the loop speedups next to it. Variants whose options the installed ditaccel does not
accept yet print "not available: <reason>"; failures are reported per variant.

JSON: {"environment": {date, command, python, torch, cuda, triton, diffusers, ditaccel,
sageattention, cache-dit, gpu, capability}, "args": {...}, "reference": "compile", "elapsed_s",
"models": [{name, class, config_source, config, parameters, dtype, resolution, latent_shape,
tokens, text_tokens, preset, scheduler, build_s, note}], "rows": [one per model x variant:
{model, variant, status: ok | not available | skipped | failed, note, options, compile_s,
step_ms, step_reused_ms, step_calls_ms, step_phase_s, loop_s, loop_calls, loop_call_ms,
step_speedup, loop_speedup, peak_mem_gib, steps_computed, steps_reused, density, cache_stats, graphs,
max_abs_diff, rel_l2_diff, finite, wall_s}]}.
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import importlib.metadata
import importlib.util
import json
import platform
import shlex
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _e2e_models import MODELS, ModelSpec, build_model, model_kwargs, parameter_count  # noqa: E402

from ditcompile.fileio import atomic_path, atomic_write_text  # noqa: E402
from ditcompile.masks import POLICIES as SPARSE_POLICIES  # noqa: E402
from ditcompile.step_cache_policies import CACHE_POLICIES  # noqa: E402
DEFAULT_MODELS = "wan2.1-1.3b"
REFERENCE = "compile"  # speedups and latent differences are against this variant


# ---------------------------------------------------------------------- variants


@dataclass
class Variant:
    name: str
    kind: str  # eager | compile | ditaccel | sage | cache-dit
    options: dict = field(default_factory=dict)  # ditaccel options on top of the model's preset
    mode: Optional[str] = None  # torch.compile mode
    quick: bool = False  # part of --quick
    loop_in_quick: bool = True


# Run order = priority order: when the time budget runs out, the variants at the end are skipped.
VARIANTS = [
    Variant("eager", "eager", quick=True, loop_in_quick=False),
    Variant("compile", "compile", quick=True),
    Variant("ditaccel-dense", "ditaccel", quick=True),
    Variant("ditaccel-cache", "ditaccel", {"cache.enabled": True}, quick=True),
    Variant("ditaccel-sparse-radial", "ditaccel", {"sparse.enabled": True, "sparse.policy": "radial"}, quick=True),
    Variant("ditaccel-quant", "ditaccel", {"attention.quant": "int8"}),
    Variant("ditaccel-all", "ditaccel", {"sparse.enabled": True, "sparse.policy": "radial",
                                         "attention.quant": "int8", "cache.enabled": True}),
    *[Variant(f"ditaccel-sparse-{p}", "ditaccel", {"sparse.enabled": True, "sparse.policy": p})
      for p in SPARSE_POLICIES if p != "radial"],
    # each step-cache policy at the preset's threshold (the preset's own policy is "ditaccel-cache")
    *[Variant(f"ditaccel-cache-{name}", "ditaccel", {"cache.enabled": True, "cache.policy": name,
                                                     **policy.example_options})
      for name, policy in CACHE_POLICIES.items()],
    Variant("ditaccel-cache-taylorseer", "ditaccel", {"cache.enabled": True, "cache.taylor_order": 1}),
    Variant("compile-max-autotune", "compile", mode="max-autotune-no-cudagraphs"),
    Variant("sage", "sage"),  # SageAttention through diffusers' attention backend + torch.compile default
    Variant("cache-dit", "cache-dit"),  # cache-dit's DBCache (its defaults) + torch.compile default
]  # fmt: skip


class NotAvailable(Exception):
    """The variant cannot run here (option not accepted yet, optional package missing)."""


@dataclass
class Prepared:
    """A variant ready to call: ``call(**kwargs)`` is one transformer call."""

    call: Callable
    note: str = ""
    extra_warmup: int = 0  # extra step-timing warm-up calls (sparse dense warm-up steps)
    step_timing: bool = True  # False: only loops (cache-dit counts calls to find its steps)
    before_loop: Callable[[], Any] = lambda: None
    cache_stats: Optional[Callable[[], list]] = None
    sparse_stats: Optional[Callable[[], list]] = None
    cleanup: Callable[[], Any] = lambda: None


def prepare(variant: Variant, model: torch.nn.Module, spec: ModelSpec, args) -> Prepared:
    cpu = args.cpu_smoke
    if variant.kind == "eager":
        return Prepared(model)
    if variant.kind == "compile":
        if cpu:  # keep the smoke run fast: Dynamo only
            return Prepared(torch.compile(model, backend="eager"), note="cpu smoke: backend eager")
        return Prepared(torch.compile(model, mode=variant.mode))
    if variant.kind == "ditaccel":
        return _prepare_ditaccel(variant, model, spec, args)
    if variant.kind == "sage":
        return _prepare_sage(model, cpu)
    if variant.kind == "cache-dit":
        return _prepare_cache_dit(model, spec, args)
    raise ValueError(f"unknown variant kind {variant.kind!r}")


def _prepare_ditaccel(variant: Variant, model, spec: ModelSpec, args) -> Prepared:
    import ditcompile

    options = {"preset": spec.preset, **spec.preset_options, **variant.options}
    if args.cpu_smoke:
        options["compiler"] = "eager"
    try:
        config = ditcompile.resolve_config(options)
    except ditcompile.ConfigError as err:
        raise NotAvailable(str(err)) from err
    compiled = torch.compile(model, backend="ditaccel", options=options)
    sparse = getattr(config, "sparse", None)
    dense_steps = int(getattr(sparse, "dense_steps", 0)) if getattr(sparse, "enabled", False) else 0
    stats = (lambda: ditcompile.cache_stats(compiled)) if config.cache.enabled else None
    notes = []
    if config.cache.enabled:
        notes.append(f"cache {config.cache.policy}@{config.cache.threshold:g}")
    if dense_steps:
        notes.append(f"{dense_steps} dense steps")
    if args.cpu_smoke:
        notes.append("compiler eager")
    sparse_stats = (lambda: ditcompile.sparse_stats(compiled)) if config.sparse.enabled else None
    return Prepared(compiled, note=", ".join(notes), extra_warmup=dense_steps,
                    before_loop=lambda: ditcompile.new_generation(compiled), cache_stats=stats,
                    sparse_stats=sparse_stats)  # fmt: skip


def _prepare_sage(model, cpu: bool) -> Prepared:
    if importlib.util.find_spec("sageattention") is None:
        raise NotAvailable("sageattention is not installed")
    if cpu:
        raise NotAvailable("SageAttention needs CUDA")
    if not hasattr(model, "set_attention_backend"):
        raise NotAvailable("this diffusers has no set_attention_backend")
    try:
        model.set_attention_backend("sage")
    except Exception as err:  # noqa: BLE001 -- diffusers says why (e.g. sageattention version too old)
        raise NotAvailable(f"diffusers' 'sage' backend refused (sageattention "
                           f"{_version('sageattention')}): {_first_line(err)}") from err  # fmt: skip
    reset = getattr(model, "reset_attention_backend", None) or (lambda: model.set_attention_backend("native"))
    return Prepared(torch.compile(model), note=f"sageattention {_version('sageattention')}", cleanup=reset)


def _prepare_cache_dit(model, spec: ModelSpec, args) -> Prepared:
    if importlib.util.find_spec("cache_dit") is None:
        raise NotAvailable("cache-dit is not installed")
    if not spec.cache_dit_blocks:
        raise NotAvailable(f"the cache-dit peer is wired for Wan only, not {spec.name}")
    import cache_dit
    from cache_dit import BlockAdapter, DBCacheConfig, ForwardPattern

    blocks = getattr(model, spec.cache_dit_blocks)
    adapter = BlockAdapter(transformer=model, blocks=blocks, forward_pattern=ForwardPattern.Pattern_2,
                           has_separate_cfg=args.cfg)  # fmt: skip
    # Transformer-only use: cache-dit finds step boundaries by counting calls, so no step timing.
    cache_dit.enable_cache(adapter, cache_config=DBCacheConfig(num_inference_steps=args.steps))
    call = model if args.cpu_smoke else torch.compile(model)
    return Prepared(call, note=f"cache-dit {_version('cache-dit')} DBCache defaults", step_timing=False,
                    cleanup=lambda: cache_dit.disable_cache(model))  # fmt: skip


# ---------------------------------------------------------------------- timing


class CallTimer:
    """Times calls without synchronising between them (CUDA events); CPU: perf_counter."""

    def __init__(self, cuda: bool):
        self.cuda, self.marks = cuda, []

    def __call__(self, fn: Callable, **kwargs) -> Any:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn(**kwargs)
            end.record()
            self.marks.append((start, end))
        else:
            t0 = time.perf_counter()
            out = fn(**kwargs)
            self.marks.append(time.perf_counter() - t0)
        return out

    def ms(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [s.elapsed_time(e) for s, e in self.marks]
        return [1e3 * t for t in self.marks]


def sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def make_scheduler(spec: ModelSpec, steps: int, device):
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(**spec.scheduler)
    scheduler.set_timesteps(steps, device=device, **spec.set_timesteps)
    return scheduler


def transformer_call(call: Callable, spec: ModelSpec, timer: CallTimer, latents, t, extra) -> torch.Tensor:
    timestep = t.expand(latents.shape[0]).float() * spec.timestep_scale
    return timer(call, **model_kwargs(spec, latents, timestep, extra))[0]


def denoise(call, spec: ModelSpec, ctx: "ModelContext", args, timer: CallTimer) -> torch.Tensor:
    """A whole generation loop from seeded noise, as the model's pipeline runs it."""
    scheduler = make_scheduler(spec, args.steps, ctx.device)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    latents = torch.randn(spec.latent_shape, generator=gen, dtype=torch.float32).to(ctx.device)
    for t in scheduler.timesteps:
        x = latents.to(ctx.dtype)
        noise_pred = transformer_call(call, spec, timer, x, t, ctx.cond)
        if args.cfg:
            uncond = transformer_call(call, spec, timer, x, t, ctx.uncond)
            noise_pred = uncond + args.guidance * (noise_pred - uncond)
        latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
    return latents


def time_steps(call, spec: ModelSpec, ctx: "ModelContext", args, warmup: int, iters: int):
    """(compile s = first call, per-call ms of the timed calls) over decreasing timesteps."""
    timesteps = make_scheduler(spec, max(args.steps, warmup + iters), ctx.device).timesteps[: warmup + iters]
    timer = CallTimer(ctx.cuda)
    sync(ctx.cuda)
    t0 = time.perf_counter()
    transformer_call(call, spec, timer, ctx.latents, timesteps[0], ctx.cond)
    sync(ctx.cuda)
    compile_s = time.perf_counter() - t0
    for t in timesteps[1:warmup]:
        transformer_call(call, spec, timer, ctx.latents, t, ctx.cond)
    timer.ms()  # synchronise: warm-up done
    timer.marks = []
    for t in timesteps[warmup:]:
        transformer_call(call, spec, timer, ctx.latents, t, ctx.cond)
    return compile_s, timer.ms()


def cache_counts(stats: Optional[list]) -> tuple[Optional[int], Optional[int], list]:
    """(computed, reused, per-branch call pattern of branch 0) of the current generation."""
    if not stats:
        return None, None, []
    current = stats[0].get("current", {})
    computed = sum(b.get("computed", 0) for b in current.values())
    reused = sum(b.get("reused", 0) for b in current.values())
    first = current[min(current)] if current else {}
    return computed, reused, list(first.get("pattern", []))


# ---------------------------------------------------------------------- one model, all variants


@dataclass
class Row:
    model: str
    variant: str
    status: str = "ok"  # ok | not available | skipped | failed
    note: str = ""
    options: Any = None
    compile_s: Optional[float] = None
    step_ms: Optional[float] = None  # median of the timed calls (cache variants: computed calls)
    step_reused_ms: Optional[float] = None  # cache variants: median of reused timed calls
    step_calls_ms: list = field(default_factory=list)
    step_phase_s: Optional[float] = None  # wall time of compile + warm-up + timed calls
    loop_s: Optional[float] = None
    loop_calls: Optional[int] = None
    loop_call_ms: list = field(default_factory=list)  # every transformer call of the loop
    step_speedup: Optional[float] = None  # vs torch.compile default
    loop_speedup: Optional[float] = None
    peak_mem_gib: Optional[float] = None
    steps_computed: Optional[int] = None
    steps_reused: Optional[int] = None
    density: Optional[float] = None  # sparse variants: mean block density of the sparse sites
    cache_stats: Any = None
    graphs: Optional[int] = None  # Dynamo graphs compiled (graph breaks / recompiles show here)
    max_abs_diff: Optional[float] = None  # final latents vs torch.compile default
    rel_l2_diff: Optional[float] = None
    finite: Optional[bool] = None
    wall_s: Optional[float] = None


@dataclass
class ModelContext:
    spec: ModelSpec
    model: torch.nn.Module
    device: torch.device
    dtype: torch.dtype
    cond: dict
    uncond: dict
    latents: torch.Tensor  # fixed input of the step timing
    cuda: bool = False
    final: dict = field(default_factory=dict)  # variant -> final latents (CPU, float32)


class Budget:
    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()


def estimate_s(rows: list[Row], loop: bool) -> float:
    """Seconds the next variant needs, from what the variants so far took (0 before any)."""
    def most(values):
        values = [v for v in values if v is not None]
        return max(values) if values else 0.0

    step_phase = most([r.step_phase_s for r in rows])
    return step_phase + (most([r.loop_s for r in rows]) if loop else 0.0)


def run_variant(variant: Variant, ctx: ModelContext, args, budget: Budget, rows: list[Row]) -> Row:
    spec = ctx.spec
    row = Row(spec.name, variant.name, options=variant.mode or variant.options or None)
    loop = not (args.quick and not variant.loop_in_quick)
    need = estimate_s(rows, loop)
    if budget.left() < need:
        row.status = "skipped"
        row.note = f"time budget: {budget.left():.0f} s left, ~{need:.0f} s needed (--budget-s)"
        return row
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    if ctx.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t_start = time.perf_counter()
    prep = None
    try:
        prep = prepare(variant, ctx.model, spec, args)
        row.note = prep.note
        with torch.no_grad():
            if prep.step_timing:
                warmup = args.warmup + prep.extra_warmup
                prep.before_loop()  # step counting starts here (ditaccel: a new generation)
                t0 = time.perf_counter()
                row.compile_s, row.step_calls_ms = time_steps(prep.call, spec, ctx, args, warmup, args.step_iters)
                row.step_phase_s = time.perf_counter() - t0
                row.step_ms = statistics.median(row.step_calls_ms)
                if prep.cache_stats is not None:  # split the timed calls into computed / reused
                    flags = cache_counts(prep.cache_stats())[2][-len(row.step_calls_ms):]
                    if len(flags) == len(row.step_calls_ms):
                        done = [t for t, f in zip(row.step_calls_ms, flags) if f]
                        reused = [t for t, f in zip(row.step_calls_ms, flags) if not f]
                        row.step_ms = statistics.median(done) if done else None
                        row.step_reused_ms = statistics.median(reused) if reused else None
            calls = args.steps * (2 if args.cfg else 1)
            if loop:
                per_call = (row.step_ms or 0.0) / 1e3
                need = max(estimate_s(rows, True) - estimate_s(rows, False), per_call * calls)
                if budget.left() < need:
                    why = f"loop skipped: time budget ({budget.left():.0f} s left, ~{need:.0f} s needed)"
                    row.note = _join(row.note, why)
                else:
                    if not prep.step_timing:  # the warm-up (and compile) is a whole loop
                        prep.before_loop()
                        sync(ctx.cuda)
                        t0 = time.perf_counter()
                        denoise(prep.call, spec, ctx, args, CallTimer(ctx.cuda))
                        sync(ctx.cuda)
                        row.compile_s = row.step_phase_s = time.perf_counter() - t0
                    prep.before_loop()
                    timer = CallTimer(ctx.cuda)
                    sync(ctx.cuda)
                    t0 = time.perf_counter()
                    final = denoise(prep.call, spec, ctx, args, timer)
                    sync(ctx.cuda)
                    row.loop_s = time.perf_counter() - t0
                    row.loop_calls, row.loop_call_ms = calls, [round(t, 3) for t in timer.ms()]
                    ctx.final[variant.name] = final.float().cpu()
                    row.finite = bool(torch.isfinite(ctx.final[variant.name]).all())
                    if prep.cache_stats is not None:
                        row.cache_stats = prep.cache_stats()
                        row.steps_computed, row.steps_reused, _ = cache_counts(row.cache_stats)
                    if prep.sparse_stats is not None:
                        row.density = mean_density(prep.sparse_stats())
        row.graphs = int(torch._dynamo.utils.counters["stats"].get("unique_graphs", 0)) or None
        if ctx.cuda:
            row.peak_mem_gib = torch.cuda.max_memory_allocated() / 2**30
    except NotAvailable as err:
        row.status, row.note = "not available", str(err)
    except Exception as err:  # noqa: BLE001 -- report it and go on with the other variants
        config_error = _config_error(err)
        if config_error is not None:
            row.status, row.note = "not available", str(config_error)
        else:
            row.status, row.note = "failed", f"{type(err).__name__}: {_first_line(err)}"
            if args.verbose:
                traceback.print_exc()
    finally:
        if prep is not None:
            try:
                prep.cleanup()
            except Exception as err:  # noqa: BLE001
                row.note = _join(row.note, f"cleanup failed: {_first_line(err)}")
        del prep
        torch._dynamo.reset()
        gc.collect()
        if ctx.cuda:
            torch.cuda.empty_cache()
    row.wall_s = time.perf_counter() - t_start
    return row


def run_model(spec: ModelSpec, variants: list[Variant], args, budget: Budget, device, dtype,
              rows: list[Row], models: list[dict], save: Callable[[], None]) -> None:
    """Build the model, run every variant on it; appends to ``rows`` and ``models``, saving as it goes."""
    cuda = device.type == "cuda"
    info = {
        "name": spec.name, "class": spec.cls_name, "config_source": spec.config_source, "config": spec.config,
        "parameters": None, "dtype": str(dtype).replace("torch.", ""), "resolution": spec.resolution,
        "latent_shape": list(spec.latent_shape), "tokens": spec.tokens, "text_tokens": spec.text_tokens,
        "preset": spec.preset, "scheduler": spec.scheduler, "build_s": None, "note": spec.note,
    }  # fmt: skip
    models.append(info)
    t0 = time.perf_counter()
    try:
        model = build_model(spec, device, dtype, seed=args.seed)
        gen = torch.Generator(device="cpu").manual_seed(args.seed + 1)
        cond = spec.make_inputs(device, dtype, gen)
        uncond = spec.make_inputs(device, dtype, gen, negative=True)
        latents = torch.randn(spec.latent_shape, generator=gen).to(device=device, dtype=dtype)
    except Exception as err:  # noqa: BLE001 -- e.g. out of memory: report it, go on with the next model
        note = f"building the model failed: {type(err).__name__}: {_first_line(err)}"
        print(f"\n{spec.name}: {note}", flush=True)
        rows += [Row(spec.name, v.name, status="failed", note=note) for v in variants]
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        save()
        return
    ctx = ModelContext(spec, model, device, dtype, cond, uncond, latents, cuda)
    info["parameters"], info["build_s"] = parameter_count(model), round(time.perf_counter() - t0, 2)
    print(f"\n{spec.name}: {info['parameters'] / 1e9:.2f}B parameters ({info['dtype']}), {spec.resolution}, "
          f"latents {list(spec.latent_shape)} -> {spec.tokens} tokens + {spec.text_tokens} text; "
          f"built in {info['build_s']} s", flush=True)  # fmt: skip
    first = len(rows)
    for variant in variants:
        row = run_variant(variant, ctx, args, budget, rows[first:])
        rows.append(row)
        print("  " + progress_line(row), flush=True)
        save()
    mine = rows[first:]
    ref_row = next((r for r in mine if r.variant == REFERENCE and r.status == "ok"), None)
    ref_final = ctx.final.get(REFERENCE)
    for row in mine:
        if ref_row is not None and row.step_ms and ref_row.step_ms:
            row.step_speedup = ref_row.step_ms / row.step_ms
        if ref_row is not None and row.loop_s and ref_row.loop_s:
            row.loop_speedup = ref_row.loop_s / row.loop_s
        final = ctx.final.get(row.variant)
        if final is not None and ref_final is not None:
            diff = final - ref_final
            row.max_abs_diff = diff.abs().max().item()
            row.rel_l2_diff = (diff.norm() / ref_final.norm().clamp_min(1e-30)).item()
    del ctx, model, cond, uncond, latents
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    save()


# ---------------------------------------------------------------------- report


def _fmt(x, spec: str, suffix: str = "") -> str:
    return "-" if x is None else format(x, spec) + suffix


def progress_line(r: Row) -> str:
    if r.status != "ok":
        return f"{r.variant:<32} {r.status}: {r.note}"
    return (f"{r.variant:<32} step {_fmt(r.step_ms, '.1f')} ms, loop {_fmt(r.loop_s, '.2f')} s, "
            f"compile {_fmt(r.compile_s, '.1f')} s  {r.note}")  # fmt: skip


def mean_density(stats: list) -> Optional[float]:
    """Mean block density over the sparse sites of the current generation (None if none ran)."""
    values = [s["density"] for state in stats for s in state["current"].values() if s.get("density") is not None]
    return sum(values) / len(values) if values else None


def format_table(rows: list[Row]) -> str:
    header = (f"{'model':<14} {'variant':<32} {'step ms':>9} {'loop s':>8} {'step x':>7} {'loop x':>7} "
              f"{'compile s':>9} {'peak GiB':>8} {'comp/reuse':>10} {'density':>7} {'max|d|':>9} {'rel L2':>9}  note")  # fmt: skip
    lines = [header, "-" * len(header)]
    for r in rows:
        if r.status != "ok":
            lines.append(f"{r.model:<14} {r.variant:<32} {r.status}: {r.note}")
            continue
        cached = "-" if r.steps_computed is None else f"{r.steps_computed}/{r.steps_reused}"
        note = r.note
        if r.step_reused_ms is not None:
            note = _join(note, f"reused step {r.step_reused_ms:.1f} ms")
        if r.finite is False:
            note = _join(note, "NON-FINITE latents")
        lines.append(
            f"{r.model:<14} {r.variant:<32} {_fmt(r.step_ms, '9.1f'):>9} {_fmt(r.loop_s, '8.2f'):>8} "
            f"{_fmt(r.step_speedup, '6.2f', 'x'):>7} {_fmt(r.loop_speedup, '6.2f', 'x'):>7} "
            f"{_fmt(r.compile_s, '9.1f'):>9} {_fmt(r.peak_mem_gib, '8.2f'):>8} {cached:>10} {_fmt(r.density, '7.3f'):>7} "
            f"{_fmt(r.max_abs_diff, '9.2e'):>9} {_fmt(r.rel_l2_diff, '9.2e'):>9}  {note}"
        )  # fmt: skip
    return "\n".join(lines)


def write_chart(rows: list[Row], path: Path) -> str:
    several = len({r.model for r in rows}) > 1
    bars = [(f"{r.model} / {r.variant}" if several else r.variant, r.loop_speedup) for r in rows if r.loop_speedup]
    if not bars:
        return "chart skipped: no loop speedups measured"
    title = f"{rows[0].model if not several else ''} whole-loop speedup over torch.compile default".strip()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 0.4 * len(bars) + 1.2))
        ax.barh([b[0] for b in bars][::-1], [b[1] for b in bars][::-1], color="#4c72b0")
        ax.axvline(1.0, color="black", linewidth=0.8)
        for y, (_, v) in enumerate(bars[::-1]):
            ax.text(v, y, f" {v:.2f}x", va="center")
        ax.set_title(title)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format=Path(path).suffix.lstrip(".") or "png")
        plt.close(fig)
        return f"wrote {path} (matplotlib)"
    except ImportError:
        pass
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        return "chart skipped: neither matplotlib nor pillow is importable"
    try:
        font = ImageFont.load_default(size=14)  # Pillow >= 10.1
    except TypeError:
        font = ImageFont.load_default()
    label_w, bar_w, row_h, top = 320, 420, 22, 30
    img = Image.new("RGB", (label_w + bar_w + 80, top + row_h * len(bars) + 10), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 8), title, fill="black", font=font)
    scale = bar_w / max(max(v for _, v in bars), 1.0)
    for i, (label, v) in enumerate(bars):
        y = top + i * row_h
        draw.text((10, y + 4), label, fill="black", font=font)
        draw.rectangle([label_w, y + 3, label_w + max(1, int(v * scale)), y + row_h - 3], fill=(76, 114, 176))
        draw.text((label_w + int(v * scale) + 5, y + 4), f"{v:.2f}x", fill="black", font=font)
    x1 = label_w + int(scale)
    draw.line([x1, top - 4, x1, top + row_h * len(bars)], fill="black")  # 1.0x
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return f"wrote {path} (pillow)"


def _version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(args) -> dict:
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _version("triton") or _version("pytorch-triton"),
        "diffusers": _version("diffusers"),
        "ditaccel": _version("ditaccel"),
        "sageattention": _version("sageattention"),
        "cache-dit": _version("cache-dit"),
        "gpu": None,
    }
    if torch.cuda.is_available() and not args.cpu_smoke:
        info["gpu"] = torch.cuda.get_device_name()
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    return info


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else repr(err))[:300]


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b


def _config_error(err: BaseException) -> Optional[BaseException]:
    """The ditcompile.ConfigError behind ``err`` (Dynamo wraps backend errors), if any."""
    try:
        from ditcompile import ConfigError
    except ImportError:
        return None
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, ConfigError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__ or getattr(err, "inner_exception", None)
    return None


# ---------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--models", default=DEFAULT_MODELS,
                        help=f"comma-separated, from {[m for m in MODELS if m != 'wan2.1-tiny']} (default "
                             "%(default)s); one --budget-s covers them all, so raise it for several")  # fmt: skip
    parser.add_argument("--variants", default="all",
                        help="comma-separated names or globs (e.g. 'compile,ditaccel-sparse-*'); default: all "
                             f"({', '.join(v.name for v in VARIANTS)}); "
                             f"the {REFERENCE!r} variant is always run")  # fmt: skip
    parser.add_argument("--steps", type=int, default=None, help="denoising steps of the loop (default 50; --quick 20)")
    parser.add_argument("--cfg", action="store_true", help="classifier-free guidance: two transformer calls per step")
    parser.add_argument("--guidance", type=float, default=5.0, help="CFG scale with --cfg (default 5.0, Wan's)")
    parser.add_argument("--step-iters", type=int, default=None, help="timed calls for the step median (default 5)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up calls before them (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="eager (step only), compile, ditaccel dense/cache/sparse-radial; "
                             "20 steps; budget 210 s")  # fmt: skip
    parser.add_argument("--budget-s", type=float, default=None,
                        help="skip variants (and loops) that would end after this many seconds from the start "
                             "(default 450; --quick 210)")  # fmt: skip
    parser.add_argument("--out", default="benchmarks/out/e2e.json", help="JSON path; the chart goes next to it (.png)")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny Wan on CPU, torch.compile rows with backend 'eager', ditaccel with compiler "
                             "'eager', 3 steps: checks this script, not speed")  # fmt: skip
    parser.add_argument("--verbose", action="store_true", help="print tracebacks of failed variants")
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 3 if args.cpu_smoke else (20 if args.quick else 50)
    if args.step_iters is None:
        args.step_iters = 2 if args.cpu_smoke else 5
    if args.warmup is None:
        args.warmup = 1 if args.cpu_smoke else 2
    if args.budget_s is None:
        args.budget_s = 120.0 if args.cpu_smoke else (210.0 if args.quick else 450.0)
    if args.steps < 1 or args.step_iters < 1 or args.warmup < 1:
        parser.error("--steps, --step-iters and --warmup must be >= 1")
    return args


def select_variants(args) -> list[Variant]:
    """--variants picks from every variant (with or without --quick); else --quick's subset or all."""
    if args.variants == "all":
        return [v for v in VARIANTS if v.quick] if args.quick else list(VARIANTS)
    patterns = [p.strip() for p in args.variants.split(",") if p.strip()]
    for p in patterns:
        if not any(fnmatch.fnmatchcase(v.name, p) for v in VARIANTS):
            raise SystemExit(f"--variants: {p!r} matches no variant; known: {[v.name for v in VARIANTS]}")
    return [v for v in VARIANTS if v.name == REFERENCE or any(fnmatch.fnmatchcase(v.name, p) for p in patterns)]


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("benchmarks/e2e.py needs a CUDA GPU (none found). "
              "Use --cpu-smoke to check the script on CPU with a tiny Wan model.", file=sys.stderr)  # fmt: skip
        return 2
    budget = Budget(args.budget_s)
    if args.cpu_smoke:
        names = ["wan2.1-tiny"]
        if args.models != DEFAULT_MODELS:
            print(f"--cpu-smoke runs the tiny Wan model only (ignoring --models {args.models})")
        device, dtype = torch.device("cpu"), torch.float32
    else:
        names = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in names if m not in MODELS or m == "wan2.1-tiny"]
        if unknown:
            print(f"unknown --models {unknown}; known: {[m for m in MODELS if m != 'wan2.1-tiny']}", file=sys.stderr)
            return 2
        device, dtype = torch.device("cuda"), torch.bfloat16
    variants = select_variants(args)
    env = environment(args)
    print(f"e2e: {env['gpu'] or 'CPU (smoke)'}, torch {env['torch']}, diffusers {env['diffusers']}, "
          f"{args.steps} steps{' with CFG' if args.cfg else ''}, budget {args.budget_s:.0f} s, "
          f"variants: {', '.join(v.name for v in variants)}", flush=True)  # fmt: skip
    rows: list[Row] = []
    models: list[dict] = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> float:  # after every variant, so a run cut short still leaves its rows
        payload = {"environment": env, "args": vars(args), "reference": REFERENCE,
                   "elapsed_s": round(budget.elapsed(), 1), "models": models, "rows": [asdict(r) for r in rows]}
        atomic_write_text(out, json.dumps(payload, indent=2, default=str))
        return payload["elapsed_s"]

    for name in names:
        run_model(MODELS[name], variants, args, budget, device, dtype, rows, models, save)
    print("\n" + format_table(rows))
    print(f"\nwrote {out} ({save()} s)")
    print(write_chart(rows, out.with_suffix(".png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
