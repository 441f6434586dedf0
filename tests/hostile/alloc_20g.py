"""Tries to allocate 20 GiB, at once and then piecemeal, touching every page."""

import sys

GiB = 1024**3
try:
    blob = bytearray(20 * GiB)
    print("allocated 20 GiB at once (limit missing!)", flush=True)
except MemoryError:
    print("single 20 GiB allocation refused", flush=True)
chunks = []
try:
    while len(chunks) < 20 * 16:
        chunks.append(b"x" * (64 * 1024 * 1024))
except MemoryError:
    print(f"piecemeal allocation stopped at {len(chunks) * 64} MiB", flush=True)
    sys.exit(1)
print("allocated 20 GiB piecemeal (limit missing!)", flush=True)
