"""Model -> file transforms: PyTorch -> ONNX (:mod:`.onnx`), ONNX -> reduced-precision ONNX
(:mod:`.precision`), ONNX -> TensorRT engine (:mod:`.tensorrt`), and the Q/DQ rule check (:mod:`.qdq`).

They take paths, arrays and plain options and import nothing from ``pipeline/`` (``tests/test_layering.py``
enforces it), so the same functions serve the pipeline's stages, the Python API and, for
:mod:`.tensorrt`, a device that has only the bundle. Heavy backends are imported inside functions.
"""
