"""Writes a 100 MB artifact (ignoring SIGXFSZ): the artifact must come back capped."""

import signal
import sys

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
written = 0
with open(sys.argv[2], "w") as fh:
    fh.write("# big\n")
    try:
        for _ in range(100):
            fh.write("z" * (1024 * 1024))
            written += 1
        fh.flush()
    except OSError as exc:
        print(f"stopped at {written} MiB: {exc.strerror}")
print(f"wrote {written} MiB")
