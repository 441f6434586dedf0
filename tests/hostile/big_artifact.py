"""Writes a 100 MB artifact (ignoring SIGXFSZ): the artifact must come back capped."""

import os
import signal
import sys

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
written = 0
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, b"# big\n")
block = b"z" * (1024 * 1024)
try:
    for _ in range(100):
        os.write(fd, block)
        written += 1
except OSError as exc:  # the file-size limit, if it is below 100 MB
    print(f"stopped at {written} MiB: {exc.strerror}")
os.close(fd)
print(f"wrote {written} MiB")
