"""The grid helper used for training samples."""

import numpy as np
import pytest
import torch
from PIL import Image

from ddim.images import make_grid, save_grid, save_images, to_uint8


def test_to_uint8_maps_the_data_range():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0])
    assert to_uint8(x).tolist() == [0, 0, 128, 255, 255]


def test_grid_places_tiles_row_major_with_padding():
    imgs = torch.stack([torch.full((1, 2, 3), v, dtype=torch.uint8) for v in (10, 20, 30)])
    g = make_grid(imgs, nrow=2, padding=1)
    assert g.shape == (1, 2 * 3 + 1, 2 * 4 + 1)
    assert g[0, 1, 1] == 10 and g[0, 1, 5] == 20 and g[0, 4, 1] == 30
    assert g[0, 4, 5] == 0 and g[0, 0, 0] == 0  # the empty slot and the padding
    assert make_grid(torch.zeros(5, 3, 4, 4)).shape == (3, 2 * 6 + 2, 3 * 6 + 2)  # ceil(sqrt(5)) = 3 per row


def test_save_grid_and_images(tmp_path):
    x = torch.rand(4, 3, 5, 5) * 2 - 1
    p = save_grid(x, tmp_path / "a" / "grid.png", nrow=4, padding=0)
    im = Image.open(p)
    assert im.size == (20, 5) and im.mode == "RGB"
    assert torch.equal(torch.from_numpy(np.array(im)).permute(2, 0, 1)[:, :, :5], to_uint8(x[0]))
    paths = save_images(x[:2], tmp_path / "b", start=7)
    assert [q.name for q in paths] == ["000007.png", "000008.png"]


def test_bad_input():
    with pytest.raises(ValueError, match="1 or 3 channels"):
        make_grid(torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        make_grid(torch.zeros(4, 4))
