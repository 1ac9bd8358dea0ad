#!/usr/bin/env bash
# On the GPU machine, from the repository root, with .gpu-bundle/ (cargo xtask gpu-bundle: the
# binary and the gpucluster wheel) and .whl/ (Dask, distributed, dask-cuda and their missing
# dependencies) carried: the gpucluster comm on CUDA (tests/gpu/comm_check.py), then
# `bench dask` for gpucluster (host-staged and automatic) and TCP, with dask-cuda's transpose_sum.
# Writes what it saw to $OUT (or ./gpu-out).
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
# BUNDLE: the folder with the binary and the wheels to install beside .whl/ (.gpu-bundle, or a
# folder that also holds the UCX wheels: they and .gpu-bundle do not fit one call together).
BUNDLE=${BUNDLE:-.gpu-bundle}
B=$PWD/$BUNDLE/gpucluster
log() { printf '\n== %s\n' "$*"; }
# EXTRA: a folder of further wheels (.whl-ucx: distributed-ucxx, ucxx, libucxx, libucx, rmm,
# librmm), carried in a call of its own on the same warm machine: the folders carried before stay.
EXTRA=${EXTRA:-}
# WHEELS: the folder of Dask's wheels (.whl; .whl-d71 holds distributed 2026.7.1, the release
# distributed-ucxx 0.52 is built against).
WHEELS=${WHEELS:-.whl}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  $WHEELS/*.whl $BUNDLE/*.whl $(ls .whl-nvtx/*.whl 2>/dev/null) $([ -n "$EXTRA" ] && ls "$EXTRA"/*.whl) || exit 1
export PYTHONPATH=/tmp/site
log machine; nvidia-smi -L; python3 -c 'import cupy, gpucluster; print("cupy", cupy.__version__)'
python3 -m pip list 2>/dev/null | grep -iE '^(cuda|nvidia|numba|numpy|rmm|ucx|pynvml)' | tr '\n' ' '; echo

log "the cluster spec dask local would start on this machine (--dry-run), and LocalCluster's for the same"
$B dask local --dry-run --python python3 > "$OUT/dry-run.json"; echo "exit $?"
python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(s["protocol"], s["dask_cuda"], s["simulated"], [(w["name"], w["env"].get("GPUCLUSTER_DEVICE"), w["device_memory_limit_bytes"], w["memory_limit_bytes"], w["cpus"][:2]) for w in s["workers"]])' "$OUT/dry-run.json"
(cd /tmp && timeout 120 python3 -c 'import json
from gpucluster.dask import LocalCluster
if __name__ == "__main__":
    c = LocalCluster(); print(json.dumps(c.gpucluster_spec)); c.close()' 2>/dev/null | tail -1 > "$OUT/local-cluster-spec.json"); echo "exit $?"
python3 - "$OUT/dry-run.json" "$OUT/local-cluster-spec.json" <<'PY'
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
for s in (a, b):
    s["scheduler"]["dask_config"].pop("temporary-directory", None)
    for w in s["workers"]:
        w["dask_config"].pop("temporary-directory", None)
print("dask local --dry-run and LocalCluster agree" if a == b else f"DIFFER:\n{a}\n{b}")
PY

if [ -n "${LOCAL_CLUSTER_ROUNDS:-}" ]; then
  log "gpucluster.dask.LocalCluster() against dask-cuda's LocalCUDACluster, each from a fresh process"
  (cd /tmp && timeout ${LOCAL_CLUSTER_TIMEOUT:-200} python3 "$OLDPWD/tests/gpu/local_cluster_check.py" "$LOCAL_CLUSTER_ROUNDS" \
    >"$OUT/local-cluster.txt" 2>&1); echo "exit $?"; grep -v ' INFO ' "$OUT/local-cluster.txt" | tail -12
fi

if [ -z "${SKIP_CHECK:-}" ]; then
  log "comm check: CuPy arrays between two workers on the one GPU"
  (cd /tmp && timeout ${CHECK_TIMEOUT:-400} python3 "$OLDPWD/tests/gpu/comm_check.py" 2>"$OUT/comm-check.err"); echo "exit $?"
fi

if [ -n "${SKIP_BENCH:-}" ]; then exit 0; fi
log "bench dask (two workers on the one GPU; gpucluster-host-staged stands for two MIG instances)"
# One bench per variant, each under its own timeout, so a variant that hangs costs only itself;
# the reports are merged into one.
for v in $(echo ${VARIANTS:-gpucluster-host-staged,gpucluster,tcp} | tr , ' '); do
  timeout ${BENCH_TIMEOUT:-200} $B bench dask --python python3 --variants $v \
    --sizes ${SIZES:-16M,256M,1G} --repeats 5 ${BENCH_ARGS:-} --json > "/tmp/bench-dask-$v.json"; echo "$v: exit $?"
done
python3 - "$OUT/bench-dask.json" /tmp/bench-dask-*.json <<'PY'
import json, sys
merged = None
for f in sys.argv[2:]:
    try:
        r = json.load(open(f))
    except (OSError, ValueError):
        print(f"{f}: no report"); continue
    if merged is None: merged = r
    else: merged["variants"].extend(r["variants"])
json.dump(merged, open(sys.argv[1], "w"), indent=1)
PY
$B bench dask --report "$OUT/bench-dask.json" --plot "$OUT/bench-dask.svg"
