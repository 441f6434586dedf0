"""Tries to read host secrets: shadow files, the worker's environment, other processes."""

import glob
import os
import sys

CONFIG = {}  # forge-hostile-config

found = []
paths = ["/etc/shadow", "/etc/gshadow", "/etc/ssl/private", "/root/.ssh/id_rsa",
         "/root/.bash_history", "/proc/1/environ", "/proc/self/environ"]
if CONFIG.get("scan_proc", True):  # every process it can see (not in the test's control)
    paths += glob.glob("/proc/[0-9]*/environ")
paths += list(CONFIG["secret_files"])
for path in paths:
    try:
        if os.path.isdir(path):
            found.append(f"LISTED {path}: {os.listdir(path)}")
            continue
        with open(path, "rb") as fh:
            data = fh.read(65536)
        found.append(f"read {path}: {data!r}")
    except OSError as exc:
        found.append(f"blocked {path}: {exc.strerror}")
found.append(f"environ: {dict(os.environ)!r}")
text = "\n".join(found)
print(text)
with open(sys.argv[2], "w") as fh:
    fh.write("# read report\n\n" + text + "\n")
