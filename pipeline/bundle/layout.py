"""A bundle's own layout: its folders, and where the files it copies from the run go, relative to the bundle folder.

Relative paths are what MANIFEST.json records. The run folder's layout is not here: it is
:class:`pipeline.store.paths.RunDir`'s (the one place run paths are built), and a file the bundle copies from
the run keeps only its name. The web site (:func:`pipeline.bundle.js.lay_out_web`) places its models under
:data:`MODELS` too, so the browser measurement serves them where the web bundle does.
"""
from __future__ import annotations

from pipeline.store.paths import RunDir

#: the ONNX files the bundle ships
MODELS = "models"
#: the test set, the reference logits and the golden inputs (Python targets), MNIST's IDX files (node)
DATA = "data"
#: the run's report.json, copied under its own name
REPORT = RunDir.relative().report_json.as_posix()
#: the run's golden inputs (the export stage's), copied into :data:`DATA`
GOLDEN = f"{DATA}/{RunDir.relative().golden.name}"


def model(file: str) -> str:
    """Where the ONNX file ``file`` (a name from the variant table) goes in a bundle or the web site."""
    return f"{MODELS}/{file}"
