"""Writes a 10 GiB file into its working directory: the file-size limit stops it."""

import os

chunk = b"\0" * (1024 * 1024)
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "huge.bin"), "wb") as fh:
    for i in range(10 * 1024):
        fh.write(chunk)
        if i % 256 == 0:
            print(f"{i} MiB written", flush=True)
print("wrote 10 GiB (limit missing!)")
