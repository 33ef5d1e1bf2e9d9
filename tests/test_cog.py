"""unosat.io.cog: the COG writer leaves nothing behind after a failure; block sizes are checked."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import rasterio

from unosat.errors import UnosatError
from unosat.io.raster import Grid


def test_cog_writer_cleans_up_after_a_failure(tmp_path):
    from unosat.io.cog import CogOptions, write_cog

    grid = Grid(rasterio.crs.CRS.from_epsg(32638), rasterio.transform.from_origin(0, 0, 10, 10), 40, 30)

    def blocks():
        yield 0, np.zeros((1, 10, 40), dtype=np.uint8)
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        write_cog(tmp_path / "x.tif", grid, "uint8", 255, blocks(), CogOptions(blocksize=128))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UnosatError, match="cog.blocksize"):
        CogOptions(blocksize=100)
    shutil.rmtree(tmp_path, ignore_errors=True)
