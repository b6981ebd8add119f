"""Strips and GIFs: each cell holds exactly the video's frame, rows are labelled; results.json."""
import json
import math
import random
import sys
from types import SimpleNamespace

import pytest
import torch

from ditcompile.demo.images import write_outputs
from ditcompile.fidelity import save_gif, save_strip

Image = pytest.importorskip("PIL.Image")
RNG = random.Random()


def _videos(b, f=3, h=4, w=5):
    return torch.rand(b, 3, f, h, w, generator=torch.Generator().manual_seed(RNG.randint(0, 2**31))) * 2 - 1


def _cells_equal(image, videos, frames, scale, gap):
    """Every (row, frame) cell of `image` equals the frame, quantized to uint8 and enlarged."""
    px = torch.from_numpy(__import__("numpy").asarray(image.convert("RGB")).copy())  # [H, W, 3]
    b_count, _, _, h, w = videos.shape
    margin = px.shape[1] - len(frames) * (w * scale + gap) - gap
    band = px.shape[0] - b_count * (h * scale + gap) - gap  # the title's band above the rows
    expected = ((videos.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    for b in range(b_count):
        for col, f in enumerate(frames):
            y0, x0 = band + gap + b * (h * scale + gap), margin + gap + col * (w * scale + gap)
            cell = px[y0:y0 + h * scale, x0:x0 + w * scale]
            want = expected[b, :, f].permute(1, 2, 0).repeat_interleave(scale, 0).repeat_interleave(scale, 1)
            assert torch.equal(cell, want), (b, f)
    return margin


def test_strip_cells_and_label_margin(tmp_path):
    videos, scale, gap = _videos(RNG.randint(2, 4)), RNG.randint(1, 3), RNG.randint(0, 2)
    plain, labelled = tmp_path / "plain.png", tmp_path / "labelled.png"
    save_strip(videos, plain, scale=scale, gap=gap)
    labels = [f"row {i} with a label" for i in range(videos.shape[0])]
    save_strip(videos, labelled, scale=scale, gap=gap, row_labels=labels)
    assert _cells_equal(Image.open(plain), videos, range(videos.shape[2]), scale, gap) == 0
    margin = _cells_equal(Image.open(labelled), videos, range(videos.shape[2]), scale, gap)
    assert margin > 0
    band = torch.from_numpy(__import__("numpy").asarray(Image.open(labelled).convert("L")).copy())[:, :margin]
    assert (band < 128).any(), "the labels are drawn (dark text in the white margin)"


def test_strip_title_band(tmp_path):
    videos = _videos(2, f=6, w=20)  # rows wider than the title: the cells start right after the margin
    path = tmp_path / "titled.png"
    save_strip(videos, path, scale=2, gap=1, row_labels=["a", "b"], title="label 1: disc moving left")
    image = Image.open(path)
    rows_height = 2 * (videos.shape[3] * 2 + 1) + 1
    assert image.height > rows_height
    _cells_equal(image, videos, range(6), 2, 1)
    top = torch.from_numpy(__import__("numpy").asarray(image.convert("L")).copy())[:image.height - rows_height]
    assert (top < 128).any(), "the title is drawn in the band above the rows"


def test_gif_plays_the_frames(tmp_path):
    videos, scale = _videos(2, f=RNG.randint(2, 5)), 2
    path = tmp_path / "v.gif"
    save_gif(videos, path, scale=scale, gap=1, row_labels=["a", "b"], frame_ms=100)
    gif = Image.open(path)
    assert gif.n_frames == videos.shape[2]
    for f in range(videos.shape[2]):
        gif.seek(f)
        # GIF is paletted: colours survive only approximately; compare each cell's mean colour
        px = torch.from_numpy(__import__("numpy").asarray(gif.convert("RGB")).copy()).float()
        h, w = videos.shape[3] * scale, videos.shape[4] * scale
        margin = px.shape[1] - (w + 1) - 1
        for b in range(2):
            y0 = 1 + b * (h + 1)
            cell = px[y0:y0 + h, margin + 1:margin + 1 + w].mean((0, 1))
            want = ((videos[b, :, f] + 1) * 127.5).mean((1, 2))
            assert (cell - want).abs().max() < 12, (f, b, cell, want)


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match=r"videos must be \[B, 3, F, H, W\]"):
        save_strip(torch.zeros(2, 3, 4), tmp_path / "x.png")
    with pytest.raises(ValueError, match="row_labels has 1 labels for 2 videos"):
        save_gif(_videos(2), tmp_path / "x.gif", row_labels=["only one"])


def _result(labels):
    rows = [SimpleNamespace(key=k, title=t) for k, t in (("eager", "eager (dense)"), ("cache", "ditaccel step cache"))]
    videos = {r.key: _videos(len(labels)) for r in rows}
    result = SimpleNamespace(rows=rows, labels=labels, videos=videos, files=[], steps=4, seed=0)
    result.to_dict = lambda: {"meta": {"psnr": math.inf, "labels": labels, "files": list(result.files)},
                              "rows": [{"psnr_db": math.inf}, {"psnr_db": 31.5}]}
    return result


def test_write_outputs(tmp_path):
    labels = RNG.sample(range(16), 2)
    result = _result(labels)
    out = tmp_path / "new" / "folder"
    written = write_outputs(result, out, command="ditaccel demo")
    assert written == result.files
    for label in labels:
        strip = Image.open(out / f"strip_label{label}.png")
        strip.verify()
        assert Image.open(out / f"video_label{label}.gif").n_frames == 3
    text = (out / "results.json").read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    assert data["rows"][0]["psnr_db"] is None and data["rows"][1]["psnr_db"] == 31.5  # non-finite -> null
    assert data["meta"]["command"] == "ditaccel demo"
    assert data["meta"]["files"] == written and written[-1].endswith("results.json")


def test_stale_files_and_unwritable_folder(tmp_path):
    from ditcompile.demo.images import prepare_out_dir, stale_files

    out = tmp_path / "o"
    result = _result([3])
    old = write_outputs(_result([5]), out)
    written = write_outputs(result, out)
    assert stale_files(out, written) == ["strip_label5.png", "video_label5.gif"]
    assert all(__import__("os").path.exists(p) for p in old), "earlier files are kept, never deleted"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="cannot write into the output folder"):
        prepare_out_dir(blocker / "sub")


def test_write_outputs_without_pillow(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "PIL", None)
    written = write_outputs(_result([3]), tmp_path)
    assert [p.rsplit("/", 1)[-1] for p in written] == ["results.json"]
    assert "no images written" in caplog.text and "pip install pillow" in caplog.text
