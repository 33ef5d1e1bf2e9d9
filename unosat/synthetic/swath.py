"""The part of an MGRS tile that a pass's swath misses: a triangular nodata wedge at one corner.

After ortho-rectification onto the MGRS grid, the swath edge crosses the tile diagonally, leaving a wedge of
nodata (0, or -99999 in some files). Ascending and descending swaths cross the tile differently, so their
wedges sit at different corners; all acquisitions of one pass (same relative orbit) share theirs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unosat.synthetic.spec import ORBIT_PASSES

#: Corners as (row side, column side): north/south, west/east.
CORNERS = ("NW", "NE", "SW", "SE")


@dataclass(frozen=True)
class Wedge:
    """A right triangle at ``corner`` covering ``fraction`` of the scene (its legs are ``sqrt(2 * fraction)``
    of the scene's height and width)."""

    corner: str
    fraction: float

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """``(rows, cols)`` bool, True where the swath has no data (pixel centre inside the triangle)."""
        rows, cols = shape
        if self.fraction <= 0:
            return np.zeros(shape, dtype=bool)
        leg = np.sqrt(2.0 * self.fraction)
        r = (np.arange(rows) + 0.5) / rows
        c = (np.arange(cols) + 0.5) / cols
        if self.corner[0] == "S":
            r = 1.0 - r
        if self.corner[1] == "E":
            c = 1.0 - c
        return (r[:, None] + c[None, :]) < leg


def pass_wedges(rng: np.random.Generator, fraction_range: tuple[float, float]) -> dict[str, Wedge]:
    """One wedge per orbit pass (``ASC``, ``DES``) at two different corners, each covering a fraction drawn
    uniformly in ``fraction_range``."""
    corners = rng.choice(len(CORNERS), size=len(ORBIT_PASSES), replace=False)
    return {
        orbit_pass: Wedge(CORNERS[int(i)], float(rng.uniform(*fraction_range)))
        for orbit_pass, i in zip(ORBIT_PASSES, corners)
    }
