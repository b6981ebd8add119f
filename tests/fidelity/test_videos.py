"""The procedural video generator: deterministic, in range, labelled, temporally correlated."""

import pytest
import torch

from ditcompile.fidelity.videos import (
    DIRECTIONS,
    NUM_CLASSES,
    SHAPES,
    frame_correlation,
    generate_videos,
    label_name,
    label_of,
    split_label,
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


def test_labels_fix_shape_and_direction():
    labels = torch.arange(NUM_CLASSES)
    batch = generate_videos(NUM_CLASSES, seed=3, labels=labels)
    assert torch.equal(batch.labels, labels)
    assert batch.masks.shape == (NUM_CLASSES, 8, 32, 32)
    # The shape (its coverage mask's centroid) moves in the labelled direction.
    w = batch.masks
    ys = torch.arange(32).view(-1, 1).float() + 0.5
    xs = torch.arange(32).view(1, -1).float() + 0.5
    for b in range(NUM_CLASSES):
        _, d = split_label(b)
        cx = [float((w[b, f] * xs).sum() / w[b, f].sum()) for f in (0, 7)]
        cy = [float((w[b, f] * ys).sum() / w[b, f].sum()) for f in (0, 7)]
        dx, dy = cx[1] - cx[0], cy[1] - cy[0]
        expect = {"right": dx > 3, "left": dx < -3, "down": dy > 3, "up": dy < -3}[DIRECTIONS[d]]
        assert expect, f"{label_name(b)}: centroid moved ({dx:.1f}, {dy:.1f})"
    # The mask is the shape: the foreground differs from the background around it.
    assert (batch.masks > 0.99).flatten(1).any(1).all()


def test_background_pans_like_a_camera():
    """Texture background: neighbours alike, distant frames unlike; the static gradient stays alike."""
    tex = generate_videos(32, seed=9).videos
    grad = generate_videos(32, seed=9, background="gradient").videos
    assert frame_correlation(tex[:, :, :2]) > 0.6
    assert frame_correlation(tex[:, :, ::7]) < 0.5 * frame_correlation(tex[:, :, :2])
    assert frame_correlation(grad[:, :, ::7]) > frame_correlation(tex[:, :, ::7])
    with pytest.raises(ValueError):
        generate_videos(1, background="stripes")


def test_label_helpers():
    assert label_of("triangle", "down") == SHAPES.index("triangle") * len(DIRECTIONS) + 2
    assert split_label(label_of(3, 1)) == (3, 1)
    assert label_name(label_of("bar", "up")) == "bar moving up"
    with pytest.raises(ValueError):
        split_label(NUM_CLASSES)
    with pytest.raises(ValueError):
        generate_videos(2, labels=[0, NUM_CLASSES])
