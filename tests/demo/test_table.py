"""The table: one line per row with the right cells, untimed rows marked, the legend that fits."""
import math
import random

from ditcompile.demo.table import COLUMNS, format_table, legend, row_cells
from ditcompile.demo.trained import REFERENCE_NOTE, Row, TrainedDemoResult

RNG = random.Random()


def _result(compiler="eager"):
    t = [RNG.uniform(1.0, 1.4) for _ in range(3)]
    rows = [
        Row("eager", "eager (dense)", "eager", first_call_s=2.0, times_s=t, psnr_db=math.inf, ssim=1.0,
            steps_computed=10, steps_reused=0),
        Row("compile", "torch.compile", "Inductor", first_call_s=50.0, times_s=[1.0, 1.2, 1.1], psnr_db=math.inf,
            ssim=1.0, steps_computed=10, steps_reused=0),
        Row("sparse", "ditaccel sparse (2 dense)", "ditaccel, no Inductor", note=REFERENCE_NOTE, first_call_s=6.25,
            psnr_db=37.14159, ssim=0.99071, steps_computed=10, steps_reused=0, density=0.8937),
    ]
    rows[0].speedup, rows[1].speedup = 1.1 / sorted(t)[1], 1.0
    return TrainedDemoResult(rows, "cpu", "x86_64", "float32", [1, 10], 10, 0, 3, compiler, "compile",
                             {"torch": "2.x"})


def test_cells():
    result = _result()
    eager, compiled, sparse = (row_cells(r, "eager") for r in result.rows)
    assert eager[4:6] == ["ref", "ref"] and eager[-1] == "-"  # the reference row; eager has no compile
    assert compiled[2] == "1.10" and compiled[3] == "1.00x" and compiled[4] == "inf"
    assert compiled[-1] == f"{50.0 - 1.1:.1f}"  # first call minus the median generation
    assert sparse[2:4] == ["-", "-"], "an untimed row claims no speed"
    assert sparse[4:8] == ["37.14", "0.9907", "10/0", "0.894"] and sparse[-1] == "<6.2"


def test_table_lines_and_notes():
    result = _result()
    lines = format_table(result).splitlines()
    assert len(lines) == 2 + len(result.rows)
    assert lines[0].split()[:2] == ["variant", "runs"] and set(lines[1]) == {"-"}
    width = sum(w for _, w, _ in COLUMNS) + 2 * (len(COLUMNS) - 1)
    assert lines[4].endswith(REFERENCE_NOTE) and lines[4][:width].rstrip().endswith("<6.2")
    assert not lines[2].endswith(REFERENCE_NOTE)


def test_legend_fits_the_result():
    text = "\n".join(legend(_result("eager")))
    assert "torch.compile's median" in text and "reference path" in text and "without Inductor" in text
    result = _result("inductor")
    result.rows = result.rows[:2]
    result.baseline = "eager"
    text = "\n".join(legend(result))
    assert "eager's median" in text and "reference path" not in text and "without Inductor" not in text


def test_format_result_names_labels_and_files():
    result = _result()
    result.files = ["out/strip_label1.png", "out/results.json"]
    text = result.format()
    assert "1 (disc moving left), 10 (triangle moving down)" in text
    assert text.rstrip().endswith("wrote: out/strip_label1.png, out/results.json")


def test_noisy_timings_are_flagged():
    result = _result()
    assert not any("noisy" in line for line in legend(result))  # spreads <= 1.4
    result.rows[1].times_s = [1.0, 4.8, 1.1]
    (warning,) = [line for line in legend(result) if "noisy" in line]
    assert warning.startswith("WARNING") and "torch.compile: 1.00 to 4.80 s over 3 rounds" in warning


def test_plurals():
    result = _result()
    result.labels, result.steps, result.rounds = [1], 1, 1
    text = result.format()
    assert "1 video x 1 step," in text and "over 1 round," in text
