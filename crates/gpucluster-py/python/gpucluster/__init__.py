"""gpucluster from Python: Dask's ``gpucluster://`` comm, which moves device frames between the
worker processes of one host over gpucluster's transport (host-staged between MIG instances,
cuda-ipc between whole GPUs), authenticated by the cluster's secret.

Installing the package is all the set-up: distributed finds the ``gpucluster`` scheme through
its ``distributed.comm.backends`` entry point, so ``dask worker --protocol gpucluster``,
``LocalCluster(protocol="gpucluster")`` and ``gpucluster dask local`` use it.

:func:`topology` reads a machine's GPUs and MIG instances (this machine through NVML, a
simulated preset, a fixture or saved snapshot, or ``nvidia-smi -L`` text) and returns what
``gpucluster list --json`` prints, as Python objects.

Modules: :mod:`gpucluster.comm` (the comm backend), :mod:`gpucluster.sim` (device arrays on
simulated device memory, for trying the comm without a GPU), :mod:`gpucluster.bench` (the
client that ``gpucluster bench dask`` runs). The native module, ``gpucluster._native``, is the
Rust transport.
"""

from __future__ import annotations

import json
from typing import Any

from gpucluster._native import AuthenticationError, PeerGone, Timeout, TopologyError, TransportError
from gpucluster._native import topology_json as _topology_json

__all__ = ["AuthenticationError", "PeerGone", "Timeout", "TopologyError", "TransportError", "topology"]


def topology(source: str = "nvml") -> dict[str, Any]:
    """The machine that ``source`` describes, as ``gpucluster list --json`` prints it.

    ``source`` is what ``--topology`` takes: ``"nvml"`` (this machine, through the driver),
    ``"sim:NAME"`` (a built-in simulated machine; ``gpucluster list --presets`` names them),
    ``"file:PATH"`` (a fixture, or a snapshot saved with ``list --json``) or ``"smi:PATH"``
    (``nvidia-smi -L`` text). The result is plain data (``{"hosts": [...]}``; each host's
    ``gpus`` with their ``mig_instances``, memory and SM counts as each device reports them),
    which ``file:`` reads back unchanged.

    Raises :class:`TopologyError` with the command line's message when the source cannot be
    read (an unknown preset, a malformed file, no NVIDIA driver). NVML is loaded only when
    ``"nvml"`` is asked for, so importing gpucluster needs no GPU.
    """
    if not isinstance(source, str):
        raise TypeError(f"topology(source): a str such as 'nvml' or 'sim:a30', not {type(source).__name__}")
    return json.loads(_topology_json(source))
