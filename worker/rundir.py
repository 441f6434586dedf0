"""The run directory: written whole to a temporary name, then renamed into place.

A crash never leaves a half-written run, and writing the same ForgeResult twice (a
redelivered chord callback) leaves the same bytes: the second write sees identical
content and changes nothing. The run id and candidate ids come from a task message, so
they are checked (worker/validation.py) before anything is written, every directory made
from them is checked to resolve inside the artifacts root, and only a run directory
(one holding summary.json) is ever replaced.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from worker.records import CandidateResult, ForgeResult, _names, _plain
from worker.validation import InvalidInput, check_candidate_id, check_run_id, contained

SUMMARY = "summary.json"


def _json(data: object) -> bytes:
    # "replace": a candidate's output may carry lone surrogates that JSON allows.
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8", "replace")


_BULK = ("output", "artifact_content")  # per-candidate bulk: in its own files only


def _summary_fields(result: ForgeResult) -> Iterator[tuple[str, object]]:
    """summary.json's content, field by field: the ForgeResult with per-candidate bulk
    (output, artifact) left to each candidate's own files, so the summary stays small at
    thousands of candidates. Lists of records come as iterators of dicts, made one at a
    time."""
    def plain(record) -> dict:
        data = record.to_dict()
        if isinstance(record, CandidateResult):
            for key in _BULK:
                data.pop(key, None)
        return data

    for name in _names(ForgeResult):
        value = getattr(result, name)
        if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            yield name, map(plain, value)
        else:
            yield name, _plain(value)


def summary_dict(result: ForgeResult) -> dict:
    """summary.json's content as one dict."""
    return {name: list(value) if isinstance(value, map) else value
            for name, value in _summary_fields(result)}


def _summary_json(result: ForgeResult) -> bytes:
    """summary.json (= ``summary_dict``): top-level keys one per line, and each
    candidate, score and result on a line of its own, encoded one at a time.

    The standard encoder's indented output is pure Python and built whole in memory
    (~100 MB of small strings at 5,000 candidates); this is the C encoder per item, the
    records are never all converted at once, and one line per candidate greps well.
    """
    def enc(value: object) -> str:
        return json.dumps(value, ensure_ascii=False)

    lines = []
    for name, value in _summary_fields(result):
        if isinstance(value, map):
            items = ",\n".join("    " + enc(v) for v in value)
            lines.append(f"  {enc(name)}: [\n{items}\n  ]")
        else:
            lines.append(f"  {enc(name)}: {enc(value)}")
    return ("{\n" + ",\n".join(lines) + "\n}\n").encode("utf-8", "replace")


def iter_files(result: ForgeResult) -> Iterator[tuple[str, bytes | Iterator[str]]]:
    """Every file of the run directory as (relative path, content), one at a time: at
    thousands of candidates the whole directory is never in memory at once. Content is
    bytes, or (the reports, megabytes at that size) text pieces made as they are written."""
    from worker import report

    yield SUMMARY, _summary_json(result)
    for r in result.results:
        cid = r.candidate_id
        yield f"{cid}/result.json", _json(r.to_dict())
        yield f"{cid}/output.log", r.output.encode("utf-8", errors="replace")
        if r.artifact_content is not None:
            yield f"{cid}/discord_post.md", r.artifact_content.encode("utf-8", errors="replace")
    if result.trials > 1:
        yield from _trial_files(result)
    yield "report.md", report.markdown_parts(result)
    yield "report.html", report.html_parts(result)


def trial_dir(candidate_id: str, trial: int) -> str:
    """``<candidate>/trial-<k>`` (k = 1..K) for 0-based ``trial``."""
    return f"{candidate_id}/trial-{trial + 1}"


def _trial_files(result: ForgeResult) -> Iterator[tuple[str, bytes]]:
    """Repeated trials: every trial's own files under ``<candidate>/trial-<k>/``, and
    ``<candidate>/trials.json``: the candidate over its trials (mean, interval, pass
    rate, pass^K, flaky) with each trial's score. The candidate's top-level files stay
    those of its representative trial (worker/judge/aggregate.py)."""
    scores: dict[tuple[str, int], dict] = {(s.candidate_id, s.trial): s.to_dict()
                                           for s in result.trial_scores}
    for r in result.trial_results:
        where = trial_dir(r.candidate_id, r.trial)
        yield f"{where}/result.json", _json(r.to_dict())
        yield f"{where}/output.log", r.output.encode("utf-8", errors="replace")
        if r.artifact_content is not None:
            yield f"{where}/discord_post.md", r.artifact_content.encode("utf-8", "replace")
    for c in result.candidates:
        summary = result.summary_for(c.id) or {}
        trial_scores = [scores[(c.id, k)] for k in range(result.trials) if (c.id, k) in scores]
        yield f"{c.id}/trials.json", _json({**summary, "trial_scores": trial_scores})


def _bytes(content: bytes | Iterator[str]) -> bytes:
    return content if isinstance(content, bytes) else "".join(content).encode("utf-8")


def render_files(result: ForgeResult) -> dict[str, bytes]:
    """Every file of the run directory, by relative path (all in memory: small runs)."""
    return {rel: _bytes(content) for rel, content in iter_files(result)}


def _same(directory: Path, result: ForgeResult) -> bool:
    """Does ``directory`` already hold exactly the files ``result`` renders to?"""
    for rel, content in iter_files(result):
        try:
            if (directory / rel).read_bytes() != _bytes(content):
                return False
        except OSError:
            return False
    return True


def _sync_tree(directory: Path) -> None:
    """Make the files under ``directory`` durable before the rename publishes them.

    One ``syncfs`` of the filesystem instead of an fsync per file: thousands of fsyncs
    (three files per candidate) cost a journal commit each and were most of the time
    the chord body spent writing a large run.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _syncfs(fd):
            return
        for path in directory.rglob("*"):
            if path.is_file():
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
        os.fsync(fd)
    finally:
        os.close(fd)


def _syncfs(fd: int) -> bool:
    """syncfs(2) through libc (Linux); False where it is not available."""
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        except OSError:
            _LIBC = False
    fn = getattr(_LIBC, "syncfs", None) if _LIBC else None
    return bool(fn) and fn(fd) == 0


_LIBC = None


def _replaceable(final: Path) -> None:
    """Refuse to replace anything but a run directory: never a file, a symlink or a
    directory without summary.json (it is not ours to remove)."""
    if final.is_symlink() or not final.is_dir() or not (final / SUMMARY).is_file():
        raise InvalidInput(f"{final} exists and is not a run directory (no {SUMMARY}); "
                           "refusing to replace it: move it away or pick another run id")


def write_run_dir(result: ForgeResult, artifacts_dir: str | os.PathLike) -> Path:
    """Write ``artifacts_dir/<run_id>/`` atomically and idempotently; return its path.

    Raises InvalidInput, before writing anything, for a run id or candidate id that is
    not a plain name or a target outside ``artifacts_dir`` or not a run directory."""
    check_run_id(result.run_id)
    for r in result.results:
        check_candidate_id(r.candidate_id)
    root = Path(artifacts_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = contained(root, result.run_id)
    if os.path.lexists(final):
        _replaceable(final)
        if _same(final, result):
            return final
    tmp = contained(root, f".tmp-{result.run_id}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        # Candidate directories need no contained() each (50 us apiece, 0.25 s at 5,000):
        # every candidate id was checked to be a plain name (no separator, no dot), and
        # tmp is a directory this call just made, so nothing in it can be a symlink.
        made = {tmp}
        for rel, content in iter_files(result):
            path = tmp / rel
            if path.parent not in made:
                path.parent.mkdir(parents=True, exist_ok=True)
                made.add(path.parent)
            with open(path, "wb") as fh:
                if isinstance(content, bytes):
                    fh.write(content)
                else:
                    for piece in content:
                        fh.write(piece.encode("utf-8"))
        _sync_tree(tmp)
        if os.path.lexists(final):
            _replaceable(final)
            if _same(final, result):
                return final
            # Keep extra files the run directory gained since (e.g. the Discord record);
            # never what a symlink points at.
            for extra in final.iterdir():
                if extra.is_file() and not extra.is_symlink() and \
                        not (tmp / extra.name).exists():
                    shutil.copy2(extra, tmp / extra.name)
            trash = contained(root, f".old-{result.run_id}-{uuid.uuid4().hex[:8]}")
            os.rename(final, trash)
            os.rename(tmp, final)
            _fsync_dir(root)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            try:
                os.rename(tmp, final)
                _fsync_dir(root)
            except OSError:
                # Another callback got there first (duplicate delivery): same data wins.
                if not _same(final, result):
                    raise
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync_dir(directory: Path) -> None:
    """The rename itself durable: fsync the directory that holds the run."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_summary(artifacts_dir: str | os.PathLike, run_id: str) -> ForgeResult | None:
    """The run's summary, None when there is none; InvalidInput for a run id that is not
    a plain name or a summary that resolves outside ``artifacts_dir``."""
    check_run_id(run_id)
    path = contained(artifacts_dir, run_id, SUMMARY)
    if not path.is_file():
        return None
    return ForgeResult.from_dict(json.loads(path.read_text("utf-8")))


def list_runs(artifacts_dir: str | os.PathLike) -> list[ForgeResult]:
    root = Path(artifacts_dir)
    if not root.is_dir():
        return []
    runs = []
    for d in root.iterdir():
        if d.is_dir() and not d.name.startswith(".") and (d / SUMMARY).is_file():
            try:
                runs.append(ForgeResult.from_dict(json.loads((d / SUMMARY).read_text("utf-8"))))
            except (OSError, ValueError):
                continue
    return sorted(runs, key=lambda r: r.timestamp, reverse=True)
