"""The package's Python that gpucluster's launcher runs: the facts probe (``gpucluster._facts``),
the handshake check (``gpucluster._handshake``), each run as the launcher runs it (``python -c``
with the file's text, from ``/``), and the scheduler's plugin (``gpucluster.scheduler``), preloaded
into a real scheduler."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from importlib import resources

import distributed
import pytest

from gpucluster import _facts, scheduler


def run_as_the_launcher_does(module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -c <the module's text> ARGS`` from ``/``, as ``launcher::dask::python`` runs it."""
    text = resources.files("gpucluster").joinpath(f"{module}.py").read_text()
    return subprocess.run([sys.executable, "-c", text, *args], capture_output=True, text=True, cwd="/", timeout=60)


def test_the_facts_are_this_pythons():
    facts = _facts.python_facts()
    assert facts["distributed"] == distributed.__version__
    assert facts["gpucluster"] is True, "the package's comm is registered by its entry point"
    assert facts["executable"] == sys.executable
    assert set(facts) == {"executable", "distributed", "dask_cuda", "ucxx", "gpucluster", "bokeh", "rmm"}
    # Run as the launcher runs it: one JSON line, the same facts.
    run = run_as_the_launcher_does("_facts")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == facts


def test_the_handshake_check_tells_a_scheduler_from_a_port_that_only_listens():
    async def check() -> None:
        async with distributed.Scheduler(host="127.0.0.1", port=0, dashboard=False) as s:
            loop = asyncio.get_running_loop()
            run = await loop.run_in_executor(None, run_as_the_launcher_does, "_handshake", s.address)
            assert run.returncode == 0, run.stderr

    asyncio.run(check())
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        run = run_as_the_launcher_does("_handshake", f"tcp://127.0.0.1:{silent.getsockname()[1]}")
    assert run.returncode != 0, "a port that accepts but never speaks is no scheduler"


def test_the_scheduler_removes_its_workers_before_it_closes():
    from distributed.diagnostics.plugin import SchedulerPlugin

    class Probe(SchedulerPlugin):
        """Sees how many workers the scheduler still has once every plugin's `before_close` ran
        (distributed calls the plugins' `close` after them, before it closes its comms)."""

        name = "probe"

        def __init__(self, s):
            self.s, self.workers_left = s, None

        async def close(self):
            self.workers_left = len(self.s.workers)

    async def close_with_a_worker() -> tuple[bool, int | None, str]:
        s = await distributed.Scheduler(host="127.0.0.1", port=0, dashboard=False, preload=["gpucluster.scheduler"])
        probe = Probe(s)
        s.add_plugin(probe)
        w = await distributed.Worker(s.address, dashboard=False)
        registered = scheduler.WorkersFirst.name in s.plugins
        await s.close()
        for _ in range(100):
            if w.status.name in ("closed", "closing", "failed"):
                break
            await asyncio.sleep(0.05)
        status = w.status.name
        await w.close()
        return registered, probe.workers_left, status

    registered, workers_left, status = asyncio.run(close_with_a_worker())
    assert registered, "preloaded by name, the plugin is the scheduler's"
    assert workers_left == 0, "the workers were removed before the scheduler closed its comms"
    assert status in ("closed", "closing"), status


@pytest.mark.parametrize("module", ["_facts", "_handshake", "scheduler"])
def test_what_the_launcher_runs_imports_only_the_standard_library_and_distributed(module):
    # They also run in a Python without the gpucluster package.
    text = resources.files("gpucluster").joinpath(f"{module}.py").read_text()
    imports = [line.split()[1] for line in text.splitlines() if line.startswith(("import ", "from "))]
    assert not [m for m in imports if m.split(".")[0] in ("gpucluster", "dask_cuda", "numpy", "cupy")], imports
