"""Measures how fast Dask moves a device array between two workers of a running cluster.

``gpucluster bench dask`` starts one cluster per protocol and runs this module as a client of
each::

    python -m gpucluster.bench --scheduler-file FILE [--security DIR] --sizes 16777216,268435456
        --repeats 5 --array cupy|sim

For each size, a task on one worker makes an array (CuPy on a GPU, a simulated device array
otherwise), and a task on another worker takes it: Dask moves it between the two. One warm-up,
then the median of ``--repeats`` runs of two figures: the receiving worker's own transfer log
(bytes over the duration Dask measured for the transfer) and the wall time from submitting the
consuming task to its result. It prints one JSON object per line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


#: How long one array may take to be made or moved before the benchmark gives up (a cluster
#: that cannot move it retries for ever; say so instead).
TIMEOUT = 120


def _make(n: int, kind: str):
    if kind == "cupy":
        import cupy

        x = cupy.ones(n, dtype="u1")
        cupy.cuda.runtime.deviceSynchronize()
        return x
    from gpucluster.sim import DeviceArray

    return DeviceArray.empty(n)


def _take(x) -> int:
    return int(x.nbytes)


def _last_transfer(dask_worker):
    log = list(dask_worker.transfer_incoming_log)
    return log[-1] if log else None


def _security(directory: str | None):
    if not directory:
        return None
    from distributed import Security

    return Security(
        tls_ca_file=os.path.join(directory, "ca.pem"),
        tls_client_cert=os.path.join(directory, "cert.pem"),
        tls_client_key=os.path.join(directory, "key.pem"),
        require_encryption=True,
    )


def measure(client, sizes: list[int], repeats: int, kind: str):
    from distributed import wait

    workers = list(client.scheduler_info()["workers"])
    if len(workers) < 2:
        raise SystemExit(f"the cluster has {len(workers)} worker(s); two are needed")
    a, b = workers[0], workers[1]
    for n in sizes:
        logs, walls = [], []
        for i in range(repeats + 1):
            x = client.submit(_make, n, kind, workers=[a], pure=False, key=f"make-{n}-{i}")
            wait(x, timeout=TIMEOUT)  # made on `a`, and not moved anywhere yet
            start = time.perf_counter()
            got = client.submit(_take, x, workers=[b], pure=False, key=f"take-{n}-{i}").result(timeout=TIMEOUT)
            wall = time.perf_counter() - start
            if got != n:
                raise SystemExit(f"{n} bytes arrived as {got}")
            entry = client.run(_last_transfer, workers=[b])[b]
            del x
            if i == 0:
                continue  # the warm-up
            walls.append(n / wall / 1e9)
            if entry and entry.get("duration"):
                # The log's own "total" is Dask's size estimate; the bytes moved are known: n.
                logs.append(n / entry["duration"] / 1e9)
        yield {
            "bytes": n,
            "log_gbps": statistics.median(logs) if logs else None,
            "wall_gbps": statistics.median(walls),
            "repeats": repeats,
            "from": a,
            "to": b,
        }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheduler-file", required=True)
    parser.add_argument("--security", help="the directory of a TLS cluster's ca.pem, cert.pem and key.pem")
    parser.add_argument("--sizes", default=",".join(str(s) for s in (16 << 20, 256 << 20, 1 << 30)))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--array", choices=("cupy", "sim"), default="cupy")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats takes 1 or more")
    from distributed import Client

    sizes = [int(s) for s in args.sizes.split(",") if s]
    with Client(scheduler_file=args.scheduler_file, security=_security(args.security), timeout=60) as client:
        client.wait_for_workers(2, timeout=120)
        for result in measure(client, sizes, args.repeats, args.array):
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
