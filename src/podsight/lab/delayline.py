"""The delay line itself: the process that holds queued packets, run inside a netns.

Started by :func:`podsight.lab.delay.delayed` as ``ip netns exec NETNS python
-m podsight.lab.delayline --queue N --delay SECONDS``. It prints ``ready`` once
its queue is bound, then releases each packet ``SECONDS`` after it arrived, in
arrival order, until SIGTERM or SIGINT or until its parent dies; then it
accepts whatever it still holds before it unbinds, so stopping it never drops
a packet.

A module of its own, not imported by :mod:`podsight.lab`, so that ``-m`` runs
it fresh (runpy warns when the package already imported the module it runs).
"""

from __future__ import annotations

import argparse
import collections
import errno
import os
import select
import signal
import sys
import time
from collections.abc import Sequence

from podsight.lab.nfqueue import QueueSocket


def run_delay_line(queue_num: int, delay_s: float) -> int:
    """Hold each queued packet for ``delay_s``, then accept it; until SIGTERM or SIGINT."""
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        queue = QueueSocket(queue_num)
    except OSError as exc:
        busy = exc.errno in (errno.EPERM, errno.EBUSY)
        hint = " (another delay already uses this queue in this netns)" if busy else ""
        sys.stderr.write(f"cannot bind nfqueue {queue_num}: {exc.strerror}{hint}\n")
        return 1
    # (release time, packet id), in arrival order; release times never decrease.
    held: collections.deque[tuple[float, int]] = collections.deque()
    parent = os.getppid()
    with queue:
        print("ready", flush=True)
        # An orphan stops too: the rule's --queue-bypass then lets traffic through.
        while not stopping and os.getppid() == parent:
            now = time.monotonic()
            # Wake at the next release, or soon anyway to notice a stop request.
            timeout = min(max(held[0][0] - now, 0.0), 0.1) if held else 0.1
            readable = select.select([queue], [], [], timeout)[0]
            now = time.monotonic()
            if readable:
                held.extend((now + delay_s, pid) for pid in queue.receive())
            last = None
            while held and held[0][0] <= now:
                last = held.popleft()[1]
            if last is not None:
                queue.verdict_upto(last)
        if held:
            queue.verdict_upto(held[-1][1])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m podsight.lab.delayline")
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--delay", type=float, required=True, help="seconds")
    args = parser.parse_args(argv)
    return run_delay_line(args.queue, args.delay)


if __name__ == "__main__":
    sys.exit(main())
