"""Prints 1 GiB to stdout: the capture keeps only the tail."""

import sys

line = b"y" * 1023 + b"\n"
block = line * 1024  # 1 MiB
out = sys.stdout.buffer
for _ in range(1024):
    out.write(block)
out.write(b"END-OF-FLOOD\n")
out.flush()
with open(sys.argv[2], "w") as fh:
    fh.write("# flooded\n")
