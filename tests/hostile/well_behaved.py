"""A well-behaved candidate: writes a small markdown post and exits 0."""

import sys

with open(sys.argv[2], "w", encoding="utf-8") as fh:
    fh.write(f"# Weekly post\n\nObjective: {sys.argv[1]}\n\n- Event one\n- Event two\n")
print("done")
