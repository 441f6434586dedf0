"""``python -m tests.stop_after N forge-args...``: the forge CLI, stopping itself (SIGSTOP)
right after its Nth task message reaches the broker's queue.

A dispatcher that dies part way through publishing a run, at a known point: the test
kills it once it has stopped, instead of racing a SIGSTOP against the publishing loop.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys


def main() -> None:
    stop_after = int(sys.argv[1])
    from kombu.transport import redis as kombu_redis

    put = kombu_redis.Channel._put
    sent = [0]

    def counted_put(self, queue, message, **kwargs):
        put(self, queue, message, **kwargs)
        sent[0] += 1
        if sent[0] == stop_after:
            os.kill(os.getpid(), signal.SIGSTOP)

    kombu_redis.Channel._put = counted_put
    sys.argv = ["forge", *sys.argv[2:]]
    runpy.run_module("dispatcher.cli", run_name="__main__")


if __name__ == "__main__":
    main()
