"""Random-shift augmentation of camera frames: each frame moves as a whole, by at most `pad` pixels."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from dfp_ros.learning.augmentation import random_shift  # noqa: E402


def _frames(b: int = 32, h: int = 12, w: int = 10) -> torch.Tensor:
    # Every pixel unique: a shifted frame can be located exactly in the original.
    return (torch.arange(b * h * w * 3) % 251).reshape(b, h, w, 3).to(torch.uint8)


def test_each_frame_is_its_own_shifted_copy_within_pad_pixels():
    x = _frames()
    y = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == torch.uint8
    shifts = set()
    for i in range(x.shape[0]):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(y[i, 2:-2, 2:-2], x[i, 2 + dy:x.shape[1] - 2 + dy, 2 + dx:x.shape[2] - 2 + dx])]
        assert len(found) == 1, f"frame {i} is not a shift of its original by <= 2 pixels"
        shifts.add(found[0])
    assert len(shifts) > 5  # frames of one batch move independently


def test_borders_repeat_the_edge_and_no_pad_is_the_identity():
    x = _frames(8)
    assert torch.equal(random_shift(x, 0), x)
    y = random_shift(x, 3, torch.Generator().manual_seed(1))
    h, w = x.shape[1:3]

    def read(frame: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
        return frame[(torch.arange(h) + dy).clamp(0, h - 1)][:, (torch.arange(w) + dx).clamp(0, w - 1)]

    for i in range(8):
        # The whole frame, borders included, is the original read at clamped (edge-repeating) indices.
        matches = [(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4) if torch.equal(y[i], read(x[i], dy, dx))]
        assert len(matches) == 1, f"frame {i}: borders are not the repeated edge"


def test_wrong_layout_is_refused():
    with pytest.raises(ValueError, match="B, H, W, C"):
        random_shift(torch.zeros(3, 8, 8, dtype=torch.uint8), 2)
