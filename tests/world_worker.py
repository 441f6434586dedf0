"""The worker side of an egress test: run inside the test network's worker namespace
(see ``tests/networld.py``), it runs the candidate tasks it reads as JSON on stdin
through the real lifecycle and local backend, all at once on threads, and prints their
results as JSON. The worker's log (where the egress rules go) is on stderr."""

from __future__ import annotations

import json
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker.lifecycle import run_lifecycle  # noqa: E402
from worker.records import CandidateTask  # noqa: E402
from worker.sandbox.local import LocalBackend, bwrap, prepare_process  # noqa: E402


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
    tasks = [CandidateTask.from_dict(t) for t in json.load(sys.stdin)]
    if bwrap.probe().drop_uid:
        prepare_process()  # as a pool process does at start, while single-threaded
    backend = LocalBackend()

    def one(task: CandidateTask) -> dict:
        lines: list[str] = []
        result = run_lifecycle(backend, task, lines.append)
        return {**result.to_dict(), "log": lines}

    with ThreadPoolExecutor(max_workers=max(1, len(tasks))) as pool:
        results = list(pool.map(one, tasks))
    json.dump({"results": results}, sys.stdout)


if __name__ == "__main__":
    main()
