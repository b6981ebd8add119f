"""The `ditaccel` command.

    ditaccel [-v] demo    [--labels 1,10] [--steps 10] [--seed 0] [--variants eager,compile,cache,sparse,int8,all]
                          [--out ditaccel-demo] [--device auto] [--dtype auto] [--compiler auto] [--rounds 3] [--quick]
    ditaccel [-v] demo    --model wan2.1-tiny [--steps 10] [--compiler inductor|eager] [--device auto]
    ditaccel [-v] explain --model wan2.1-tiny [--preset NAME] [--batch 1] [-o key=value ...] [--json]
    ditaccel [-v] masks   --preset wan2.1 [--resolution 480x832x81 | --grid 21x30x52] [--text N] [--out DIR]
                          [-o sparse.policy=tile]
    ditaccel [-v] presets
    ditaccel [-v] autotune (--model NAME | --preset NAME) [--resolution 480x832x81 | --height H --width W
                          --frames F] [--batch 1] [--dtype auto] [--device auto] [--budget-s 170]
                          [--cache-dir DIR] [-o key=value ...] [--json]
    ditaccel [-v] autotune --show | --clear | --export FILE | --import FILE  [--device auto] [--cache-dir DIR]

`ditaccel demo` runs the trained fidelity model (real videos, one table row per ditaccel family);
with `--model` it runs the plumbing demo on a random tiny model instead. `--model` takes a built-in example model (`ditcompile.models`) or `package.module:NAME`, an
object with `build()`, `make_inputs(...)` and `preset` (e.g. a `ditcompile.models.TinyModel`).

Every argument is checked before anything runs (argparse types and choices below; `--preset`
and the `-o` overrides through `resolve_config`). Exit status: 0 done, 1 a run-time failure (no
CUDA, a file that cannot be written, a missing optional package, ...), 2 a usage error (a bad
argument or option), 130 interrupted. Errors are one line on stderr; `-v/--verbose` adds the
traceback (and logs the backend's report).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from .config import ConfigError, available_presets, preset_metadata, resolve_config
from .demo import (DEVICE_PATTERN, DTYPES, VARIANT_KEYS, check_labels, resolve_device, run_demo,
                   run_trained_demo, write_outputs)
from .demo.images import prepare_out_dir, stale_files
from .demo.trained import COMPILERS, DEFAULT_LABELS, MAX_SEED
from .demo.variants import DITACCEL_BASE, QUICK_KEYS
from .fidelity import NUM_CLASSES, label_name
from .explain import explain
from .geometry import TextSegment, TokenLayout
from .masks import draw_pattern, get_policy
from .models import list_tiny_models, load_model_spec
from .autotune import Autotuner, TuneStoreError
from .demo.devices import DTYPES as _DEVICE_DTYPES
from .tuning import (cache_dict, cache_table, latent_for_resolution, preset_problems, trace_model, tune_recorded,
                     winners_table)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# Optional third-party packages a command may need: import name -> what to pip install.
OPTIONAL_PACKAGES = {"diffusers": "ditaccel[diffusers]", "PIL": "pillow", "safetensors": "safetensors",
                     "triton": "ditaccel[triton]", "matplotlib": "matplotlib"}


class UsageError(Exception):
    """A bad argument (or combination of arguments) found after parsing: exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line ("ditaccel demo: error: argument --steps: ...
    (see ditaccel demo --help)") and exit status 2, without the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


# --------------------------------------------------------------------------------------------------
# Argument types: each returns the parsed value or raises argparse.ArgumentTypeError, which argparse
# reports as "argument --NAME: <message>" with exit status 2.
# --------------------------------------------------------------------------------------------------


def _integer(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text, 10)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a decimal integer >= 1.

    Raises:
        argparse.ArgumentTypeError: "must be an integer >= 1, got 0" (also for '1.5', 'abc').
    """
    return _integer(text, 1, "an integer >= 1")


def seed_int(text: str) -> int:
    """argparse type: a random seed, a decimal integer in [0, 2**63 - 1].

    Raises:
        argparse.ArgumentTypeError: "must be an integer in [0, 2**63 - 1], got ..." (also for 'abc').
    """
    value = _integer(text, 0, "an integer in [0, 2**63 - 1]")
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**63 - 1], got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: a decimal integer >= 0.

    Raises:
        argparse.ArgumentTypeError: "must be an integer >= 0, got -1" (also for '1.5', 'abc').
    """
    return _integer(text, 0, "an integer >= 0")


def float_in_range(low: Optional[float] = None, high: Optional[float] = None, *, low_open: bool = False,
                   high_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float in [low, high] (``low_open``/``high_open`` exclude the ends).

    ``None`` leaves that side unbounded. The type function raises ``argparse.ArgumentTypeError``
    ("must be a finite number in (0, 1], got nan") for NaN, infinities, non-numbers and values
    out of range.
    """
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    span = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be a finite number in {span}, got {text!r}") from None
        ok = math.isfinite(value)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            raise argparse.ArgumentTypeError(f"must be a finite number in {span}, got {text}")
        return value

    parse.__name__ = f"float in {span}"
    return parse


def _writable_dir(directory: Path) -> Optional[str]:
    """Why files cannot be created in ``directory`` (None when they can)."""
    if not directory.exists():
        return f"folder {directory} does not exist"
    if not directory.is_dir():
        return f"{directory} is not a folder"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"folder {directory} is not writable"
    return None


def output_file(text: str) -> Path:
    """argparse type: a file path that can be written: its folder exists and is writable, and the
    path is not a folder.

    Raises:
        argparse.ArgumentTypeError: naming the path and what is wrong.
    """
    if not text:
        raise argparse.ArgumentTypeError("must be a file path, got ''")
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder, not a file")
    problem = _writable_dir(path.parent if str(path.parent) else Path("."))
    if problem:
        raise argparse.ArgumentTypeError(f"cannot write {path}: {problem}")
    return path


def input_file(text: str) -> Path:
    """argparse type: an existing file to read. Raises argparse.ArgumentTypeError naming the path."""
    path = Path(text).expanduser()
    if not text or not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not an existing file")
    return path


def folder_arg(text: str) -> Path:
    """argparse type: a folder path (it may not exist yet); not a file. Raises
    argparse.ArgumentTypeError naming the path."""
    path = Path(text).expanduser()
    if not text:
        raise argparse.ArgumentTypeError("must be a folder path, got ''")
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} exists and is not a folder")
    return path


def output_dir(text: str) -> Path:
    """argparse type: a folder to write into: an existing writable folder, or a new one whose
    nearest existing parent is a writable folder (the command creates it).

    Raises:
        argparse.ArgumentTypeError: naming the path and what is wrong (e.g. a parent is a file).
    """
    if not text:
        raise argparse.ArgumentTypeError("must be a folder path, got ''")
    path = Path(text).expanduser()
    if path.exists():
        problem = _writable_dir(path)
    else:
        ancestor = path.parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        problem = _writable_dir(ancestor)
        if problem:
            problem = f"cannot create it: {problem}"
    if problem:
        raise argparse.ArgumentTypeError(f"cannot write into {path}: {problem}")
    return path


def device_arg(text: str) -> str:
    """argparse type: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``. (Whether that device exists is
    checked when the command runs: a missing GPU is a run-time failure, not a usage error.)

    Raises:
        argparse.ArgumentTypeError: listing the accepted spellings.
    """
    if not DEVICE_PATTERN.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N (N >= 0), got {text!r}")
    return text.strip()


def label_list(text: str) -> list[int]:
    """argparse type: comma-separated class labels of the fidelity model, e.g. '1,10'.

    Raises:
        argparse.ArgumentTypeError: a non-integer, a label outside [0, 16), or an empty list.
    """
    try:
        labels = [int(part, 10) for part in text.split(",")]
        return check_labels(labels)
    except ValueError:
        examples = ", ".join(f"{i} = {label_name(i)}" for i in (0, 1, 10))
        raise argparse.ArgumentTypeError(f"must be comma-separated labels in [0, {NUM_CLASSES}), e.g. 1,10 "
                                         f"({examples}), got {text!r}") from None


def variant_list(text: str) -> list[str]:
    """argparse type: comma-separated demo variants, e.g. 'cache,all'.

    Raises:
        argparse.ArgumentTypeError: an unknown or repeated variant, or an empty list.
    """
    keys = [part.strip() for part in text.split(",")]
    unknown = [k for k in keys if k not in VARIANT_KEYS]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(f"must be comma-separated variants from {','.join(VARIANT_KEYS)}, got {text!r}")
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"variant {repeated[0]!r} is given twice in {text!r}")
    return keys


def dims3(layout: str) -> Callable[[str], tuple[int, int, int]]:
    """An argparse type for three positive integers written AxBxC; ``layout`` names them in the
    messages (e.g. "FRAMESxHEIGHTxWIDTH"). Raises ``argparse.ArgumentTypeError`` otherwise."""

    def parse(text: str) -> tuple[int, int, int]:
        parts = text.lower().split("x")
        try:
            values = tuple(int(p, 10) for p in parts)
        except ValueError:
            values = ()
        if len(values) != 3 or min(values) < 1:
            raise argparse.ArgumentTypeError(f"must look like {layout} with three integers >= 1, got {text!r}")
        return values  # type: ignore[return-value]

    parse.__name__ = layout
    return parse


def option_override(text: str) -> tuple[str, Any]:
    """argparse type for ``-o KEY=VALUE``: 'graph.token_grid=[1,4,4]' -> ('graph.token_grid', [1, 4, 4]).

    The value is read as TOML (numbers, booleans, lists, quoted strings); anything else is a bare
    string. Whether the key and value are accepted is checked by ``resolve_config`` once all
    arguments are parsed. Raises ``argparse.ArgumentTypeError`` without ``=`` or with no key.
    """
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"option {text!r} must look like key=value, e.g. cache.threshold=0.2")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise argparse.ArgumentTypeError(f"option {text!r} has no key before '='")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError as err:
        if raw.strip()[:1] in ('[', '{', '"'):  # meant as a TOML list, table or string
            raise argparse.ArgumentTypeError(
                f"option {text!r}: the value is not valid TOML ({err}); write regular expressions in single "
                "quotes, e.g. attention.skip=['blocks\\.0\\..*']") from None
        value = raw
    return key.strip(), value


def model_arg(name: str) -> Any:
    """argparse type: a built-in model name or ``package.module:NAME`` -> the model spec.

    Raises:
        argparse.ArgumentTypeError: unknown name, or the module/attribute cannot be loaded.
    """
    try:
        return load_model_spec(name)
    except KeyError:
        reason = "not a built-in model"
    except ValueError as err:
        reason = str(err)
    raise argparse.ArgumentTypeError(f"unknown model {name!r} ({reason}); choose from "
                                     f"{sorted(list_tiny_models())} or give package.module:NAME")


# --------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------


def _overrides(args: argparse.Namespace) -> dict:
    return {key: value for key, value in (getattr(args, "option", None) or [])}


def _options(args: argparse.Namespace, default_preset: Optional[str]) -> dict:
    options: dict = {}
    preset = getattr(args, "preset", None) or default_preset
    if preset:
        options["preset"] = preset
    options.update(_overrides(args))
    return options


def _check_options(args: argparse.Namespace) -> None:
    """Validate --preset and the -o overrides up front (UsageError naming the argument)."""
    if not hasattr(args, "option"):
        return
    if getattr(args, "preset", None):
        try:
            resolve_config({"preset": args.preset})
        except ConfigError as err:
            raise UsageError(f"argument --preset: {err}") from err
    if args.command == "demo" and args.model is None:
        _check_trained_demo_args(args)
        options = {**DITACCEL_BASE, **_overrides(args)}
    elif args.command == "demo":
        _check_plumbing_demo_args(args)
        options = _options(args, args.model.preset)
        if args.compiler is not None and options.get("compiler", args.compiler) != args.compiler:
            raise UsageError(f"argument --compiler: --compiler {args.compiler} conflicts with "
                             f"-o compiler={options['compiler']}; give one")
        options.setdefault("compiler", args.compiler or "inductor")
    elif args.command == "explain":
        options = _options(args, args.model.preset)
    else:
        options = _options(args, None)
    try:
        args.config = resolve_config(options)
    except ConfigError as err:
        raise UsageError(f"argument -o/--option: {err}") from err


_TRAINED_ONLY = ("labels", "seed", "variants", "out", "dtype", "rounds")


def _check_trained_demo_args(args: argparse.Namespace) -> None:
    if "compiler" in _overrides(args):
        raise UsageError("argument -o/--option: the demo sets each variant's compiler; use --compiler "
                         f"{'|'.join(COMPILERS)} instead of -o compiler=...")


def _check_plumbing_demo_args(args: argparse.Namespace) -> None:
    given = [name for name in _TRAINED_ONLY if getattr(args, name) is not None] + (["quick"] if args.quick else [])
    if given:
        raise UsageError(f"argument --{given[0]}: applies to the trained-model demo (ditaccel demo without --model); "
                         "--model runs the plumbing demo, which takes --steps, --compiler, --device and -o")
    if args.compiler == "auto":
        raise UsageError("argument --compiler: the plumbing demo (--model) takes inductor or eager")


def cmd_demo(args: argparse.Namespace) -> int:
    if args.model is not None:
        device = resolve_device(args.device, hint="use --device cpu")
        result = run_demo(args.model, steps=args.steps or 10, compiler=args.compiler, device=device,
                          options=_overrides(args))
        print(result.report)
        print()
        print(result.format())
        return EXIT_OK
    out = prepare_out_dir(args.out if args.out is not None else Path("ditaccel-demo"))  # fail before the run
    result = run_trained_demo(
        labels=args.labels, steps=args.steps, seed=args.seed if args.seed is not None else 0, variants=args.variants,
        device=args.device, dtype=args.dtype or "auto", compiler=args.compiler or "auto", rounds=args.rounds,
        options=_overrides(args), quick=args.quick, progress=_progress)
    written = write_outputs(result, out, command=" ".join(["ditaccel", *map(shlex.quote, args.argv)]))
    print(result.format())
    stale = stale_files(out, written)
    if stale:
        print(f"note: {out} also holds {len(stale)} image(s) from an earlier run, not from this one: "
              f"{', '.join(stale[:6])}{' ...' if len(stale) > 6 else ''}")
    return EXIT_OK


class LineProgress:
    """Progress for a stderr that is not a terminal (a log file): one line per item."""

    def __init__(self, total: int, what: str = "ditaccel demo: generation") -> None:
        self.total, self.done, self.key, self.what = total, 0, "", what

    def set_postfix_str(self, key: str) -> None:
        self.key = key

    def update(self, n: int = 1) -> None:
        self.done += n
        print(f"{self.what} {self.done}/{self.total} ({self.key})", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def _progress(total: int, desc: str = "ditaccel demo: generations", unit: str = "gen",
              line: str = "ditaccel demo: generation") -> Any:
    """A tqdm bar on a terminal, one line per item otherwise."""
    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False)
    return LineProgress(total, line)


def cmd_explain(args: argparse.Namespace) -> int:
    spec = args.model
    model = spec.build()
    inputs = spec.make_inputs(batch_size=args.batch, seed=0, dtype=torch.float32, device="cpu")
    report = explain(model, **inputs, options=_options(args, spec.preset))
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return EXIT_OK


def grid_for_resolution(preset: str, resolution: str | Sequence[int]) -> tuple[int, int, int]:
    """Video tokens after the VAE and patching, e.g. wan2.1 at 480x832x81 -> (21, 30, 52).

    ``resolution``: "HEIGHTxWIDTHxFRAMES" or (height, width, frames). Raises ``ConfigError`` for a
    malformed resolution or a preset without ``vae_stride``/``patch_size``.
    """
    meta = preset_metadata(preset)
    try:
        parts = resolution.lower().split("x") if isinstance(resolution, str) else resolution
        height, width, frames = (int(x) for x in parts)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"--resolution must look like HEIGHTxWIDTHxFRAMES (e.g. 480x832x81), got {resolution!r}") from err
    if "vae_stride" not in meta or "patch_size" not in meta:
        raise ConfigError(f"preset {preset!r} has no vae_stride/patch_size; give --grid FxHxW instead")
    (vt, vh, vw), (pt, ph, pw) = meta["vae_stride"], meta["patch_size"]
    return ((frames - 1) // vt + 1) // pt, height // vh // ph, width // vw // pw


def _masks_grid(args: argparse.Namespace, meta: dict) -> tuple[int, int, int]:
    if args.grid:
        return args.grid
    if not args.preset:
        raise UsageError("give --preset (with optional --resolution) or --grid FRAMESxHEIGHTxWIDTH")
    if args.resolution:
        height, width, frames = args.resolution
        resolution, source = f"{height}x{width}x{frames}", "argument --resolution"
    else:
        resolution, source = meta.get("default_resolution", ""), f"preset {args.preset!r}'s default_resolution"
        if not resolution:
            raise UsageError(f"preset {args.preset!r} has no default_resolution: give --resolution "
                             "HEIGHTxWIDTHxFRAMES or --grid FRAMESxHEIGHTxWIDTH")
    try:
        grid = grid_for_resolution(args.preset, resolution)
    except ConfigError as err:
        raise UsageError(str(err)) from err
    if min(grid) < 1:
        raise UsageError(f"{source}: {resolution} gives a token grid of {'x'.join(map(str, grid))} after the VAE "
                         f"stride {meta['vae_stride']} and patch {meta['patch_size']}; give a larger resolution")
    return grid


def cmd_masks(args: argparse.Namespace) -> int:
    config = args.config
    meta = preset_metadata(args.preset) if args.preset else {}
    if args.resolution and not args.preset:
        raise UsageError("argument --resolution: needs --preset (its VAE stride and patch size); or give --grid")
    grid = _masks_grid(args, meta)
    text_tokens = args.text if args.text is not None else int(meta.get("text_tokens", 0))
    position = config.graph.text_position if config.graph.text_position in ("before", "after") else "after"
    text = TextSegment(position, text_tokens, "cli") if text_tokens else None
    sparse = config.sparse
    policy = get_policy(sparse.policy)
    statics = policy.static_patterns(TokenLayout.of(grid, text), sparse.block_size, sparse.params_for(policy.name),
                                     "cpu")
    if not statics:
        raise UsageError(f"policy {sparse.policy!r} chooses blocks from each call's q and k (data-dependent); "
                         "there is no static mask to draw; choose another with -o sparse.policy=NAME")
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(err.errno, f"cannot create the output folder {out_dir} ({err.strerror})") from err
    name = Path(args.preset).name.removesuffix(".toml") if args.preset else "grid"
    stem = f"{name}_{sparse.policy}_{grid[0]}x{grid[1]}x{grid[2]}"
    patterns = {stem if len(statics) == 1 else f"{stem}_{p.name}": p for p in statics}
    for name, pattern in patterns.items():
        path = out_dir / f"{name}.png"
        draw_pattern(pattern, path, title=name)  # atomic: an interrupted run keeps the previous PNG
        print(f"{path}: grid {grid[0]}x{grid[1]}x{grid[2]}, text {text_tokens}, block {sparse.block_size}, "
              f"density {pattern.density:.3f}")
    return EXIT_OK


def cmd_presets(args: argparse.Namespace) -> int:
    for name in available_presets():
        meta = preset_metadata(name)
        print(f"{name:<15} {meta.get('description', '')}  [{', '.join(meta.get('models', []))}]")
    return EXIT_OK


# --------------------------------------------------------------------------------------------------
# Parser and main
# --------------------------------------------------------------------------------------------------

_VERBOSE_HELP = "log the backend's report (INFO) and show the traceback of an error"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="ditaccel", description="torch.compile backend for Diffusion Transformers",
                                     epilog="exit status: 0 done, 1 run-time failure, 2 bad arguments, 130 interrupted")
    parser.add_argument("-v", "--verbose", action="store_true", help=_VERBOSE_HELP)
    # `-v` is accepted after the command too (default SUPPRESS: it does not reset the global flag)
    common = OneLineParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=_VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    models = ", ".join(list_tiny_models())

    demo = sub.add_parser(
        "demo", parents=[common], help="real videos from the trained fidelity model: speed and quality of each family",
        description="Generate the same labelled videos with the shipped, trained fidelity model eagerly, with "
                    "torch.compile, and with each ditaccel family (step cache, sparse attention, 8-bit attention) "
                    "on its own and composed; print one table (time per generation, speed-up, PSNR / SSIM "
                    "against eager, steps reused, attention density, compile time) and write a PNG strip and a "
                    "GIF per video into --out. With --model, run the plumbing demo on a random tiny model instead.")
    trained = demo.add_argument_group("trained-model demo (the default)")
    label_help = ", ".join(f"{i} {label_name(i)}" for i in range(NUM_CLASSES))
    trained.add_argument("--labels", type=label_list, default=None,
                         help=f"comma-separated labels, one video each (default {','.join(map(str, DEFAULT_LABELS))}; "
                              f"--quick: the first): {label_help}")
    trained.add_argument("--seed", type=seed_int, default=None, help="seed of the starting noise (default 0)")
    trained.add_argument("--variants", type=variant_list, default=None,
                         help=f"comma-separated subset of {','.join(VARIANT_KEYS)} (default: all; --quick: "
                              f"{','.join(QUICK_KEYS)}); eager always runs, as the quality reference")
    trained.add_argument("--out", type=output_dir, default=None, help="folder for the images and results.json "
                                                                      "(default ./ditaccel-demo)")
    trained.add_argument("--dtype", choices=["auto", *DTYPES], default=None,
                         help="auto (default: bfloat16 on a GPU, float32 on the CPU), float32, bfloat16, float16")
    trained.add_argument("--rounds", type=positive_int, default=None,
                         help="timed generations per variant, interleaved (default 3; --quick: 1)")
    trained.add_argument("--quick", action="store_true",
                         help="one label, 8 steps, one round, variants eager,cache,sparse,all (under 30 s on 2 CPU cores)")
    demo.add_argument("--model", type=model_arg, default=None,
                      help=f"run the plumbing demo on a random built-in model ({models}) or package.module:NAME")
    demo.add_argument("--steps", type=positive_int, default=None,
                      help="denoising steps (>= 1; default 10, trained demo with --quick: 8)")
    demo.add_argument("--compiler", choices=COMPILERS, default=None,
                      help="what ditaccel compiles with: inductor, eager (the rewritten graph without Inductor) or "
                           "auto (trained demo default: Inductor on a GPU, eager on the CPU; the plumbing demo's "
                           "default is inductor)")
    demo.add_argument("--device", type=device_arg, default="auto", help="auto (GPU if present), cpu, cuda or cuda:N")
    demo.add_argument("-o", "--option", action="append", type=option_override, metavar="KEY=VALUE",
                      help="backend option for every ditaccel variant, e.g. -o cache.threshold=0.2")
    demo.set_defaults(func=cmd_demo, parser=demo)

    explain = sub.add_parser("explain", parents=[common],
                             help="table of attention sites and what the passes do to them")
    explain.add_argument("--model", type=model_arg, default="wan2.1-tiny",
                         help=f"a built-in model ({models}) or package.module:NAME")
    explain.add_argument("--preset", help="preset name or TOML path (default: the model's preset)")
    explain.add_argument("--batch", type=positive_int, default=1, help="batch size of the example inputs (>= 1)")
    explain.add_argument("-o", "--option", action="append", type=option_override, metavar="KEY=VALUE",
                         help="backend option, e.g. -o graph.token_grid=[1,8,8]")
    explain.add_argument("--json", action="store_true", help="print JSON instead of a table")
    explain.set_defaults(func=cmd_explain, parser=explain)

    masks = sub.add_parser("masks", parents=[common],
                           help="draw a preset's sparse-attention mask as PNG, with its density")
    masks.add_argument("--preset", help="preset name or TOML path (its [sparse] section and video geometry)")
    where = masks.add_mutually_exclusive_group()
    where.add_argument("--resolution", type=dims3("HEIGHTxWIDTHxFRAMES"),
                       help="HEIGHTxWIDTHxFRAMES of the generated video (default: the preset's)")
    where.add_argument("--grid", type=dims3("FRAMESxHEIGHTxWIDTH"),
                       help="FRAMESxHEIGHTxWIDTH of the tokens, instead of --resolution")
    masks.add_argument("--text", type=non_negative_int, help="text tokens in joint attention (default: the preset's)")
    masks.add_argument("--out", type=output_dir, default="masks", help="output folder (default: ./masks)")
    masks.add_argument("-o", "--option", action="append", type=option_override, metavar="KEY=VALUE",
                       help="e.g. -o sparse.policy=tile -o sparse.block_size=64")
    masks.set_defaults(func=cmd_masks, parser=masks)

    presets = sub.add_parser("presets", parents=[common], help="list the shipped presets")
    presets.set_defaults(func=cmd_presets, parser=presets)

    tune = sub.add_parser(
        "autotune", parents=[common], help="time every attention kernel on a model's shapes; fill the tuning cache",
        description="Find the attention calls of a model (--model: one forward through the backend, weights do not "
                    "matter) or of a preset's main model (--preset: its heads and head dim at the resolution), "
                    "validate every candidate kernel against exact attention, time the valid ones and save the "
                    "fastest per shape in the tuning cache, which the backend reads at run time "
                    "(autotune.mode='offline', the default). Prints the winners with their speed-up over the "
                    "default kernel.")
    what = tune.add_mutually_exclusive_group()
    what.add_argument("--show", action="store_true", help="print this device's tuning cache")
    what.add_argument("--clear", action="store_true", help="remove this device's tuning cache file")
    what.add_argument("--export", type=output_file, metavar="FILE", help="copy this device's tuning cache to FILE")
    what.add_argument("--import", dest="import_file", type=input_file, metavar="FILE",
                      help="merge a cache exported on a machine of the same kind (same GPU and software versions)")
    tune.add_argument("--model", type=model_arg, default=None,
                      help=f"a built-in model ({models}) or package.module:NAME")
    tune.add_argument("--preset", help="preset name or TOML path (with --model: instead of the model's preset)")
    size = tune.add_argument_group("size (default: the model's example inputs, or the preset's default_resolution)")
    size.add_argument("--resolution", type=dims3("HEIGHTxWIDTHxFRAMES"),
                      help="HEIGHTxWIDTHxFRAMES of the generated video in pixels, as `ditaccel masks` (e.g. 480x832x81)")
    size.add_argument("--height", type=positive_int, help="pixel height (with --width; instead of --resolution)")
    size.add_argument("--width", type=positive_int, help="pixel width")
    size.add_argument("--frames", type=positive_int, help="video frames (default 1)")
    tune.add_argument("--batch", type=positive_int, default=1, help="batch size (2 for CFG batched together)")
    tune.add_argument("--dtype", choices=["auto", *_DEVICE_DTYPES], default="auto",
                      help="auto (bfloat16 on a GPU, float32 on the CPU), float32, bfloat16, float16")
    tune.add_argument("--device", type=device_arg, default="auto", help="auto (GPU if present), cpu, cuda or cuda:N")
    tune.add_argument("--budget-s", type=float_in_range(0.0, low_open=True), default=170.0,
                      help="time budget in seconds for the tuning (default 170), checked between shapes (the first "
                           "always runs) and shared out as timing per candidate; shapes left when it is spent stay "
                           "untuned. Tracing the model comes on top")
    tune.add_argument("--cache-dir", type=folder_arg, help="tuning cache folder (default: -o autotune.cache_dir, else "
                                                           "$DITACCEL_AUTOTUNE_DIR, else the user cache directory)")
    tune.add_argument("-o", "--option", action="append", type=option_override, metavar="KEY=VALUE",
                      help="backend option, e.g. -o attention.quant=int8 -o sparse.enabled=true")
    tune.add_argument("--json", action="store_true", help="print JSON instead of a table")
    tune.set_defaults(func=cmd_autotune, parser=tune)
    return parser


def _autotune_device(args: argparse.Namespace) -> str:
    return resolve_device(args.device, hint="use --device cpu")


def _autotune_resolution(args: argparse.Namespace, preset: Optional[str]) -> Optional[tuple[int, int, int]]:
    """(height, width, frames) from --resolution or --height/--width/--frames; None for neither."""
    parts = (args.height, args.width, args.frames)
    if args.resolution and any(p is not None for p in parts):
        raise UsageError("give --resolution or --height/--width/--frames, not both")
    if args.resolution:
        return args.resolution
    if any(p is not None for p in parts):
        if args.height is None or args.width is None:
            raise UsageError("--height and --width go together (--frames defaults to 1)")
        return args.height, args.width, args.frames or 1
    return None


def _autotune_progress(total: int) -> Any:
    return _progress(total, "ditaccel autotune", "shape", "ditaccel autotune: shape")


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _cache_command(args: argparse.Namespace, store: Any) -> int:
    """--show, --clear, --export, --import (they work on the cache file only)."""
    if args.model is not None or args.preset:
        raise UsageError("--show, --clear, --export and --import work on the tuning cache only; drop --model/--preset")
    if args.show:
        if args.json:
            _print_json(cache_dict(store))
        else:
            print(cache_table(store))
        return EXIT_OK
    if args.clear:
        removed = store.clear()
        message = f"removed {store.path}" if removed else f"no tuning cache at {store.path}"
        _print_json({"cache": str(store.path), "removed": removed}) if args.json else print(message)
        return EXIT_OK
    if args.export:
        if not store.path.exists():
            raise FileNotFoundError(2, "no tuning cache to export (run `ditaccel autotune --model/--preset` first)",
                                    str(store.path))
        count = store.export_to(args.export)
        message = f"exported {count} entries of {store.path} to {args.export}"
        _print_json({"cache": str(store.path), "exported": count, "file": str(args.export)}) if args.json else print(message)
        return EXIT_OK
    try:
        count = store.import_from(args.import_file)
    except TuneStoreError as err:
        raise UsageError(f"argument --import: {err}") from None
    message = f"imported {count} entries from {args.import_file} into {store.path}"
    _print_json({"cache": str(store.path), "imported": count, "file": str(args.import_file)}) if args.json else print(message)
    return EXIT_OK


def cmd_autotune(args: argparse.Namespace) -> int:
    device = _autotune_device(args)
    spec = args.model
    preset = args.preset or (spec.preset if spec is not None else None)
    options = _options(args, preset)
    cache_dir = str(args.cache_dir) if args.cache_dir else resolve_config(options).autotune.cache_dir
    tuner = Autotuner("online", cache_dir)
    store = tuner.store(device)
    if args.show or args.clear or args.export or args.import_file:
        return _cache_command(args, store)
    if args.model is None and not args.preset:
        raise UsageError("give --model or --preset (what to tune), or one of --show, --clear, --export, --import")
    dtype = _DEVICE_DTYPES[args.dtype] if args.dtype != "auto" else (torch.bfloat16 if device.startswith("cuda")
                                                                      else torch.float32)
    resolution = _autotune_resolution(args, preset)
    notes = []
    try:
        if spec is not None:
            latent = None
            if resolution is not None:
                if not preset:
                    raise UsageError("argument --resolution: needs the model's preset (its VAE stride); give --preset")
                latent = latent_for_resolution(preset, *resolution)
            recorded, report = trace_model(spec, options, latent=latent, batch=args.batch, dtype=dtype, device=device)
            if report.rewritten < len(report.sites) or len(report.graphs) > 1:
                breaks = " (graph breaks: attention that runs between graphs is not seen)" if len(report.graphs) > 1 else ""
                notes.append(f"note: {report.total_line()}{breaks}; attention the backend keeps as written is not "
                             f"tuned (`ditaccel explain --model {getattr(spec, 'name', '...')}` says why)")
        else:
            if resolution is None:
                text = preset_metadata(preset).get("default_resolution", "")
                if not text:
                    raise UsageError(f"preset {preset!r} has no default_resolution: give --resolution")
                resolution = tuple(int(x) for x in text.split("x"))
            grid = grid_for_resolution(preset, "x".join(map(str, resolution)))
            if min(grid) < 1:
                raise UsageError(f"resolution {'x'.join(map(str, resolution))} gives no tokens for preset {preset!r}")
            recorded = preset_problems(preset, grid, options, batch=args.batch, dtype=dtype, device=device)
            if resolve_config(options).sparse.enabled:
                notes.append("note: sparse plans are not tuned from a preset's shapes (their masks come from the "
                             "model's calls): use --model, or autotune.mode='online'")
    except ValueError as err:  # a size the model or preset cannot take
        if isinstance(err, ConfigError):
            raise
        raise UsageError(str(err)) from err
    if not recorded:
        print("no attention call of the model went through a ditaccel op (see `ditaccel explain`); nothing to tune")
        return EXIT_OK
    run = tune_recorded(recorded, tuner, args.budget_s, _autotune_progress)
    entries = len(store.entries(refresh=True))
    if args.json:
        _print_json({
            "cache": str(store.path), "entries": entries, "seconds": round(run.seconds, 3), "notes": notes,
            "results": [{"op": r.op, "key": r.key.to_str(), "sites": rec.sites, "default": r.default,
                         "winner": r.winner, "times_ms": r.times_ms, "dropped": r.dropped,
                         "speedup": r.speedup} for rec, r in run.results],
            "skipped": [{"op": rec.tunable.op, "sites": rec.sites, "why": why} for rec, why in run.skipped],
        })
        return EXIT_OK
    if run.results:
        print(winners_table(run.results))
    for rec, why in run.skipped:
        print(f"not tuned: {rec.tunable.op} at {', '.join(rec.sites) or '?'}: {why}")
    for note in notes:
        print(note)
    print(f"{len(run.results)} of {len(recorded)} shapes tuned in {run.seconds:.1f} s on {store.identity['device']}; "
          f"cache {store.path} ({entries} entries)")
    return EXIT_OK


def _config_error(err: BaseException) -> Optional[ConfigError]:
    """The ConfigError behind ``err`` (torch.compile wraps backend errors), if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, ConfigError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def describe_error(err: BaseException) -> tuple[int, str]:
    """(exit status, one-line message) for an exception a command raised."""
    config = _config_error(err)
    if config is not None:
        return EXIT_USAGE, f"bad option: {_one_line(config)}"
    if isinstance(err, ModuleNotFoundError) and (err.name or "").split(".")[0] in OPTIONAL_PACKAGES:
        package = OPTIONAL_PACKAGES[err.name.split(".")[0]]
        return EXIT_FAILURE, f"needs the optional package {err.name!r}, which is not installed: pip install '{package}'"
    if isinstance(err, OSError) and err.strerror:
        where = f"{err.filename}: " if err.filename else ""
        return EXIT_FAILURE, _one_line(f"{where}{err.strerror}")
    if isinstance(err, (ImportError, OSError, RuntimeError, ValueError)) and str(err):
        return EXIT_FAILURE, _one_line(err)
    return EXIT_FAILURE, _one_line(f"{type(err).__name__}: {err} (run with --verbose for the traceback)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the `ditaccel` command line; returns the exit status (see the module docstring).

    Every exception ends here: usage errors print argparse's usage and one line (status 2),
    run-time failures one line (status 1), Ctrl-C one line (status 130); with ``--verbose``
    the traceback is printed first.
    """
    parser = build_parser()
    args: Optional[argparse.Namespace] = None
    try:
        args = parser.parse_args(argv)
        args.argv = list(argv if argv is not None else sys.argv[1:])
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
        _check_options(args)
        return args.func(args)
    except BrokenPipeError:  # the reader went away (`ditaccel autotune --show | head`): stop quietly
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        except OSError:
            pass
        return EXIT_OK
    except SystemExit as exc:  # argparse: --help (0) or a bad argument (2, message already printed)
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)
    except BaseException as err:  # noqa: BLE001 - the one place errors become exit statuses
        if not isinstance(err, Exception) and not isinstance(err, KeyboardInterrupt):
            raise
        verbose = bool(getattr(args, "verbose", False))
        if verbose:
            traceback.print_exc()
        command = getattr(args, "command", None)
        prog = f"ditaccel {command}" if command else "ditaccel"
        if isinstance(err, KeyboardInterrupt):
            print(f"{prog}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        if isinstance(err, UsageError):
            sub = getattr(args, "parser", parser)
            print(f"{sub.prog}: error: {_one_line(err)} (see {sub.prog} --help)", file=sys.stderr)
            return EXIT_USAGE
        status, message = describe_error(err)
        print(f"{prog}: error: {message}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
