"""Tries to write into the repository, $HOME, the artifacts dir and another candidate's dir.

Reports every attempt in its artifact; the test checks the host is unchanged.
"""

import glob
import os
import sys

CONFIG = {}  # forge-hostile-config

report = []
# System paths and other sandboxes' directories, unless the test says not to (its
# control runs this without isolation: there the writes would land on the host).
SYSTEM = ["/root/pwned", "/etc/pwned", "/usr/pwned", os.path.expanduser("~/../pwned")]
targets = list(CONFIG["targets"]) + list(CONFIG.get("system_targets", SYSTEM))
others = glob.glob("/tmp/forge-*/work") if CONFIG.get("scan_tmp", True) else []
for directory in CONFIG["victim_dirs"] + others:
    targets.append(os.path.join(directory, "pwned"))
for path in targets:
    try:
        with open(path, "w") as fh:
            fh.write("pwned\n")
        report.append(f"WROTE {path}")
    except OSError as exc:
        report.append(f"blocked {path}: {exc.strerror}")
for path in CONFIG["delete"]:
    try:
        os.remove(path)
        report.append(f"DELETED {path}")
    except OSError as exc:
        report.append(f"blocked delete {path}: {exc.strerror}")
print("\n".join(report))
with open(sys.argv[2], "w") as fh:
    fh.write("# write escape report\n\n" + "\n".join(f"- {r}" for r in report) + "\n")
