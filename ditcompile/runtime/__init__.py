"""Runtime state across calls: denoising-step tracking and per-model state for passes."""
from .state import REGISTRY, ModelRuntime, StepInfo, StepTracker, current_step, generation, new_generation

__all__ = ["REGISTRY", "ModelRuntime", "StepInfo", "StepTracker", "current_step", "generation", "new_generation"]
