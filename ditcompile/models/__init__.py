"""Built-in example models (tiny, randomly initialised diffusers DiTs) for the CLI and quick trials."""
from .tiny import TINY_MODELS, TinyModel, get_tiny_model, list_tiny_models, load_model_spec, run_model

__all__ = ["TINY_MODELS", "TinyModel", "get_tiny_model", "list_tiny_models", "load_model_spec", "run_model"]
