"""The command line: `python -m ditcompile`, and `masks` with a preset given as a TOML path."""
import shutil
import subprocess
import sys

from ditcompile.config import PRESET_DIR


def test_python_dash_m_ditcompile_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "ditcompile", "presets"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("cogvideox") and "wan2.1" in out.stdout


def test_masks_with_a_preset_path_names_the_png_after_the_file(tmp_path):
    preset = tmp_path / "my_wan.toml"
    shutil.copy(PRESET_DIR / "wan2.1.toml", preset)
    out = subprocess.run([sys.executable, "-m", "ditcompile.cli", "masks", "--preset", str(preset), "--grid", "3x4x8",
                          "-o", "sparse.block_size=16", "--out", str(tmp_path)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "my_wan_radial_3x4x8.png").is_file() and "density" in out.stdout
