"""Spawns a daemon (double fork + setsid) that outlives it and keeps a heartbeat.

The daemon's command line carries CONFIG["marker"], so the test can scan /proc for it.
It tries to write its heartbeat to CONFIG["heartbeat"], a host path it must not see.
"""

import os
import sys
import time

CONFIG = {}  # forge-hostile-config

if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        code = (
            "import sys, time\n"
            "while True:\n"
            "    for path in (sys.argv[1], sys.argv[3], sys.argv[2]):\n"
            "        try:\n"
            "            open(path, 'a').write('beat\\n')\n"
            "        except OSError:\n"
            "            pass\n"
            "    time.sleep(0.1)\n"
        )
        os.execv(sys.executable, [sys.executable, "-c", code, CONFIG["heartbeat"],
                                  "daemon-heartbeat.txt",
                                  CONFIG.get("tmp_heartbeat", "/tmp/heartbeat"),
                                  CONFIG["marker"]])
    os._exit(0)
time.sleep(0.5)
with open(sys.argv[2], "w") as fh:
    fh.write("# parent done, daemon left behind\n")
