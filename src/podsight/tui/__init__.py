"""The live terminal view of a run: one view for every gadget, driven by its record schema.

:func:`run_live` runs the pipeline in a worker thread and the textual app in
the main thread (where signals are delivered and where textual wants to be).
The run never waits for the screen: it writes every file first and then
hands the batch to the view's feed, which keeps the newest records and
samples raw records nobody else decodes. SIGINT and SIGTERM still only set
the stop flag; the run then ends as always (detach, last drain, files
closed, summary), and the view closes once it has.

Importing this package does not import textual; :func:`run_live` does.
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from podsight.pipeline import Run, RunResult


def run_live(run: Run[Any]) -> RunResult:
    """Execute ``run`` with its live view on the terminal; the summary after the view closes."""
    from podsight.tui.app import LiveApp, StdoutDriver

    feed = run.feed
    assert feed is not None, "run_live needs a run with options.live"
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["result"] = run.execute()
        except BaseException as exc:  # re-raised in the main thread, at the error boundary
            outcome["error"] = exc
        finally:
            feed.done.set()

    worker = threading.Thread(target=work, name="podsight-run", daemon=True)
    app = LiveApp(feed, run.stop)
    app.driver_class = StdoutDriver
    worker.start()
    try:
        app.run()
    finally:
        run.stop.set()  # the view closed (or failed): the run ends, files complete
        worker.join()
        feed.log.replay(sys.stderr)
    if "error" in outcome:
        raise outcome["error"]
    result: RunResult = outcome["result"]
    return result
