"""``forge web``: serve the dashboard with uvicorn (binds 127.0.0.1 unless a token is set)."""

from __future__ import annotations

import argparse
import logging
import sys

from dispatcher.web.settings import DEFAULT_HOST, DEFAULT_PORT, check_bind, from_environment
from worker.observability import logs


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "web", help="serve the web dashboard (runs, live progress, history)",
        description="Serve the dashboard: competitions, runs (live while they run), "
                    "candidates' history. Reads the run store. Binds to 127.0.0.1 unless "
                    "FORGE_WEB_TOKEN is set; with it, signing in enables the actions "
                    "(start a competition now, re-post a winner). See docs/web.md.")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to bind (default {DEFAULT_HOST}; any other needs "
                        "FORGE_WEB_TOKEN)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--artifacts-dir", metavar="PATH",
                   help="artifacts directory whose store to read (default: "
                        "FORGE_ARTIFACTS_DIR or artifacts/; FORGE_DATABASE_URL wins)")
    p.set_defaults(func=cmd_web)


def cmd_web(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        print(f"forge: error: --port {args.port} is not a TCP port (1-65535)", file=sys.stderr)
        return 2
    settings = from_environment(args.artifacts_dir)  # ConfigError: exit 2 (dispatcher.cli)
    check_bind(args.host, settings.token)
    # start-up: uvicorn and the web app load only for `forge web`
    import uvicorn

    from dispatcher.web.app import create_app

    if not logs.enabled():  # FORGE_LOG_FORMAT=json: the root's JSON handler takes it all
        handler = logging.StreamHandler()  # the dashboard's own lines, beside uvicorn's
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        ours = logging.getLogger("dream_foundry")
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
        ours.propagate = False

    app = create_app(settings)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    store = app.state.dashboard.data.display
    print(f"Dream Foundry dashboard on http://{shown}:{args.port}/ (run store {store}; "
          f"actions {'on: sign in with FORGE_WEB_TOKEN' if settings.token else 'off'})",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", server_header=False,
                proxy_headers=False, timeout_graceful_shutdown=2, access_log=True,
                **({"log_config": None} if logs.enabled() else {}))  # None: ours, not its
    return 0
