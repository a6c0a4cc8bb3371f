"""The runner a device runs: pipeline/runtime/device.py and the modules it imports, as one zip file that Python runs
as a program (a zipapp, `python3 runner.pyz ARGS`). The device measures with the very code this machine measures
with; it needs only Python 3.10 or newer, numpy and onnxruntime.

The zip is built the same way every time (fixed timestamps, sorted entries), so its sha256 names it in the
device's cache and a device that has it is not sent it again.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2]  # the folder holding pipeline/
MODULES = (
    "pipeline/__init__.py",
    "pipeline/errors.py",
    "pipeline/runtime/__init__.py",
    *(
        f"pipeline/runtime/{name}.py"
        for name in (
            "device",
            "environment",
            "latency",
            "memory",
            "one_thread_rival",
            "predict",
            "rounds",
            "sessions",
            "timing",
            "tuning",
        )
    ),
)
# The device's first words: what is missing is said as one JSON line (exit 3) before anything else can fail.
MAIN = """import json, sys
if sys.version_info < (3, 10):
    detail = "Python %d.%d; the runner needs 3.10 or newer" % sys.version_info[:2]
    print(json.dumps({"error": "python", "detail": detail}))
    sys.exit(3)
for module in ("numpy", "onnxruntime"):
    try:
        __import__(module)
    except ImportError as error:
        print(json.dumps({"error": "missing", "module": module, "detail": str(error).splitlines()[0]}))
        sys.exit(3)
from pipeline.runtime.device import main
sys.exit(main(sys.argv[1:]))
"""


def build() -> bytes:
    """The runner's bytes (deterministic)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, text in sorted([("__main__.py", MAIN), *((m, (PACKAGE / m).read_text()) for m in MODULES)]):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            bundle.writestr(info, text)
    return buffer.getvalue()


def digest() -> str:
    return hashlib.sha256(build()).hexdigest()
