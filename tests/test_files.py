"""Issue 11: files are written atomically, loading names the file and the problem, and the shipped
fidelity weights are checked against their recorded SHA-256."""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import random
import re
from pathlib import Path

import pytest
import torch

from ditcompile import fileio
from ditcompile.cli import main
from ditcompile.fidelity import model as fmodel
from ditcompile.fidelity.model import (
    WEIGHTS_PATH,
    WEIGHTS_SHA256_PATH,
    WeightsChecksumError,
    WeightsFileError,
    load_fidelity_model,
    training_metadata,
    verify_shipped_weights,
)
from ditcompile.fileio import atomic_path, atomic_write_bytes, atomic_write_text

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
RNG = random.Random()  # fresh data every run


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


# ------------------------------------------------------------------------------------------------
# fileio
# ------------------------------------------------------------------------------------------------


def test_atomic_write_creates_and_replaces(tmp_path):
    path = tmp_path / "report.json"
    first, second = os.urandom(RNG.randint(1, 4096)), os.urandom(RNG.randint(0, 4096))
    atomic_write_bytes(path, first)
    assert path.read_bytes() == first
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()  # like open(path, "w"), not mkstemp's 0600
    path.chmod(0o640)
    atomic_write_bytes(path, second)
    assert path.read_bytes() == second and path.stat().st_mode & 0o777 == 0o640  # an existing file keeps its mode
    text = "".join(RNG.choice("abcé\n€") for _ in range(200))
    atomic_write_text(path, text)
    assert path.read_text(encoding="utf-8") == text
    assert names(tmp_path) == ["report.json"]


@pytest.mark.parametrize("error", [RuntimeError("encoder failed"), KeyboardInterrupt()])
def test_failed_write_keeps_the_previous_file_and_no_temp(tmp_path, error):
    path = tmp_path / "picture.png"
    old = os.urandom(1000)
    path.write_bytes(old)
    with pytest.raises(type(error)):
        with atomic_path(path) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp != path
            with open(tmp, "wb") as f:
                f.write(os.urandom(RNG.randint(1, 500)))  # half a file, then the writer dies
            raise error
    assert path.read_bytes() == old
    assert names(tmp_path) == ["picture.png"]


def test_failed_rename_keeps_the_previous_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    path.write_text("old")

    def no_rename(src, dst):
        raise OSError(28, "No space left on device", str(src))

    monkeypatch.setattr(fileio.os, "replace", no_rename)
    with pytest.raises(OSError, match=f"cannot write {path}: No space left on device"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and names(tmp_path) == ["r.json"]


def test_unwritable_targets_name_the_target(tmp_path):
    missing = tmp_path / "no" / "such" / "dir" / "x.json"
    with pytest.raises(FileNotFoundError, match=f"cannot write {missing}"):
        atomic_write_text(missing, "{}")
    a_dir = tmp_path / "a_dir"
    a_dir.mkdir()
    with pytest.raises(IsADirectoryError, match=f"cannot write {a_dir}"):
        atomic_write_bytes(a_dir, b"x")
    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    with pytest.raises(NotADirectoryError, match=f"cannot write {a_file / 'x.png'}"):
        atomic_write_bytes(a_file / "x.png", b"x")
    assert names(tmp_path) == ["a_dir", "a_file"] and names(a_dir) == [] and a_file.read_text() == "keep"


# ------------------------------------------------------------------------------------------------
# pictures: `ditaccel masks` and the fidelity strips
# ------------------------------------------------------------------------------------------------


def _failing_png_encoder(error: BaseException):
    def encode(im, fp, filename):
        fp.write(b"\x89PNG\r\n\x1a\n" + os.urandom(64))  # a partial PNG, then the encoder dies
        raise error

    return encode


@pytest.mark.parametrize("error,status", [(KeyboardInterrupt(), 130), (OSError(28, "No space left on device"), 1)])
def test_interrupted_masks_keeps_the_old_png(tmp_path, monkeypatch, capsys, error, status):
    Image = pytest.importorskip("PIL.Image")
    argv = ["masks", "--preset", "wan2.1", "--grid", "3x4x8", "-o", "sparse.block_size=16", "--out", str(tmp_path)]
    assert main(argv) == 0
    png = tmp_path / "wan2.1_radial_3x4x8.png"
    old = png.read_bytes()
    capsys.readouterr()
    monkeypatch.setitem(Image.SAVE, "PNG", _failing_png_encoder(error))
    assert main(argv) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    assert png.read_bytes() == old  # byte-identical
    assert names(tmp_path) == [png.name]


def test_save_strip_is_atomic(tmp_path, monkeypatch):
    Image = pytest.importorskip("PIL.Image")
    from ditcompile.fidelity.videos import save_strip

    videos = torch.rand(2, 3, 3, 8, 8, generator=torch.Generator().manual_seed(RNG.randrange(2**31))) * 2 - 1
    path = tmp_path / "strip.png"
    save_strip(videos, path, scale=1)
    old = path.read_bytes()
    with Image.open(path) as img:
        assert img.size == (3 * 10 + 2, 2 * 10 + 2)
    monkeypatch.setitem(Image.SAVE, "PNG", _failing_png_encoder(RuntimeError("encoder failed")))
    with pytest.raises(RuntimeError, match="encoder failed"):
        save_strip(-videos, path, scale=1)
    assert path.read_bytes() == old and names(tmp_path) == ["strip.png"]


# ------------------------------------------------------------------------------------------------
# fidelity weights: clear errors and the shipped checksum
# ------------------------------------------------------------------------------------------------

needs_weights = pytest.mark.skipif(not WEIGHTS_PATH.is_file(), reason=f"shipped weights missing ({WEIGHTS_PATH})")


def _corrupt_files(folder: Path) -> dict[str, Path]:
    data = WEIGHTS_PATH.read_bytes()
    files = {
        "truncated": data[: RNG.randint(9, len(data) - 1)],
        "truncated_header": data[: RNG.randint(9, 200)],
        "random_bytes": os.urandom(RNG.randint(1, 100_000)),
        "empty": b"",
    }
    out = {}
    for name, content in files.items():
        out[name] = folder / f"{name}.safetensors"
        out[name].write_bytes(content)
    return out


@needs_weights
def test_corrupt_weights_name_the_file(tmp_path):
    pytest.importorskip("safetensors")
    for name, path in _corrupt_files(tmp_path).items():
        with pytest.raises(WeightsFileError) as info:
            load_fidelity_model(path)
        assert str(path) in str(info.value), name
        assert ("empty" if name == "empty" else "not a valid safetensors file") in str(info.value), name
        assert info.value.path == path and isinstance(info.value, ValueError)
        with pytest.raises(WeightsFileError, match=str(path)):
            training_metadata(path)
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(FileNotFoundError, match=f"not found at {missing}"):
        load_fidelity_model(missing)
    with pytest.raises(WeightsFileError, match="not a regular file"):
        load_fidelity_model(tmp_path)


def test_weights_with_wrong_tensors_name_the_file(tmp_path):
    pytest.importorskip("diffusers")
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(RNG.randrange(2**31))
    other = tmp_path / "other_model.safetensors"
    save_file({"foo.weight": torch.randn(4, 4, generator=gen)}, str(other))
    with pytest.raises(WeightsFileError, match=f"{other}: does not match the fidelity architecture: .* missing"):
        load_fidelity_model(other)

    model = fmodel.build_fidelity_model(num_layers=1, ffn_dim=32)
    good = tmp_path / "good.safetensors"
    fmodel.save_fidelity_weights(model, good)
    from safetensors import safe_open

    with safe_open(str(good), "pt") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    key = RNG.choice(sorted(state))
    wrong_shape = dict(state, **{key: torch.randn(3, 5, generator=gen)})
    bad = tmp_path / "wrong_shape.safetensors"
    save_file(wrong_shape, str(bad), metadata=meta)
    with pytest.raises(WeightsFileError, match=f"{bad}: tensors have the wrong shape .*{key}: \\(3, 5\\)"):
        load_fidelity_model(bad)
    bad_config = tmp_path / "bad_config.safetensors"
    save_file(state, str(bad_config), metadata=dict(meta, config="{not json"))
    with pytest.raises(WeightsFileError, match=f"{bad_config}: its 'config' metadata is not JSON"):
        load_fidelity_model(bad_config)
    for bad_value in (float("nan"), float("inf")):
        poisoned = {k: v.clone() for k, v in state.items()}
        poisoned[key].view(-1)[RNG.randrange(poisoned[key].numel())] = bad_value
        bad = tmp_path / "non_finite.safetensors"
        save_file(poisoned, str(bad), metadata=meta)
        with pytest.raises(WeightsFileError, match=f"{bad}: tensors \\['{re.escape(key)}'\\] hold NaN or infinite"):
            load_fidelity_model(bad)
    for key_, bad_value in (("eps", float("nan")), ("eps", "abc"), ("num_layers", 0), ("patch_size", [1, 4])):
        config = json.loads(meta["config"])
        config[key_] = bad_value
        bad = tmp_path / "bad_config_value.safetensors"
        save_file(state, str(bad), metadata=dict(meta, config=json.dumps(config)))
        with pytest.raises(WeightsFileError, match=f"{bad}: its 'config' metadata has {key_}="):
            load_fidelity_model(bad)
    loaded = load_fidelity_model(good)  # the untouched file still loads, with the same tensors
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


@needs_weights
def test_shipped_weights_match_their_recorded_checksum():
    digest = hashlib.sha256(WEIGHTS_PATH.read_bytes()).hexdigest()
    assert WEIGHTS_SHA256_PATH.read_text().split() == [digest, WEIGHTS_PATH.name]
    assert verify_shipped_weights() == digest


def _tampered_copy(folder: Path) -> tuple[Path, int]:
    """A copy of the shipped weights with one byte of tensor data changed (still parses)."""
    data = bytearray(WEIGHTS_PATH.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    at = RNG.randrange(header, len(data))
    data[at] ^= 1 << RNG.randrange(8)
    path = folder / "fidelity_wan.safetensors"
    path.write_bytes(bytes(data))
    return path, at


@needs_weights
def test_tampered_shipped_weights_fail_the_checksum(tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    tampered, at = _tampered_copy(tmp_path)
    expected = WEIGHTS_SHA256_PATH.read_text().split()[0]
    actual = hashlib.sha256(tampered.read_bytes()).hexdigest()
    monkeypatch.setattr(fmodel, "WEIGHTS_PATH", tampered)  # the tampered copy is now "the shipped file"
    with pytest.raises(WeightsChecksumError) as info:
        load_fidelity_model()
    message = str(info.value)
    assert str(tampered) in message and expected in message and actual in message, at
    assert "reinstall" in message and info.value.expected == expected and info.value.actual == actual
    with pytest.raises(WeightsChecksumError):
        load_fidelity_model(tampered)  # the shipped path given explicitly is checked too
    monkeypatch.undo()
    assert load_fidelity_model(tampered).config.num_layers > 0  # a user's file: nothing to compare with


def test_missing_or_bad_checksum_record(tmp_path, monkeypatch):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(os.urandom(100))
    monkeypatch.setattr(fmodel, "WEIGHTS_PATH", weights)
    monkeypatch.setattr(fmodel, "WEIGHTS_SHA256_PATH", tmp_path / "w.safetensors.sha256")
    with pytest.raises(WeightsFileError, match="checksum record .* is missing"):
        load_fidelity_model()
    (tmp_path / "w.safetensors.sha256").write_text("not-a-digest  w.safetensors\n")
    with pytest.raises(WeightsFileError, match="does not start with a SHA-256"):
        load_fidelity_model()


def test_saving_the_shipped_weights_records_their_checksum(tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    weights, record = tmp_path / "fidelity_wan.safetensors", tmp_path / "fidelity_wan.safetensors.sha256"
    monkeypatch.setattr(fmodel, "WEIGHTS_PATH", weights)
    monkeypatch.setattr(fmodel, "WEIGHTS_SHA256_PATH", record)
    torch.manual_seed(RNG.randrange(2**31))
    model = fmodel.build_fidelity_model(num_layers=1, ffn_dim=32)
    fmodel.save_fidelity_weights(model, weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert record.read_text() == f"{digest}  fidelity_wan.safetensors\n"
    assert load_fidelity_model().config.num_layers == 1  # verified against the new record
    other = tmp_path / "elsewhere.safetensors"
    fmodel.save_fidelity_weights(model, other)  # not the shipped path: the record is unchanged
    assert record.read_text().split()[0] == digest and names(tmp_path) == sorted(
        ["elsewhere.safetensors", "fidelity_wan.safetensors", "fidelity_wan.safetensors.sha256"])


def test_package_data_includes_the_checksum_record():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["ditcompile"]
    rel = WEIGHTS_SHA256_PATH.relative_to(ROOT / "ditcompile").as_posix()
    assert any(fnmatch.fnmatch(rel, pattern) for pattern in data), (rel, data)
