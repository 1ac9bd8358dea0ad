"""gpucluster from Python: Dask's ``gpucluster://`` comm, which moves device frames between the
worker processes of one host over gpucluster's transport (host-staged between MIG instances,
cuda-ipc between whole GPUs), authenticated by the cluster's secret.

Installing the package is all the set-up: distributed finds the ``gpucluster`` scheme through
its ``distributed.comm.backends`` entry point, so ``dask worker --protocol gpucluster``,
``LocalCluster(protocol="gpucluster")`` and ``gpucluster dask local`` use it.

:func:`topology` reads a machine's GPUs and MIG instances (this machine through NVML, a
simulated preset, a fixture or saved snapshot, or ``nvidia-smi -L`` text) and returns what
``gpucluster list --json`` prints, as Python objects; :func:`plan` returns what
``gpucluster plan --json`` prints: one worker per compute device with its environment, limits
and resources, the homogeneity policy applied, and the path between every pair of workers;
its warnings are also issued as :class:`PlanWarning`. :func:`presets` names the simulated
machines (``"sim:NAME"``) that both take, for trying gpucluster without a GPU. Errors and
warnings say the command line's messages in Python's words (keyword arguments rather than
flags, functions rather than commands).

Modules: :mod:`gpucluster.dask` (``LocalCluster``: one Dask worker per compute device, planned
as above, speaking the comm), :mod:`gpucluster.comm` (the comm backend), :mod:`gpucluster.sim` (device arrays on
simulated device memory, for trying the comm without a GPU), :mod:`gpucluster.bench` (the
client that ``gpucluster bench dask`` runs). The native module, ``gpucluster._native``, is the
Rust transport.
"""

from __future__ import annotations

import json
import warnings
from importlib import metadata as _metadata
from typing import Any

from gpucluster._native import AuthenticationError, PeerGone, PlanError, Timeout, TopologyError, TransportError
from gpucluster._native import plan as _plan
from gpucluster._native import presets as _presets
from gpucluster._native import topology_json as _topology_json

try:
    #: The installed package's version (the workspace's, as ``gpucluster --version`` says it).
    __version__ = _metadata.version("gpucluster")
except _metadata.PackageNotFoundError:  # pragma: no cover - imported from a source tree
    __version__ = "unknown"

__all__ = [
    "__version__",
    "AuthenticationError",
    "PeerGone",
    "PlanError",
    "PlanWarning",
    "Timeout",
    "TopologyError",
    "TransportError",
    "plan",
    "presets",
    "topology",
]


class PlanWarning(UserWarning):
    """A plan works but probably not as intended: one of its findings of severity ``warning``
    (devices of several classes kept by ``policy="warn"``, a ``device_memory_limit`` so small
    that every array spills, ...). The text is the finding's message and its fix; the finding
    itself is in the plan's ``findings``."""


PlanWarning.__module__ = "gpucluster"


def topology(source: str = "nvml") -> dict[str, Any]:
    """The machine that ``source`` describes, as ``gpucluster list --json`` prints it.

    ``source`` is what ``--topology`` takes: ``"nvml"`` (this machine, through the driver),
    ``"sim:NAME"`` (a built-in simulated machine; :func:`presets` names them),
    ``"file:PATH"`` (a fixture, or a snapshot: this function's result saved with ``json.dump``,
    or what ``list --json`` prints) or ``"smi:PATH"`` (``nvidia-smi -L`` text). The result is
    plain data (``{"hosts": [...]}``; each host's ``gpus`` with their ``mig_instances``, memory
    and SM counts as each device reports them), which ``file:`` reads back unchanged.

    Raises :class:`TopologyError` with the command line's message, in Python terms, when the
    source cannot be read (an unknown preset, a malformed file, no NVIDIA driver). NVML is
    loaded only when ``"nvml"`` is asked for, so importing gpucluster needs no GPU.
    """
    if not isinstance(source, str):
        raise TypeError(f"topology(source): a str such as 'nvml' or 'sim:a30', not {type(source).__name__}")
    return json.loads(_topology_json(source))


def presets() -> list[dict[str, str]]:
    """The built-in simulated machines, as ``gpucluster list --presets --json`` lists them: one
    ``{"name": ..., "topology": "sim:NAME", "description": ...}`` each, the description being one
    line about the machine (its GPUs and MIG layout). Pass ``topology`` to :func:`topology`,
    :func:`plan` or ``gpucluster.dask.LocalCluster`` to try gpucluster without a GPU::

        >>> [p["name"] for p in gpucluster.presets()][:3]
        ['a100', 'dgx-a100', 'a100-80gb-mixed']
    """
    return [{"name": name, "topology": f"sim:{name}", "description": text} for name, text in _presets()]


def plan(
    source: str = "nvml",
    *,
    devices: str | list[str] | None = None,
    policy: str = "strict",
    memory_tolerance: float = 2.0,
    device_memory_limit: str | float | int | None = "default",
    workers_per_device: int = 1,
    _stacklevel: int = 1,
) -> dict[str, Any]:
    """The cluster ``gpucluster plan --json`` would plan on the machine ``source`` describes.

    ``source`` is as for :func:`topology`. ``devices`` selects devices in the
    ``CUDA_VISIBLE_DEVICES`` grammar (indices, ``GPU-``/``MIG-`` UUIDs or unique prefixes; a list
    is joined with commas); when ``None``, ``CUDA_VISIBLE_DEVICES`` is read, as the command line
    does. ``policy`` is ``"strict"`` (slices that are not alike are refused), ``"warn"``,
    ``"largest-group"`` or ``"grouped"``; ``memory_tolerance`` is in percent;
    ``device_memory_limit`` is Dask-CUDA's grammar (``"default"`` = 80 %, ``"auto"``, a
    fraction, bytes or a size such as ``"10GB"``), computed from each worker's own device.

    Returns ``{"policy": ..., "workers": [...], "excluded": [...], "classes": [...],
    "findings": [...], "paths": [...]}``: each worker with its name, device UUID, ``env``
    (``CUDA_VISIBLE_DEVICES`` is its own device), limits and resources. Raises
    :class:`PlanError` with the command line's message in Python terms (for ``strict``, every
    class of device and the arguments that would make it work), and :class:`TopologyError` when
    ``source`` cannot be read.

    Each finding of severity ``warning`` (or ``error``) is also issued as a :class:`PlanWarning`
    pointing at the caller; ``info`` findings are only in ``findings``. ``_stacklevel`` is for
    wrappers such as ``LocalCluster``: 1 points the warnings at the line that called ``plan``, 2
    at its caller's, and so on.
    """
    if not isinstance(source, str):
        raise TypeError(f"plan(source): a str such as 'nvml' or 'sim:a30', not {type(source).__name__}")
    if isinstance(devices, (list, tuple)):
        devices = ",".join(str(d) for d in devices)
    # Named here, where Python would otherwise say only "must be real number, not NoneType" or
    # take 2.5 workers per device for 2.
    if isinstance(memory_tolerance, bool) or not isinstance(memory_tolerance, (int, float)):
        raise ValueError(f"memory_tolerance: a percentage such as 2.0, not {memory_tolerance!r}")
    try:
        memory_tolerance = float(memory_tolerance)
    except OverflowError:
        raise ValueError(f"memory_tolerance: a percentage such as 2.0, not {memory_tolerance!r}") from None
    # The range itself is the planner's (a PlanError, as on the command line); what cannot even
    # reach it is refused here.
    if isinstance(workers_per_device, bool) or not isinstance(workers_per_device, int) or not 0 <= workers_per_device < 1 << 31:
        raise ValueError(f"workers_per_device: a whole number from 1 to 64, not {workers_per_device!r}")
    # The JSON is the command line's (findings' text included); the warnings are the same
    # findings, said in Python's words by the native module.
    planned, warned = _plan(
        source,
        devices=None if devices is None else str(devices),
        policy=str(policy),
        memory_tolerance=memory_tolerance,
        device_memory_limit=str(device_memory_limit),
        workers_per_device=workers_per_device,
    )
    for text in warned:
        # 1 is warn's own frame (this function); _stacklevel counts from plan's caller.
        warnings.warn(PlanWarning(text), stacklevel=1 + max(1, int(_stacklevel)))
    return json.loads(planned)
