"""What ditaccel costs where it changes nothing: `torch.compile` vs ditaccel with dense plans.

Every variant runs in this process, in interleaved rounds (round r rotates the order by r, so
a slow phase of a busy machine hits every variant alike), on the same inputs::

    python benchmarks/overhead.py                     # CPU (or the GPU when there is one)
    python benchmarks/overhead.py --device cuda --mode reduce-overhead   # with CUDA graphs
    python benchmarks/overhead.py --cpu-smoke         # a few rounds: checks this script, not speed

Models (``--models``): ``fidelity`` (the shipped fidelity model, a generation = ``sample()`` of
2 labels, 20 Euler steps), and two tiny diffusers transformers from ``ditcompile.models``
(``wan2.1-tiny``, ``flux-tiny``; a generation = 20 calls with decreasing timesteps, the output
fed back as in an Euler step when its shape allows).

Variants (``--variants``):

* ``compile``: ``torch.compile(model)`` -- the baseline;
* ``ditaccel``: ``torch.compile(model, backend="ditaccel")`` with default options (every plan
  dense: lowered to aten SDPA, `attention.lower_dense`);
* ``ditaccel-opaque``: the same with ``attention.lower_dense=false``: every site stays the
  ``ditaccel::attention`` op (what dense plans cost before the lowering);

With ``--mode`` the mode goes to ``torch.compile(mode=...)`` and to ditaccel's ``mode`` option.

Per round and variant: one *call* row (``--calls`` transformer calls, time per call) and one
*generation* row (a whole sampling loop). Reported per model and variant: the median over the
rounds, the min-max spread (% of the median) and the speed relative to ``compile`` (its median
/ the variant's: 1.0 = as fast, the issue's target is >= 0.99), plus the difference (relative
L2) of the variant's output from ``compile``'s. The profiler table (skip it
with ``--no-profile``) adds, per
variant, the torch profiler's account of one generation: time inside ``ditaccel::attention``
beyond the SDPA it runs (Python dispatch and plan handling, per call), ``aten::copy_`` time, and
the transposes.

JSON (``--out``): {"environment": {...}, "args": {...}, "rows": [{model, variant, what: call |
generation, unit: ms, median, spread_pct, vs_compile, times: [...], rel_l2_diff}],
"profile": [{model, variant, attention_op_calls, op_overhead_us_per_call, copy_ms, copies,
transposes}]}.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ditcompile.demo.timing import interleaved_times  # noqa: E402
from ditcompile.fileio import atomic_write_text  # noqa: E402
from ditcompile.models.tiny import get_tiny_model, run_model  # noqa: E402

MODELS = ("fidelity", "wan2.1-tiny", "flux-tiny")
VARIANTS = {
    "compile": None,
    "ditaccel": {},
    "ditaccel-opaque": {"attention.lower_dense": False},
}
REFERENCE = "compile"
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def environment(device: torch.device) -> dict:
    info = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv),
            "python": platform.python_version(), "torch": torch.__version__, "device": str(device),
            "cpu_threads": torch.get_num_threads(), "machine": platform.machine()}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    return info


# ---------------------------------------------------------------------- models and their work


class Workload:
    """One model: `call(fn)` is one transformer call through `fn`, `generate(fn)` one generation;
    both return the output tensor (for the comparison with the baseline)."""

    def __init__(self, name: str, device: torch.device, dtype: torch.dtype, steps: int) -> None:
        self.name, self.steps = name, steps
        if name == "fidelity":
            from ditcompile.fidelity.model import cast_keeping_fp32_modules, load_fidelity_model, sample, text_embeddings
            from ditcompile.fidelity.videos import FRAMES, HEIGHT, WIDTH
            self.model = load_fidelity_model(device=device).eval()
            if dtype != torch.float32:
                cast_keeping_fp32_modules(self.model, dtype)
            self._sample = sample
            x = torch.randn(2, 3, FRAMES, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(0))
            self.inputs = dict(hidden_states=x.to(device, dtype), timestep=torch.full((2,), 500.0, device=device),
                               encoder_hidden_states=text_embeddings([0, 1], device=device, dtype=dtype))
        else:
            spec = get_tiny_model(name)
            self.model = spec.build().to(device, dtype).eval()
            self.inputs = spec.make_inputs(seed=0, dtype=dtype, device=device)

    def call(self, fn: Callable) -> torch.Tensor:
        return run_model(fn, self.inputs)

    def generate(self, fn: Callable) -> torch.Tensor:
        if self.name == "fidelity":
            return self._sample(self.model, [0, 1], steps=self.steps, transformer_call=fn)
        inputs = dict(self.inputs)
        x = inputs["hidden_states"]
        t0 = inputs.get("timestep")
        for i in range(self.steps):
            if isinstance(t0, torch.Tensor):
                inputs["timestep"] = t0 * (1.0 - i / self.steps)
            inputs["hidden_states"] = x
            v = run_model(fn, inputs)
            if v.shape == x.shape:
                x = x - v / self.steps
        return x


def compiled(model: torch.nn.Module, variant: str, mode: str, device: torch.device) -> Callable:
    options = VARIANTS[variant]
    if options is None:
        fn = torch.compile(model, mode=None if mode == "default" else mode)
    else:
        fn = torch.compile(model, backend="ditaccel", options={**options, **({"mode": mode} if mode != "default" else {})})
    if device.type != "cuda":
        return fn

    def step(*args, **kwargs):  # CUDA graphs: each call is a new step (outputs of the last one may be reused)
        torch.compiler.cudagraph_mark_step_begin()
        return fn(*args, **kwargs)
    return step


# ---------------------------------------------------------------------- measurement


def _sync(device: torch.device) -> Callable[[], None]:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def profile_generation(work: Workload, fn: Callable) -> dict:
    """The torch profiler's account of one generation through `fn` (CPU-side times)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        work.generate(fn)
    events = {e.key: e for e in prof.key_averages()}

    def total(name: str, attr: str = "cpu_time_total") -> float:
        e = events.get(name)
        return getattr(e, attr) if e is not None else 0.0

    op = events.get("ditaccel::attention")
    calls = op.count if op is not None else 0
    inner = total("aten::scaled_dot_product_attention") if calls else 0.0
    return {
        "attention_op_calls": calls,
        "op_overhead_us_per_call": round((total("ditaccel::attention") - inner) / calls, 1) if calls else 0.0,
        "copy_ms": round(total("aten::copy_", "self_cpu_time_total") / 1000, 2),
        "copies": events["aten::copy_"].count if "aten::copy_" in events else 0,
        "transposes": events["aten::transpose"].count if "aten::transpose" in events else 0,
    }


def measure(work: Workload, variants: list[str], args, device: torch.device) -> tuple[list[dict], list[dict]]:
    fns = {v: compiled(work.model, v, args.mode, device) for v in variants}
    sync = _sync(device)
    outputs_call, outputs_gen = {}, {}
    with torch.no_grad():
        for v, fn in fns.items():  # compile and warm up (CUDA graphs record on their first calls)
            for _ in range(3):
                outputs_call[v] = work.call(fn).clone()  # a CUDA graph's next replay overwrites its output
            outputs_gen[v] = work.generate(fn).clone()
        sync()
        calls = {v: (lambda fn=fn: [work.call(fn) for _ in range(args.calls)]) for v, fn in fns.items()}
        gens = {v: (lambda fn=fn: work.generate(fn)) for v, fn in fns.items()}
        both = {f"{what}:{v}": fn for v in variants for what, fn in (("call", calls[v]), ("generation", gens[v]))}
        times = interleaved_times(both, args.rounds, sync)
        profiles = []
        if args.profile:
            for v, fn in fns.items():
                profiles.append({"model": work.name, "variant": v, **profile_generation(work, fn)})
    rows = []
    for what, outs, scale, unit in (("call", outputs_call, 1000.0 / args.calls, "ms"),
                                    ("generation", outputs_gen, 1000.0, "ms")):
        ref = statistics.median(times[f"{what}:{REFERENCE}"]) if REFERENCE in variants else None
        for v in variants:
            t = [x * scale for x in times[f"{what}:{v}"]]
            med = statistics.median(t)
            diff = None
            if REFERENCE in outs:
                a, b = outs[v].float(), outs[REFERENCE].float()
                diff = float((a - b).norm() / b.norm().clamp_min(1e-12))
            rows.append({"model": work.name, "variant": v, "what": what, "unit": unit, "median": med,
                         "spread_pct": 100.0 * (max(t) - min(t)) / med,
                         "vs_compile": (ref * scale) / med if ref is not None else None,
                         "times": t, "rel_l2_diff": diff})
    return rows, profiles


def print_table(rows: list[dict], profiles: list[dict]) -> None:
    head = f"{'model':<12} {'variant':<16} {'what':<10} {'median':>11} {'spread':>8} {'vs compile':>10} {'rel L2':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        vs = f"{r['vs_compile']:.3f}x" if r["vs_compile"] is not None else "-"
        diff = f"{r['rel_l2_diff']:.1e}" if r["rel_l2_diff"] is not None else "-"
        print(f"{r['model']:<12} {r['variant']:<16} {r['what']:<10} {r['median']:>9.3f}{r['unit']:>2} "
              f"{r['spread_pct']:>7.1f}% {vs:>10} {diff:>9}")
    if profiles:
        print()
        head = f"{'model':<12} {'variant':<16} {'op calls':>8} {'op us/call':>10} {'copy_ ms':>9} {'copies':>7} {'transposes':>10}"
        print("profile of one generation (CPU-side):")
        print(head)
        print("-" * len(head))
        for p in profiles:
            print(f"{p['model']:<12} {p['variant']:<16} {p['attention_op_calls']:>8} {p['op_overhead_us_per_call']:>10} "
                  f"{p['copy_ms']:>9} {p['copies']:>7} {p['transposes']:>10}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                        help="default: float32 on the CPU, bfloat16 on CUDA")
    parser.add_argument("--mode", default="default", choices=MODES, help="torch.compile mode for every variant")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds (default 9)")
    parser.add_argument("--calls", type=int, default=10, help="transformer calls per round in the call row (default 10)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps of a generation (default 20)")
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip the profiler table")
    parser.add_argument("--cpu-smoke", action="store_true", help="2 rounds, 2 calls, 3 steps on the CPU (checks the script)")
    parser.add_argument("--out", default="benchmarks/out/overhead.json", help="JSON output path")
    args = parser.parse_args(argv)
    for name, value, accepted in (("--models", args.models, MODELS), ("--variants", args.variants, tuple(VARIANTS))):
        bad = [x for x in value.split(",") if x not in accepted]
        if bad:
            parser.error(f"{name}: unknown {', '.join(bad)}; accepted: {', '.join(accepted)}")
    if args.rounds < 1 or args.calls < 1 or args.steps < 1:
        parser.error("--rounds, --calls and --steps must be >= 1")
    if args.cpu_smoke:
        if args.device == "cuda":
            parser.error("--cpu-smoke runs on the CPU: leave --device out")
        args.device, args.rounds, args.calls, args.steps = "cpu", 2, 2, 3
    args.models = ",".join(dict.fromkeys(args.models.split(",")))
    args.variants = ",".join(dict.fromkeys(args.variants.split(",")))
    try:  # a path that cannot be written fails now, not after the run
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent):
            pass
    except OSError as err:
        parser.error(f"--out {args.out}: cannot write there ({err})")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here", file=sys.stderr)
        return 1
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    variants = args.variants.split(",")
    started = time.perf_counter()
    rows, profiles = [], []
    for name in args.models.split(","):
        torch._dynamo.reset()
        work = Workload(name, device, dtype, args.steps)
        r, p = measure(work, variants, args, device)
        rows += r
        profiles += p
    print_table(rows, profiles)
    if args.cpu_smoke:
        print("\n--cpu-smoke: 2 rounds of a few calls check the script; these ratios are not speed measurements")
    result = {"environment": environment(device), "args": {**vars(args), "dtype": str(dtype)}, "reference": REFERENCE,
              "elapsed_s": round(time.perf_counter() - started, 1), "rows": rows, "profile": profiles}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
