"""Build wheels/eventpost-<version>-py3-none-any.whl from vendor/eventpost/ (stdlib only).

Deterministic (sorted entries, fixed timestamps), so rebuilding an unchanged source gives
the same bytes; tests/test_agents.py checks the shipped wheel against a fresh build.
Usage: python3 candidates/agent_beta/vendor/build_wheel.py
"""

import base64
import hashlib
import io
import re
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "eventpost" / "eventpost.py"
WHEELS = HERE.parent / "wheels"
STAMP = (2000, 1, 1, 0, 0, 0)


def build() -> tuple[str, bytes]:
    code = SOURCE.read_bytes()
    version = re.search(rb'__version__ = "([^"]+)"', code).group(1).decode()
    info = f"eventpost-{version}.dist-info"
    files = {
        "eventpost.py": code,
        f"{info}/METADATA": (f"Metadata-Version: 2.1\nName: eventpost\nVersion: {version}\n"
                             "Summary: Lays out a Discord post of events\n").encode(),
        f"{info}/WHEEL": (b"Wheel-Version: 1.0\nGenerator: dream-foundry build_wheel.py\n"
                          b"Root-Is-Purelib: true\nTag: py3-none-any\n"),
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    files[f"{info}/RECORD"] = ("\n".join(record + [f"{info}/RECORD,,"]) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(files):
            entry = zipfile.ZipInfo(name, STAMP)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(entry, files[name])
    return f"eventpost-{version}-py3-none-any.whl", buf.getvalue()


if __name__ == "__main__":
    name, data = build()
    WHEELS.mkdir(exist_ok=True)
    (WHEELS / name).write_bytes(data)
    print(f"wrote {WHEELS / name} ({len(data)} bytes)", file=sys.stderr)
