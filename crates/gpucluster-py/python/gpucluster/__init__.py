"""gpucluster from Python: Dask's ``gpucluster://`` comm, which moves device frames between the
worker processes of one host over gpucluster's transport (host-staged between MIG instances,
cuda-ipc between whole GPUs), authenticated by the cluster's secret.

Installing the package is all the set-up: distributed finds the ``gpucluster`` scheme through
its ``distributed.comm.backends`` entry point, so ``dask worker --protocol gpucluster``,
``LocalCluster(protocol="gpucluster")`` and ``gpucluster dask local`` use it.

Modules: :mod:`gpucluster.comm` (the comm backend), :mod:`gpucluster.sim` (device arrays on
simulated device memory, for trying the comm without a GPU), :mod:`gpucluster.bench` (the
client that ``gpucluster bench dask`` runs). The native module, ``gpucluster._native``, is the
Rust transport.
"""

from gpucluster._native import AuthenticationError, PeerGone, Timeout, TransportError

__all__ = ["AuthenticationError", "PeerGone", "Timeout", "TransportError"]
