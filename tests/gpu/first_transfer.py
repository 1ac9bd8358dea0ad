"""On a GPU machine: what the first device frames between two workers of a fresh
`gpucluster.dask.LocalCluster(workers_per_device=2)` cost, against the ones after, per protocol and
path (a new 256 MiB CuPy array each time, so none is cached). Usage: python3 first_transfer.py"""
import json, os, subprocess, sys, time

CHILD = r"""
import json, os, sys, time
if __name__ == "__main__":
    protocol, path = sys.argv[1], sys.argv[2]
    if path != "auto":
        os.environ["GPUCLUSTER_COMM_PATH"] = path
    from distributed import Client
    from gpucluster.dask import LocalCluster
    with LocalCluster(workers_per_device=2, protocol=protocol) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=120)
        a, b = list(client.scheduler_info()["workers"])[:2]
        def make(n):
            import cupy
            return cupy.ones(n, dtype="u1")
        def take(x):
            return int(x[:8].sum())
        out = []
        for i, n in enumerate([256 << 20] * 4 + [1 << 20, 256 << 20]):
            x = client.submit(make, n, workers=[a], pure=False)
            x.result()
            t = time.time()
            client.submit(take, x, workers=[b], pure=False).result()
            out.append((n >> 20, round(time.time() - t, 4)))
        log = client.run(lambda dask_worker: [round(e["duration"], 4) for e in dask_worker.transfer_incoming_log], workers=[b])[b]
        def imports():
            import subprocess, sys, time
            t = time.time(); subprocess.run([sys.executable, "-c", "import rmm"]); r = time.time() - t
            t = time.time(); subprocess.run([sys.executable, "-c", "import cupy"]); c = time.time() - t
            return round(r, 3), round(c, 3)
        print("RESULT", json.dumps(dict(protocol=protocol, path=path, wall=out, log=log, import_rmm_cupy_s=client.submit(imports, workers=[b], pure=False).result())), flush=True)
"""

for protocol, path in (("gpucluster", "auto"), ("gpucluster", "host-staged"), ("tcp", "auto")):
    p = subprocess.run([sys.executable, "-c", CHILD, protocol, path], capture_output=True, text=True, timeout=240, cwd="/tmp")
    line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
    print(line[7:] if line else f"{protocol}/{path}: FAILED\n{p.stderr[-2000:]}", flush=True)
