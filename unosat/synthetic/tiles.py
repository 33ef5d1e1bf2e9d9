"""Where a city's synthetic scene lies: its MGRS tile id -> UTM upper-left corner -> raster grid.

Sentinel-2 / S1Tiling tiles start at the north-west corner of an MGRS 100 km square, so the demo scene of
``38SLF`` (Mosul) starts at x = 300 000 m, y = 4 100 000 m in UTM zone 38N, as the real tile does.
"""

from __future__ import annotations

from rasterio.crs import CRS
from rasterio.transform import Affine

from unosat.errors import UnosatError
from unosat.io.raster import Grid
from unosat.synthetic.spec import CitySpec, DemoSpec

#: MGRS latitude bands, 8 degrees each from 80 S.
LATITUDE_BANDS = "CDEFGHJKLMNPQRSTUVWX"
#: 100 km column letters, by UTM zone modulo 3 (zones 1, 4, 7... use the first set).
COLUMN_LETTER_SETS = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")
#: 100 km row letters; they repeat every 2 000 km of northing and start at F in even zones.
ROW_LETTERS = "ABCDEFGHJKLMNPQRSTUV"
SQUARE_M = 100_000
ROW_CYCLE_M = 2_000_000
#: Approximate northing per degree of latitude, enough to tell which 2 000 km row cycle a band is in.
METRES_PER_DEGREE_LATITUDE = 110_900
SOUTHERN_FALSE_NORTHING_M = 10_000_000


def mgrs_square_corner(mgrs: str) -> tuple[float, float]:
    """UTM ``(easting, northing)`` in metres of the north-west corner of the 100 km square ``mgrs``.

    ``38SLF`` -> ``(300000, 4100000)``. The UTM zone is the id's two digits; the caller's CRS should be
    that zone's (EPSG:326<zone> in the north).
    """
    mgrs = mgrs.upper()
    try:
        zone = int(mgrs[:2])
        band, column, row = mgrs[2], mgrs[3], mgrs[4]
        columns = COLUMN_LETTER_SETS[(zone - 1) % 3]
        easting = (columns.index(column) + 1) * SQUARE_M
        row_offset = 5 if zone % 2 == 0 else 0
        northing = (ROW_LETTERS.index(row) - row_offset) % len(ROW_LETTERS) * SQUARE_M
        band_centre_deg = -80 + 8 * LATITUDE_BANDS.index(band) + 4
    except (ValueError, IndexError):
        raise UnosatError(f"'{mgrs}' is not a valid MGRS 100 km tile id (such as 38SLF)") from None
    approx = band_centre_deg * METRES_PER_DEGREE_LATITUDE
    if band_centre_deg < 0:
        approx += SOUTHERN_FALSE_NORTHING_M
    northing += round((approx - northing) / ROW_CYCLE_M) * ROW_CYCLE_M
    return float(easting), float(northing + SQUARE_M)


def city_grid(spec: DemoSpec, city: CitySpec) -> Grid:
    """The raster grid of every scene of ``city``: ``spec.crs``, north up, ``spec.pixel_size`` metre pixels,
    ``spec.height`` x ``spec.width``, upper-left corner at the city's MGRS square corner."""
    west, north = mgrs_square_corner(city.mgrs)
    transform = Affine(spec.pixel_size, 0.0, west, 0.0, -spec.pixel_size, north)
    return Grid(CRS.from_user_input(spec.crs), transform, spec.width, spec.height)
