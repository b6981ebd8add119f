"""`ditcompile.track_steps(model)`: the model's own calls give the denoising step to every
compiled region inside them.

With regional compilation (diffusers' `model.compile_repeated_blocks(backend="ditaccel", ...)`)
the compiled graphs are the transformer blocks: they receive the timestep embedding, never the
timestep, so on their own they cannot tell steps apart (their step-dependent plans then take
the safe path and say so). `track_steps` hooks the model's forward (eagerly, outside any compiled
region): before each call it observes the call's timestep, latents and conditioning arguments
(by name: `timestep`, `hidden_states`, ...) and sets the parent step context; every compiled
region called inside takes that step. Steps are tracked per caller (thread or request scope);
`ditcompile.new_generation(model)` restarts them. The hooks also give the blocks what a block
cannot see on its own: the token grid of the call (from the model's patch embedding and the
latents' shape: sparse attention in a block needs it) and which block each one is (from the
parameter names: `sparse.dense_blocks`, per-block stats). After each call they sample the
model's output for the latents test (`continuity`).

The hooks are module-level functions that look the model up in a weak registry, so a tracked
model can still be deep-copied and pickled; the copy is tracked once `track_steps` is called on
it (its carried hooks are reused, never doubled).
"""
from __future__ import annotations

import inspect
import threading
import weakref
from typing import Any, Optional

import torch

from ..geometry import MAIN_INPUT_NAMES, TIMESTEP_NAMES
from .continuity import LatentView, latent_sample, latent_view
from .state import Caller, current_caller, enter_parent, exit_parent, is_declared, name_parameters, on_new_generation
from .steps import StepTracker, observe_call, warn_once


class StepHooks:
    """The step tracking `track_steps` adds to one module (see the module docstring)."""

    def __init__(self, module: torch.nn.Module) -> None:
        inner = getattr(module, "_orig_mod", module)
        self.name = type(inner).__name__
        self.signature = inspect.signature(inner.forward)
        self.anchor = next(iter(inner.parameters()), None)  # for `generation(model)`
        self.view: Optional[LatentView] = None  # how the output relates to the main input, from the first call
        self.module = weakref.ref(inner)
        self.patch: Any = None  # the patch embedding (False: none), found at the first call
        self._trackers: "weakref.WeakKeyDictionary[Caller, StepTracker]" = weakref.WeakKeyDictionary()
        self._calls: "weakref.WeakKeyDictionary[Caller, list]" = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    def enter(self, args: tuple, kwargs: dict) -> None:
        try:
            named = self.signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            named = dict(kwargs)
        timestep = next((named[n] for n in TIMESTEP_NAMES if n in named), None)
        main = next((named[n] for n in MAIN_INPUT_NAMES if n in named), None)
        conditions = [v for k, v in named.items() if k not in TIMESTEP_NAMES and k not in MAIN_INPUT_NAMES
                      and isinstance(v, torch.Tensor)]
        caller = current_caller()
        with self._lock:
            tracker = self._trackers.setdefault(caller, StepTracker())
            calls = self._calls.setdefault(caller, [])
        view = self.view  # unknown until the first output: that call's latents are sampled afterwards
        info = tracker.observe(observe_call(timestep, main, conditions, view, tracker.take_pending()),
                               declared=is_declared(self.anchor))
        for text in (info.unknown_reason, info.note):
            if text:
                warn_once(self._warned, text, "ditaccel track_steps(%s): %s%s", self.name, text,
                          "; step-dependent plans take their safe path" if text == info.unknown_reason else "")
        calls.append((enter_parent(info, self.grid(main), tracker), tracker, info, main if view is None else None))

    def grid(self, main: Any) -> Optional[tuple]:
        """(frames, height, width) of the call's video tokens, from the model's patch embedding
        (the first Conv3d / Conv2d whose kernel equals its stride and whose input channels match
        the main input): Conv3d on [B, C, F, H, W]; Conv2d on [B, C, H, W] (one frame) or per
        frame on [B, F, C, H, W] (CogVideoX). None when there is no such patch embedding."""
        if not isinstance(main, torch.Tensor) or main.dim() not in (4, 5):
            return None
        if self.patch is None:
            self.patch = _find_patch_embedding(self.module(), main) or False
        conv = self.patch
        if conv is False:
            return None
        if isinstance(conv, torch.nn.Conv3d) and main.dim() == 5 and main.shape[1] == conv.in_channels:
            st, sh, sw = conv.stride
            return (main.shape[2] // st, main.shape[3] // sh, main.shape[4] // sw)
        if isinstance(conv, torch.nn.Conv2d):
            sh, sw = conv.stride
            if main.dim() == 4 and main.shape[1] == conv.in_channels:
                return (1, main.shape[2] // sh, main.shape[3] // sw)
            if main.dim() == 5 and main.shape[2] == conv.in_channels:
                return (main.shape[1], main.shape[3] // sh, main.shape[4] // sw)
        return None

    def leave(self, output: Any) -> None:
        calls = self._calls.get(current_caller())
        if not calls:
            return
        token, tracker, info, unsampled = calls.pop()
        exit_parent(token)
        out = _prediction(output)
        main = unsampled
        if self.view is None and isinstance(main, torch.Tensor) and out is not None:
            self.view = latent_view(tuple(main.shape), tuple(out.shape))
        if self.view is not None and out is not None:
            if main is not None:
                tracker.record_output(info, latent_sample(main, self.view), latents=True)
            tracker.record_output(info, latent_sample(out, self.view))

    def new_generation(self, caller: Optional[Caller]) -> None:
        with self._lock:
            trackers = list(self._trackers.items())
        for owner, tracker in trackers:
            if caller is None or owner is caller:
                tracker.reset()


def _find_patch_embedding(model: Optional[torch.nn.Module], main: torch.Tensor) -> Optional[torch.nn.Module]:
    if model is None:
        return None
    channels = {main.shape[1], main.shape[2]} if main.dim() == 5 else {main.shape[1]}
    for module in model.modules():
        if (isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)) and module.in_channels in channels
                and tuple(module.kernel_size) == tuple(module.stride)):
            return module
    return None


def _prediction(output: Any) -> Optional[torch.Tensor]:
    """The model's prediction in its output: a tensor, the first tensor of a tuple, or `.sample`."""
    if isinstance(output, torch.Tensor):
        return output
    sample = getattr(output, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    if isinstance(output, (tuple, list)):
        return next((o for o in output if isinstance(o, torch.Tensor)), None)
    return None


_HOOKS: "weakref.WeakKeyDictionary[torch.nn.Module, StepHooks]" = weakref.WeakKeyDictionary()


def _pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
    hooks = _HOOKS.get(module)
    if hooks is not None:
        hooks.enter(args, kwargs)


def _post_hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
    hooks = _HOOKS.get(module)
    if hooks is not None:
        hooks.leave(output)


# Run eagerly even when the module itself is compiled in place (`module.compile()`); the module-level
# names are the wrapped functions, so the hooks pickle by name.
_pre_hook = torch._dynamo.disable(_pre_hook)
_post_hook = torch._dynamo.disable(_post_hook)


def track_steps(model: torch.nn.Module) -> torch.nn.Module:
    """Follow `model`'s calls so that its compiled regions share the step of each call; returns
    `model`. Idempotent. Needed with regional compilation (`compile_repeated_blocks`); harmless
    on a model compiled as a whole. Raises TypeError when `model` is not an `nn.Module`."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"track_steps needs a torch.nn.Module, got {type(model).__name__}")
    name_parameters(getattr(model, "_orig_mod", model))  # each block knows which block it is
    if model not in _HOOKS:
        hooks = _HOOKS[model] = StepHooks(model)
        # a deep copy or an unpickled tracked model carries the hooks already: register them once
        if _pre_hook not in model._forward_pre_hooks.values():
            model.register_forward_pre_hook(_pre_hook, with_kwargs=True)
        if _post_hook not in model._forward_hooks.values():
            model.register_forward_hook(_post_hook, with_kwargs=True, always_call=True)
        on_new_generation(model, hooks.new_generation)
    return model


__all__ = ["StepHooks", "track_steps"]
