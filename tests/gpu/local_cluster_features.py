"""On a GPU machine with RMM: `gpucluster.dask.LocalCluster(workers_per_device=2, rmm_pool_size=...)`
gives each worker an RMM pool that CuPy allocates from and its threads pinned where the machine
says, and a CuPy computation across its workers gives the right answer. Not yet run on a GPU (the
session that wrote it had no device time left). Usage: python3 local_cluster_features.py"""
import os
import sys

if __name__ == "__main__":
    from distributed import Client
    from gpucluster.dask import LocalCluster

    with LocalCluster(workers_per_device=2, rmm_pool_size="1GiB") as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=120)
        planned = {w["name"]: w for w in cluster.gpucluster_plan["workers"]}

        def facts(dask_worker):
            import cupy
            import rmm

            mr = rmm.mr.get_current_device_resource()
            return {
                "name": dask_worker.name,
                "rmm": type(mr).__name__,
                "cupy_allocator_is_rmm": "rmm" in repr(cupy.cuda.get_allocator()),
                "cpus": len(os.sched_getaffinity(0)),
            }

        ok = True
        for address, f in client.run(facts).items():
            good = "Pool" in f["rmm"] and f["cupy_allocator_is_rmm"] and f["name"] in planned
            ok &= good
            print(f"{f['name']}: {f} -> {'ok' if good else 'WRONG'}", flush=True)
        import cupy
        import dask.array as da

        x = da.ones((8000, 8000), chunks=(2000, 2000)).map_blocks(cupy.asarray)
        total = float((x + x.T).sum().compute())
        print(f"CuPy (x + x.T).sum() across the workers: {total} (want {2.0 * 8000 * 8000})", flush=True)
        ok &= total == 2.0 * 8000 * 8000
    print("features check " + ("passed" if ok else "FAILED"), flush=True)
    sys.exit(0 if ok else 1)
