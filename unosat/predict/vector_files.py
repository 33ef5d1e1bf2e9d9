"""Polygon files written atomically and in batches: GeoPackage and Shapefile through pyogrio, GeoJSON
streamed as text (:func:`feature_writer`, :func:`atomic_vector`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import shapely
from rasterio.crs import CRS

from unosat.errors import UnosatError
from unosat.io.atomic import atomic_path, temporary_sibling

#: Sidecar files a Shapefile may have besides ``.shp`` (spatial indexes included: a stale one would lie).
SHAPEFILE_SIDECARS = (".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx")

#: Features buffered before an append to the output file.
WRITE_BATCH = 100_000


@contextlib.contextmanager
def atomic_vector(path: Path, driver: str) -> Iterator[Path]:
    """A temporary path to write the output to, moved into place on success (all sidecars for Shapefiles)."""
    if driver != "ESRI Shapefile":
        with atomic_path(path) as tmp:
            yield tmp
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = temporary_sibling(path.with_suffix(""))
    tmp_dir.mkdir()
    try:
        yield tmp_dir / path.name
        written = {p.suffix.lower(): p for p in tmp_dir.iterdir()}
        if ".shp" not in written:
            raise RuntimeError(f"no .shp was written for {path}")
        for ext in SHAPEFILE_SIDECARS:  # stale sidecars (indexes above all) of an earlier output go first
            if ext not in written:
                path.with_suffix(ext).unlink(missing_ok=True)
        for ext, p in written.items():
            if ext != ".shp":
                os.replace(p, path.with_suffix(ext))
        os.replace(written[".shp"], path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


class _OgrWriter:
    """GPKG / Shapefile through pyogrio: the first batch creates the layer, later batches append."""

    def __init__(self, path: Path, driver: str, layer: str, crs: CRS):
        self.path, self.driver, self.layer, self.crs = path, driver, layer, crs
        self.buffer: list[gpd.GeoDataFrame] = []
        self.buffered = 0
        self.created = False

    def write(self, frame: gpd.GeoDataFrame) -> None:
        self.buffer.append(frame)
        self.buffered += len(frame)
        if self.buffered >= WRITE_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.buffer and self.created:
            return
        frame = gpd.GeoDataFrame(
            pd.concat(self.buffer, ignore_index=True) if self.buffer else _empty_frame(self.crs),
            crs=self.crs,
        )
        pyogrio.write_dataframe(
            frame,
            self.path,
            driver=self.driver,
            layer=self.layer,
            append=self.created,
            geometry_type="Polygon",
            promote_to_multi=False,
        )
        self.created = True
        self.buffer, self.buffered = [], 0

    def close(self) -> None:
        self.flush()


def _empty_frame(crs: CRS) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {
            "id": np.array([], np.int64),
            "area_m2": np.array([], np.float64),
            "mean_prob": np.array([], np.float64),
            "n_dates": np.array([], np.int32),
        },
        geometry=gpd.GeoSeries([], crs=crs),
    )


class _GeoJSONWriter:
    """GeoJSON streamed as text, feature by feature (GDAL's GeoJSON driver rewrites the file to append).

    Like GDAL, a CRS other than WGS 84 is named in a ``crs`` member (``urn:ogc:def:crs:EPSG::<code>``);
    missing values are ``null``; exterior rings are counter-clockwise, holes clockwise (RFC 7946).
    """

    def __init__(self, path: Path, layer: str, crs: CRS):
        epsg = crs.to_epsg()
        if epsg is None:
            raise UnosatError(f"{path}: GeoJSON output needs a CRS with an EPSG code, got {crs.to_string()}")
        header = {"type": "FeatureCollection", "name": layer}
        if epsg != 4326:
            header["crs"] = {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}"}}
        self.file = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.file.write(json.dumps(header)[:-1] + ', "features": [\n')
        self.first = True

    def write(self, frame: gpd.GeoDataFrame) -> None:
        if len(frame) == 0:
            return
        polygons = shapely.orient_polygons(np.asarray(frame.geometry.values, dtype=object))  # right-hand rule
        geometries = shapely.to_geojson(polygons).tolist()
        names = [c for c in frame.columns if c != frame.geometry.name]
        columns = [[f'"{name}": {token}' for token in _json_tokens(frame[name].to_numpy())] for name in names]
        lines = [
            f'{{"type": "Feature", "properties": {{{", ".join(props)}}}, "geometry": {geom}}}'
            for *props, geom in zip(*columns, geometries)
        ]
        self.file.write(("" if self.first else ",\n") + ",\n".join(lines))
        self.first = False

    def close(self) -> None:
        self.file.write("\n]}\n")
        self.file.close()


def _json_tokens(values: np.ndarray) -> list[str]:
    """JSON text of each value of a numeric or string column (non-finite numbers are ``null``)."""
    if np.issubdtype(values.dtype, np.integer):
        return [str(v) for v in values.tolist()]
    if np.issubdtype(values.dtype, np.floating):
        return [repr(v) if math.isfinite(v) else "null" for v in values.astype(np.float64).tolist()]
    return [json.dumps(v) for v in values.tolist()]


@contextlib.contextmanager
def feature_writer(path: Path, driver: str, layer: str, crs: CRS) -> Iterator[_GeoJSONWriter | _OgrWriter]:
    """A writer of polygon frames to ``path`` (``write(frame)``, appended in batches), closed on success; on
    an error the file is left to :func:`atomic_vector` to discard."""
    writer = _GeoJSONWriter(path, layer, crs) if driver == "GeoJSON" else _OgrWriter(path, driver, layer, crs)
    ok = False
    try:
        yield writer
        ok = True
    finally:
        if ok:
            writer.close()
        elif isinstance(writer, _GeoJSONWriter):
            writer.file.close()
