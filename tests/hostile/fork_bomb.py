"""A fork bomb: the process cap (pids cgroup / RLIMIT_NPROC) and the deadline contain it."""

import os

failures = 0
while True:
    try:
        if os.fork() == 0:
            continue  # children fork too
    except OSError:
        failures += 1
        if failures % 10000 == 1:
            print(f"fork refused ({failures})", flush=True)
