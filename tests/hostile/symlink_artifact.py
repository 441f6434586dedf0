"""Makes its artifact a symlink to a host file outside the sandbox."""

import os
import sys

CONFIG = {}  # forge-hostile-config

os.symlink(CONFIG["target"], sys.argv[2])
print("artifact is now a symlink")
