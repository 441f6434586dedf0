"""Connects to a TCP server the test runs on the worker's loopback (and its other IPs)."""

import socket
import sys

CONFIG = {}  # forge-hostile-config

report = []
for host in ["127.0.0.1", "10.0.2.2", "localhost", *CONFIG.get("hosts", [])]:
    try:
        with socket.create_connection((host, CONFIG["port"]), timeout=1.5) as sock:
            sock.sendall(b"hello from the sandbox\n")
            report.append(f"CONNECTED {host}")
    except OSError as exc:
        report.append(f"blocked {host}: {exc}")
print("\n".join(report))
with open(sys.argv[2], "w") as fh:
    fh.write("# loopback report\n\n" + "\n".join(report) + "\n")
