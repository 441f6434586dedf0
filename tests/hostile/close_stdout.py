"""Closes stdout and stderr early, then still does its job."""

import os
import sys
import time

print("closing stdout now", flush=True)
os.close(1)
os.close(2)
time.sleep(0.3)
with open(sys.argv[2], "w") as fh:
    fh.write("# written after closing stdout\n")
