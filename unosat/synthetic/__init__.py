"""A synthetic Sentinel-1 demo dataset laid out as the UNOSAT challenge data, for trying the pipeline offline.

:func:`generate_demo` writes VV/VH GeoTIFFs (linear power) and building-footprint labels for the cities of a
:class:`DemoSpec` (``conf/demo/*.yaml``); :func:`render_scene` renders one acquisition in memory with its
true building pixels, for tests.

Modules: :mod:`~unosat.synthetic.spec` (what to generate), :mod:`~unosat.synthetic.tiles` (where),
:mod:`~unosat.synthetic.landcover` (land cover and its backscatter), :mod:`~unosat.synthetic.buildings`
(footprints, double bounce, layover, shadow), :mod:`~unosat.synthetic.speckle`,
:mod:`~unosat.synthetic.swath` (nodata wedge), :mod:`~unosat.synthetic.generator` (rendering and writing).
"""

from unosat.synthetic.generator import (
    CityLayout,
    city_layout,
    generate_demo,
    label_path,
    render_scene,
    scene_paths,
)
from unosat.synthetic.spec import Acquisition, CitySpec, DemoSpec
from unosat.synthetic.tiles import city_grid

__all__ = [
    "Acquisition",
    "CityLayout",
    "CitySpec",
    "DemoSpec",
    "city_grid",
    "city_layout",
    "generate_demo",
    "label_path",
    "render_scene",
    "scene_paths",
]
