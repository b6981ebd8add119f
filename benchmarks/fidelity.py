"""Quality of each ditaccel variant on the project's trained fidelity model (issue 6).

For each variant, generate the same labels and seeds with the dense model and with the
accelerated settings, and report PSNR and SSIM of the generated frames, the cosine similarity of
the final samples, how much of the model's real attention mass the sparse masks keep, and the
steps the cache reused. Writes a JSON file and PNG strips (dense row, then each variant) that a
person can look at.

    python benchmarks/fidelity.py                      # CPU is fine (about a minute per variant)
    python benchmarks/fidelity.py --steps 30 --labels 8 --out benchmarks/out/fidelity.json

Baseline: the same fidelity model run eagerly (dense attention, no cache), same noise.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

import ditcompile
from ditcompile.config import resolve_config
from ditcompile.fileio import atomic_write_text
from ditcompile.fidelity.metrics import cosine, psnr, ssim
from ditcompile.fidelity.attention import capture_attention
from ditcompile.fidelity.model import compute_device_dtype, load_fidelity_model, sample, text_embeddings, token_grid
from ditcompile.fidelity.videos import generate_videos, label_name, save_strip
from ditcompile.geometry import TokenLayout
from ditcompile.masks import POLICIES, get_policy, pattern_token_rows

BLOCK = 16  # mask block for the fidelity model's 512-token sequence (8 frames x 8 x 8 tokens)
BASE = {"compiler": "eager", "strict": True, "graph.text_position": "none"}


# Parameters suited to the fidelity model's 8x8x8 token grid and 16-token blocks; a policy without
# an entry here runs with its defaults (every policy of the registry gets a row).
POLICY_PARAMS = {
    "radial": {"decay_factor": 1.0, "sink": True},
    "spatial_temporal": {"frame_window": 1, "position_window": 8},
    "antidiagonal": {"stride": 4, "threshold": 0.9},
    "tile": {"tile_size": [2, 4, 4], "window": [3, 3, 3]},
}


def variants(grid) -> dict[str, dict]:
    sparse = {"sparse.enabled": True, "sparse.block_size": BLOCK, "sparse.dense_steps": 0}

    def policy(name: str, **extra) -> dict:
        return {**sparse, "sparse.policy": name, f"sparse.{name}": POLICY_PARAMS.get(name, {}), **extra}

    return {
        "dense (ditaccel)": {},
        **{f"sparse {name}": policy(name) for name in POLICIES},
        "sparse radial + 4 dense steps": policy("radial", **{"sparse.dense_steps": 4}),
        "sparse spatial_temporal + 4 dense": policy("spatial_temporal", **{"sparse.dense_steps": 4}),
        "sparse radial + guard": policy("radial", **{"sparse.guard_every": 5, "sparse.guard_budget": 0.05}),
        "int8 attention": {"attention.quant": "int8"},
        "cache fbcache 0.05": {"cache.enabled": True, "cache.policy": "fbcache", "cache.threshold": 0.05},
        "cache fbcache 0.1 + taylor": {"cache.enabled": True, "cache.policy": "fbcache", "cache.threshold": 0.1,
                                       "cache.taylor_order": 1},
        "all (radial + int8 + cache)": {**sparse, "sparse.policy": "radial", "sparse.dense_steps": 4,
                                        "attention.quant": "int8", "cache.enabled": True, "cache.policy": "fbcache",
                                        "cache.threshold": 0.05},
    }


def attention_probs(model, labels, seed: int = 7) -> list[torch.Tensor]:
    """Self-attention probabilities [B, heads, N, N] per block, on noised real videos at t = 0.5."""
    videos = generate_videos(len(labels), seed=seed, labels=torch.as_tensor(labels)).videos
    noise = torch.randn(videos.shape, generator=torch.Generator().manual_seed(seed))
    x = 0.5 * videos + 0.5 * noise
    device, dtype = compute_device_dtype(model)
    with torch.no_grad(), capture_attention(model) as store:
        model(hidden_states=x.to(device, dtype), timestep=torch.full((len(labels),), 500.0, device=device),
              encoder_hidden_states=text_embeddings(labels, device=device, dtype=dtype))
    return [p.cpu() for p in store]


def mass_kept(options: dict, grid, probs: list[torch.Tensor]):
    """Fraction of the real attention mass inside a policy's static patterns (None if the policy
    has none: its blocks are chosen from the data)."""
    cfg = resolve_config({**BASE, **options}).sparse
    if not cfg.enabled:
        return None
    policy = get_policy(cfg.policy)
    patterns = policy.static_patterns(TokenLayout.of(tuple(grid)), BLOCK, cfg.params_for(cfg.policy), "cpu")
    if not patterns:
        return None
    rows = torch.arange(grid[0] * grid[1] * grid[2])
    allowed = [pattern_token_rows(p, rows)[0, 0].float() for p in patterns]  # each [N, N]
    kept = []
    for layer in probs:  # [B, H, N, N]; several patterns (spatial/temporal): each head keeps its better one
        per_mask = torch.stack([(layer * a).sum(-1).mean(-1) for a in allowed])  # [masks, B, H]
        kept.append(per_mask.max(0).values.mean().item())
    return sum(kept) / len(kept)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--labels", type=int, default=4, help="how many labels (one video each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--weights", help="weights file (default: the shipped fidelity_wan.safetensors)")
    parser.add_argument("--only", action="append", help="run only variants whose name contains this")
    parser.add_argument("--out", default="benchmarks/out/fidelity.json")
    args = parser.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        model = load_fidelity_model(args.weights, device=device)
    except (OSError, ValueError) as err:  # missing file, WeightsFileError (corrupt, wrong tensors, checksum)
        print(f"fidelity.py: cannot load the fidelity model: {err}", file=sys.stderr)
        return 2
    grid = token_grid()
    labels = [(3 * i + 1) % 16 for i in range(args.labels)]
    out_dir = Path(args.out).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        dense = sample(model, labels, steps=args.steps, seed=args.seed)
    probs = attention_probs(model, labels)
    results, strips = [], {"dense (eager)": dense}
    for name, options in variants(grid).items():
        if args.only and not any(o in name for o in args.only):
            continue
        torch._dynamo.reset()
        ditcompile.new_generation(model)
        start = time.perf_counter()
        compiled = torch.compile(model, backend="ditaccel", options={**BASE, **options})
        with torch.no_grad():
            videos = sample(model, labels, steps=args.steps, seed=args.seed, transformer_call=compiled)
        seconds = time.perf_counter() - start
        row = {"variant": name, "psnr_db": psnr(videos, dense), "ssim": ssim(videos, dense),
               "cosine": cosine(videos, dense), "mass_kept": mass_kept(options, grid, probs), "seconds": seconds}
        cache = ditcompile.cache_stats(model) if options.get("cache.enabled") else []
        if cache and cache[0]["current"]:
            branch = cache[0]["current"][0]
            row["steps_computed"], row["steps_reused"] = branch["computed"], branch["reused"]
        sparse = ditcompile.sparse_stats(model) if options.get("sparse.enabled") else []
        if sparse and sparse[0]["current"]:
            sites = sparse[0]["current"].values()
            densities = [s["density"] for s in sites if s["density"] is not None]
            row["density"] = sum(densities) / len(densities) if densities else None
            row["guard_dense_sites"] = sum(s["dense_from_step"] is not None for s in sites)
        results.append(row)
        strips[name] = videos

    print(f"fidelity model, {len(labels)} videos, {args.steps} steps, device {device}; baseline: dense eager")
    head = f"{'variant':<30}{'PSNR dB':>9}{'SSIM':>8}{'cosine':>9}{'mass kept':>11}{'density':>9}{'reused':>8}"
    print(head)
    print("-" * len(head))
    def fmt(value, spec: str) -> str:
        width = int("".join(c for c in spec.split(".")[0] if c.isdigit()) or 0)
        return format(value, spec) if isinstance(value, (int, float)) else "-".rjust(width)
    for r in results:
        print(f"{r['variant']:<30}{fmt(r['psnr_db'], '9.2f')}{fmt(r['ssim'], '8.4f')}{fmt(r['cosine'], '9.5f')}"
              f"{fmt(r['mass_kept'], '11.3f')}{fmt(r.get('density'), '9.3f')}{fmt(r.get('steps_reused'), '8d')}")
    strip_paths = []
    for i, label in enumerate(labels[:2]):
        path = out_dir / f"fidelity_strip_label{label}.png"
        save_strip(torch.stack([v[i].cpu() for v in strips.values()]), path, scale=3, gap=0)
        strip_paths.append(str(path))
    meta = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name() if device == "cuda" else
            platform.processor() or "cpu", "torch": torch.__version__, "steps": args.steps, "labels": labels,
            "label_names": [label_name(label) for label in labels], "rows": list(strips), "strips": strip_paths,
            "command": " ".join(sys.argv)}
    atomic_write_text(args.out, json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"wrote {args.out} and {', '.join(strip_paths)} (rows: {', '.join(strips)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
