"""Errors the runtime raises for bad input, as opposed to bugs or backend crashes."""


class RuntimeInputError(ValueError):
    """Bad input to a runner or classifier: wrong shape or dtype, NaN, empty batch, unreadable file..."""


class BackendUnavailable(RuntimeError):
    """An optional backend (onnxruntime-gpu, TensorRT) is not installed or has no device."""
