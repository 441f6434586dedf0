"""A competition's season standings, read from the run store.

The runs of a competition (a forge.toml name) form its season; the ratings, wins,
streaks, trends and regressions are ``worker.judge.season``'s. This module feeds it from
the store: for the chord body (a standings section in the run's report, and one line of
season context in the winner's Discord post), for ``forge standings`` and for the
dashboard. The regression window is ``FORGE_REGRESSION_WINDOW`` (worker/config.py).

In the chord body the standings are best effort: no store, a store that cannot be read,
or a run outside any competition leave ``ForgeResult.standings`` None and the run goes on.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from worker import config
from worker.judge.season import SeasonRun, Standings, season_line, standings
from worker.records import ForgeResult

logger = logging.getLogger("dream_foundry")


def compute(store, competition: str, *, since: datetime | None = None,
            latest: SeasonRun | None = None, window: int | None = None) -> Standings:
    """The season table of ``competition`` from ``store`` (plus ``latest``, a run not
    stored yet: the one being judged). Raises StoreError when the store cannot be read."""
    runs = store.season_runs(competition, since=since,
                             exclude=latest.run_id if latest is not None else None)
    if latest is not None and (since is None or latest.when >= since):
        runs.append(latest)
    return standings(runs, regression_window=window or config.regression_window())


def as_dict(table: Standings, competition: str, winner_id: str | None = None,
            window: int | None = None) -> dict[str, Any]:
    """What a ForgeResult, ``forge standings --json`` and the dashboard carry."""
    return {"competition": competition, **table.to_dict(),
            "regression_window": window or config.regression_window(),
            "season_line": season_line(table, winner_id) if winner_id else None}


def for_run(result: ForgeResult, artifacts_dir: str) -> dict[str, Any] | None:
    """The standings after ``result`` (the chord body's run), or None (see above)."""
    if not result.competition or not config.store_enabled():
        return None
    from worker.store.hooks import _RUN_URLS, _store

    try:
        store = _store(_RUN_URLS.get(result.run_id) or config.database_url(artifacts_dir))
        if store is None:
            return None
        window = config.regression_window()
        table = compute(store, result.competition, latest=SeasonRun.from_result(result),
                        window=window)
    except Exception as exc:  # noqa: BLE001 - standings never cost a run its result
        logger.warning("[%s] season standings not computed (%s: %s)", result.run_id,
                       type(exc).__name__, exc)
        return None
    return as_dict(table, result.competition, result.winner_id, window)
