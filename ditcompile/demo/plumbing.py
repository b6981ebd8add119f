"""`ditaccel demo --model NAME`: a 10-step flow-matching denoising loop, eager vs the ditaccel backend.

Builds a small randomly initialised DiT from the built-in example models (default: a diffusers
Wan transformer), runs the same denoising loop (diffusers' FlowMatchEulerDiscreteScheduler) once
eagerly and once through `torch.compile(backend="ditaccel")`, and prints the explain report,
the timings and how far the two final latents differ. Uses a GPU when one is present.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from ..explain import explain
from ..models import load_model_spec, run_model
from .devices import positive_int, resolve_device, resolve_dtype, sync


@dataclass
class DemoResult:
    model: str
    device: str
    dtype: str
    steps: int
    eager_s: float
    compile_s: float
    compiled_s: float
    max_abs_diff: float
    rel_l2_diff: float
    report: str

    def format(self) -> str:
        per_eager = 1000 * self.eager_s / self.steps
        per_comp = 1000 * self.compiled_s / self.steps
        return "\n".join([
            f"model {self.model} on {self.device} ({self.dtype}), {self.steps}-step flow-matching loop",
            f"  {'variant':<28}{'loop time':>12}{'per step':>12}",
            f"  {'eager':<28}{self.eager_s:>11.3f}s{per_eager:>10.2f}ms   (best of repeated loops)",
            f"  {'ditaccel (after compile)':<28}{self.compiled_s:>11.3f}s{per_comp:>10.2f}ms",
            f"  compile + first loop: {self.compile_s:.1f}s; speedup over eager: {self.eager_s / self.compiled_s:.2f}x",
            f"  final latents, ditaccel vs eager: max |diff| = {self.max_abs_diff:.3e}, "
            f"relative L2 = {self.rel_l2_diff:.3e}",
        ])


def denoise(call: Callable[..., torch.Tensor], inputs: dict, steps: int, seed: int = 0) -> torch.Tensor:
    """Flow-matching Euler loop from pure noise shaped like inputs['hidden_states']."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(steps)
    template = inputs["hidden_states"]
    generator = torch.Generator(device="cpu").manual_seed(seed)
    latents = torch.randn(template.shape, generator=generator, dtype=torch.float32).to(template.device)
    for t in scheduler.timesteps:
        step_inputs = dict(inputs, hidden_states=latents.to(template.dtype),
                           timestep=t.expand(template.shape[0]).to(template.device))
        noise_pred = call(step_inputs)
        latents = scheduler.step(noise_pred.float(), t, latents).prev_sample
    return latents


def _best_of(repeats: int, loop: Callable[[], torch.Tensor], device: str) -> tuple[torch.Tensor, float]:
    """Run `loop` `repeats` times; its result and the fastest wall time (robust to a busy machine)."""
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        result = loop()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return result, best


def run_demo(model: Any = "wan2.1-tiny", steps: int = 10, compiler: Optional[str] = None,
             device: str = "auto", options: Any = None, repeats: int = 3) -> DemoResult:
    """Run the demo and return its timings and the difference of the final latents.

    Args:
        model: a built-in model name, "package.module:NAME", or a spec object (`TinyModel`).
        steps, repeats: denoising steps and timed repetitions of the loop, each >= 1.
        compiler: "inductor" or "eager"; device: see :func:`resolve_device`.

    Raises:
        ValueError: ``steps`` or ``repeats`` < 1, or a bad device spelling.
        DeviceUnavailableError: the device does not exist on this machine.
        ConfigError: a bad option.
    """
    positive_int("steps", steps)
    positive_int("repeats", repeats)
    device = resolve_device(device)
    dtype = resolve_dtype("auto", device)
    spec = load_model_spec(model) if isinstance(model, str) else model
    model_name = getattr(spec, "name", str(model))
    transformer = spec.build().to(device=device, dtype=dtype)
    inputs = spec.make_inputs(batch_size=1, seed=0, dtype=dtype, device=device)
    opts = dict(options or {})
    if spec.preset is not None:
        opts.setdefault("preset", spec.preset)
    if compiler is not None and opts.get("compiler", compiler) != compiler:
        raise ValueError(f"compiler={compiler!r} conflicts with options['compiler']={opts['compiler']!r}; give one")
    opts["compiler"] = compiler or opts.get("compiler", "inductor")

    report = explain(transformer, **inputs, options=opts).format()
    torch._dynamo.reset()

    def eager_call(kw):
        return run_model(transformer, kw)

    compiled = torch.compile(transformer, backend="ditaccel", options=opts)

    def compiled_call(kw):
        return run_model(compiled, kw)

    with torch.no_grad():
        start = time.perf_counter()
        denoise(compiled_call, inputs, steps)  # Dynamo + Inductor compile happen here
        sync(device)
        compile_s = time.perf_counter() - start
        reference, eager_s = _best_of(repeats, lambda: denoise(eager_call, inputs, steps), device)
        result, compiled_s = _best_of(repeats, lambda: denoise(compiled_call, inputs, steps), device)

    diff = (result - reference).float()
    rel = (diff.norm() / reference.float().norm().clamp_min(1e-12)).item()
    return DemoResult(model_name, device, str(dtype).replace("torch.", ""), steps, eager_s, compile_s,
                      compiled_s, diff.abs().max().item(), rel, report)
