"""The `ditaccel` command.

    ditaccel demo    [--model wan2.1-tiny] [--steps 10] [--compiler inductor|eager] [--device auto]
    ditaccel explain --model wan2.1-tiny [--preset NAME] [-o key=value ...] [--json]
    ditaccel masks   --preset wan2.1 [--resolution 480x832x81 | --grid 21x30x52] [-o sparse.policy=tile]
    ditaccel presets
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Optional, Sequence

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


def _parse_override(text: str) -> tuple[str, Any]:
    """'graph.token_grid=[1,4,4]' -> ('graph.token_grid', [1, 4, 4]); bare words are strings."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"option {text!r} must look like key=value, e.g. compiler=eager")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def _options(args: argparse.Namespace, default_preset: Optional[str]) -> dict:
    options: dict = {}
    preset = args.preset or default_preset
    if preset and preset != "manual":
        options["preset"] = preset
    for key, value in args.option or []:
        options[key] = value
    return options


def _model_names() -> list[str]:
    from .models.zoo import TINY_MODELS

    return sorted(TINY_MODELS)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    result = run_demo(args.model, steps=args.steps, compiler=args.compiler, device=args.device,
                      options={k: v for k, v in (args.option or [])})
    print(result.report)
    print()
    print(result.format())
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    import torch

    from .explain import explain
    from .models.zoo import get_tiny_model

    spec = get_tiny_model(args.model)
    model = spec.build()
    inputs = spec.make_inputs(batch_size=args.batch, seed=0, dtype=torch.float32, device="cpu")
    report = explain(model, **inputs, options=_options(args, spec.preset))
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 0


def grid_for_resolution(preset: str, resolution: str) -> tuple[int, int, int]:
    """Video tokens after the VAE and patching, e.g. wan2.1 at 480x832x81 -> (21, 30, 52)."""
    from .config import ConfigError, preset_metadata

    meta = preset_metadata(preset)
    try:
        height, width, frames = (int(x) for x in resolution.lower().split("x"))
    except ValueError as err:
        raise ConfigError(f"--resolution must look like HEIGHTxWIDTHxFRAMES (e.g. 480x832x81), got {resolution!r}") from err
    if "vae_stride" not in meta or "patch_size" not in meta:
        raise ConfigError(f"preset {preset!r} has no vae_stride/patch_size; give --grid FxHxW instead")
    (vt, vh, vw), (pt, ph, pw) = meta["vae_stride"], meta["patch_size"]
    return ((frames - 1) // vt + 1) // pt, height // vh // ph, width // vw // pw


def cmd_masks(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .config import ConfigError, preset_metadata, resolve_config
    from .graph.sites import TextSegment
    from .masks import draw_pattern, generate_spatial_mask, generate_temporal_mask
    from .plan import AttentionPlan
    from .runtime.sparse import static_pattern

    config = resolve_config(_options(args, None))
    meta = preset_metadata(args.preset) if args.preset else {}
    if args.grid:
        try:
            grid = tuple(int(x) for x in args.grid.lower().split("x"))
            assert len(grid) == 3
        except (ValueError, AssertionError) as err:
            raise ConfigError(f"--grid must look like FRAMESxHEIGHTxWIDTH (e.g. 21x30x52), got {args.grid!r}") from err
    elif args.preset:
        grid = grid_for_resolution(args.preset, args.resolution or meta.get("default_resolution", ""))
    else:
        raise ConfigError("give --preset (with optional --resolution) or --grid")
    text_tokens = args.text if args.text is not None else int(meta.get("text_tokens", 0))
    position = config.graph.text_position if config.graph.text_position in ("before", "after") else "after"
    text = TextSegment(position, text_tokens, "cli") if text_tokens else None
    sparse = config.sparse
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{args.preset or 'grid'}_{sparse.policy}_{grid[0]}x{grid[1]}x{grid[2]}"
    if sparse.policy in ("radial", "tile"):
        plan = AttentionPlan(method="sparse", backend="triton", policy=sparse.policy, grid=grid,
                             params=json.dumps(sparse.params_for(sparse.policy)), block_size=sparse.block_size,
                             text_position=text.position if text else "", text_length=text_tokens)
        patterns = {stem: static_pattern(plan, "cpu")}
    elif sparse.policy == "spatial_temporal":
        params = sparse.params_for("spatial_temporal")
        common = dict(block_m=sparse.block_size, block_n=sparse.block_size, sink=bool(params.get("sink", False)))
        patterns = {
            f"{stem}_spatial": generate_spatial_mask(grid, text, frame_window=int(params.get("frame_window", 0)), **common),
            f"{stem}_temporal": generate_temporal_mask(grid, text, position_window=int(params.get("position_window", 0)),
                                                       **common),
        }
    else:
        print(f"ditaccel masks: policy {sparse.policy!r} chooses blocks from each call's q and k (data-dependent); "
              "there is no static mask to draw", file=sys.stderr)
        return 2
    for name, pattern in patterns.items():
        path = out_dir / f"{name}.png"
        draw_pattern(pattern, path, title=name)
        print(f"{path}: grid {grid[0]}x{grid[1]}x{grid[2]}, text {text_tokens}, block {sparse.block_size}, "
              f"density {pattern.density:.3f}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from .config import available_presets, preset_metadata

    for name in available_presets():
        meta = preset_metadata(name)
        print(f"{name:<15} {meta.get('description', '')}  [{', '.join(meta.get('models', []))}]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ditaccel", description="torch.compile backend for Diffusion Transformers")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the backend's report (INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="denoising loop on a tiny random DiT: eager vs ditaccel")
    demo.add_argument("--model", default="wan2.1-tiny", help="a tiny model name (see `ditaccel explain --help`)")
    demo.add_argument("--steps", type=int, default=10)
    demo.add_argument("--compiler", choices=["inductor", "eager"], default="inductor")
    demo.add_argument("--device", default="auto", help="auto (GPU if present), cpu or cuda")
    demo.add_argument("-o", "--option", action="append", type=_parse_override, metavar="KEY=VALUE",
                      help="backend option, e.g. -o attention.enabled=false")
    demo.set_defaults(func=cmd_demo)

    explain = sub.add_parser("explain", help="table of attention sites and what the passes do to them")
    explain.add_argument("--model", default="wan2.1-tiny", help="tiny model name")
    explain.add_argument("--preset", help="preset name or TOML path (default: the model's preset)")
    explain.add_argument("--batch", type=int, default=1)
    explain.add_argument("-o", "--option", action="append", type=_parse_override, metavar="KEY=VALUE",
                         help="backend option, e.g. -o graph.token_grid=[1,8,8]")
    explain.add_argument("--json", action="store_true", help="print JSON instead of a table")
    explain.set_defaults(func=cmd_explain)

    masks = sub.add_parser("masks", help="draw a preset's sparse-attention mask as PNG, with its density")
    masks.add_argument("--preset", help="preset name or TOML path (its [sparse] section and video geometry)")
    masks.add_argument("--resolution", help="HEIGHTxWIDTHxFRAMES of the generated video (default: the preset's)")
    masks.add_argument("--grid", help="FRAMESxHEIGHTxWIDTH of the tokens, instead of --resolution")
    masks.add_argument("--text", type=int, help="text tokens in joint attention (default: the preset's)")
    masks.add_argument("--out", default="masks", help="output folder (default: ./masks)")
    masks.add_argument("-o", "--option", action="append", type=_parse_override, metavar="KEY=VALUE",
                       help="e.g. -o sparse.policy=tile -o sparse.block_size=64")
    masks.set_defaults(func=cmd_masks)

    presets = sub.add_parser("presets", help="list the shipped presets")
    presets.set_defaults(func=cmd_presets)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    from .config import ConfigError

    try:
        if args.command in ("demo", "explain"):
            names = _model_names()
            if args.model not in names:
                parser.error(f"unknown model {args.model!r}; choose from {names}")
        return args.func(args)
    except ConfigError as err:
        print(f"ditaccel: bad option: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
