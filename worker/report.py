"""Run reports: ``report.md`` and a self-contained ``report.html``.

Both are pure functions of the ForgeResult (no clock, no environment), because the run
directory is written idempotently: a redelivered chord callback must produce the same
bytes. Everything a candidate produced is hostile input: it is escaped before any markup
is added, long lines are cut, and the HTML loads nothing from the network.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

from worker import report_verdict
from worker.records import CandidateInfo, CandidateResult, ForgeResult, Score
from worker.validation import shorten

TAIL_LINES = 60  # output lines shown per candidate
MAX_LINE = 1000  # characters kept of one output line
MAX_ARTIFACT = 50_000  # characters of an artifact shown inline (the file has it all)
NO_WINNER = "No winner: no candidate passed the gates"

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


# --------------------------------------------------------------------------- helpers


def _clean(text: Any) -> str:
    """Text safe to embed anywhere: no ANSI codes, control characters or lone surrogates."""
    s = _CONTROL.sub("\ufffd", _ANSI.sub("", "" if text is None else str(text)))
    return s.encode("utf-8", "replace").decode("utf-8")


def _e(text: Any) -> str:
    return html.escape(_clean(text), quote=True)


def _num(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if f == f and abs(f) != float("inf") else None


def _fmt(value: Any, digits: int = 1) -> str:
    f = _num(value)
    return "—" if f is None else f"{f:.{digits}f}"


def _runtime(r: CandidateResult | None) -> str:
    f = _num(r.runtime_seconds) if r else None
    return "—" if f is None else f"{f:.2f}s"


def _cpu(r: CandidateResult | None) -> str:
    f = _num(r.cpu_seconds) if r else None
    return "—" if f is None else f"{f:.2f}s"


def speed_words(result: ForgeResult) -> str:
    """What the speed score measured in this run."""
    if result.speed == "cpu":
        return "CPU time of each candidate's processes (not wall time)"
    return "wall time of each candidate's run"


def _cut_line(line: str) -> str:
    if len(line) <= MAX_LINE:
        return line
    return f"{line[:MAX_LINE]} … [+{len(line) - MAX_LINE} chars]"


def output_tail(output: str | None, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a candidate's output, each cut to ``MAX_LINE``."""
    all_lines = _clean(output or "").rstrip("\n").split("\n")
    kept = all_lines[-lines:]
    head = [f"… ({len(all_lines) - len(kept)} earlier lines in output.log)"]
    return "\n".join((head if len(all_lines) > len(kept) else []) + [_cut_line(x) for x in kept])


def _artifact_shown(text: str) -> str:
    text = "\n".join(_cut_line(x) for x in _clean(text).split("\n"))
    if len(text) > MAX_ARTIFACT:
        text = f"{text[:MAX_ARTIFACT]}\n… [cut: {len(text) - MAX_ARTIFACT} more chars]"
    return text


class _Row:
    """One leaderboard row: a candidate with its score and result, any of them missing."""

    def __init__(self, cid: str, info: CandidateInfo | None, score: Score | None,
                 result: CandidateResult | None) -> None:
        self.cid, self.info, self.score, self.result = cid, info, score, result

    @property
    def name(self) -> str:
        return self.info.name if self.info and self.info.name else self.cid

    @property
    def description(self) -> str:
        return self.info.description if self.info else ""

    @property
    def passed(self) -> bool:
        return bool(self.score and self.score.qualified)

    @property
    def reason(self) -> str:
        s, r = self.score, self.result
        if s and s.disqualified_reason:
            return s.disqualified_reason
        if not s:
            return (r.error_message if r else None) or "not scored"
        return ""


def _rows(result: ForgeResult) -> list[_Row]:
    """Every candidate, in rank order (unranked ones last, in run order)."""
    infos = {c.id: c for c in result.candidates}
    ids = [c.id for c in result.candidates]
    ids += [s.candidate_id for s in result.scores if s.candidate_id not in infos]
    ids += [r.candidate_id for r in result.results]
    ids = list(dict.fromkeys(ids))
    scores = {s.candidate_id: s for s in reversed(result.scores)}  # first one wins
    results = {r.candidate_id: r for r in reversed(result.results)}
    rows = [_Row(i, infos.get(i), scores.get(i), results.get(i)) for i in ids]
    order = {i: n for n, i in enumerate(ids)}

    def key(row: _Row) -> tuple[int, int]:
        rank = row.score.rank if row.score and isinstance(row.score.rank, int) else 0
        return (rank if rank > 0 else 10**9, order[row.cid])

    return sorted(rows, key=key)


def _winner(result: ForgeResult, rows: list[_Row]) -> _Row | None:
    return next((r for r in rows if result.winner_id and r.cid == result.winner_id), None)


def _winner_post(result: ForgeResult) -> str | None:
    if result.winner_artifact is not None:
        return result.winner_artifact
    r = result.result_for(result.winner_id) if result.winner_id else None
    return r.artifact_content if r else None


def _result_facts(r: CandidateResult | None) -> list[tuple[str, str]]:
    if r is None:
        return [("Result", "no result reached the callback")]
    facts = [
        ("Exit code", "—" if r.exit_code is None else str(r.exit_code)),
        ("Runtime", _runtime(r)),
        ("CPU time", _cpu(r)),
        ("Started", r.started_at or "—"),
        ("Finished", r.finished_at or "—"),
        ("Mode", r.execution_mode or "—"),
        ("Worker", r.worker or "—"),
        ("Sandbox", r.sandbox_id or "—"),
        ("Attempt", str(r.attempt)),
    ]
    if r.isolation:
        facts.append(("Isolation", r.isolation))
    if r.timed_out:
        facts.append(("Timed out", "yes"))
    if r.output_dropped_bytes:
        facts.append(("Output dropped", f"{r.output_dropped_bytes} bytes (head of output)"))
    if r.artifact_truncated:
        facts.append(("Artifact", "truncated at the size limit"))
    if r.error_message:
        facts.append(("Error", r.error_message))
    for w in r.warnings or []:
        facts.append(("Warning", str(w)))
    return facts


def _compact(value: Any, limit: int = 300) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, sort_keys=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


# --------------------------------------------------------------------------- markdown


def _md_cell(text: Any, limit: int = 200) -> str:
    s = " ".join(_clean(text).split()).replace("|", "\\|")
    return s if len(s) <= limit else s[:limit] + "…"


def _fence(text: str, lang: str = "") -> list[str]:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}{lang}", text.rstrip("\n"), fence]


def _gates_md(score: Score | None) -> str:
    if not score or not score.gates:
        return "—"
    return " ".join(f"{'✅' if ok else '❌'} {_md_cell(name, 40)}"
                    for name, ok in score.gates.items())


def _md_value(value: Any, limit: int = 200) -> str:
    """One table cell: flags and named checks as ✅/❌, anything else as compact JSON."""
    if _is_scalar(value):
        return _md_cell(value, limit)
    if isinstance(value, dict) and value and all(
            isinstance(v, bool) or (isinstance(v, dict) and isinstance(v.get("valid"), bool))
            for v in value.values()):
        return " ".join(f"{'✅' if (v if isinstance(v, bool) else v['valid']) else '❌'} "
                        f"{_md_cell(k, 40)}" for k, v in value.items())
    return _md_cell(_compact(value, limit), limit)


def _details_md(details: Any) -> list[str]:
    """Quality details of unknown shape: scalars as bullets, tables for lists of dicts."""
    if not details:
        return []
    if not isinstance(details, dict):
        return [f"- {_md_cell(_compact(details), 500)}"]
    out: list[str] = []
    for key, value in details.items():
        if _is_scalar(value):
            out.append(f"- **{_md_cell(key, 60)}:** {_md_cell(value)}")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            cols = list(dict.fromkeys(k for v in value for k in v))[:8]
            out += ["", f"**{_md_cell(key, 60)}**", "",
                    "| " + " | ".join(_md_cell(c, 40) for c in cols) + " |",
                    "|" + "---|" * len(cols)]
            for v in value[:50]:
                cells = [_md_value(v.get(c), 120) for c in cols]
                out.append("| " + " | ".join(cells) + " |")
            if len(value) > 50:
                out.append(f"\n… {len(value) - 50} more")
            out.append("")
        else:
            out.append(f"- **{_md_cell(key, 60)}:** {_md_value(value, 300)}")
    return out


def render_markdown(result: ForgeResult) -> str:
    """``report.md``: the same content as the HTML, readable as plain text."""
    return "".join(markdown_parts(result))


def markdown_parts(result: ForgeResult) -> Iterator[str]:
    """``report.md`` as pieces to write one after another (no whole copy in memory)."""
    rows = _rows(result)
    win = _winner(result, rows)
    lines = [
        f"# Dream Foundry report — {_md_cell(result.run_id)}",
        "",
        f"- **Objective:** {_md_cell(shorten(result.objective), 1000)}",
        f"- **Run:** `{_md_cell(result.run_id)}`",
        f"- **Timestamp:** {_md_cell(result.timestamp)}",
        f"- **Execution mode:** {_md_cell(result.execution_mode)}",
        f"- **Judge:** {_md_cell(result.judge)}",
        f"- **Speed scored on:** {speed_words(result)}",
    ]
    if result.competition:
        lines.append(f"- **Competition:** {_md_cell(result.competition)}")
    lines.append(f"- **Candidates:** {len(rows)}")
    for note in result.notes:
        lines.append(f"- **Note:** {_md_cell(note, 500)}")
    lines += ["", "## Winner", ""]
    verdict = report_verdict.winner_md(result)  # repeated trials: mean, CI, or a tie
    if verdict:
        lines += verdict
    elif win and win.score:
        label = f"{win.name} ({win.description})" if win.description else win.name
        lines.append(f"🏆 **{_md_cell(label)}** (`{_md_cell(win.cid)}`) "
                     f"wins with **{_fmt(win.score.total_score)}/100**")
    else:
        lines.append(f"**{NO_WINNER}.**")
    lines += ["", "## Leaderboard", "",
              "| Rank | Candidate | Result | Gates | Success | Quality | Speed | TOTAL "
              "| Runtime | CPU | Disqualified because |",
              "|---:|---|:---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        s = row.score
        rank = str(s.rank) if s and s.rank else "—"
        lines.append(
            f"| {rank} | **{_md_cell(row.name)}** (`{_md_cell(row.cid)}`) "
            f"| {'PASS' if row.passed else 'FAIL'} | {_gates_md(s)} "
            f"| {_fmt(s.success if s else None)} | {_fmt(s.quality_score if s else None)} "
            f"| {_fmt(s.speed_score if s else None)} | **{_fmt(s.total_score if s else None)}** "
            f"| {_runtime(row.result)} | {_cpu(row.result)} | {_md_cell(row.reason) or '—'} |"
        )
    lines += report_verdict.trials_md(result) + report_verdict.standings_md(result)
    post = _winner_post(result)
    if win and post is not None:
        lines += ["", "## Winning post", "", *_fence(_artifact_shown(post), "markdown")]
    lines += ["", "## Candidates"]
    for row in rows:
        lines += ["", f"### {_md_cell(row.name)} (`{_md_cell(row.cid)}`) — "
                      f"{'PASS' if row.passed else 'FAIL'}", ""]
        if row.description:
            lines += [f"*{_md_cell(row.description)}*", ""]
        lines += [f"- **{k}:** {_md_cell(v, 500)}" for k, v in _result_facts(row.result)]
        if row.score and row.score.quality_details:
            lines += ["", "**Quality details**", "", *_details_md(row.score.quality_details)]
        r = row.result
        if r and r.artifact_content is not None:
            lines += ["", f"**Artifact** (`{_md_cell(row.cid)}/discord_post.md`)", "",
                      *_fence(_artifact_shown(r.artifact_content), "markdown")]
        else:
            lines += ["", "**Artifact:** none"]
        if r and r.output:
            lines += ["", f"**Output** (last {TAIL_LINES} lines)", "",
                      *_fence(output_tail(r.output), "text")]
    lines += ["", "---", f"Run `{_md_cell(result.run_id)}` · judge `{_md_cell(result.judge)}`"
              + (f" · definition `{_md_cell(result.definition_sha256[:12])}`"
                 if result.definition_sha256 else ""), ""]
    for n, line in enumerate(lines):
        if n:
            yield "\n"
        yield line


# --------------------------------------------------------------------------- post markdown


_INLINE = re.compile(
    r"`(?P<code>[^`\n]+)`"
    r"|\[(?P<text>[^\]\n]+)\]\((?P<url>[^\s)]+)\)"
    r"|&lt;(?P<angle>https?://[^\s]+?)&gt;"
    r"|(?P<bare>https?://(?:(?!&quot;|&lt;|&gt;|&#x27;)\S)+)"
)
_EMPHASIS = [
    (re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"__(.+?)__"), r"<u>\1</u>"),
    (re.compile(r"~~(.+?)~~"), r"<s>\1</s>"),
    (re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])"), r"<em>\1</em>"),
]


def _safe_href(escaped_url: str) -> str | None:
    """The URL if it is http(s), else None (javascript:, data:, relative, ...)."""
    try:
        scheme = urlsplit(html.unescape(escaped_url)).scheme.lower()
    except ValueError:
        return None
    return escaped_url if scheme in ("http", "https") else None


def _link(href: str, label: str) -> str:
    return f'<a href="{href}" rel="nofollow noopener noreferrer">{label}</a>'


def _emphasis(escaped: str) -> str:
    for pattern, repl in _EMPHASIS:
        escaped = pattern.sub(repl, escaped)
    return escaped


def _inline(escaped: str) -> str:
    """Inline markdown on already-escaped text.

    Links and code become placeholders first (``\\x00n\\x00``; input never holds NUL,
    ``_clean`` replaced it), so emphasis can wrap a link but never rewrite a URL.
    """
    tokens: list[str] = []

    def keep(markup: str) -> str:
        tokens.append(markup)
        return f"\x00{len(tokens) - 1}\x00"

    def token(m: re.Match[str]) -> str:
        if m.group("code") is not None:
            return keep(f"<code>{m.group('code')}</code>")
        if m.group("text") is not None:
            url = m.group("url")
            if url.startswith("&lt;") and url.endswith("&gt;"):
                url = url[4:-4]
            href = _safe_href(url)
            label = _emphasis(m.group("text"))
            return keep(_link(href, label)) if href else label
        url, trail = m.group("angle") or m.group("bare"), ""
        if m.group("bare"):
            stripped = re.sub(r"(?:[.,;:!?)\]*_~'\"]|&gt;|&quot;|&#x27;)+$", "", url)
            url, trail = stripped, url[len(stripped):]
        href = _safe_href(url)
        return (keep(_link(href, url)) if href else url) + trail

    text = _emphasis(_INLINE.sub(token, escaped))
    return re.sub(r"\x00(\d+)\x00", lambda m: tokens[int(m.group(1))], text)


def markdown_to_html(text: str) -> str:
    """A small, safe renderer for Discord-style posts.

    Headings, bold/italic/underline/strike, inline code, fenced code, lists, quotes,
    links (http/https only) and line breaks. Every character is escaped before markup
    is added, so a post can never inject HTML.
    """
    out: list[str] = []
    para: list[str] = []
    items: list[str] = []
    list_tag = ""
    code: list[str] | None = None

    def flush() -> None:
        nonlocal list_tag
        if para:
            out.append("<p>" + "<br>\n".join(para) + "</p>")
            para.clear()
        if items:
            out.append(f"<{list_tag}>" + "".join(f"<li>{i}</li>" for i in items)
                       + f"</{list_tag}>")
            items.clear()
            list_tag = ""

    for raw in _clean(text).split("\n"):
        if code is not None:
            if raw.strip().startswith("```"):
                out.append("<pre><code>" + html.escape("\n".join(code)) + "</code></pre>")
                code = None
            else:
                code.append(_cut_line(raw))
            continue
        line = raw.rstrip()
        if line.strip().startswith("```"):
            flush()
            code = []
            continue
        if not line.strip():
            flush()
            continue
        heading = re.match(r"^\s*(#{1,6})\s+(.*)$", line)
        bullet = re.match(r"^\s*[-*+•]\s+(.*)$", line)
        number = re.match(r"^\s*\d{1,3}[.)]\s+(.*)$", line)
        quote = re.match(r"^\s*>\s?(.*)$", line)
        sub = re.match(r"^\s*-#\s+(.*)$", line)
        if heading:
            flush()
            level = min(len(heading.group(1)) + 1, 6)  # h1 is the page's own title
            out.append(f"<h{level}>{_inline(html.escape(heading.group(2)))}</h{level}>")
        elif sub:
            flush()
            out.append(f'<p class="sub">{_inline(html.escape(sub.group(1)))}</p>')
        elif bullet or number:
            tag = "ul" if bullet else "ol"
            if para or (items and list_tag != tag):
                flush()
            list_tag = tag
            items.append(_inline(html.escape((bullet or number).group(1))))  # type: ignore[union-attr]
        elif quote:
            flush()
            out.append(f"<blockquote>{_inline(html.escape(quote.group(1)))}</blockquote>")
        else:
            if items:
                flush()
            para.append(_inline(html.escape(line.strip())))
    if code is not None:
        out.append("<pre><code>" + html.escape("\n".join(code)) + "</code></pre>")
    flush()
    return "\n".join(out)


# --------------------------------------------------------------------------- html


_CSS = """
:root{--ink:#1d2330;--muted:#667085;--line:#e4e7ec;--bg:#f5f6f8;--card:#fff;
--pass:#067647;--pass-bg:#dcfae6;--fail:#b42318;--fail-bg:#fee4e2;--accent:#4f46e5;
--gold:#b54708;--gold-bg:#fef0c7}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;background:var(--bg);color:var(--ink);line-height:1.5;font-size:15px;
font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,
"Noto Sans",sans-serif,"Apple Color Emoji","Segoe UI Emoji","Noto Color Emoji"}
main{max-width:1180px;margin:0 auto;padding:32px 24px 48px}
code,pre,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",
monospace;font-size:.86em}
a{color:var(--accent)}
header.top .kicker{text-transform:uppercase;letter-spacing:.12em;font-size:12px;
font-weight:700;color:var(--accent)}
header.top h1{font-size:28px;line-height:1.25;margin:6px 0 14px;overflow-wrap:anywhere}
.meta{display:flex;flex-wrap:wrap;gap:8px 22px;color:var(--muted);font-size:13px;margin:0;
padding:0;list-style:none}
.meta b{color:var(--ink);font-weight:600}
.notes{margin:14px 0 0;padding:10px 14px;background:#eef4ff;border:1px solid #d1e0ff;
border-radius:8px;font-size:13px}
section{margin-top:28px}
h2{font-size:18px;margin:0 0 12px}
.card{background:var(--card);border:1px solid var(--line);border-radius:12px;
box-shadow:0 1px 2px rgba(16,24,40,.05)}
.winner{padding:22px 24px;border:2px solid #fec84b;
background:linear-gradient(180deg,#fffcf5 0,#fff 120px)}
.winner .head{display:flex;justify-content:space-between;gap:20px;align-items:flex-start;
flex-wrap:wrap}
.winner .label{color:var(--gold);font-weight:700;font-size:13px;text-transform:uppercase;
letter-spacing:.08em}
.winner h3{font-size:24px;margin:4px 0 2px;overflow-wrap:anywhere}
.winner .desc{color:var(--muted)}
.big{font-size:42px;font-weight:800;line-height:1;text-align:right;
font-variant-numeric:tabular-nums}
.big small{font-size:16px;color:var(--muted);font-weight:600}
.breakdown{display:grid;grid-template-columns:repeat(4,minmax(0,1fr));gap:12px;margin:18px 0}
.metric{background:var(--bg);border-radius:8px;padding:10px 12px}
.metric .k{font-size:12px;color:var(--muted);text-transform:uppercase;letter-spacing:.06em}
.metric .v{font-size:20px;font-weight:700;font-variant-numeric:tabular-nums}
.bar{height:6px;background:var(--line);border-radius:3px;overflow:hidden;margin-top:6px}
.bar i{display:block;height:100%;background:var(--accent);border-radius:3px}
.nowinner{padding:22px 24px;border:2px dashed #fda29b;background:#fffbfa;color:var(--fail);
font-weight:600;font-size:17px}
.post{background:#313338;color:#dbdee1;border-radius:10px;padding:16px 20px;
overflow-wrap:anywhere;font-size:15px;line-height:1.45}
.post h2,.post h3,.post h4,.post h5,.post h6{color:#f2f3f5;margin:12px 0 6px;font-size:17px}
.post h2{font-size:20px}
.post p{margin:0 0 10px}
.post p.sub{font-size:12px;color:#949ba4}
.post ul,.post ol{margin:0 0 10px;padding-left:22px}
.post a{color:#00a8fc}
.post strong{color:#f2f3f5}
.post code{background:#2b2d31;padding:1px 4px;border-radius:4px}
.post pre{background:#2b2d31;padding:10px;border-radius:6px;white-space:pre-wrap}
.post blockquote{margin:0 0 8px;padding-left:10px;border-left:4px solid #4e5058}
.posthead{font-size:13px;color:var(--muted);margin:0 0 8px}
table.board{width:100%;border-collapse:collapse;font-size:14px}
.board th{text-align:left;font-size:12px;text-transform:uppercase;letter-spacing:.05em;
color:var(--muted);font-weight:600;padding:10px 12px;border-bottom:1px solid var(--line);
background:#fafbfc}
.board td{padding:12px;border-bottom:1px solid var(--line);vertical-align:top}
.board tr:last-child td{border-bottom:0}
.board tr.win td{background:#fffcf0}
.board .n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.board .total{font-weight:800;font-size:16px}
.board .rank{font-weight:700;color:var(--muted);width:44px}
.cand{min-width:170px}
.cand b{display:block;overflow-wrap:anywhere}
.cand .id{color:var(--muted);font-size:12px}
.cand .d{display:block;color:var(--muted);font-size:12px}
.reason{color:var(--fail);font-size:13px;max-width:240px;overflow-wrap:anywhere}
.badge{display:inline-block;padding:2px 9px;border-radius:999px;font-size:12px;
font-weight:700;letter-spacing:.04em}
.pass{background:var(--pass-bg);color:var(--pass)}
.fail{background:var(--fail-bg);color:var(--fail)}
.gate{display:inline-block;margin:0 4px 4px 0;padding:1px 7px;border-radius:6px;
font-size:12px;white-space:nowrap}
.gate.ok{background:#ecfdf3;color:var(--pass)}
.gate.no{background:#fef3f2;color:var(--fail)}
details.cand-d{margin-bottom:10px;overflow:hidden}
details.cand-d>summary{cursor:pointer;padding:14px 18px;display:flex;gap:12px;
align-items:center;list-style:none;flex-wrap:wrap}
details.cand-d>summary::-webkit-details-marker{display:none}
details.cand-d>summary::before{content:"▸";color:var(--muted);width:10px}
details.cand-d[open]>summary::before{content:"▾"}
details.cand-d>summary .nm{font-weight:700;overflow-wrap:anywhere}
details.cand-d>summary .sc{margin-left:auto;font-weight:700;font-variant-numeric:tabular-nums}
.body{padding:4px 18px 18px;border-top:1px solid var(--line)}
.facts{display:grid;grid-template-columns:140px 1fr;gap:4px 12px;font-size:13px;margin:14px 0}
.facts dt{color:var(--muted)}
.facts dd{margin:0;overflow-wrap:anywhere}
h4{font-size:13px;text-transform:uppercase;letter-spacing:.06em;color:var(--muted);
margin:18px 0 8px}
pre.raw{background:#f8f9fb;border:1px solid var(--line);border-radius:8px;padding:12px;
margin:0;white-space:pre-wrap;overflow-wrap:anywhere;word-break:break-word;max-height:480px;
overflow:auto}
pre.term{background:#0f1419;color:#d6dde6;border-radius:8px;padding:12px;margin:0;
white-space:pre-wrap;overflow-wrap:anywhere;word-break:break-word;max-height:520px;
overflow:auto;font-size:12.5px;line-height:1.45}
table.qd{border-collapse:collapse;font-size:12.5px;width:100%;margin:6px 0}
.qd th,.qd td{border:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top;
overflow-wrap:anywhere}
.chk{margin-bottom:2px;font-size:12px}
.chk .gate{margin-bottom:0}
.qd th{background:#fafbfc;color:var(--muted);font-weight:600}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:0;font-size:13px}
dl.kv dt{color:var(--muted)}
dl.kv dd{margin:0;overflow-wrap:anywhere}
.muted{color:var(--muted)}
footer{margin-top:36px;color:var(--muted);font-size:12px;text-align:center}
"""


def _badge(passed: bool) -> str:
    return '<span class="badge pass">PASS</span>' if passed else \
        '<span class="badge fail">FAIL</span>'


def _gates_html(score: Score | None) -> str:
    if not score or not score.gates:
        return '<span class="muted">—</span>'
    return "".join(
        f'<span class="gate {"ok" if ok else "no"}">{"✓" if ok else "✗"} {_e(name)}</span>'
        for name, ok in score.gates.items()
    )


def _bar(value: Any) -> str:
    f = _num(value)
    width = 0.0 if f is None else max(0.0, min(100.0, f))
    return f'<div class="bar"><i style="width:{width:.1f}%"></i></div>'


def _check_html(name: str, check: dict[str, Any]) -> str:
    ok = check.get("valid")
    score = f" · {_fmt(check['score'], 0)}" if _num(check.get("score")) is not None else ""
    details = check.get("details")
    note = f' <span class="muted">{_e(_cut_line(str(details)))}</span>' if details else ""
    return (f'<div class="chk"><span class="gate {"ok" if ok else "no"}">'
            f'{"✓" if ok else "✗"} {_e(name)}{score}</span>{note}</div>')


def _value_html(value: Any, depth: int = 0) -> str:
    """Any JSON-ish value as HTML (the judge's details have no fixed shape)."""
    if isinstance(value, bool):
        return '<span class="gate ok">✓</span>' if value else '<span class="gate no">✗</span>'
    if _is_scalar(value):
        return "—" if value is None else _e(_cut_line(str(value)))
    if depth >= 3:
        return f'<code>{_e(_compact(value))}</code>'
    if isinstance(value, dict):
        if not value:
            return "—"
        if all(isinstance(v, bool) for v in value.values()):  # flags: inline chips
            return "".join(f'<span class="gate {"ok" if v else "no"}">{"✓" if v else "✗"} '
                           f"{_e(k)}</span>" for k, v in value.items())
        if all(isinstance(v, dict) and isinstance(v.get("valid"), bool)
               for v in value.values()):  # named checks {valid, score?, details?}
            return "".join(_check_html(k, v) for k, v in value.items())
        return '<dl class="kv">' + "".join(
            f"<dt>{_e(k)}</dt><dd>{_value_html(v, depth + 1)}</dd>"
            for k, v in list(value.items())[:40]) + "</dl>"
    if isinstance(value, list | tuple):
        if not value:
            return "—"
        if all(isinstance(v, dict) for v in value):
            cols = list(dict.fromkeys(k for v in value for k in v))[:10]
            head = "".join(f"<th>{_e(c)}</th>" for c in cols)
            body = "".join(
                "<tr>" + "".join(f"<td>{_value_html(v.get(c), depth + 1)}</td>" for c in cols)
                + "</tr>" for v in value[:100])
            more = (f'<p class="muted">… {len(value) - 100} more</p>'
                    if len(value) > 100 else "")
            return f'<table class="qd"><tr>{head}</tr>{body}</table>{more}'
        if all(_is_scalar(v) for v in value):
            return ", ".join(_value_html(v, depth + 1) for v in value[:100])
        return "<ul>" + "".join(f"<li>{_value_html(v, depth + 1)}</li>"
                                for v in value[:100]) + "</ul>"
    return f"<code>{_e(_compact(value))}</code>"


def _metric(label: str, value: Any) -> str:
    return (f'<div class="metric"><div class="k">{label}</div>'
            f'<div class="v">{_fmt(value)}</div>{_bar(value)}</div>')


def _winner_html(result: ForgeResult, win: _Row | None) -> str:
    if not win or not win.score:
        return f'<div class="card nowinner">{NO_WINNER}.</div>'
    s = win.score
    desc = f'<div class="desc">{_e(win.description)}</div>' if win.description else ""
    post = _winner_post(result)
    post_html = (
        f'<p class="posthead">The winning post, as it would read on Discord '
        f'(<span class="mono">{_e(win.cid)}/discord_post.md</span>)</p>'
        f'<div class="post">{markdown_to_html(_artifact_shown(post))}</div>'
        if post is not None else '<p class="muted">The winner left no post.</p>'
    )
    return (
        '<div class="card winner"><div class="head"><div>'
        '<div class="label">🏆 Winner</div>'
        f'<h3>{_e(win.name)}</h3>{desc}'
        f'<div class="muted mono">{_e(win.cid)} · runtime {_runtime(win.result)}</div></div>'
        f'<div class="big">{_fmt(s.total_score)}<small>/100</small></div></div>'
        '<div class="breakdown">'
        + _metric("Success", s.success) + _metric("Quality", s.quality_score)
        + _metric("Speed", s.speed_score) + _metric("Total", s.total_score)
        + f"</div>{post_html}</div>"
    )


def _board_html(rows: Iterable[_Row], winner_id: str | None) -> str:
    head = ("<tr><th>#</th><th>Candidate</th><th>Result</th><th>Gates</th>"
            '<th class="n">Success</th><th class="n">Quality</th><th class="n">Speed</th>'
            '<th class="n">Total</th><th class="n">Runtime</th><th class="n">CPU</th>'
            '<th>Disqualified because</th></tr>')
    body = []
    for row in rows:
        s = row.score
        desc = f'<span class="d">{_e(row.description)}</span>' if row.description else ""
        body.append(
            f'<tr class="{"win" if row.cid == winner_id else ""}">'
            f'<td class="rank">{s.rank if s and s.rank else "—"}</td>'
            f'<td class="cand"><b>{_e(row.name)}</b>'
            f'<span class="id mono">{_e(row.cid)}</span> {desc}</td>'
            f"<td>{_badge(row.passed)}</td><td>{_gates_html(s)}</td>"
            f'<td class="n">{_fmt(s.success if s else None)}</td>'
            f'<td class="n">{_fmt(s.quality_score if s else None)}</td>'
            f'<td class="n">{_fmt(s.speed_score if s else None)}</td>'
            f'<td class="n total">{_fmt(s.total_score if s else None)}</td>'
            f'<td class="n">{_runtime(row.result)}</td><td class="n">{_cpu(row.result)}</td>'
            f'<td class="reason">{_e(_cut_line(row.reason))}</td></tr>'
        )
    return f'<div class="card"><table class="board">{head}{"".join(body)}</table></div>'


def _candidate_html(row: _Row, is_winner: bool) -> str:
    s, r = row.score, row.result
    facts = "".join(f"<dt>{_e(k)}</dt><dd>{_e(_cut_line(v))}</dd>"
                    for k, v in _result_facts(r))
    parts = [f'<dl class="facts">{facts}</dl>']
    if s and s.quality_details:
        parts.append(f"<h4>Quality details</h4>{_value_html(s.quality_details)}")
    if r and r.artifact_content is not None:
        parts.append(f'<h4>Artifact · <span class="mono">{_e(row.cid)}/discord_post.md</span>'
                     f'</h4><pre class="raw">{_e(_artifact_shown(r.artifact_content))}</pre>')
    else:
        parts.append('<h4>Artifact</h4><p class="muted">None.</p>')
    if r and r.output:
        parts.append(f"<h4>Output · last {TAIL_LINES} lines</h4>"
                     f'<pre class="term">{_e(output_tail(r.output))}</pre>')
    rank = f"#{s.rank}" if s and s.rank else "—"
    return (
        f'<details class="card cand-d"{" open" if is_winner else ""}><summary>'
        f'<span class="muted">{rank}</span><span class="nm">{_e(row.name)}</span>'
        f'<span class="muted mono">{_e(row.cid)}</span>{_badge(row.passed)}'
        f'<span class="sc">{_fmt(s.total_score if s else None)}</span></summary>'
        f'<div class="body">{"".join(parts)}</div></details>'
    )


def render_html(result: ForgeResult) -> str:
    """``report.html``: one self-contained page (inline CSS, no scripts, no fetches)."""
    return "".join(html_parts(result))


def html_parts(result: ForgeResult) -> Iterator[str]:
    """``report.html`` as pieces to write one after another (no whole copy in memory)."""
    rows = _rows(result)
    win = _winner(result, rows)
    meta = [("Run", f'<span class="mono">{_e(result.run_id)}</span>'),
            ("Timestamp", _e(result.timestamp)), ("Mode", _e(result.execution_mode)),
            ("Judge", _e(result.judge)), ("Speed scored on", _e(speed_words(result))),
            ("Candidates", str(len(rows)))]
    if result.competition:
        meta.append(("Competition", _e(result.competition)))
    passed = sum(1 for r in rows if r.passed)
    meta.append(("Passed", f"{passed}/{len(rows)}"))
    notes = "".join(f"<div>{_e(n)}</div>" for n in result.notes)
    footer = f"Dream Foundry · run {_e(result.run_id)}"
    if result.definition_sha256:
        footer += f' · definition <span class="mono">{_e(result.definition_sha256[:12])}</span>'
    head = (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'\">"
        f"<title>Dream Foundry · {_e(result.run_id)}</title>"
        f"<style>{_CSS}</style></head>\n<body><main>"
        '<header class="top"><div class="kicker">Dream Foundry · run report</div>'
        f"<h1>{_e(shorten(result.objective))}</h1><ul class=\"meta\">"
        + "".join(f"<li>{k} <b>{v}</b></li>" for k, v in meta)
        + "</ul>"
        + (f'<div class="notes">{notes}</div>' if notes else "")
        + "</header>\n"
        f"<section><h2>Winner</h2>{report_verdict.winner_html(result)}"
        f"{_winner_html(result, win)}</section>\n"
        + report_verdict.trials_html(result)
        + f"<section><h2>Leaderboard</h2>{_board_html(rows, result.winner_id)}</section>\n"
        + report_verdict.standings_html(result)
        +
        "<section><h2>Candidates</h2>"
    )
    yield head
    for n, row in enumerate(rows):
        yield ("\n" if n else "") + _candidate_html(row, win is not None and row is win)
    yield f"</section>\n<footer>{footer}</footer></main></body></html>\n"
