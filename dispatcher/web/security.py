"""The dashboard's guards: headers, host check, sign-in, CSRF. Each says what it stops.

* **Content-Security-Policy** on every page: scripts only from this origin's
  ``/static`` (no inline script, no event handler attribute, no ``eval``), no plugins,
  no framing, forms post only here. Everything a candidate wrote is escaped by the
  templates (Jinja autoescape) as the first line; the policy is the second: a mistake
  in one is still caught by the other.
* **Host check** (no token, so loopback only): a page is served only for a loopback
  ``Host``, so a web site that points its own name at 127.0.0.1 (DNS rebinding) cannot
  read the dashboard from the visitor's browser.
* **Sign-in** (with ``FORGE_WEB_TOKEN``): the token, typed once into the sign-in form,
  opens a session: a signed cookie, ``HttpOnly`` (no script reads it) and
  ``SameSite=Strict`` (no other site's page sends it). Every page needs it then.
* **CSRF**: every form carries the session's random token, checked on POST in constant
  time, and a POST whose ``Origin`` (or ``Referer``, or ``Sec-Fetch-Site``) names
  another site is refused before that.

Without a token the actions are off: the buttons are not shown, and a POST is refused.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import quote, urlsplit

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dispatcher.web.settings import WebSettings, is_loopback

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
# Text a candidate wrote, served as a file: never rendered, never run, never framed.
FILE_CSP = "default-src 'none'; sandbox"
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), interest-cohort=()",
}
SESSION_COOKIE = "forge_session"
SESSION_MAX_AGE = 12 * 3600
OPEN_PATHS = ("/login", "/static/", "/healthz")  # reachable before signing in
FAILED_SIGN_IN_DELAY = 1.0  # seconds: slows guessing (the token is long anyway)


class SecurityHeaders:
    """Adds the headers above to every response that did not set its own."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


class LoopbackHostOnly:
    """Without a token the dashboard answers only requests addressed to loopback."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = HTTPConnection(scope).headers.get("host", "")
            try:
                name = urlsplit(f"//{host}").hostname or ""
            except ValueError:
                name = ""
            if not is_loopback(name):
                response = PlainTextResponse(
                    "This dashboard answers only on loopback addresses (127.0.0.1, "
                    "localhost). To serve it under another name, set FORGE_WEB_TOKEN.",
                    status_code=421)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RequireSignIn:
    """With a token, every page but the sign-in form needs a signed-in session."""

    def __init__(self, app: ASGIApp, settings: WebSettings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.settings.token is not None:
            conn = HTTPConnection(scope)
            path = conn.url.path
            if not path.startswith(OPEN_PATHS) and not signed_in(conn):
                if scope["method"] in ("GET", "HEAD") and not path.endswith("/events"):
                    target = path + (f"?{conn.url.query}" if conn.url.query else "")
                    response = RedirectResponse(f"/login?next={quote(target, safe='')}", 303)
                else:
                    response = PlainTextResponse("Sign in first (/login).", status_code=401)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def signed_in(conn: HTTPConnection) -> bool:
    return bool(conn.scope.get("session", {}).get("auth"))


def csrf_token(request: Request) -> str | None:
    """The session's form token (made at sign-in); None without a session."""
    return request.session.get("csrf") if signed_in(request) else None


def check_token(settings: WebSettings, given: str) -> bool:
    if settings.token is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"),
                               settings.token.encode("utf-8"))


def start_session(request: Request) -> None:
    """A new session (never one an attacker could have planted): signed in, with a
    fresh form token."""
    request.session.clear()
    request.session["auth"] = 1
    request.session["csrf"] = secrets.token_urlsafe(32)


def check_origin(request: Request) -> None:
    """Refuse a POST that a page of another site sent (403). A browser says where a POST
    comes from (Sec-Fetch-Site, Origin, else Referer); a client that says nothing (curl)
    still needs the session and its form token."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise HTTPException(403, f"Refused: this form was sent from another site ({site}).")
    source = request.headers.get("origin") or request.headers.get("referer")
    if source is None:
        return
    try:
        netloc = urlsplit(source).netloc if source != "null" else "null"
    except ValueError:
        netloc = "?"
    if netloc != request.headers.get("host", ""):
        raise HTTPException(403, "Refused: this form was sent from another origin.")


async def checked_form(request: Request, settings: WebSettings):
    """The form of an action POST, after every guard: actions on, same origin, signed in,
    the session's form token. Raises HTTPException (403/401) otherwise."""
    if not settings.actions_enabled:
        raise HTTPException(403, "Actions are off: this dashboard runs without "
                                 "FORGE_WEB_TOKEN. Set it and restart `forge web` to "
                                 "enable them.")
    check_origin(request)
    if not signed_in(request):
        raise HTTPException(401, "Sign in first.")
    form = await request.form()
    given = str(form.get("csrf", ""))
    expected = request.session.get("csrf", "")
    if not given or not expected or not hmac.compare_digest(given, expected):
        raise HTTPException(403, "Refused: the form's token is missing or stale. Reload "
                                 "the page and try again.")
    return form
