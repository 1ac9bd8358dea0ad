"""A worker that dies while its data moves: the reader fails at once and Dask recomputes."""

from __future__ import annotations

import os
import signal
import time

from distributed import Client, LocalCluster, wait

from test_comm import check, make

MiB = 1 << 20


def _state(key, dask_worker=None):
    ts = dask_worker.state.tasks.get(key)
    return ts.state if ts is not None else None


def test_a_worker_killed_mid_transfer_is_recomputed(monkeypatch):
    monkeypatch.setenv("GPUCLUSTER_DEVICE", "sim")
    # Host-staged, so that the transfer takes long enough to be caught in the middle.
    monkeypatch.setenv("GPUCLUSTER_COMM_PATH", "host-staged")
    n = 512 * MiB
    with LocalCluster(
        protocol="gpucluster", host="127.0.0.1", n_workers=2, threads_per_worker=1, dashboard_address=None,
    ) as cluster, Client(cluster) as client:
        a, b = list(client.scheduler_info()["workers"])
        x = client.submit(make, n, 3, workers=[a], allow_other_workers=True, pure=False)
        wait(x)
        victim = client.run(os.getpid, workers=[a])[a]
        y = client.submit(check, x, n, 3, workers=[b], pure=False)
        deadline = time.monotonic() + 30
        while client.run(_state, x.key, workers=[b])[b] != "flight":
            assert time.monotonic() < deadline, "the transfer never began"
            time.sleep(0.005)
        os.kill(victim, signal.SIGSTOP)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        ok, via, pid = y.result(timeout=120)
        assert ok, "the recomputed array arrived different"
        assert time.monotonic() - killed < 60
