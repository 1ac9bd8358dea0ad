"""On a GPU machine: does a CuPy array move between two Dask workers over UCX, and if not, where
does it stop? A scheduler and two workers (no nanny) over `ucx://`, started by hand with the
environment given; a host array and then a CuPy array are moved, each within a timeout.
Usage: python3 ucx_diag.py LOGDIR [KEY=VALUE ...] (environment for all three processes)."""
import os, subprocess, sys, time, json

logdir = sys.argv[1]
env = dict(os.environ, **dict(kv.split("=", 1) for kv in sys.argv[2:]))
env.setdefault("CUDA_VISIBLE_DEVICES", "0")
os.makedirs(logdir, exist_ok=True)
sf = os.path.join(logdir, "scheduler.json")
if os.path.exists(sf):
    os.remove(sf)
procs = []
def start(name, args):
    f = open(os.path.join(logdir, name + ".log"), "w")
    p = subprocess.Popen([sys.executable, "-c", "import sys; from distributed.cli.%s import main; sys.exit(main())" % args[0], *args[1:]],
                         env=env, stdout=f, stderr=subprocess.STDOUT, cwd="/tmp")
    procs.append(p)
try:
    start("scheduler", ["dask_scheduler", "--protocol", "ucx", "--host", "127.0.0.1", "--scheduler-file", sf, "--no-dashboard"])
    t = time.time()
    while not os.path.exists(sf) and time.time() - t < 60:
        time.sleep(0.2)
    for i in (0, 1):
        start(f"worker{i}", ["dask_worker", "--scheduler-file", sf, "--no-nanny", "--nthreads", "1", "--name", f"w{i}",
                             "--protocol", "ucx", "--host", "127.0.0.1", "--no-dashboard"])
    os.environ.update(env)
    from distributed import Client
    with Client(scheduler_file=sf, timeout=60) as c:
        c.wait_for_workers(2, timeout=90)
        print(f"  cluster ready after {time.time() - t:.1f} s", flush=True)
        a, b = sorted(c.scheduler_info()["workers"])
        import numpy
        for kind, size in (("numpy", 1 << 20), ("cupy", 16 << 20), ("cupy", 256 << 20), ("cupy", 1 << 30)):
            def make(n=size, kind=kind):
                import numpy, cupy
                mod = cupy if kind == "cupy" else numpy
                return mod.ones(n, dtype="u1")
            x = c.submit(make, workers=[a], pure=False)
            x.result(timeout=60) if False else None
            t0 = time.time()
            try:
                got = c.submit(lambda v: int(v.sum()), x, workers=[b], pure=False).result(timeout=45)
                print(f"  {kind} {size} B: moved, sum ok {got == size}, {time.time() - t0:.2f} s", flush=True)
            except Exception as e:
                print(f"  {kind} {size} B: FAILED after {time.time() - t0:.1f} s: {type(e).__name__}: {e}", flush=True)
                break
        log = c.run(lambda dask_worker: [(e["total"], e["duration"]) for e in dask_worker.transfer_incoming_log], workers=[b])
        print("  transfer log:", [(t, round(t / d / 1e9, 2) if d else None) for t, d in log[b]])
finally:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
