"""``create_app(settings)``: the dashboard as a Starlette application.

Routes (all pages server-rendered, readable without JavaScript)::

    GET  /                                   competitions: schedule, next run, last winner
    GET  /runs?competition=&status=&page=    runs, newest first, 50 a page
    GET  /runs/{run}                         a run: live while it runs, results once done
    GET  /runs/{run}/body                    the same page's body (the live page swaps it
                                             in when the run finishes)
    GET  /runs/{run}/events                  server-sent events of a live run
    GET  /runs/{run}/report.html|report.md|summary.json
    GET  /runs/{run}/candidates/{cand}/artifact.md|output.log
    GET  /candidates/{cand}?competition=     a candidate's history, score over time
    GET  /competitions/{name}/standings?since=  the season: ratings, streaks, regressions
    POST /competitions/{name}/start          start a competition now   (token, CSRF)
    POST /runs/{run}/repost                  re-post the winner        (token, CSRF)
    GET|POST /login, POST /logout            sign-in with FORGE_WEB_TOKEN
    GET  /healthz

A run or candidate id that breaks the input rules (worker/validation.py), or names
nothing, is a 404 page; any other failure a 500 page without details (the server logs
it). Security: dispatcher/web/security.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from dispatcher.web import security
from dispatcher.web.charts import score_chart
from dispatcher.web.data import Data, StoreUnavailable, scheduled
from dispatcher.web.live import TERMINAL, LiveCandidate, LiveHub, Renderers
from dispatcher.web.render import environment
from dispatcher.web.settings import WebSettings
from worker import config, observability
from worker.validation import InvalidInput, check_candidate_id, check_run_id

logger = logging.getLogger("dream_foundry.web")

HERE = Path(__file__).resolve().parent
PER_PAGE = 50
HISTORY_LIMIT = 100
RUN_STATUSES = ("queued", "running", "finished", "failed")
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; sandbox"


# ---------------------------------------------------------------------------- the app


class Dashboard:
    """The app's state: settings, data, templates, the live hub; and its handlers."""

    def __init__(self, settings: WebSettings):
        self.settings = settings
        self.data = Data(settings)
        self.env = environment(HERE / "templates")
        backend = redis_url = None
        if config.is_distributed():
            from worker.app import app as celery_app

            backend = celery_app.backend
            redis_url = config.result_backend_url() if \
                str(config.result_backend_url() or "").startswith(("redis://", "rediss://")) \
                else None
        self.distributed = backend is not None
        self.hub = LiveHub(self.data, Renderers(head=self._head_html, row=self._row_html),
                           settings.poll_interval, backend=backend, redis_url=redis_url)

    # ------------------------------------------------------------------ rendering

    def flower(self, task_id: str) -> str | None:
        if self.settings.flower_url is None:
            return None
        from urllib.parse import quote

        return f"{self.settings.flower_url}/task/{quote(task_id, safe=':')}"

    def render(self, template: str, request: Request | None = None, /,
               status_code: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(self.html(template, request, **context), status_code=status_code)

    def html(self, template: str, request: Request | None = None, /, **context: Any) -> str:
        signed = request is not None and security.signed_in(request)
        base = {"request": request, "settings": self.settings, "flower": self.flower,
                "signed_in": signed, "distributed": self.distributed,
                "csrf": security.csrf_token(request) if request is not None else None,
                "actions": self.settings.actions_enabled and signed,
                "discord_configured": config.discord_webhook_url() is not None}
        return self.env.get_template(template).render(**base, **context)

    def _head_html(self, summary) -> str:
        return self.html("_run_head.html", summary=summary)

    def _row_html(self, c: LiveCandidate) -> str:
        return self.html("_live_row.html", c=c)

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _run_id(request: Request) -> str:
        try:
            return check_run_id(request.path_params["run_id"])
        except InvalidInput:
            raise HTTPException(404, "No such run: that is not a valid run id.") from None

    @staticmethod
    def _candidate_id(request: Request) -> str:
        try:
            return check_candidate_id(request.path_params["candidate_id"])
        except InvalidInput:
            raise HTTPException(404, "No such candidate: that is not a valid candidate "
                                     "id.") from None

    @staticmethod
    def _competition_param(request: Request) -> str | None:
        from dispatcher.competitions import NAME_RE

        name = request.query_params.get("competition") or None
        if name is not None and not NAME_RE.fullmatch(name):
            raise HTTPException(404, "No such competition.")
        return name

    def _summary(self, run_id: str):
        summary = self.data.read("run_summary", run_id)
        if summary is None:
            raise HTTPException(404, f"No run {run_id} in the run store.")
        return summary

    def _detail(self, run_id: str):
        detail = self.data.read("get_run", run_id)
        if detail is None:
            raise HTTPException(404, f"No run {run_id} in the run store.")
        return detail

    def _run_context(self, run_id: str) -> dict[str, Any]:
        """What the run page shows: the finished view, or the live one."""
        summary = self._summary(run_id)
        if summary.status in TERMINAL:
            return {"live": False, **finished_view(self._detail(run_id))}
        snap = self.hub.snapshot(run_id)
        if snap is None:
            raise HTTPException(404, f"No run {run_id} in the run store.")
        return {"live": True, "summary": snap.summary, "candidates": snap.candidates}

    # ------------------------------------------------------------------ pages

    def competitions_page(self, request: Request) -> HTMLResponse:
        comps, problem = self.data.competitions()
        stored = {c.name: c for c in (self.data.read("competitions") or [])}
        plan = scheduled(comps)
        names = list(plan) + [n for n in stored if n not in plan and n is not None]
        rows = [{"name": n, "scheduled": plan.get(n), "stored": stored.get(n)} for n in names]
        return self.render("competitions.html", request, rows=rows, problem=problem,
                           adhoc=stored.get(None), now=datetime.now(UTC))

    def runs_page(self, request: Request) -> HTMLResponse:
        competition = self._competition_param(request)
        status = request.query_params.get("status") or None
        if status is not None and status not in RUN_STATUSES:
            raise HTTPException(404, "No such run status.")
        try:
            page = int(request.query_params.get("page") or 1)
        except ValueError:
            raise HTTPException(404, "No such page.") from None
        if page < 1:
            raise HTTPException(404, "No such page.")
        runs = self.data.read("list_runs", competition=competition, status=status,
                              page=page, per_page=PER_PAGE)
        if runs is not None and runs.total and page > runs.pages:
            raise HTTPException(404, "No such page.")
        known = sorted(set(self.data.competition_names()) | set(self.data.competitions()[0]))

        def link(**change: Any) -> str:
            params = {"competition": competition, "status": status, "page": page, **change}
            query = urlencode({k: v for k, v in params.items() if v not in (None, "", 1)})
            return "/runs" + (f"?{query}" if query else "")

        return self.render("runs.html", request, runs=runs, competition=competition,
                           status=status, statuses=RUN_STATUSES, known=known, link=link)

    def run_page(self, request: Request) -> HTMLResponse:
        run_id = self._run_id(request)
        return self.render("run.html", request, run_id=run_id, **self._run_context(run_id))

    def run_body(self, request: Request) -> HTMLResponse:
        run_id = self._run_id(request)
        return self.render("_run_body.html", request, run_id=run_id,
                           **self._run_context(run_id))

    async def run_events(self, request: Request) -> Response:
        run_id = self._run_id(request)
        await run_in_threadpool(self._summary, run_id)
        return StreamingResponse(self.hub.stream(run_id), media_type="text/event-stream",
                                 headers={"cache-control": "no-store",
                                          "x-accel-buffering": "no"})

    def candidate_page(self, request: Request) -> HTMLResponse:
        cid = self._candidate_id(request)
        competition = self._competition_param(request)
        history = self.data.read("candidate_history", cid, competition=competition,
                                 limit=HISTORY_LIMIT) or []
        if not history:
            raise HTTPException(404, f"No runs of candidate {cid}"
                                     + (f" in competition {competition}." if competition
                                        else "."))
        scored = [h.total_score for h in history if h.total_score is not None]
        stats = {"runs": len(history), "wins": sum(1 for h in history if h.won),
                 "mean": sum(scored) / len(scored) if scored else None,
                 "best": max(scored) if scored else None}
        competitions = sorted({h.competition for h in history if h.competition})
        return self.render("candidate.html", request, cid=cid, history=history,
                           chart=score_chart(history), stats=stats, competition=competition,
                           competitions=competitions, name=history[0].name)

    def standings_page(self, request: Request) -> HTMLResponse:
        from dispatcher.competitions import NAME_RE
        from worker.standings import as_dict, compute

        name = request.path_params["name"]
        if not NAME_RE.fullmatch(name):
            raise HTTPException(404, "No such competition.")
        since_text = request.query_params.get("since") or None
        since = None
        if since_text is not None:
            try:
                since = datetime.fromisoformat(since_text)
            except ValueError:
                raise HTTPException(404, "No such date: use YYYY-MM-DD.") from None
            since = since.replace(tzinfo=UTC) if since.tzinfo is None else since
        if name not in self.data.competition_names() and name not in self.data.competitions()[0]:
            raise HTTPException(404, f"No competition {name}.")
        store = self.data.store()
        if store is None:
            raise HTTPException(404, f"No runs of competition {name}.")
        try:
            st = as_dict(compute(_Reader(self.data), name, since=since), name)
        except ValueError:
            raise HTTPException(404, "No such date.") from None
        return self.render("standings.html", request, name=name, st=st, since=since_text)

    # ------------------------------------------------------------------ files

    def _entry(self, request: Request):
        run_id = self._run_id(request)
        cid = self._candidate_id(request)
        detail = self._detail(run_id)
        entry = next((c for c in detail.candidates if c.info.id == cid), None)
        if entry is None or entry.result is None:
            raise HTTPException(404, f"No result of candidate {cid} in run {run_id}.")
        return run_id, cid, entry

    @staticmethod
    def _text_file(text: str, filename: str) -> PlainTextResponse:
        return PlainTextResponse(text, headers={
            "content-security-policy": security.FILE_CSP,
            "content-disposition": f'inline; filename="{filename}"'})

    def artifact_file(self, request: Request) -> Response:
        run_id, cid, entry = self._entry(request)
        if entry.result.artifact_content is None:
            raise HTTPException(404, f"Candidate {cid} left no artifact in run {run_id}.")
        return self._text_file(entry.result.artifact_content, f"{cid}-discord_post.md")

    def output_file(self, request: Request) -> Response:
        _run_id, cid, entry = self._entry(request)
        return self._text_file(entry.result.output or "", f"{cid}-output.log")

    def report_file(self, request: Request) -> Response:
        run_id = self._run_id(request)
        fmt = request.path_params["fmt"]
        if fmt not in ("report.html", "report.md", "summary.json"):
            raise HTTPException(404, "There is no page at this address.")
        if fmt == "summary.json":
            result = self.data.read("load_result", run_id)
            if result is None:
                raise HTTPException(404, f"Run {run_id} has not finished (or is unknown).")
            return JSONResponse(result.to_dict(), headers={
                "content-security-policy": security.FILE_CSP})
        text = self.data.read("report", run_id, "html" if fmt == "report.html" else "md")
        if text is None:
            raise HTTPException(404, f"Run {run_id} has not finished (or is unknown).")
        if fmt == "report.html":
            return HTMLResponse(text, headers={"content-security-policy": REPORT_CSP})
        return self._text_file(text, f"{run_id}-report.md")

    # ------------------------------------------------------------------ actions

    async def start_competition(self, request: Request) -> Response:
        from dispatcher.web.actions import start_now

        await security.checked_form(request, self.settings)
        name = request.path_params["name"]
        comps, _problem = await run_in_threadpool(self.data.competitions)
        if name not in comps:
            raise HTTPException(404, "No such competition in forge.toml.")
        outcome = await run_in_threadpool(start_now, name)
        if outcome.run_id:
            return RedirectResponse(f"/runs/{outcome.run_id}", 303)
        return self.render("action.html", request, status_code=200 if outcome.ok else 409,
                           title=f"Start {name}", outcome=outcome)

    async def repost(self, request: Request) -> Response:
        from dispatcher.web.actions import repost

        await security.checked_form(request, self.settings)
        run_id = self._run_id(request)
        store = await run_in_threadpool(self.data.store)
        if store is None:
            raise HTTPException(404, f"No run {run_id} in the run store.")
        outcome = await run_in_threadpool(repost, store, self.settings.artifacts_dir, run_id)
        return self.render("action.html", request, status_code=200 if outcome.ok else 409,
                           title=f"Re-post run {run_id}", outcome=outcome)

    # ------------------------------------------------------------------ sign-in

    @staticmethod
    def _next(target: str | None) -> str:
        """Where to go after signing in: a path on this site only (no open redirect)."""
        if not target or not target.startswith("/") or target.startswith("//") \
                or "\\" in target or urlsplit(target).netloc:
            return "/"
        return target

    def login_page(self, request: Request) -> HTMLResponse:
        return self.render("login.html", request,
                           next=self._next(request.query_params.get("next")))

    async def login(self, request: Request) -> Response:
        security.check_origin(request)
        if not self.settings.actions_enabled:
            raise HTTPException(403, "There is no sign-in: FORGE_WEB_TOKEN is not set.")
        form = await request.form()
        target = self._next(str(form.get("next", "")))
        if security.check_token(self.settings, str(form.get("token", ""))):
            security.start_session(request)
            return RedirectResponse(target, 303)
        logger.warning("dashboard: a sign-in with a wrong token (from %s)",
                       request.client.host if request.client else "?")
        await asyncio.sleep(security.FAILED_SIGN_IN_DELAY)
        return self.render("login.html", request, status_code=401, next=target,
                           error="That is not the token. Try again.")

    async def logout(self, request: Request) -> Response:
        await security.checked_form(request, self.settings)
        request.session.clear()
        return RedirectResponse("/", 303)

    # ------------------------------------------------------------------ errors

    def http_error(self, request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        detail = getattr(exc, "detail", None) or "Something went wrong."
        if status == 404 and detail == "Not Found":
            detail = "There is no page at this address."
        if status == 405:
            detail = "That method is not allowed here."
        return self.render("error.html", request, status_code=status, code=status, message=detail)

    def store_error(self, request: Request, exc: Exception) -> Response:
        message = (f"The run store ({getattr(exc, 'display', 'the store')}) cannot be read "
                   "right now. The server's log says why; pages return once it is back.")
        return self.render("error.html", request, status_code=503, code=503, message=message)

    def server_error(self, request: Request, exc: Exception) -> Response:
        logger.error("dashboard: %s %s failed: %s: %s", request.method, request.url.path,
                     type(exc).__name__, exc, exc_info=exc)
        try:
            return self.render("error.html", request, status_code=500, code=500,
                               message="Something went wrong on the server; it has been "
                                       "logged.")
        except Exception:  # noqa: BLE001 - even the error page failed: plain text
            return PlainTextResponse("Internal server error", status_code=500)


class _Reader:
    """The store's season read through Data (a failure is the 503 page)."""

    def __init__(self, data):
        self.data = data

    def season_runs(self, competition, **kwargs):
        return self.data.read("season_runs", competition, **kwargs) or []


def finished_view(detail) -> dict[str, Any]:
    """The finished run page's context: the leaderboard, the winner and its post as
    Discord shows it, every candidate with its artifact and output."""
    from worker.discord import announcement

    ranked = sorted(detail.candidates, key=lambda c: (
        c.score.rank if c.score is not None and c.score.rank else 10**9, c.position))
    winner = next((c for c in detail.candidates
                   if c.info.id == detail.summary.winner_id), None)
    result = detail.forge_result()
    messages = announcement(result) if result is not None and winner is not None else []
    return {"summary": detail.summary, "detail": detail, "ranked": ranked, "winner": winner,
            "result": result,
            "messages": messages, "passed": sum(1 for c in ranked
                                                if c.score is not None and c.score.qualified)}


def create_app(settings: WebSettings) -> Starlette:
    """The dashboard for ``settings`` (see :mod:`dispatcher.web.settings`)."""
    observability.setup_process("web", logging.INFO)  # Sentry, JSON logs: when configured
    d = Dashboard(settings)
    routes = [
        Route("/", d.competitions_page),
        Route("/runs", d.runs_page),
        Route("/runs/{run_id}", d.run_page),
        Route("/runs/{run_id}/body", d.run_body),
        Route("/runs/{run_id}/events", d.run_events),
        Route("/runs/{run_id}/{fmt:str}", d.report_file),
        Route("/runs/{run_id}/candidates/{candidate_id}/artifact.md", d.artifact_file),
        Route("/runs/{run_id}/candidates/{candidate_id}/output.log", d.output_file),
        Route("/runs/{run_id}/repost", d.repost, methods=["POST"]),
        Route("/candidates/{candidate_id}", d.candidate_page),
        Route("/competitions/{name}/standings", d.standings_page),
        Route("/competitions/{name}/start", d.start_competition, methods=["POST"]),
        Route("/login", d.login_page, methods=["GET"]),
        Route("/login", d.login, methods=["POST"]),
        Route("/logout", d.logout, methods=["POST"]),
        Route("/healthz", lambda request: PlainTextResponse("ok")),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [Middleware(security.SecurityHeaders)]
    if settings.token is None:
        middleware.append(Middleware(security.LoopbackHostOnly))
    middleware += [
        # A fresh key per process: restarting the server signs everyone out.
        Middleware(SessionMiddleware, secret_key=secrets.token_urlsafe(32),
                   session_cookie=security.SESSION_COOKIE, max_age=security.SESSION_MAX_AGE,
                   same_site="strict"),
        Middleware(security.RequireSignIn, settings=settings),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        await d.hub.close()  # live pages end, so the server stops at once

    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    max_body_size=64 * 1024, exception_handlers={
                        HTTPException: d.http_error, StoreUnavailable: d.store_error,
                        Exception: d.server_error})
    app.state.dashboard = d
    return app
