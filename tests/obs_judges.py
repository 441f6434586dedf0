"""Judges for the observability tests, named by ``module:Class`` as any competition may.

``Wins``: every successful candidate qualifies, the fastest wins (a winner without the
events judge's calendar). ``Crashes``: raises, as a buggy judge would, with a secret of
the worker's environment in its message. ``Probe``: like ``Wins``, and records whether
the worker's process loaded the Sentry SDK and defined metrics.
"""

from __future__ import annotations

import os
import sys

from worker.records import Score


class Wins:
    name = "wins"

    def score(self, results, context):
        return [Score(candidate_id=r.candidate_id, success=1.0 if r.success else 0.0,
                      qualified=r.success, total_score=(100.0 - r.runtime_seconds)
                      if r.success else 0.0)
                for r in results]


class Crashes:
    name = "crashes"

    def score(self, results, context):
        raise RuntimeError("judge exploded near "
                           + os.environ.get("OBS_COMP_TOKEN", "(no token)"))


class Probe(Wins):
    name = "probe"

    def score(self, results, context):
        from worker.observability import metrics

        scores = super().score(results, context)
        for s in scores:
            s.quality_details = {"sentry_sdk": "sentry_sdk" in sys.modules,
                                 "metrics": metrics.enabled()}
        return scores
