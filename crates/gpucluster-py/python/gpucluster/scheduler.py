"""gpucluster's scheduler plugins: loaded into a Dask scheduler with ``--preload gpucluster.scheduler``
(``gpucluster dask local`` does so), or from this file's path where the scheduler's Python lacks
the gpucluster package (``gpucluster dask local`` then writes this file into its private
directory and preloads it from there).

:class:`WorkersFirst`: when the scheduler closes, it first removes its workers, which then close
with their nannies while the scheduler still answers them, and waits (5 s at most) for their
connections to go. Without it, every worker is signalled at once and a worker's heartbeat in
flight fails with a traceback as it closes (seen with 56 workers on the H100 host).

Only distributed is imported: the file must also run where the gpucluster package is not
installed.
"""

import asyncio
import time

from distributed.diagnostics.plugin import SchedulerPlugin

#: How long the scheduler waits for its workers' connections to go, seconds.
CLOSE_WAIT = 5.0
#: How long the number of connections must stay put to count as settled, seconds.
SETTLED = 0.3


class WorkersFirst(SchedulerPlugin):
    """Removes the workers before the scheduler closes (see the module's documentation)."""

    name = "gpucluster-workers-first"

    def __init__(self, scheduler):
        self.scheduler = scheduler

    async def before_close(self):
        s = self.scheduler
        workers = list(s.workers)
        if not workers:
            return
        stimulus_id = f"gpucluster-stop-{time.time()}"
        await asyncio.gather(
            *(s.remove_worker(w, stimulus_id=stimulus_id, close=True) for w in workers), return_exceptions=True
        )
        # The workers' connections close as they go; the clients' stay: wait until the number
        # of connections no longer falls (or none is left), CLOSE_WAIT at most.
        deadline = time.monotonic() + CLOSE_WAIT
        last, still = len(s._comms), 0.0
        while last and time.monotonic() < deadline and still < SETTLED:
            await asyncio.sleep(0.05)
            now = len(s._comms)
            still = still + 0.05 if now >= last else 0.0
            last = now


def dask_setup(scheduler):
    """Dask's preload hook: adds the plugins to ``scheduler``."""
    scheduler.add_plugin(WorkersFirst(scheduler))
