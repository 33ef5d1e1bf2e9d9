"""unosat: building footprints from Sentinel-1 SAR scenes.

The pipeline is one-way: raw scenes -> prepared dataset (:mod:`unosat.prepare`) -> checkpoint
(:mod:`unosat.training`) -> georeferenced predictions (:mod:`unosat.predict`).
"""

__version__ = "0.1.0"
