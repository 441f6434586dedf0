"""``forge web``: the dashboard. It reads the run store (worker/store) and forge.toml, and
its two actions go through the same code as beat and ``forge post``. Pages, actions and
security: docs/web.md.

    from dispatcher.web.app import create_app
    from dispatcher.web.settings import from_environment
    app = create_app(from_environment())        # an ASGI app (uvicorn serves it)
"""
