#!/usr/bin/env bash
# On the GPU machine, from the repository root, with .gpu-bundle/ (cargo xtask gpu-bundle) and
# .whl/ (Dask, distributed, dask-cuda and their missing dependencies) carried: the hardening
# checks that need a real driver. Writes what it saw to $OUT (or ./gpu-out).
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
B=$PWD/.gpu-bundle/gpucluster
log() { printf '\n== %s\n' "$*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site || exit 1
leftover() { ps -eo args | grep -c "[s]leep $1" ; }

log machine; nvidia-smi -L; $B --version; $B list | head -5

log "transport protocol tests on CUDA (GPU_TESTS=1)"
GPU_TESTS=1 TRANSPORT_PEER=.gpu-bundle/transport-peer timeout 300 .gpu-bundle/transport-protocols 2>&1 | tail -25

log "up, built-in worker, two workers on the GPU, in a pseudo-terminal"
if command -v script >/dev/null; then timeout 120 script -qec "$B up --workers-per-device 2" /dev/null; echo "exit $?"
else echo "(no script(1) here)"; timeout 120 $B up --workers-per-device 2; echo "exit $?"; fi

log "up: a worker's background jobs after SIGKILL / SIGHUP / Ctrl-C of the launcher"
for sig in KILL HUP INT TERM; do
  $B up --workers-per-device 2 -- sh -c 'sleep 901 & sleep 901; true' >/dev/null 2>&1 & L=$!
  sleep 1.5; kill -$sig $L; wait $L; rc=$?; sleep 0.5
  echo "SIG$sig: launcher exit $rc, sleeps left: $(leftover 901)"
done

log "up: one worker killed mid-run (real CUDA workers)"
$B up --workers-per-device 4 -- python3 -c 'import cupy, time; x = cupy.ones(1 << 20); time.sleep(600)' >/tmp/up-kill.txt 2>&1 & L=$!
sleep 8; victim=$(pgrep -f '^python3 -c import cupy' | tail -1); t=$(date +%s%N); kill -9 "$victim"; wait $L; rc=$?
echo "exit $rc, $(( ($(date +%s%N) - t) / 1000000 )) ms after the kill"; grep -v '^\[' /tmp/up-kill.txt | tail -6

log "bench transport (two processes on the one GPU; host-staged stands for two MIG instances)"
timeout 400 $B bench transport --sizes 8,64K,16M,256M,1G --json > "$OUT/bench.json"; echo "exit $?"
$B bench transport --report "$OUT/bench.json"

log "bench --paths tcp: no secret on any command line"
$B bench transport --paths tcp --sizes 1G --repeats 20 >/dev/null 2>&1 & L=$!
sleep 3; ps -eo args | grep "[t]ransport-peer" | head -2; echo "secret visible: $(ps -eo args | grep -c '[-]-secret')"
kill -INT $L; wait $L; echo "bench exit after SIGINT: $?"; sleep 0.3; echo "peers left: $(pgrep -fc transport-peer)"

log "dask local on a simulated machine, on a host with a driver, dask-cuda and pynvml installed"
python3 - "$B" <<'PY'
import os, re, signal, subprocess, sys, time
from distributed import Client, Security
p = subprocess.Popen([sys.argv[1], "--topology", "sim:a30", "dask", "local", "--python", sys.executable],
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
file, lines, t = None, [], time.time()
for line in p.stdout:
    lines.append(line)
    m = re.match(r"scheduler file: (\S+)", line)
    if m:
        file = m.group(1)
        break
while not os.path.exists(file):
    time.sleep(0.05)
d = os.path.dirname(file)
sec = Security(tls_ca_file=f"{d}/ca.pem", tls_client_cert=f"{d}/cert.pem", tls_client_key=f"{d}/key.pem", require_encryption=True)
with Client(scheduler_file=file, security=sec, timeout=60) as c:
    c.wait_for_workers(4, timeout=120)
    print(f"4 simulated workers registered after {time.time() - t:.1f} s:",
          sorted(c.run(lambda: os.environ["CUDA_VISIBLE_DEVICES"]).values()))
try:
    Client(open(file).read().split('"address": "')[1].split('"')[0], timeout=5)
    print("INTRUDED: a client without the credentials connected")
except Exception as e:
    print("a client without the credentials was refused:", type(e).__name__)
p.send_signal(signal.SIGINT)
rest = p.communicate(timeout=60)[0]
print("launcher exit status after SIGINT:", p.returncode)
print("".join(l for l in lines + rest.splitlines(True) if not l.startswith("[")))
PY

log "dask local on the real GPU (dask-cuda), TLS, CuPy task"
WORKERS=2 timeout 300 python3 tests/gpu/dask_local_check.py "$B" --workers-per-device 2
