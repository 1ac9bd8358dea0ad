"""On a GPU machine with RMM and dask-cuda: what `gpucluster.dask.LocalCluster` sets up on each
worker besides its device, checked from inside the workers.

1. `LocalCluster(workers_per_device=2, rmm_pool_size="1GiB")`: each worker's RMM resource is a
   pool that CuPy allocates from; its threads' CPUs against the plan's `cpu_affinity` (pinned
   only where the device's CPUs are fewer than this process may use); a CuPy computation across
   the two workers gives the right answer.
2. `LocalCluster(device_memory_limit="1GiB")`: the worker keeps its data in dask-cuda's
   DeviceHostFile with that limit; six 256 MiB CuPy arrays held on it leave at most 1 GiB on the
   device and the rest in host memory, and their sum is still right.

3. With `--ucx` (distributed-ucxx installed): `LocalCluster(protocol="ucx", insecure=True, workers_per_device=2)`
   moves a CuPy array between its workers over UCX.
4. With `GPUCLUSTER_BIN` set (the binary): `gpucluster dask local --device-memory-limit 1GiB --
   --rmm-pool-size 1GiB` runs dask-cuda's worker with that limit and pool; Ctrl-C leaves nothing.

Usage: [GPUCLUSTER_BIN=...] python3 local_cluster_features.py [--ucx] [--only-dask-local]. Prints one line per fact
and `features check passed`.
"""
import os
import sys

MIB = 1 << 20


def pool_and_pinning(ok: bool) -> bool:
    from distributed import Client
    from gpucluster.dask import LocalCluster

    with LocalCluster(workers_per_device=2, rmm_pool_size="1GiB") as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=120)
        planned = {w["name"]: w for w in cluster.gpucluster_plan["workers"]}

        def facts(dask_worker):
            import cupy
            import rmm

            mr = rmm.mr.get_current_device_resource()
            tasks = os.listdir("/proc/self/task")
            return {
                "name": dask_worker.name,
                "rmm": type(mr).__name__,
                "pool_bytes": mr.pool_size() if hasattr(mr, "pool_size") else None,
                "cupy_allocator_is_rmm": "rmm" in repr(cupy.cuda.get_allocator()),
                "threads": len(tasks),
                "cpus_of_each_thread": sorted({len(os.sched_getaffinity(int(t))) for t in tasks}),
            }

        allowed = len(os.sched_getaffinity(0))
        for f in client.run(facts).values():
            plan_cpus = planned.get(f["name"], {}).get("cpu_affinity")
            good = "Pool" in f["rmm"] and f["cupy_allocator_is_rmm"] and f["name"] in planned
            print(f"{f['name']}: {f}; plan cpu_affinity {plan_cpus!r}, this process may use {allowed} CPUs "
                  f"-> {'ok' if good else 'WRONG'}", flush=True)
            ok &= good
        import cupy
        import dask.array as da

        x = da.ones((8000, 8000), chunks=(2000, 2000)).map_blocks(cupy.asarray)
        total = float((x + x.T).sum().compute())
        print(f"CuPy (x + x.T).sum() across the workers: {total} (want {2.0 * 8000 * 8000})", flush=True)
        ok &= total == 2.0 * 8000 * 8000
    return ok


def device_limit(ok: bool) -> bool:
    from distributed import Client, wait
    from gpucluster.dask import LocalCluster

    with LocalCluster(device_memory_limit="1GiB") as cluster, Client(cluster) as client:
        client.wait_for_workers(1, timeout=120)
        print(f"plan: device_memory_limit_bytes {cluster.gpucluster_plan['workers'][0]['device_memory_limit_bytes']}", flush=True)

        def store(dask_worker):
            d = dask_worker.data
            return {"type": f"{type(d).__module__}.{type(d).__name__}",
                    "device_limit": getattr(getattr(d, "device_buffer", None), "n", None)}

        (s,) = client.run(store).values()
        good = s["type"] == "dask_cuda.device_host_file.DeviceHostFile" and s["device_limit"] == 1 << 30
        print(f"data store: {s} -> {'ok' if good else 'WRONG'}", flush=True)
        ok &= good

        def full(i):
            import cupy

            return cupy.full(256 * MIB // 8, i, dtype=cupy.float64)

        arrays = [client.submit(full, i, pure=False) for i in range(6)]
        wait(arrays)

        def tiers(dask_worker):
            d = dask_worker.data
            return {"device_bytes": sum(v.nbytes for v in d.device.values()), "device_keys": len(d.device),
                    "host_keys": len(d.host), "disk_keys": len(d.disk) if d.disk is not None else 0}

        (t,) = client.run(tiers).values()
        good = t["device_bytes"] <= 1 << 30 and t["host_keys"] >= 2
        print(f"six 256 MiB CuPy arrays held: {t} -> {'ok' if good else 'WRONG'}", flush=True)
        ok &= good

        def total(*xs):
            return float(sum(float(x.sum()) for x in xs))

        got = client.submit(total, *arrays).result()
        want = float(sum(i * (256 * MIB // 8) for i in range(6)))
        print(f"their sum, brought back from host memory: {got} (want {want})", flush=True)
        ok &= got == want
    return ok


def over_ucx(ok: bool) -> bool:
    """`LocalCluster(protocol="ucx", insecure=True, workers_per_device=2)`: a CuPy array made on one worker and
    summed on the other arrives over UCX."""
    from distributed import Client
    from gpucluster.dask import LocalCluster

    with LocalCluster(protocol="ucx", insecure=True, workers_per_device=2) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=120)
        a, b = sorted(client.scheduler_info()["workers"])

        def make():
            import cupy

            return cupy.ones(32 * MIB, dtype=cupy.float64)  # 256 MiB

        x = client.submit(make, workers=[a], pure=False)
        got = client.submit(lambda x: float(x.sum()), x, workers=[b], pure=False).result()
        log = client.run(lambda dask_worker: [(t["who"], t["total"]) for t in dask_worker.transfer_incoming_log], workers=[b])[b]
        good = got == 32.0 * MIB and any(who.startswith("ucx") and n >= 256 * MIB for who, n in log)
        print(f"ucx: scheduler {cluster.scheduler_address}; sum {got} (want {32.0 * MIB}); transfers into {b}: {log} "
              f"-> {'ok' if good else 'WRONG'}", flush=True)
    return ok and good


def dask_local(ok: bool, binary: str) -> bool:
    """`gpucluster dask local --device-memory-limit 1GiB -- --rmm-pool-size 1GiB` with dask-cuda:
    the worker is dask-cuda's, with its DeviceHostFile limited to 1 GiB and the RMM pool passed
    through; Ctrl-C leaves nothing."""
    import signal
    import subprocess
    import time

    from distributed import Client

    from dask_local_check import security_for, start

    p, _, file = start(binary, ["--device-memory-limit", "1GiB", "--", "--rmm-pool-size", "1GiB"], wait_s=90)
    try:
        # `dask local` closes the cluster with TLS (credentials beside the scheduler file) where
        # it does not choose the gpucluster comm (one worker: no device frames to move).
        with Client(scheduler_file=file, timeout=60, security=security_for(file)) as c:
            c.wait_for_workers(1, timeout=120)

            def facts(dask_worker):
                import rmm

                d = dask_worker.data
                return {"store": type(d).__name__, "device_limit": getattr(getattr(d, "device_buffer", None), "n", None),
                        "rmm": type(rmm.mr.get_current_device_resource()).__name__}

            (f,) = c.run(facts).values()
        good = f == {"store": "DeviceHostFile", "device_limit": 1 << 30, "rmm": "PoolMemoryResource"}
        print(f"dask local with dask-cuda: {f} -> {'ok' if good else 'WRONG'}", flush=True)
    finally:
        os.killpg(p.pid, signal.SIGINT)
        status = p.wait(60)
    time.sleep(1)
    left = subprocess.run(["pgrep", "-s", str(p.pid)], capture_output=True, text=True).stdout.split()
    print(f"dask local after Ctrl-C: exit {status}, processes left {left}", flush=True)
    return ok and good and not left


if __name__ == "__main__":
    ok = True
    if "--only-dask-local" not in sys.argv:
        ok = pool_and_pinning(ok)
        ok = device_limit(ok)
    if "--ucx" in sys.argv:
        ok = over_ucx(ok)
    if os.environ.get("GPUCLUSTER_BIN"):
        ok = dask_local(ok, os.environ["GPUCLUSTER_BIN"])
    print("features check " + ("passed" if ok else "FAILED"), flush=True)
    sys.exit(0 if ok else 1)
