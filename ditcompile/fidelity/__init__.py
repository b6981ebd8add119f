"""The fidelity model: a small trained video DiT whose attention has real structure.

Randomly initialised transformers attend almost uniformly, so sparse-attention and
step-caching methods cannot be judged on them. This package ships a small diffusers
``WanTransformer3DModel`` trained (``scripts/train_fidelity.py``) with flow matching on
procedurally generated pixel videos (no VAE), and the pieces to use it:

* :mod:`.videos` - the deterministic video generator (moving, rotating, colour-changing shapes
  on a panning texture background), labels, PNG strips;
* :mod:`.model` - ``build_fidelity_model``, ``load_fidelity_model`` (the shipped weights),
  ``text_embeddings`` (the tiny prompt for a label) and ``sample`` (a rectified-flow Euler
  sampler taking an optional accelerated ``transformer_call``);
* :mod:`.attention` - the self-attention probabilities and how local they are;
* :mod:`.metrics` - PSNR, SSIM and cosine of a generation against a reference generation.

Quick use::

    from ditcompile.fidelity import load_fidelity_model, sample
    model = load_fidelity_model()
    videos = sample(model, labels=[0, 5], steps=20, seed=0)              # eager
    fast = sample(model, labels=[0, 5], steps=20, seed=0,
                  transformer_call=torch.compile(model, backend="ditaccel"))
"""
from .model import (
    FIDELITY_CONFIG,
    NULL_LABEL,
    WEIGHTS_PATH,
    WeightsChecksumError,
    WeightsFileError,
    build_fidelity_model,
    flow_matching_loss,
    load_fidelity_model,
    sample,
    text_embeddings,
    token_grid,
)
from .metrics import cosine, psnr, ssim
from .videos import NUM_CLASSES, generate_videos, label_name, label_of, save_gif, save_strip

__all__ = [
    "FIDELITY_CONFIG", "NULL_LABEL", "NUM_CLASSES", "WEIGHTS_PATH", "build_fidelity_model", "flow_matching_loss",
    "generate_videos", "label_name", "label_of", "load_fidelity_model", "sample", "save_gif", "save_strip", "text_embeddings",
    "token_grid", "WeightsChecksumError", "WeightsFileError", "psnr", "ssim", "cosine",
]
