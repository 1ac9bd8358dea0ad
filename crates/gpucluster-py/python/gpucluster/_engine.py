"""This process's end of gpucluster's transport: which device it moves frames on, and the one
transport engine a worker process makes the first time a device frame moves.

Below both :mod:`gpucluster.comm` (which moves frames over the engine's channels) and
:mod:`gpucluster.sim` (whose arrays live in the engine's simulated device memory), so that neither
imports the other. The variable names and device names are the launcher's
(``gpucluster._native.ENV``, ``gpucluster._native.DEVICE_KINDS``), never spelled here.
"""

from __future__ import annotations

import os
import threading

from gpucluster import _native

#: Guards the process-wide state of this module and of the comm.
state_lock = threading.Lock()
_engine: _native.Engine | None = None
_kind: list[str | None] = []


def device_kind() -> str | None:
    """The device this process moves frames on: the one a gpucluster launcher named in
    ``GPUCLUSTER_DEVICE`` (``cuda``, ``sim`` or ``sim-mig``), else ``cuda`` where the driver sees
    a device, else None. Asked once per process."""
    with state_lock:
        if not _kind:
            kind = os.environ.get(_native.ENV["DEVICE"])
            if kind:
                _kind.append(kind if kind in _native.DEVICE_KINDS else None)
            else:
                _kind.append("cuda" if _native.cuda_available() else None)
        return _kind[0]


def is_worker_process() -> bool:
    """Whether a Dask worker runs in this process (only workers take device frames: schedulers
    and clients need no GPU)."""
    try:
        from distributed.worker import Worker

        return len(Worker._instances) > 0
    except Exception:  # pragma: no cover - distributed is a dependency
        return False


def engine() -> _native.Engine | None:
    """This process's transport engine, made the first time a worker with a device asks; None
    elsewhere. It listens on an unguessable local name and touches the device only when a
    frame first moves."""
    global _engine
    # Workers first: a scheduler or a client never asks the driver anything.
    if not is_worker_process():
        return None
    kind = device_kind()
    if kind is None:
        return None
    with state_lock:
        if _engine is None:
            _engine = _native.Engine(kind)
        return _engine
