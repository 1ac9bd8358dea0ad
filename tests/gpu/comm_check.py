"""On a GPU machine: CuPy arrays between two Dask workers over gpucluster://, byte for byte.

Two workers on the one GPU (as on the H100 we are lent): with GPUCLUSTER_COMM_PATH=host-staged
(the path MIG instances get) and with the automatic path (cuda-ipc). Sizes around the ring's 4 MiB
slot, a 1 GiB array, a sliced (offset) array, and a worker killed mid-transfer (Dask must recompute). Prints one line per
check and exits non-zero on the first failure.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from distributed import Client, LocalCluster, wait

MiB = 1 << 20


def make(n: int, seed: int):
    import cupy

    x = (cupy.arange(n, dtype="u8") * 2654435761 + seed).astype("u1")
    cupy.cuda.runtime.deviceSynchronize()
    return x


def make_slice(n: int, seed: int):
    return make(n + 4096, seed)[4096:]


def digest(x, n: int, seed: int, offset: int = 0):
    import cupy

    want = (cupy.arange(offset, offset + n, dtype="u8") * 2654435761 + seed).astype("u1")
    return bool((x == want).all()) and x.size == n


def state(key, dask_worker=None):
    ts = dask_worker.state.tasks.get(key)
    return ts.state if ts is not None else None


def run(path: str) -> None:
    os.environ["GPUCLUSTER_DEVICE"] = "cuda"
    if path == "host-staged":
        os.environ["GPUCLUSTER_COMM_PATH"] = "host-staged"
    else:
        os.environ.pop("GPUCLUSTER_COMM_PATH", None)
    with LocalCluster(
        protocol="gpucluster", host="127.0.0.1", n_workers=2, threads_per_worker=1, dashboard_address=None
    ) as cluster, Client(cluster) as client:
        a, b = list(client.scheduler_info()["workers"])
        for n in (1, 8, 16 * 1024, 32 * 1024 - 1, 64 * 1024, 4 * MiB - 1, 4 * MiB + 1, 64 * MiB, 1024 * MiB):
            x = client.submit(make, n, n % 13, workers=[a], pure=False)
            ok = client.submit(digest, x, n, n % 13, workers=[b], pure=False).result(timeout=120)
            print(f"{path}: {n} bytes intact: {ok}", flush=True)
            assert ok
        x = client.submit(make_slice, 64 * MiB, 5, workers=[a], pure=False)
        ok = client.submit(digest, x, 64 * MiB, 5, 4096, workers=[b], pure=False).result(timeout=120)
        print(f"{path}: a slice at an offset, intact: {ok}", flush=True)
        assert ok
        # A worker killed while its array moves.
        n = 1024 * MiB
        x = client.submit(make, n, 3, workers=[a], allow_other_workers=True, pure=False)
        wait(x)
        victim = client.run(os.getpid, workers=[a])[a]
        y = client.submit(digest, x, n, 3, workers=[b], pure=False)
        deadline = time.monotonic() + 60
        while client.run(state, x.key, workers=[b])[b] != "flight" and time.monotonic() < deadline:
            time.sleep(0.002)
        os.kill(victim, signal.SIGKILL)
        t = time.monotonic()
        ok = y.result(timeout=180)
        print(f"{path}: worker killed mid-transfer, recomputed intact: {ok} ({time.monotonic() - t:.1f} s)", flush=True)
        assert ok


if __name__ == "__main__":
    for path in sys.argv[1:] or ["host-staged", "auto"]:
        run(path)
    print("comm check passed")
