"""Prove the race and leak tests catch what they name: inject a deliberate bug into a
scratch copy of the repository and run the test that must fail, N times.

    .venv/bin/python tools/deliberate_bugs.py             # every bug, 5 runs each
    .venv/bin/python tools/deliberate_bugs.py rundir_loser_raises --runs 10

The working tree is never touched: the copy is ``git ls-files`` of this checkout in a
temporary directory, run with this checkout's virtualenv; the tests must pass there
before the bug goes in (figures: docs/testing.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (file, the correct code, the bug, the tests that must fail)
BUGS: dict[str, tuple[str, str, str, list[str]]] = {
    "rundir_loser_raises": (
        "worker/rundir.py",
        "                if not _same(final, result):\n                    raise",
        "                raise",
        ["tests/test_races.py", "-k", "run_directory"]),
    "discord_check_then_create": (
        "worker/discord.py",
        "    try:\n"
        "        fd = os.open(contained(run_dir, CLAIM), os.O_CREAT | os.O_EXCL | os.O_WRONLY,"
        " 0o644)\n"
        "    except FileExistsError:\n"
        "        return False\n"
        "    with os.fdopen(fd, \"w\") as fh:\n"
        "        fh.write(json.dumps({\"pid\": os.getpid(), \"claimed_at\": time.time()})"
        " + \"\\n\")\n"
        "    return True",
        "    path = contained(run_dir, CLAIM)\n"
        "    if path.exists():\n"
        "        return False\n"
        "    path.write_text(json.dumps({\"pid\": os.getpid(), \"claimed_at\": time.time()})"
        " + \"\\n\")\n"
        "    return True",
        ["tests/test_races.py", "-k", "post_once"]),
    "first_finished_read_then_write": (
        "worker/delivery.py",
        "            if client.set(first_key(self.task_id), json.dumps(result), nx=True,\n"
        "                          ex=2 * VISIBILITY_TIMEOUT + 60):\n"
        "                return result\n"
        "            raw = client.get(first_key(self.task_id))",
        "            raw = client.get(first_key(self.task_id))\n"
        "            if raw is None:\n"
        "                client.set(first_key(self.task_id), json.dumps(result),\n"
        "                           ex=2 * VISIBILITY_TIMEOUT + 60)\n"
        "                return result",
        ["tests/test_races.py", "-k", "finish_at_once"]),
    "env_unfiltered": (
        "worker/sandbox/visible.py",
        '        if n in source and n not in FORBIDDEN_SANDBOX_ENV and not n.startswith("CELERY_")',
        "        if n in source",
        ["tests/test_hostile.py", "-k", "lifecycle or forge"]),
}


def scratch_copy() -> Path:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    dest = Path(tempfile.mkdtemp(prefix="forge-bug-"))
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    return dest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bugs", nargs="*", default=list(BUGS))
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    python = str(ROOT / ".venv" / "bin" / "python")
    for name in args.bugs:
        path, good, bad, tests = BUGS[name]
        copy = scratch_copy()

        def run(copy: Path = copy, tests: list[str] = tests) -> int:
            return subprocess.run([python, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                                   *tests], cwd=copy, capture_output=True, text=True,
                                  env={**os.environ, "PYTHONPATH": str(copy)}).returncode

        try:
            # The control: without the bug the same tests pass in the same copy.
            assert run() == 0, f"{name}: {' '.join(tests)} fails without the bug"
            text = (copy / path).read_text()
            assert text.count(good) == 1, f"{name}: the correct code is not in {path} once"
            (copy / path).write_text(text.replace(good, bad))
            failed = sum(run() != 0 for _ in range(args.runs))
            print(f"{name}: {' '.join(tests)} failed {failed} of {args.runs} runs", flush=True)
        finally:
            shutil.rmtree(copy, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
