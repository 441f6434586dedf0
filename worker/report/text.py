"""Text from a run made safe to show: candidates' output and posts are hostile input.

No ANSI codes, control characters or lone surrogates (``clean``), long lines cut,
output and artifacts shortened; numbers that may be missing or not finite formatted.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

from worker.records import CandidateResult

TAIL_LINES = 60  # output lines shown per candidate
MAX_LINE = 1000  # characters kept of one output line
MAX_ARTIFACT = 50_000  # characters of an artifact shown inline (the file has it all)

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean(text: Any) -> str:
    """Text safe to embed anywhere: no ANSI codes, control characters or lone surrogates."""
    s = _CONTROL.sub("\ufffd", _ANSI.sub("", "" if text is None else str(text)))
    return s.encode("utf-8", "replace").decode("utf-8")


def esc(text: Any) -> str:
    return html.escape(clean(text), quote=True)


def md_cell(text: Any, limit: int = 200) -> str:
    """Text for one markdown table cell: one line, pipes escaped, cut at ``limit``."""
    s = " ".join(clean(text).split()).replace("|", "\\|")
    return s if len(s) <= limit else s[:limit] + "…"


def num(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if f == f and abs(f) != float("inf") else None


def fmt(value: Any, digits: int = 1) -> str:
    f = num(value)
    return "—" if f is None else f"{f:.{digits}f}"


def runtime(r: CandidateResult | None) -> str:
    f = num(r.runtime_seconds) if r else None
    return "—" if f is None else f"{f:.2f}s"


def cpu(r: CandidateResult | None) -> str:
    f = num(r.cpu_seconds) if r else None
    return "—" if f is None else f"{f:.2f}s"


def cut_line(line: str) -> str:
    if len(line) <= MAX_LINE:
        return line
    return f"{line[:MAX_LINE]} … [+{len(line) - MAX_LINE} chars]"


def output_tail(output: str | None, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a candidate's output, each cut to ``MAX_LINE``."""
    all_lines = clean(output or "").rstrip("\n").split("\n")
    kept = all_lines[-lines:]
    head = [f"… ({len(all_lines) - len(kept)} earlier lines in output.log)"]
    return "\n".join((head if len(all_lines) > len(kept) else []) + [cut_line(x) for x in kept])


def artifact_shown(text: str) -> str:
    text = "\n".join(cut_line(x) for x in clean(text).split("\n"))
    if len(text) > MAX_ARTIFACT:
        text = f"{text[:MAX_ARTIFACT]}\n… [cut: {len(text) - MAX_ARTIFACT} more chars]"
    return text


def compact(value: Any, limit: int = 300) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, sort_keys=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)
