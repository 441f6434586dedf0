"""Kill rate per target of ``tools/mutation.sh``, from mutmut's results in mutants/.

``python tools/mutation_report.py GLOB...``: the mutants whose names match, grouped by
module, counted by mutmut's verdict, and each survivor's name (``mutmut show NAME``
prints its diff). Timeouts count as killed (the mutant hung the tests: caught), "no
tests" as survived (nothing noticed it).
"""

from __future__ import annotations

import fnmatch
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

from mutmut.stats import status_by_exit_code

CAUGHT = {"killed", "timeout", "caught by type check", "segfault"}


def main(patterns: list[str]) -> int:
    verdicts: dict[str, Counter] = defaultdict(Counter)
    survivors: dict[str, list[str]] = defaultdict(list)
    for meta in sorted(Path("mutants").rglob("*.py.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if not any(fnmatch.fnmatchcase(name, p) for p in patterns):
                continue
            module = name.split(".x_")[0].split(".xǁ")[0]
            status = status_by_exit_code[code]
            verdicts[module][status] += 1
            if status not in CAUGHT and status != "not checked":
                survivors[module].append(f"{name} ({status})")
    print(f"{'module':40} {'mutants':>7} {'caught':>7} {'rate':>6}  other")
    for module, counts in sorted(verdicts.items()):
        total = sum(counts.values()) - counts["not checked"]
        caught = sum(counts[s] for s in CAUGHT)
        rate = f"{100 * caught / total:.0f}%" if total else "-"
        other = ", ".join(f"{s} {n}" for s, n in sorted(counts.items()) if s not in CAUGHT)
        print(f"{module:40} {total:>7} {caught:>7} {rate:>6}  {other}")
    for module, names in sorted(survivors.items()):
        print(f"\nnot caught in {module}:")
        for name in names:
            print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["*"]))
