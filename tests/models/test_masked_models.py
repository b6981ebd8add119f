"""Tiny HunyuanVideo with padded and unpadded prompts (issue 13, first part): every attention
site -- the joint attention with its [B, 1, 1, S] key-padding mask and the token refiner with its
[B, 1, T, T] mask -- is rewritten, and outputs equal eager."""
import random

import pytest
import torch

import ditcompile
from ditcompile.models import load_model_spec, run_model

pytest.importorskip("diffusers")
RNG = random.Random()


def _inputs(spec, padded: bool):
    inputs = spec.make_inputs(batch_size=2, seed=RNG.randrange(1000), dtype=torch.float32, device="cpu")
    mask = torch.ones_like(inputs["encoder_attention_mask"])
    if padded:  # sample 0 keeps some prompt tokens, sample 1 fewer
        text = mask.shape[1]
        mask[0, RNG.randint(2, text - 1):] = False
        mask[1, RNG.randint(1, text - 2):] = False
    return dict(inputs, encoder_attention_mask=mask)


@pytest.mark.parametrize("padded", [False, True])
def test_hunyuan_video_masked_sites_rewritten_and_exact(padded):
    spec = load_model_spec("hunyuan_video-tiny")
    torch.manual_seed(RNG.randrange(2**31))
    model = spec.build().eval()
    inputs = _inputs(spec, padded)
    report = ditcompile.explain(model, **inputs, options={"preset": "hunyuan_video", "compiler": "eager"})
    summary = report.to_dict()
    sites = [s for g in summary["graphs"] for s in g["attention"]]
    assert sites and all(s["plan"] != "original" for s in sites), [(s["module"], s.get("note")) for s in sites]
    plans = {s["module"]: s["plan"] for s in sites}
    assert plans["transformer_blocks.0.attn"] == "dense/sdpa+key-padding mask"
    assert plans["context_embedder.token_refiner.refiner_blocks.0.attn"] == "dense/sdpa+dense mask"
    with torch.no_grad():
        ref = run_model(model, inputs)
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="ditaccel",
                                 options={"preset": "hunyuan_video", "compiler": "eager", "strict": True})
        out = run_model(compiled, inputs)
    rel = ((out - ref).norm() / ref.norm()).item()
    assert rel < 1e-5, rel


@pytest.mark.parametrize("padded", [False, True])
def test_qwen_image_with_encoder_hidden_states_mask(padded):
    """QwenImage builds a [B, 1, 1, T + N] bool key-padding mask from encoder_hidden_states_mask."""
    diffusers = pytest.importorskip("diffusers")
    if not hasattr(diffusers, "QwenImageTransformer2DModel"):
        pytest.skip("this diffusers has no QwenImageTransformer2DModel")
    torch.manual_seed(RNG.randrange(2**31))
    model = diffusers.QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, axes_dims_rope=(4, 6, 6)).eval()
    batch, text, h, w = 2, RNG.randint(5, 9), 4, 6
    mask = torch.ones(batch, text, dtype=torch.bool)
    if padded:
        mask[1, RNG.randint(1, text - 1):] = False
    inputs = dict(hidden_states=torch.randn(batch, h * w, 16), encoder_hidden_states=torch.randn(batch, text, 32),
                  encoder_hidden_states_mask=mask, timestep=torch.full((batch,), 0.5), img_shapes=[(1, h, w)] * batch,
                  return_dict=False)
    sites = [s for g in ditcompile.explain(model, **inputs, options={"compiler": "eager"}).to_dict()["graphs"]
             for s in g["attention"]]
    assert len(sites) == 2 and all(s["plan"] == "dense/sdpa+key-padding mask" for s in sites), sites
    with torch.no_grad():
        ref = model(**inputs)[0]
        torch._dynamo.reset()
        out = torch.compile(model, backend="ditaccel", options={"compiler": "eager", "strict": True})(**inputs)[0]
    assert ((out - ref).norm() / ref.norm()).item() < 1e-5


def test_skyreels_v2_diffusion_forcing_block_causal_mask():
    """SkyReels-V2 with `_set_ar_attention`: self-attention carries a [1, 1, N, N] block-causal bool
    mask (passed through exactly for now; the block-sparse schedule is the next step)."""
    diffusers = pytest.importorskip("diffusers")
    if not hasattr(diffusers, "SkyReelsV2Transformer3DModel"):
        pytest.skip("this diffusers has no SkyReelsV2Transformer3DModel")
    torch.manual_seed(RNG.randrange(2**31))
    model = diffusers.SkyReelsV2Transformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
        text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        eps=1e-6, rope_max_seq_len=32).eval()
    model._set_ar_attention(2)  # diffusion forcing: groups of 2 latent frames attend causally
    batch, frames = 2, 4
    inputs = dict(hidden_states=torch.randn(batch, 4, frames, 8, 8), encoder_hidden_states=torch.randn(batch, 6, 32),
                  timestep=torch.stack([torch.full((frames,), 500.0), torch.linspace(900.0, 100.0, frames)]),
                  enable_diffusion_forcing=True, return_dict=False)
    sites = [s for g in ditcompile.explain(model, **inputs, options={"compiler": "eager"}).to_dict()["graphs"]
             for s in g["attention"]]
    plans = sorted({(s["kind"], s["plan"]) for s in sites})
    assert len(sites) == 4 and plans == [("cross", "dense/sdpa"), ("self", "dense/sdpa+dense mask")], sites
    with torch.no_grad():
        ref = model(**inputs)[0]
        torch._dynamo.reset()
        out = torch.compile(model, backend="ditaccel", options={"compiler": "eager", "strict": True})(**inputs)[0]
    assert ((out - ref).norm() / ref.norm()).item() < 1e-5
