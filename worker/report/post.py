"""Discord-style markdown to HTML: a security boundary.

A post is whatever a candidate wrote. Every character is escaped before any markup is
added, links are http(s) only, and nothing can open a tag, an attribute or a script.
Used by ``report.html`` and by the dashboard (``dispatcher.web.render``).
"""

from __future__ import annotations

import html
import re
from urllib.parse import urlsplit

from worker.report.text import clean, cut_line

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
    ``clean`` replaced it), so emphasis can wrap a link but never rewrite a URL.
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

    for raw in clean(text).split("\n"):
        if code is not None:
            if raw.strip().startswith("```"):
                out.append("<pre><code>" + html.escape("\n".join(code)) + "</code></pre>")
                code = None
            else:
                code.append(cut_line(raw))
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
