"""On a GPU machine: `gpucluster dask local` against dask-cuda's LocalCUDACluster.

Times each from start to its workers connected (seen by a client), runs a CuPy task on the
workers, and checks what each worker sees. Usage: python3 dask_local_check.py GPUCLUSTER [ARGS...]
"""
import os, re, signal, subprocess, sys, threading, time
from distributed import Client, Security


def security_for(scheduler_file):
    """The TLS credentials `gpucluster dask local` writes beside its scheduler file, if any."""
    d = os.path.dirname(scheduler_file)
    if not os.path.exists(os.path.join(d, "ca.pem")):
        return None
    return Security(tls_ca_file=os.path.join(d, "ca.pem"), tls_client_cert=os.path.join(d, "cert.pem"),
                    tls_client_key=os.path.join(d, "key.pem"), require_encryption=True)


def task():
    import cupy, os
    x = cupy.arange(10**7, dtype=cupy.float32)
    return float(x.sum()), os.environ.get("CUDA_VISIBLE_DEVICES"), cupy.cuda.runtime.getDeviceCount()


def start(binary, extra, wait_s=60):
    """`gpucluster dask local EXTRA...` in a session of its own: the process, the lines it has
    printed so far (a list that keeps growing) and its scheduler file, once that exists."""
    p = subprocess.Popen([binary, "dask", "local", "--python", sys.executable, *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    found = threading.Event()
    file = []

    def drain():
        for line in p.stdout:
            lines.append(line)
            m = re.match(r"scheduler file: (\S+)", line)
            if m:
                file.append(m.group(1))
                found.set()
    threading.Thread(target=drain, daemon=True).start()
    assert found.wait(wait_s), "no scheduler file: " + "".join(lines)
    while not os.path.exists(file[0]):
        time.sleep(0.01)
    return p, lines, file[0]


def gpucluster(binary, extra):
    t = time.perf_counter()
    p, lines, file = start(binary, extra)
    n = int(os.environ.get("WORKERS", "1"))
    with Client(scheduler_file=file, timeout=60, security=security_for(file)) as c:
        c.wait_for_workers(n, timeout=120)
        ready = time.perf_counter() - t
        print(f"gpucluster dask local {' '.join(extra)}: {n} worker(s) connected after {ready:.2f} s")
        print("  CuPy task:", c.submit(task, pure=False).result())
        print("  workers:", {w["name"]: w["resources"] for w in c.scheduler_info()["workers"].values()})
        print("  CUDA_VISIBLE_DEVICES:", c.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES")))
    p.send_signal(signal.SIGINT)
    print("  launcher exit status after SIGINT:", p.wait(60))
    time.sleep(0.5)
    print("  launcher lines:", "".join(l for l in lines if not l.startswith("[")), end="")
    return ready


FRESH = """
import sys, time
start = float(sys.argv[1])
from distributed import Client
from dask_cuda import LocalCUDACluster
t = time.time()
with LocalCUDACluster(CUDA_VISIBLE_DEVICES="0", dashboard_address=None) as cl, Client(cl) as c:
    c.wait_for_workers(1)
    print(f"{time.time() - start:.3f} {time.time() - t:.3f}")
"""


def dask_cuda():
    # Timed like gpucluster: from starting a fresh process to the worker connected; and, as in
    # the reference measurement, from the LocalCUDACluster call (imports already done).
    out = subprocess.run([sys.executable, "-c", FRESH, repr(time.time())], capture_output=True, text=True, check=True)
    whole, call = (float(v) for v in out.stdout.split()[-2:])
    print(f"dask-cuda LocalCUDACluster(CUDA_VISIBLE_DEVICES='0'): 1 worker connected {whole:.2f} s after the process started"
          f" ({call:.2f} s after the call, imports done)")
    return whole


if __name__ == "__main__":
    ours = gpucluster(sys.argv[1], sys.argv[2:])
    theirs = dask_cuda()
    print(f"start-up: gpucluster {ours:.2f} s, dask-cuda {theirs:.2f} s")
