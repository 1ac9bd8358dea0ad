#!/usr/bin/env bash
# On the GPU machine with .whl-d71 (Dask, distributed 2026.7.1) and .whl-ucx (distributed-ucxx 0.52
# and what it needs) carried: UCX on its own (ucxx's send_recv benchmark), then inside Dask
# (tests/gpu/ucx_diag.py) under several settings. Writes logs to $OUT.
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT" /tmp/ucxdiag
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .whl-d71/*.whl .whl-ucx/*.whl || exit 1
export PYTHONPATH=/tmp/site
log() { printf '\n== %s\n' "$*"; }
log ucxx; timeout 60 python3 -c 'import ucxx; print("ucx", ucxx.get_ucx_version())' 2>&1 | tail -3
sr() { # NAME "ENV" ARGS...: ucxx's send_recv between two processes
  local name=$1 envs=$2; shift 2
  log "ucxx send_recv $name: $envs $*"
  env $envs timeout 60 python3 -m ucxx.benchmarks.send_recv -s 127.0.0.1 --n-iter 5 --n-warmup-iter 2 \
    --no-detailed-report "$@" > "/tmp/ucxdiag/sr-$name.log" 2>&1; echo "exit $?"
  grep -iE "bandwidth|error|exception" "/tmp/ucxdiag/sr-$name.log" | head -5
}
sr numpy "X=1" -o numpy -n 16MiB
sr cupy "X=1" -o cupy -n 16MiB
sr cupy-no-ipc "UCX_TLS=^cuda_ipc" -o cupy -n 16MiB
dk() { # NAME ENV...: a CuPy array between two Dask workers over UCX
  local name=$1; shift
  log "dask over ucx $name: $*"
  timeout 150 python3 tests/gpu/ucx_diag.py "/tmp/dk-$name" "$@" 2>&1 | grep -v " INFO " | tail -12
  echo "exit ${PIPESTATUS[0]}"
  for f in /tmp/dk-$name/*.log; do cp "$f" "/tmp/ucxdiag/dk-$name-$(basename $f)"; done
}
dk context DASK_DISTRIBUTED_UCXX__CREATE_CUDA_CONTEXT=True
dk context-no-ipc DASK_DISTRIBUTED_UCXX__CREATE_CUDA_CONTEXT=True UCX_TLS=^cuda_ipc
dk thread-progress DASK_DISTRIBUTED_UCXX__CREATE_CUDA_CONTEXT=True UCXPY_PROGRESS_MODE=thread
tar czf "$OUT/ucx-diag-logs.tgz" -C /tmp ucxdiag
