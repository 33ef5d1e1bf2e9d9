"""Tile windows: coverage, overlap, alignment to the border, no duplicates."""

import numpy as np
import pytest

from unosat.errors import UnosatError
from unosat.io.raster import train_offsets
from unosat.prepare.tiling import TilingConfig, tile_windows
from unosat.prepare.tiling import test_offsets as stride_offsets


def test_unosat_scene_gets_23_tiles_per_axis():
    offsets = train_offsets(10980, 512, 32)
    assert len(offsets) == 23
    assert offsets[0] == 0 and offsets[-1] == 10980 - 512
    assert min(np.diff(offsets)) <= 512 - 32  # overlap at least 32


@pytest.mark.parametrize("length", [512, 513, 700, 1000, 10979, 10190, 4096])
@pytest.mark.parametrize("size,overlap", [(512, 32), (256, 64), (64, 8)])
def test_train_offsets_cover_with_min_overlap(length, size, overlap):
    offsets = train_offsets(length, size, overlap)
    assert offsets == sorted(set(offsets))
    assert offsets[0] == 0 and offsets[-1] + size == max(length, size)
    assert all(size - d >= overlap for d in np.diff(offsets))
    covered = np.zeros(length, bool)
    for o in offsets:
        covered[o : o + size] = True
    assert covered.all()


def test_small_scene_gets_one_padded_tile():
    assert train_offsets(100, 512, 32) == [0]


def test_test_tiles_have_constant_stride_and_pad_the_end():
    assert stride_offsets(5000, 2048) == [0, 2048, 4096]
    windows = tile_windows(5000, 3000, "test", TilingConfig(test_size=2048))
    assert len(windows) == 3 * 2
    assert all(w.width == 2048 and w.height == 2048 for w in windows)


def test_test_tiles_are_clipped_to_a_scene_smaller_than_the_test_size():
    # the demo: 1024 px scenes, 2048 px test tiles -> one tile of the whole scene (was one tile 3/4 nodata,
    # flagged skip, so test=true found no test tile)
    windows = tile_windows(1024, 1024, "test", TilingConfig(test_size=2048))
    assert [(w.col_off, w.row_off, w.width, w.height) for w in windows] == [(0, 0, 1024, 1024)]
    # clipped to the shorter side: square tiles with a constant stride along the longer one
    windows = tile_windows(1000, 2500, "test", TilingConfig(test_size=2048))
    assert [(w.col_off, w.row_off, w.width, w.height) for w in windows] == [
        (0, 0, 1000, 1000),
        (1000, 0, 1000, 1000),
        (2000, 0, 1000, 1000),
    ]


def test_every_pixel_is_in_a_train_tile_2d():
    h, w = 300, 257
    covered = np.zeros((h, w), bool)
    for win in tile_windows(h, w, "train", TilingConfig(64, 8, 128)):
        covered[win.row_off : win.row_off + win.height, win.col_off : win.col_off + win.width] = True
    assert covered.all()


def test_bad_tiling_is_refused():
    with pytest.raises(UnosatError):
        TilingConfig(64, 64, 128)
