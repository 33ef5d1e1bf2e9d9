"""Exporting trained networks out of Python: ONNX models that QGIS (Deepness), onnxruntime and ``predict.py`` run.

- :mod:`unosat.export.graph`: the exported module (VH, VV in; the band recipe and normalisation inside;
  probabilities out);
- :mod:`unosat.io.onnx_metadata`: the Deepness metadata keys and unosat's own, written here and read back
  by ``predict.py``;
- :mod:`unosat.export.model_card`: the ``model.md`` beside the file;
- :mod:`unosat.export.run`: ``python -m unosat.export`` (config ``conf/export.yaml``).

``onnx`` and ``onnxruntime`` are the optional extra ``.[export]``.
"""
