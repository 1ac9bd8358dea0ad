"""On a GPU machine: `gpucluster.dask.LocalCluster()` against dask-cuda's `LocalCUDACluster`.

Each cluster is started in a fresh Python process, timed from the process's start (interpreter,
imports) and from the constructor call to its workers ready, used, and closed; the parent then
checks that no process of it is left. With two workers, a CuPy array made on one is summed by a
task on the other, and the receiving worker's transfer log says how many bytes came over which
comm. Usage: python3 local_cluster_check.py [ROUNDS]; one JSON line per run, then a summary.
"""
import json
import os
import statistics
import subprocess
import sys
import time

CASES = {
    "gpucluster LocalCluster()": "from gpucluster.dask import LocalCluster as C; kw = {}",
    "gpucluster LocalCluster(workers_per_device=2)": (
        "from gpucluster.dask import LocalCluster as C; kw = {'workers_per_device': 2}"
    ),
    'dask_cuda LocalCUDACluster(CUDA_VISIBLE_DEVICES="0")': (
        "from dask_cuda import LocalCUDACluster as C; kw = {'CUDA_VISIBLE_DEVICES': '0'}"
    ),
}

CHILD = r"""
import json, sys, time
started = float(sys.argv[1])
t_import = time.time()
{setup}
from distributed import Client
t_call = time.time()
if __name__ == "__main__":
    cluster = C(**kw)
    client = Client(cluster)
    n = len(cluster.worker_spec)
    client.wait_for_workers(n, timeout=120)
    t_ready = time.time()
    out = dict(workers=n, from_start=t_ready - started, from_call=t_ready - t_call,
               imports=t_call - t_import, address=cluster.scheduler_address)
    if n >= 2:
        import cupy
        a, b = list(client.scheduler_info()["workers"])[:2]
        size = 256 << 20
        x = client.submit(lambda: cupy.arange(size // 4, dtype=cupy.float32), workers=[a], pure=False)
        t = time.time()
        total = client.submit(lambda v: float(v.sum(dtype=cupy.float64)), x, workers=[b], pure=False).result()
        out["cupy_sum_s"] = time.time() - t
        out["cupy_sum_ok"] = total == float(size // 4) * (size // 4 - 1) / 2
        log = client.run(lambda dask_worker: [
            (e["total"], e["duration"], str(e.get("who", ""))) for e in dask_worker.transfer_incoming_log
        ], workers=[b])[b]
        out["transfers"] = [dict(bytes=t, seconds=d, who=w, gbps=t / d / 1e9 if d else None) for t, d, w in log]
    t = time.time()
    client.close()
    cluster.close()
    out["close_s"] = time.time() - t
    print("RESULT " + json.dumps(out), flush=True)
"""


def leftovers(pid_before):
    """Python processes started after this script that still run (cluster processes left)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in pid_before or int(entry) == os.getpid():
            continue
        try:
            cmd = open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "python" in cmd and ("multiprocessing" in cmd or "distributed" in cmd or "dask" in cmd):
            found.append(f"{entry}: {cmd[:120]}")
    return found


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    before = {int(p) for p in os.listdir("/proc") if p.isdigit()}
    results = {name: [] for name in CASES}
    for r in range(rounds):
        # Alternate the order so neither side always runs on a warmer file cache.
        names = list(CASES) if r % 2 == 0 else list(reversed(CASES))
        for name in names:
            code = CHILD.replace("{setup}", CASES[name])
            p = subprocess.run([sys.executable, "-c", code, repr(time.time())], capture_output=True, text=True,
                               timeout=300, cwd="/tmp")
            line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                print(f"{name}: FAILED (exit {p.returncode})\n{p.stderr[-3000:]}", flush=True)
                continue
            out = json.loads(line[len("RESULT "):])
            out["case"] = name
            out["left"] = leftovers(before)
            results[name].append(out)
            print(json.dumps(out), flush=True)
    print("\nsummary (median of the runs; seconds)")
    print(f"{'cluster':<55} {'runs':>4} {'start->ready':>12} {'call->ready':>11} {'close':>6} left")
    for name, runs in results.items():
        if not runs:
            print(f"{name:<55} no successful run")
            continue
        med = lambda k: statistics.median(r[k] for r in runs)  # noqa: E731
        left = sum(len(r["left"]) for r in runs)
        print(f"{name:<55} {len(runs):>4} {med('from_start'):>12.2f} {med('from_call'):>11.2f} {med('close_s'):>6.2f} {left}")
        for r in runs:
            if "cupy_sum_ok" in r:
                print(f"    CuPy sum across workers correct: {r['cupy_sum_ok']}; transfers: {r['transfers']}")
                break


if __name__ == "__main__":
    main()
