"""The shared vocabulary: tensor layouts (views, dims, errors) and the joint token layout."""
import pytest
import torch

from ditcompile.geometry import (
    BHSD, BSHD, TextSegment, TokenGrid, TokenLayout, cdiv, from_bhsd, heads_dim, seq_dim, to_bhsd,
)


def test_tensor_layout_views_and_dims():
    x = torch.randn(2, 7, 3, 5)  # [B, S, H, D]
    bhsd = to_bhsd(x, BSHD)
    assert bhsd.shape == (2, 3, 7, 5) and bhsd.data_ptr() == x.data_ptr()  # a view, no copy
    torch.testing.assert_close(bhsd[:, 1, 4], x[:, 4, 1])
    assert from_bhsd(bhsd, BSHD).shape == x.shape and torch.equal(from_bhsd(bhsd, BSHD), x)
    assert to_bhsd(x, BHSD) is x
    assert (seq_dim(BHSD), heads_dim(BHSD), seq_dim(BSHD), heads_dim(BSHD)) == (2, 1, 1, 2)
    assert x.shape[seq_dim(BSHD)] == 7 and bhsd.shape[seq_dim(BHSD)] == 7
    with pytest.raises(ValueError, match=r"layout must be one of \('bhsd', 'bshd'\), got 'sbhd'"):
        seq_dim("sbhd")


@pytest.mark.parametrize("position, text, video_start, text_range", [
    (None, 0, 0, None), ("before", 5, 5, (0, 5)), ("after", 5, 0, (24, 29)), ("before", 0, 0, None),
])
def test_token_layout(position, text, video_start, text_range):
    segment = TextSegment(position, text, "t") if position else None
    layout = TokenLayout.of(TokenGrid(2, 3, 4, "t"), segment)
    assert (layout.num_video, layout.total) == (24, 24 + text)
    assert layout.video_start == video_start and layout.text_range == text_range
    assert TokenLayout.of((2, 3, 4), segment) == layout and TokenLayout.of(layout) is layout
    f, h, w = layout.video_coords()
    index = torch.arange(24)
    assert torch.equal(f * 12 + h * 4 + w, index)  # frame-major raster order


def test_token_layout_errors_name_the_field():
    with pytest.raises(ValueError, match="grid.height"):
        TokenLayout.of((2, 0, 4))
    with pytest.raises(ValueError, match="text.length"):
        TokenLayout.of((2, 3, 4), TextSegment("after", None, "t"))
    with pytest.raises(ValueError, match="text.position"):
        TokenLayout.of((2, 3, 4), TextSegment("middle", 3, "t"))


def test_cdiv():
    assert [cdiv(a, 16) for a in (0, 1, 16, 17, 32)] == [0, 1, 1, 2, 2]
