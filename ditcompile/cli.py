"""The `ditaccel` command.

    ditaccel demo    [--model wan2.1-tiny] [--steps 10] [--compiler inductor|eager] [--device auto]
    ditaccel explain --model wan2.1-tiny [--preset NAME] [-o key=value ...] [--json]
    ditaccel masks   --preset wan2.1 [--resolution 480x832x81 | --grid 21x30x52] [-o sparse.policy=tile]
    ditaccel presets

`--model` takes a built-in example model (`ditcompile.models`) or `package.module:NAME`, an
object with `build()`, `make_inputs(...)` and `preset` (e.g. a `ditcompile.models.TinyModel`).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from .config import ConfigError, available_presets, preset_metadata, resolve_config
from .demo import run_demo
from .explain import explain
from .geometry import TextSegment, TokenLayout
from .masks import draw_pattern, get_policy
from .models import list_tiny_models, load_model_spec

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
    if preset:
        options["preset"] = preset
    for key, value in args.option or []:
        options[key] = value
    return options


def _model_spec(parser: argparse.ArgumentParser, name: str) -> Any:
    """The model `--model` names; a parser error listing the built-in names otherwise."""
    try:
        return load_model_spec(name)
    except KeyError:
        reason = "not a built-in model"
    except ValueError as err:
        reason = str(err)
    parser.error(f"unknown model {name!r} ({reason}); choose from {sorted(list_tiny_models())} "
                 "or give package.module:NAME")


def cmd_demo(args: argparse.Namespace) -> int:
    result = run_demo(args.model_spec, steps=args.steps, compiler=args.compiler, device=args.device,
                      options={k: v for k, v in (args.option or [])})
    print(result.report)
    print()
    print(result.format())
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    spec = args.model_spec
    model = spec.build()
    inputs = spec.make_inputs(batch_size=args.batch, seed=0, dtype=torch.float32, device="cpu")
    report = explain(model, **inputs, options=_options(args, spec.preset))
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 0


def grid_for_resolution(preset: str, resolution: str) -> tuple[int, int, int]:
    """Video tokens after the VAE and patching, e.g. wan2.1 at 480x832x81 -> (21, 30, 52)."""
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
    policy = get_policy(sparse.policy)
    statics = policy.static_patterns(TokenLayout.of(grid, text), sparse.block_size, sparse.params_for(policy.name),
                                     "cpu")
    if not statics:
        print(f"ditaccel masks: policy {sparse.policy!r} chooses blocks from each call's q and k (data-dependent); "
              "there is no static mask to draw", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = Path(args.preset).name.removesuffix(".toml") if args.preset else "grid"
    stem = f"{name}_{sparse.policy}_{grid[0]}x{grid[1]}x{grid[2]}"
    patterns = {stem if len(statics) == 1 else f"{stem}_{p.name}": p for p in statics}
    for name, pattern in patterns.items():
        path = out_dir / f"{name}.png"
        draw_pattern(pattern, path, title=name)
        print(f"{path}: grid {grid[0]}x{grid[1]}x{grid[2]}, text {text_tokens}, block {sparse.block_size}, "
              f"density {pattern.density:.3f}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    for name in available_presets():
        meta = preset_metadata(name)
        print(f"{name:<15} {meta.get('description', '')}  [{', '.join(meta.get('models', []))}]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ditaccel", description="torch.compile backend for Diffusion Transformers")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the backend's report (INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="denoising loop on a tiny random DiT: eager vs ditaccel")
    demo.add_argument("--model", default="wan2.1-tiny",
                      help=f"a built-in model ({', '.join(list_tiny_models())}) or package.module:NAME")
    demo.add_argument("--steps", type=int, default=10)
    demo.add_argument("--compiler", choices=["inductor", "eager"], default="inductor")
    demo.add_argument("--device", default="auto", help="auto (GPU if present), cpu or cuda")
    demo.add_argument("-o", "--option", action="append", type=_parse_override, metavar="KEY=VALUE",
                      help="backend option, e.g. -o attention.enabled=false")
    demo.set_defaults(func=cmd_demo)

    explain = sub.add_parser("explain", help="table of attention sites and what the passes do to them")
    explain.add_argument("--model", default="wan2.1-tiny",
                         help=f"a built-in model ({', '.join(list_tiny_models())}) or package.module:NAME")
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
    try:
        if args.command in ("demo", "explain"):
            args.model_spec = _model_spec(parser, args.model)
        return args.func(args)
    except ConfigError as err:
        print(f"ditaccel: bad option: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
