"""`gpucluster --topology sim:dgx-a100 dask local` (56 workers) against
`distributed.LocalCluster(n_workers=56)`, each from a fresh process: seconds until every worker has
registered, seconds to stop (Ctrl-C for ours: SIGINT to the launcher, as a terminal sends it;
`client.close(); cluster.close()` for theirs), tracebacks printed while stopping, and processes left.
Usage: python3 dask_local_scale.py GPUCLUSTER_BINARY [ROUNDS]"""
import os, re, signal, subprocess, sys, time

B = sys.argv[1]
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 2
N = 56


def left(before):
    found = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) not in before:
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read()
            except OSError:
                continue
            if b"distributed" in cmd or b"dask" in cmd or b"multiprocessing" in cmd:
                found += 1
    return found


def ours():
    before = {int(p) for p in os.listdir("/proc") if p.isdigit()}
    t = time.time()
    p = subprocess.Popen([B, "--topology", "sim:dgx-a100", "dask", "local", "--python", sys.executable, "--insecure"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    ready = None
    for line in p.stdout:
        if "registered after" in line:
            ready = time.time() - t
            break
    t2 = time.time()
    p.send_signal(signal.SIGINT)
    rest = p.stdout.read()
    p.wait()
    stop = time.time() - t2
    time.sleep(0.5)
    return dict(ready=round(ready, 2) if ready else None, stop=round(stop, 2), exit=p.returncode,
                tracebacks=rest.count("Traceback"), left=left(before))


THEIRS = f"""
import time; t = time.time()
from distributed import LocalCluster, Client
if __name__ == "__main__":
    c = LocalCluster(n_workers={N}, threads_per_worker=1, dashboard_address=None)
    cl = Client(c); cl.wait_for_workers({N}); r = time.time() - t
    t2 = time.time(); cl.close(); c.close(); print("R", r, time.time() - t2, flush=True)
"""


def theirs():
    before = {int(p) for p in os.listdir("/proc") if p.isdigit()}
    out = subprocess.run([sys.executable, "-c", THEIRS], capture_output=True, text=True, cwd="/tmp", timeout=240)
    m = re.search(r"R (\S+) (\S+)", out.stdout)
    time.sleep(0.5)
    if not m:
        return dict(failed=out.stderr[-500:])
    return dict(ready=round(float(m.group(1)), 2), stop=round(float(m.group(2)), 2),
                tracebacks=out.stderr.count("Traceback"), left=left(before))


for r in range(ROUNDS):
    first, second = (ours, theirs) if r % 2 == 0 else (theirs, ours)
    for f in (first, second):
        name = "gpucluster dask local (56 simulated workers)" if f is ours else "distributed.LocalCluster(n_workers=56)"
        print(f"{name}: {f()}", flush=True)
