"""Issue 11: the `ditaccel` command never prints a traceback for an ordinary mistake.

Usage errors (a bad argument, a bad -o option) exit 2 with argparse's message naming the
argument; run-time failures (no CUDA, a file that cannot be written, a missing optional package)
exit 1 with one line on stderr; Ctrl-C exits 130; `--verbose` adds the traceback.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ditcompile import cli
from ditcompile.cli import build_parser, main
from ditcompile.demo import DeviceUnavailableError, resolve_device

SUBCOMMANDS = {"demo", "explain", "masks", "presets", "autotune"}
RNG = random.Random()  # fresh values every run; the drawn value is in the assertion message


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_lines(err: str) -> list[str]:
    """The non-empty lines of stderr (an error is exactly one: no usage block, no traceback)."""
    return [line for line in err.splitlines() if line.strip()]


def _random_bad_int() -> str:
    return str(RNG.randint(-10**6, 0))


# (command prefix, argument, bad values): every numeric, geometry and device argument of every command
BAD_ARGUMENTS = [
    (["demo"], "--steps", ["0", "-1", _random_bad_int(), "1.5", "ten", "", "1e3"]),
    (["explain"], "--batch", ["0", "-4", _random_bad_int(), "2.0", "x"]),
    (["masks", "--grid", "3x4x8"], "--text", ["-1", str(-RNG.randint(1, 10**6)), "0.5", "many"]),
    (["masks", "--preset", "wan2.1"], "--grid", ["0x4x4", "3x-4x8", "3x4", "3x4x8x2", "axbxc", "3.5x4x8",
                                                  f"3x4x{_random_bad_int()}"]),
    (["masks", "--preset", "wan2.1"], "--resolution", ["0x832x81", "480x832", "-480x832x81", "480x832x8.1"]),
    (["demo"], "--device", ["gpu", "cuda:", "cuda:-1", "cuda:x", "CUDA0", "cpu:0"]),
    (["explain"], "--model", ["no-such-model", "no_such_module_xyz:MODEL"]),
    (["demo"], "--compiler", ["tvm"]),
    (["autotune", "--preset", "wan2.1"], "--budget-s", ["0", "-1", "nan", "inf", "soon"]),
    (["autotune", "--preset", "wan2.1"], "--batch", ["0", "-2", "1.5"]),
    (["autotune", "--preset", "wan2.1"], "--resolution", ["0x832x81", "480x832", "axbxc"]),
    (["autotune", "--preset", "wan2.1"], "--height", ["0", "-16", "tall"]),
    (["autotune", "--preset", "wan2.1"], "--dtype", ["int8"]),
    (["autotune", "--preset", "wan2.1"], "--device", ["gpu", "cuda:x"]),
    (["autotune"], "--import", ["/no/such/tuning.json", ""]),
    (["autotune", "--show"], "--cache-dir", [__file__, ""]),
    (["autotune"], "--model", ["no-such-model"]),
]
CASES = [(prefix, arg, value) for prefix, arg, values in BAD_ARGUMENTS for value in values]


@pytest.mark.parametrize("prefix,arg,value", CASES, ids=[f"{p[0]}{a}={v!r}" for p, a, v in CASES])
def test_bad_argument_exits_2_naming_it(capsys, prefix, arg, value):
    code, out, err = run(capsys, *prefix, f"{arg}={value}")
    assert code == 2, (value, err)
    assert "Traceback" not in err and out == ""
    (line,) = error_lines(err)
    assert line.startswith(f"ditaccel {prefix[0]}: error: argument {arg}"), line


def test_demo_steps_0_says_what_is_accepted(capsys):
    code, _, err = run(capsys, "demo", "--steps", "0")
    assert code == 2
    assert error_lines(err) == ["ditaccel demo: error: argument --steps: must be an integer >= 1, got 0 "
                                "(see ditaccel demo --help)"]


def test_every_argument_of_every_command_is_typed():
    """A new argument must come with a type or choices (or be checked by resolve_config: --preset)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == SUBCOMMANDS, "a new command: add its arguments to BAD_ARGUMENTS"
    untyped = []
    for name, command in sub.choices.items():
        for action in command._actions:
            if action.nargs == 0 or isinstance(action, argparse._HelpAction):
                continue  # flags
            if action.type is None and action.choices is None and action.dest != "preset":
                untyped.append(f"{name} {action.option_strings}")
    assert not untyped, untyped


def test_bad_option_override_is_a_usage_error(capsys):
    for argv, needle in [
        (["demo", "-o", "no_such_section.key=1"], "unknown option"),
        (["explain", "-o", "cache.threshold=nan"], "finite"),
        (["masks", "--grid", "3x4x8", "-o", "sparse.block_size=-16"], "sparse.block_size"),
        (["demo", "-o", "compiler"], "key=value"),
        (["demo", "-o", "=3"], "no key"),
    ]:
        code, _, err = run(capsys, *argv)
        assert code == 2, (argv, err)
        (line,) = error_lines(err)
        assert f"ditaccel {argv[0]}: error: argument -o/--option:" in line and needle in line, line
        assert "Traceback" not in err


def test_bad_preset_is_a_usage_error(capsys, tmp_path):
    code, _, err = run(capsys, "explain", "--preset", "no-such-preset")
    assert code == 2 and "argument --preset: unknown preset 'no-such-preset'" in err
    code, _, err = run(capsys, "masks", "--preset", str(tmp_path / "missing.toml"), "--grid", "3x4x8")
    assert code == 2 and "argument --preset:" in err and "Traceback" not in err


def test_masks_argument_combinations(capsys, tmp_path):
    code, _, err = run(capsys, "masks", "--grid", "3x4x8", "--resolution", "480x832x81", "--out", str(tmp_path))
    assert code == 2 and "not allowed with argument" in err
    code, _, err = run(capsys, "masks", "--resolution", "480x832x81", "--out", str(tmp_path))
    assert code == 2 and "argument --resolution: needs --preset" in err
    code, _, err = run(capsys, "masks", "--out", str(tmp_path))
    assert code == 2 and "give --preset" in err
    # a resolution smaller than one patch: no tokens (wan2.1: VAE stride 8, patch 2 -> 16 px per token)
    code, _, err = run(capsys, "masks", "--preset", "wan2.1", "--resolution", "8x832x81", "--out", str(tmp_path))
    assert code == 2 and "argument --resolution: 8x832x81 gives a token grid of 21x0x52" in err
    assert list(tmp_path.iterdir()) == []


def test_masks_output_folder_checked_up_front(capsys, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_bytes(os.urandom(16))
    for out, needle in [(a_file, "is not a folder"), (a_file / "sub", "is not a folder"), ("", "folder path")]:
        code, _, err = run(capsys, "masks", "--preset", "wan2.1", "--grid", "3x4x8", "--out", str(out))
        assert code == 2, err
        (line,) = error_lines(err)
        assert line.startswith("ditaccel masks: error: argument --out:") and needle in line, line


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_masks_read_only_folder(capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, _, err = run(capsys, "masks", "--preset", "wan2.1", "--grid", "3x4x8", "--out", str(ro / "png"))
    finally:
        ro.chmod(0o700)
    assert code == 2 and "not writable" in err


def test_masks_write_failure_at_run_time_is_one_line(capsys, tmp_path):
    """The PNG's own path is a folder: the rename fails when the command runs -> exit 1, one line."""
    blocker = tmp_path / "wan2.1_radial_3x4x8.png"
    blocker.mkdir()
    code, out, err = run(capsys, "masks", "--preset", "wan2.1", "--grid", "3x4x8", "-o", "sparse.block_size=16",
                         "--out", str(tmp_path))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("ditaccel masks: error: ") and str(blocker) in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [blocker.name]  # no temporary file left


def test_masks_writes_the_png(capsys, tmp_path):
    code, out, err = run(capsys, "masks", "--preset", "wan2.1", "--grid", "3x4x8", "-o", "sparse.block_size=16",
                         "--text", "0", "--out", str(tmp_path / "new" / "dir"))
    assert code == 0, err
    png = tmp_path / "new" / "dir" / "wan2.1_radial_3x4x8.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "density" in out


def test_demo_cuda_without_cuda_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", f"cuda:{RNG.randint(0, 7)}"):
        code, out, err = run(capsys, "demo", "--device", device)
        assert code == 1 and out == ""
        assert err == (f"ditaccel demo: error: CUDA is not available on this machine (torch {torch.__version__}); "
                       "use --device cpu\n")


def test_demo_missing_cuda_device_index(capsys, monkeypatch):
    count = RNG.randint(1, 4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    code, _, err = run(capsys, "demo", "--device", f"cuda:{count}")
    assert code == 1
    assert err == (f"ditaccel demo: error: CUDA device {count} does not exist: this machine has {count} "
                   f"(cuda:0 to cuda:{count - 1}); use --device cpu\n")


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(DeviceUnavailableError, match="device='cpu'"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="cuda:N"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"


def test_run_demo_rejects_bad_steps():
    from ditcompile.demo import run_demo

    for steps in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="steps must be an integer >= 1"):
            run_demo(steps=steps, device="cpu")


def test_verbose_shows_the_traceback(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv in (["-v", "demo", "--device", "cuda"], ["demo", "--device", "cuda", "--verbose"]):
        code, _, err = run(capsys, *argv)
        assert code == 1
        assert "Traceback (most recent call last)" in err and "DeviceUnavailableError" in err
        assert err.rstrip().splitlines()[-1].startswith("ditaccel demo: error: CUDA is not available")


def test_missing_optional_package_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "PIL", None)  # `import PIL` now fails as if pillow were not installed
    code, _, err = run(capsys, "masks", "--preset", "wan2.1", "--grid", "3x4x8", "--out", str(tmp_path))
    assert code == 1 and err == "ditaccel masks: error: draw_pattern needs pillow: pip install pillow (or ditaccel[test])\n"


def test_missing_module_is_named_with_the_install_command():
    code, message = cli.describe_error(ModuleNotFoundError("No module named 'diffusers'", name="diffusers"))
    assert code == 1 and "'diffusers'" in message and "pip install 'ditaccel[diffusers]'" in message


def test_unexpected_error_and_interrupt(capsys, monkeypatch):
    def boom(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "cmd_presets", boom)
    code, _, err = run(capsys, "presets")
    assert code == 1 and "Traceback" not in err
    assert err == "ditaccel presets: error: ZeroDivisionError: division by zero (run with --verbose for the traceback)\n"

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_presets", interrupted)
    code, _, err = run(capsys, "presets")
    assert code == 130 and err == "ditaccel presets: interrupted\n"


def test_config_error_raised_while_running_is_exit_2(capsys, monkeypatch):
    """A ConfigError that surfaces late (wrapped by torch.compile) is still a usage error, one line."""
    def late(args):
        try:
            raise cli.ConfigError("option 'x' must be\nan integer")
        except cli.ConfigError as err:
            raise RuntimeError("backend compiler failed") from err

    monkeypatch.setattr(cli, "cmd_presets", late)
    code, _, err = run(capsys, "presets")
    assert code == 2 and err == "ditaccel presets: error: bad option: option 'x' must be; an integer\n"


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    assert "exit status" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# the argument types themselves
# ------------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.integers(-10**9, 10**9))
def test_integer_types(n):
    for parse, low in ((cli.positive_int, 1), (cli.non_negative_int, 0)):
        if n >= low:
            assert parse(str(n)) == n
        else:
            with pytest.raises(argparse.ArgumentTypeError, match=f">= {low}, got {n}$"):
                parse(str(n))


@settings(max_examples=60, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_float_in_range(x):
    parse = cli.float_in_range(0, 1, high_open=True)
    if math.isfinite(x) and 0 <= x < 1:
        assert parse(repr(x)) == x
    else:
        with pytest.raises(argparse.ArgumentTypeError, match=r"finite number in \[0, 1\)"):
            parse(repr(x))


@settings(max_examples=60, deadline=None)
@given(st.tuples(*[st.integers(-5, 100)] * 3))
def test_dims3(dims):
    parse = cli.dims3("FxHxW")
    text = "x".join(map(str, dims))
    if min(dims) >= 1:
        assert parse(text) == dims
    else:
        with pytest.raises(argparse.ArgumentTypeError, match="FxHxW"):
            parse(text)


def test_output_file(tmp_path):
    assert cli.output_file(str(tmp_path / "r.json")) == tmp_path / "r.json"
    with pytest.raises(argparse.ArgumentTypeError, match="does not exist"):
        cli.output_file(str(tmp_path / "missing" / "r.json"))
    with pytest.raises(argparse.ArgumentTypeError, match="is a folder"):
        cli.output_file(str(tmp_path))
    (tmp_path / "f").write_text("x")
    with pytest.raises(argparse.ArgumentTypeError, match="is not a folder"):
        cli.output_file(str(tmp_path / "f" / "r.json"))


# ------------------------------------------------------------------------------------------------
# as a user runs it
# ------------------------------------------------------------------------------------------------


def _ditaccel(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-m", "ditcompile", *argv], capture_output=True, text=True, timeout=300,
                          env=env)


def test_subprocess_usage_error_and_runtime_failure():
    out = _ditaccel("demo", "--steps", "0")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.splitlines() == ["ditaccel demo: error: argument --steps: must be an integer >= 1, got 0 "
                                       "(see ditaccel demo --help)"]
    out = _ditaccel("demo", "--device", "cuda")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("ditaccel demo: error: CUDA is not available on this machine")


def test_demo_compiler_flag_and_option_must_agree(capsys):
    code, _, err = run(capsys, "demo", "--model", "wan2.1-tiny", "--steps", "1", "--compiler", "inductor",
                       "-o", "compiler=eager")
    assert code == 2
    assert error_lines(err) == ["ditaccel demo: error: argument --compiler: --compiler inductor conflicts with "
                                "-o compiler=eager; give one (see ditaccel demo --help)"]
    code, _, err = run(capsys, "demo", "-o", "compiler=eager")  # the trained demo sets each row's compiler
    assert code == 2
    assert error_lines(err) == ["ditaccel demo: error: argument -o/--option: the demo sets each variant's compiler; "
                                "use --compiler auto|inductor|eager instead of -o compiler=... (see ditaccel demo --help)"]


def test_option_value_that_is_not_valid_toml_says_so(capsys):
    code, _, err = run(capsys, "explain", "-o", 'attention.skip=["blocks\\.0\\..*"]')
    assert code == 2
    (line,) = error_lines(err)
    assert "argument -o/--option" in line and "the value is not valid TOML" in line and "single quotes" in line


def test_run_demo_honours_the_compiler_option():
    from ditcompile.demo import run_demo

    with pytest.raises(ValueError, match="compiler='inductor' conflicts with options\\['compiler'\\]='eager'"):
        run_demo(steps=1, compiler="inductor", options={"compiler": "eager"})
