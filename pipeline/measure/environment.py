"""What machine and software produced a report, so its figures can be interpreted."""
from __future__ import annotations

import os
import platform
import sys
from importlib import metadata


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: the CPU features that decide how fast onnxruntime's int8 kernels run: x86 VNNI (a u8 x s8 dot product into
#: 32 bits; without it, 16-bit sums that saturate) and AMX tiles; ARM's dot product and int8 matrix multiply
INT8_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def cpu_flags() -> list[str]:
    """Which of :data:`INT8_FLAGS` this CPU has (empty where /proc/cpuinfo is absent)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    have = set(line.split(":", 1)[1].split())
                    return [f for f in INT8_FLAGS if f in have]
    except OSError:
        pass
    return []


def capture(threads: int) -> dict:
    """Versions and hardware; ``threads`` is the intra-op thread count the timings used."""
    import torch

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "onnx": _version("onnx"),
        "cpu": cpu_name(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "threads": threads or torch.get_num_threads(),
        "platform": platform.platform(),
        "executable": sys.executable,
    }
    try:
        import onnxruntime

        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    trt = _version("tensorrt") or _version("tensorrt-cu12") or _version("tensorrt-cu13")
    if trt:  # read from package metadata: importing tensorrt would load CUDA libraries
        env["tensorrt"] = trt
    for key, pkg in EDGE_PACKAGES.items():  # the edge runtimes' releases, when installed (their rows ran on them)
        if _version(pkg):
            env[key] = _version(pkg)
    return env


#: report.json's environment key -> the distribution whose version it records (read from metadata, not imported)
EDGE_PACKAGES = {"openvino": "openvino", "nncf": "nncf", "executorch": "executorch", "litert": "ai-edge-litert"}
