"""runtime/__init__.py: importing the package, its lazy names and its runner modules loads no torch (the
package is what ships to a device)."""
import subprocess
import sys


def test_runtime_imports_without_torch():
    code = ("import sys, runtime; runtime.OnnxrtRunner; runtime.measure; runtime.ModelMetadata;"
            "import runtime.onnxrt, runtime.bench, runtime.metadata, runtime.base;"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)")
    subprocess.run([sys.executable, "-c", code], check=True)
