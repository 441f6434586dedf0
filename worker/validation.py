"""The input rules of a run, in one place: checked where input enters and where it is used.

Every entry point (the CLI, ``run_forge``/``prepare``, scheduled competitions, ``forge
resume``/``post``/``status``) checks what it is given with these functions, and the
worker checks again what reaches it through the broker, because anyone who can publish
to the broker can hand it any message. Each check is a small pure function that returns
the value or raises :class:`InvalidInput`, whose message names the rule and the fix.

The rules (docs/security.md lists them for users):

* **run id**: 1-128 characters from ``A-Z a-z 0-9 _ . -``, starting with a letter or a
  digit. So never ``/``, never a leading ``.`` (the run directory's temporary and
  trash names start with one), never ``.`` or ``..``: a run id is a plain directory name.
* **candidate id**: 1-64 characters from ``a-z 0-9 _ -`` (the manifest's rule).
* **objective**: text (``str``), not empty, no NUL character (it is passed to every
  candidate as one command-line argument), at most ``OBJECTIVE_MAX_CHARS`` characters.
  Where a person reads it (console, reports, Discord) it is shown shortened to
  ``OBJECTIVE_SHOWN_CHARS``; ``summary.json`` keeps it whole.
* **timeouts and deadlines**: whole seconds (``int``, not ``bool``), from ``TIMEOUT_MIN``
  to ``TIMEOUT_MAX``, as the manifest and forge.toml already required.
* **trials**: how many times each candidate runs (``int``, not ``bool``), from 1 to
  ``TRIALS_MAX``; a task's trial index is 0 to trials - 1.
* **paths** built from any of these stay inside their root, symlinks resolved:
  :func:`contained`.
* **a project** (directory candidate) in a task: a sha256 hex digest, an ``entry`` that
  is a plain relative path inside the project or a dotted ``module`` name (one of the
  two), and no script text beside it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.keys import COLLECT

if TYPE_CHECKING:
    from worker.records import CandidateTask, RunSpec

RUN_ID_MAX = 128
RUN_ID_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{RUN_ID_MAX - 1}}}")
RUN_ID_RULE = (f"1-{RUN_ID_MAX} characters from A-Z a-z 0-9 _ . - starting with a letter "
               "or digit (no '/', no leading '.')")

CANDIDATE_ID_RE = re.compile(r"[a-z0-9_-]{1,64}")
CANDIDATE_ID_RULE = "1-64 characters from a-z, 0-9, _ and -"
# The chord body's task id is <run>:collect: a candidate of that id would share it.
RESERVED_ID = (f"candidate id {COLLECT!r} is reserved (the run's scoring task is "
               f"<run id>:{COLLECT}); choose another id")

OBJECTIVE_MAX_CHARS = 10_000
OBJECTIVE_SHOWN_CHARS = 300

TIMEOUT_MIN = 1
TIMEOUT_MAX = 86_400  # one day

# Trials per candidate: K x N sandboxes per run, so K is kept to what a verdict needs
# (the t interval's width barely moves past a few dozen trials).
TRIALS_MAX = 100


class InvalidInput(ValueError):
    """Input that breaks one of the rules above; the message names the rule and the fix."""


def _shown(value: Any, limit: int = 80) -> str:
    """``repr`` of a refused value, cut: a refusal must not echo 100 KB back."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def check_run_id(value: Any) -> str:
    if not isinstance(value, str) or not RUN_ID_RE.fullmatch(value):
        raise InvalidInput(f"run id {_shown(value)} is invalid: a run id is {RUN_ID_RULE}; "
                           "pick a plain name such as 'weekly-2026-11-26'")
    return value


def check_candidate_id(value: Any) -> str:
    if not isinstance(value, str) or not CANDIDATE_ID_RE.fullmatch(value):
        raise InvalidInput(f"candidate id {_shown(value)} is invalid: a candidate id is "
                           f"{CANDIDATE_ID_RULE}")
    if value == COLLECT:
        raise InvalidInput(RESERVED_ID)
    return value


def check_objective(value: Any) -> str:
    if not isinstance(value, str):
        fix = " (decode it first, e.g. objective.decode('utf-8'))" if isinstance(
            value, bytes | bytearray) else ""
        raise InvalidInput(f"the objective must be text (str), not {type(value).__name__}"
                           f"{fix}")
    if not value.strip():
        raise InvalidInput("the objective is empty; pass one, e.g. forge run \"...\"")
    if "\x00" in value:
        raise InvalidInput(f"the objective contains a NUL character (at position "
                           f"{value.index(chr(0))}); remove it: the objective reaches every "
                           "candidate as a command-line argument, which cannot hold one")
    if len(value) > OBJECTIVE_MAX_CHARS:
        raise InvalidInput(f"the objective is {len(value):,} characters long; the maximum is "
                           f"{OBJECTIVE_MAX_CHARS:,}: shorten it, and leave detail to the "
                           "candidates' scripts")
    return value


def check_timeout(value: Any, name: str = "timeout") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or \
            not TIMEOUT_MIN <= value <= TIMEOUT_MAX:
        raise InvalidInput(f"{name} must be a whole number of seconds from {TIMEOUT_MIN} to "
                           f"{TIMEOUT_MAX}, got {_shown(value)}; pass e.g. {name}=60")
    return value


def check_trials(value: Any, name: str = "trials") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= TRIALS_MAX:
        raise InvalidInput(f"{name} must be a whole number from 1 to {TRIALS_MAX} (how many "
                           f"times each candidate runs), got {_shown(value)}; pass e.g. "
                           f"{name}=5")
    return value


def check_artifacts_dir(value: Any, absolute: bool = False) -> str:
    """A directory path given as text: not empty, no NUL, absolute when ``absolute``."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value or "\x00" in value:
        raise InvalidInput(f"artifacts directory {_shown(value)} is invalid: give a "
                           "directory path (text, not empty, no NUL character)")
    if absolute and not os.path.isabs(value):
        raise InvalidInput(f"artifacts directory {_shown(value)} is not an absolute path; "
                           "the dispatcher always sends one")
    return value


def check_task(task: CandidateTask) -> CandidateTask:
    """What a worker checks of a candidate task before it runs anything."""
    check_run_id(task.run_id)
    check_candidate_id(task.candidate_id)
    check_objective(task.objective)
    for name in ("timeout", "install_timeout", "upload_timeout", "retrieve_timeout"):
        check_timeout(getattr(task, name), name)
    if task.project is not None:
        check_project(task)
    check_trials(task.trials)
    if isinstance(task.trial, bool) or not isinstance(task.trial, int) or \
            not 0 <= task.trial < task.trials:
        raise InvalidInput(f"trial index {_shown(task.trial)} is outside 0..{task.trials - 1} "
                           "(the task's trials)")
    return task


SHA256_RE = re.compile(r"[0-9a-f]{64}")
MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
PROJECT_FILES = ("", "requirements.txt")


def check_project(task: CandidateTask) -> None:
    p = task.project
    if not isinstance(p.sha256, str) or not SHA256_RE.fullmatch(p.sha256):
        raise InvalidInput(f"project hash {_shown(p.sha256)} is not a sha256 hex digest")
    if task.script:
        raise InvalidInput("a task carries a project and a script; a candidate is one or the "
                           "other")
    entry, module = p.entry, p.module
    if not isinstance(entry, str) or not isinstance(module, str) or bool(entry) == bool(module):
        raise InvalidInput("a project needs exactly one of 'entry' (a file of it) or 'module'")
    if entry and ("\x00" in entry or os.path.isabs(entry) or entry != os.path.normpath(entry)
                  or entry.split("/")[0] == ".."):
        raise InvalidInput(f"project entry {_shown(entry)} must be a plain relative path "
                           "inside the project, such as 'main.py'")
    if module and not MODULE_RE.fullmatch(module):
        raise InvalidInput(f"project module {_shown(module)} is not a Python module name")
    if p.requirements_file not in PROJECT_FILES:
        raise InvalidInput(f"project requirements file {_shown(p.requirements_file)} must be "
                           "'requirements.txt' or empty")


def check_run_spec(spec: RunSpec) -> RunSpec:
    """What the chord body checks of a run before it touches the disk."""
    check_run_id(spec.run_id)
    check_artifacts_dir(spec.artifacts_dir, absolute=True)
    check_objective(spec.objective)
    check_timeout(spec.timeout)
    check_trials(spec.trials)
    seen: set[str] = set()
    for c in spec.candidates:
        check_candidate_id(c.id)
        if c.id in seen:
            raise InvalidInput(f"candidate id {c.id!r} appears twice in run {spec.run_id}; "
                               "every candidate id must be unique")
        seen.add(c.id)
    return spec


def contained(root: str | os.PathLike, *parts: str) -> Path:
    """``root/parts...``, refused unless it resolves (symlinks followed) strictly inside
    ``root``. Returns the unresolved absolute path, so messages show what was given."""
    base = Path(os.path.abspath(check_artifacts_dir(root)))
    path = base.joinpath(*parts)
    real_base = os.path.realpath(base)
    real = os.path.realpath(path)
    if real == real_base or os.path.commonpath([real_base, real]) != real_base:
        raise InvalidInput(f"{path} resolves to {real}, outside {real_base}: a path built "
                           "from a run id or candidate id must stay inside its directory; "
                           "use a plain name")
    return path


def shorten(text: str, limit: int = OBJECTIVE_SHOWN_CHARS) -> str:
    """``text`` on one line, cut to about ``limit`` characters with a note saying so."""
    flat = " ".join(str(text).split())
    if len(flat) <= limit:
        return flat
    return (f"{flat[:limit].rstrip()}… [+{len(flat) - limit:,} characters; the full text "
            "is in summary.json]")
