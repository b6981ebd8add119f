"""The `ditaccel` command.

    ditaccel demo    [--model wan2.1-tiny] [--steps 10] [--compiler inductor|eager] [--device auto]
    ditaccel explain --model wan2.1-tiny [--preset NAME] [-o key=value ...] [--json]
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
