"""The procedural video generator: deterministic, in range, labelled, temporally correlated."""

import pytest
import torch

from ditcompile.fidelity.videos import (
    DIRECTIONS, NUM_CLASSES, SHAPES, frame_correlation, generate_videos, label_name, label_of, split_label,
)


def test_deterministic_from_seed():
    a = generate_videos(6, seed=11)
    b = generate_videos(6, seed=11)
    c = generate_videos(6, seed=12)
    assert torch.equal(a.videos, b.videos) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.videos, c.videos)


def test_layout_and_range():
    batch = generate_videos(4, seed=0, frames=6, height=24, width=20)
    assert batch.videos.shape == (4, 3, 6, 24, 20)
    assert batch.videos.dtype == torch.float32
    assert batch.videos.min() >= -1 and batch.videos.max() <= 1
    assert batch.labels.shape == (4,) and batch.labels.dtype == torch.int64
    assert ((batch.labels >= 0) & (batch.labels < NUM_CLASSES)).all()


def test_consecutive_frames_correlated_but_changing():
    v = generate_videos(32, seed=5).videos
    assert frame_correlation(v) > 0.6
    # ... and the content does move: consecutive frames are not identical.
    diff = (v[:, :, 1:] - v[:, :, :-1]).abs().flatten(1).amax(1)
    assert (diff > 0.2).all()
    # Far-apart frames are less alike than neighbours.
    near = frame_correlation(v[:, :, :2])
    far = frame_correlation(v[:, :, ::7])
    assert near > far


def test_labels_fix_shape_and_direction():
    labels = torch.arange(NUM_CLASSES)
    batch = generate_videos(NUM_CLASSES, seed=3, labels=labels)
    assert torch.equal(batch.labels, labels)
    # The shape moves in the labelled direction: track the centroid of the pixels that differ
    # from the per-pixel temporal median (the static background).
    v = batch.videos.mean(1)  # [B, F, H, W]
    fg = (v - v.median(dim=1, keepdim=True).values).abs() > 0.15
    ys = torch.arange(v.shape[2]).view(1, 1, -1, 1).float()
    xs = torch.arange(v.shape[3]).view(1, 1, 1, -1).float()
    w = fg.float()
    first, last = 0, v.shape[1] - 1
    for b in range(NUM_CLASSES):
        s, d = split_label(b)
        m0, m1 = w[b, first], w[b, last]
        cx = [(m * xs[0, 0]).sum() / m.sum() for m in (m0, m1)]
        cy = [(m * ys[0, 0]).sum() / m.sum() for m in (m0, m1)]
        dx, dy = float(cx[1] - cx[0]), float(cy[1] - cy[0])
        expect = {"right": dx > 3, "left": dx < -3, "down": dy > 3, "up": dy < -3}[DIRECTIONS[d]]
        assert expect, f"{label_name(b)}: centroid moved ({dx:.1f}, {dy:.1f})"


def test_label_helpers():
    assert label_of("triangle", "down") == SHAPES.index("triangle") * len(DIRECTIONS) + 2
    assert split_label(label_of(3, 1)) == (3, 1)
    assert label_name(label_of("bar", "up")) == "bar moving up"
    with pytest.raises(ValueError):
        split_label(NUM_CLASSES)
    with pytest.raises(ValueError):
        generate_videos(2, labels=[0, NUM_CLASSES])
