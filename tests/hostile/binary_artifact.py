"""Writes binary garbage (invalid UTF-8) as its artifact and to stdout."""

import os
import sys

garbage = b"# bin\n" + bytes(range(256)) * 16 + b"\xff\xfe\xc3\x28" + os.urandom(1024)
sys.stdout.buffer.write(garbage + b"\n")
with open(sys.argv[2], "wb") as fh:
    fh.write(garbage)
