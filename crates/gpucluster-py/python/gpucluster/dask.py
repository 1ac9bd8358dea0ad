"""``gpucluster.dask.LocalCluster``: a Dask cluster of this machine's GPUs and MIG instances,
one worker per compute device, planned by gpucluster's Rust planner.

What ``LocalCUDACluster(CUDA_VISIBLE_DEVICES=[...MIG UUIDs copied by hand...])`` asks users to
get right, this does from the machine itself::

    from distributed import Client
    from gpucluster.dask import LocalCluster

    cluster = LocalCluster()            # every MIG instance once, never a MIG-enabled parent
    client = Client(cluster)

The plan is :func:`gpucluster.plan`'s, the same as ``gpucluster plan --json``: each worker gets
its own ``CUDA_VISIBLE_DEVICES`` (a MIG worker sees exactly its instance), its host and device
memory limits (the device limit from its own slice), its Dask resources (``GPU=1``, and its class
under ``policy="grouped"``), and slices that are not alike are refused under ``policy="strict"``
with the same classes and fixes as the command line (:class:`gpucluster.PlanError`).

The cluster speaks ``gpucluster://`` by default: Dask's TCP comm, with every connection proving
the user's cluster secret before its first message (so other users of the host cannot connect or
run code), and device frames between its workers moved over gpucluster's transport
(host-staged between MIG instances, cuda-ipc between whole GPUs).

With ``topology="sim:NAME"`` (or ``file:``/``smi:``) the devices are simulated: workers move
:class:`gpucluster.sim.DeviceArray` frames over the same transport code, and nothing asks a
driver about a device that does not exist (distributed's NVML diagnostics are off).

The cluster itself is decided in Rust, once, for this class and ``gpucluster dask local``
alike: ``_native.cluster_spec`` returns the protocol and why, the scheduler and one spec per
worker (its environment, Dask settings, resources, limits, threads, CPUs), and this module maps
each onto ``distributed``'s ``Scheduler`` and ``Nanny``. What only Python can do stays here: the
workers' data store (dask-cuda's ``DeviceHostFile``, built in the worker), the worker plugins that
pin threads and set up an RMM pool, and checking the types of the arguments.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from typing import Any

import dask.config
from distributed import Nanny, Scheduler, Security, SpecCluster
from distributed.diagnostics.plugin import WorkerPlugin

import gpucluster
from gpucluster import _native
from gpucluster._facts import python_facts

__all__ = ["LocalCluster"]

#: Where workers and the scheduler listen unless told otherwise: this host only.
DEFAULT_HOST = "127.0.0.1"

logger = logging.getLogger(__name__)


def _text(value: Any) -> str | None:
    """A setting the spec reads as text (Dask's grammars): numbers as Python writes them; anything
    else by its repr, which the spec refuses by name."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    return repr(value)


def _host(host: Any) -> str:
    """The address to listen on: text, whose grammar and resolution the spec checks."""
    if not isinstance(host, str):
        raise ValueError(f"host: an address such as '127.0.0.1' (the default: this host only), not {host!r}")
    return host


def _local_directory(directory: Any) -> str | None:
    if directory is None:
        return None
    try:
        path = os.fspath(directory)
    except TypeError:
        raise TypeError(f"local_directory: a path, not {type(directory).__name__}") from None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not path:
        raise ValueError("local_directory: a directory for the workers' files, or None (a private one, removed on close)")
    return path


def _devices(devices: Any) -> str | None:
    if devices is None:
        return None
    if isinstance(devices, (list, tuple)):
        return ",".join(str(d) for d in devices)
    return str(devices)


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    """Dask settings by dotted key as whole top-level sections of this process's configuration
    with the settings applied: what a Nanny's ``config`` takes (it replaces what it names)."""
    config: dict[str, Any] = {}
    for key, value in flat.items():
        top, *rest = key.split(".")
        if not rest:
            config[top] = value
            continue
        section = config.setdefault(top, copy.deepcopy(dask.config.get(top, default={})))
        for part in rest[:-1]:
            section = section.setdefault(part, {})
        section[rest[-1]] = value
    return config


class _SpecScheduler(Scheduler):
    """A scheduler with the spec's Dask settings (HTTP routes, scratch space, UCX's CUDA context)
    in force while it is made and while it starts listening, and only then: it runs in the
    caller's process, whose own settings stay as they were."""

    def __init__(self, *args: Any, gpucluster_config: dict[str, Any], **kwargs: Any) -> None:
        self._gpucluster_config = gpucluster_config
        with dask.config.set(gpucluster_config):
            super().__init__(*args, **kwargs)

    async def start_unsafe(self) -> Any:
        with dask.config.set(self._gpucluster_config):
            return await super().start_unsafe()


class _CPUAffinity(WorkerPlugin):
    """Pins every thread of the worker process to the CPUs near its device (the spec's ``cpus``),
    as ``gpucluster up`` pins its workers and dask-cuda's ``CPUAffinity`` does (which pins only
    the thread it runs on)."""

    name = "gpucluster-cpu-affinity"

    def __init__(self, cpus: list[int]) -> None:
        self.cpus = cpus

    def setup(self, worker: Any) -> None:
        for task in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(task), self.cpus)
            except (OSError, ValueError):  # a thread that ended meanwhile
                pass


class _RMMPool(WorkerPlugin):
    """An RMM memory pool of ``size`` bytes on the worker's device, used by CuPy too (what
    dask-cuda's ``rmm_pool_size`` sets up)."""

    name = "gpucluster-rmm-pool"

    def __init__(self, size: int) -> None:
        self.size = size

    def setup(self, worker: Any) -> None:
        import rmm

        rmm.reinitialize(pool_allocator=True, initial_pool_size=self.size)
        try:
            import cupy
            from rmm.allocators.cupy import rmm_cupy_allocator
        except ImportError:
            return
        cupy.cuda.set_allocator(rmm_cupy_allocator)


def _device_host_file(worker_local_directory: str, *, device_memory_limit: int, memory_limit: int | None) -> Any:
    """The worker's data store: dask-cuda's ``DeviceHostFile``, which moves the least recently
    used device objects to host memory past ``device_memory_limit`` and host objects to disk past
    ``memory_limit``, as ``LocalCUDACluster``'s workers do. Called in the worker (distributed
    fills in ``worker_local_directory``), so the client never imports dask-cuda."""
    from dask_cuda.device_host_file import DeviceHostFile

    return DeviceHostFile(
        worker_local_directory, device_memory_limit=device_memory_limit, memory_limit=memory_limit
    )


def _nanny(worker: dict[str, Any], protocol: str | None, security: Any, local_directory: str, silence_logs: Any) -> dict:
    """A worker spec of the cluster spec as a Nanny's spec."""
    options: dict[str, Any] = {
        "name": worker["name"],
        "env": dict(worker["env"]),
        # The nanny gives its worker process this configuration (environment variables would
        # come too late: it applies its own configuration over them).
        "config": _nested(worker["dask_config"]),
        "nthreads": worker["threads"],
        "resources": worker["resources"],
        "memory_limit": worker["memory_limit_bytes"] or 0,
        "protocol": protocol,
        "host": worker["host"],
        # It serves nothing (its routes are off), on this host only.
        "dashboard_address": worker["http_address"],
        "dashboard": False,
        "security": security,
        "local_directory": local_directory,
        "silence_logs": silence_logs,
    }
    if worker["spills_device_memory"]:
        limits = {"device_memory_limit": worker["device_memory_limit_bytes"], "memory_limit": worker["memory_limit_bytes"]}
        options["data"] = (_device_host_file, limits)
    plugins = []
    if worker["cpus"]:
        plugins.append(_CPUAffinity(worker["cpus"]))
    if worker["rmm_pool_bytes"] is not None:
        plugins.append(_RMMPool(worker["rmm_pool_bytes"]))
    if plugins:
        options["plugins"] = plugins
    return {"cls": Nanny, "options": options}


class LocalCluster(SpecCluster):
    """One Dask worker per compute device of this machine (or of ``topology``), as planned.

    Parameters (those of ``LocalCUDACluster`` users reach for, then gpucluster's):

    - ``CUDA_VISIBLE_DEVICES`` / ``devices``: which devices, in the ``CUDA_VISIBLE_DEVICES``
      grammar (indices, ``GPU-``/``MIG-`` UUIDs or unique prefixes; a list or a comma-separated
      string); by default every compute device (the environment's ``CUDA_VISIBLE_DEVICES``,
      where set, as on the command line).
    - ``n_workers``: at most this many of the planned workers (the first ones).
    - ``device_memory_limit``: Dask-CUDA's grammar (``"default"`` = 80 % of each worker's own
      device, ``"auto"``, a fraction, bytes or a size; ``None`` or ``0``: no limit). Where
      dask-cuda is installed, each worker keeps its data in dask-cuda's ``DeviceHostFile``, which
      moves device objects to host memory past this limit (and host objects to disk past
      ``memory_limit``), as ``LocalCUDACluster`` does; every worker also gets it as
      ``GPUCLUSTER_DEVICE_MEMORY_LIMIT`` (bytes). Without dask-cuda nothing spills device memory,
      and a limit other than the default is warned about.
    - ``memory_limit``: host memory per worker in Dask's grammar (a size such as ``"16GB"``,
      bytes, a fraction of this host's memory up to 1, ``"auto"``, 0 for none); by default this
      host's memory split evenly between the workers.
    - ``protocol``: by default ``"gpucluster"`` (every connection proves the user's secret);
      ``"tls"`` or ``"wss"`` with ``security`` (a :class:`distributed.Security` with
      certificates), or another Dask protocol. One that lets other users in (``"tcp"``,
      ``"ucx"``) is refused unless ``insecure=True`` says that nobody else uses the machine (as
      ``dask local --insecure``); ``Security(require_encryption=True)`` alone does not close a
      cluster. ``"ws"`` is refused: it listens on every interface whatever ``host`` says.
    - ``threads_per_worker`` (1), ``dashboard_address`` (``None``: no dashboard, the default;
      ``":8787"`` or ``8787`` to serve one from the scheduler on ``host``, this host only by
      default; needs bokeh), ``host`` (``127.0.0.1``; ``"0.0.0.0"`` for every interface).
    - ``local_directory``: where workers keep their files; by default a private directory of
      this user's, removed when the cluster is closed.
    - ``rmm_pool_size``: an RMM pool of this size on each worker's device (``"10GB"``, bytes),
      used by CuPy too; needs RMM installed.
    - ``policy`` (``"strict"``, ``"warn"``, ``"largest-group"``, ``"grouped"``),
      ``memory_tolerance`` (percent), ``workers_per_device``, ``topology`` (``"nvml"``, or
      ``"sim:NAME"``, ``"file:PATH"``, ``"smi:PATH"``).

    Each worker's threads are pinned to the CPUs near its device, where the machine says which.
    Further keyword arguments go to :class:`distributed.SpecCluster` (``asynchronous``,
    ``silence_logs``, ``name``, ...). ``gpucluster_plan`` holds the plan the cluster was built
    from (``plan`` is Dask's: the workers it wants), ``gpucluster_spec`` the cluster spec.
    """

    def __init__(
        self,
        topology: str = "nvml",
        *,
        CUDA_VISIBLE_DEVICES: Any = None,  # noqa: N803 (LocalCUDACluster's spelling)
        devices: Any = None,
        n_workers: int | None = None,
        device_memory_limit: str | float | int | None = "default",
        memory_limit: str | float | int | None = None,
        protocol: str | None = None,
        security: Any = None,
        threads_per_worker: int = 1,
        dashboard_address: str | int | None = None,
        local_directory: str | None = None,
        rmm_pool_size: str | int | None = None,
        host: str = DEFAULT_HOST,
        policy: str = "strict",
        memory_tolerance: float = 2.0,
        workers_per_device: int = 1,
        insecure: bool = False,
        **kwargs: Any,
    ) -> None:
        if devices is not None and CUDA_VISIBLE_DEVICES is not None:
            raise ValueError("give either devices or CUDA_VISIBLE_DEVICES, not both")
        # Every argument is checked here, before any process starts: a bad one found by a worker
        # would end in "Nanny failed to start" and hundreds of lines of another process's output.
        # Types here; values by the spec, which the command line shares.
        if security is not None and not isinstance(security, Security):
            raise TypeError(f"security: a distributed.Security (TLS certificates), not {type(security).__name__}")
        # Certificates, not a Security alone: `require_encryption=True` without them lets a
        # websocket comm accept anyone, and stops every other comm from starting at all; and the
        # scheduler, the workers and this client each present one.
        credentials_given = security is not None
        if security is not None:
            needed = ("tls_ca_file", "tls_scheduler_cert", "tls_worker_cert", "tls_client_cert")
            missing = [name for name in needed if not getattr(security, name, None)]
            if len(missing) == len(needed):
                raise ValueError(
                    "security: a distributed.Security with the cluster's certificates (tls_ca_file, "
                    "tls_scheduler_cert, tls_worker_cert, tls_client_cert and their keys); without them it closes "
                    "nothing, so leave it out: the default protocol 'gpucluster' proves your secret on every connection"
                )
            if missing:
                raise ValueError(
                    f"security: the scheduler, the workers and this client each present a certificate; this "
                    f"distributed.Security lacks {', '.join(missing)}"
                )
        if not isinstance(insecure, bool):
            raise TypeError(f"insecure: True or False, not {insecure!r}")
        if protocol is not None and not isinstance(protocol, str):
            protocol = repr(protocol)
        host = _host(host)
        local_directory = _local_directory(local_directory)
        devices = _devices(devices if devices is not None else CUDA_VISIBLE_DEVICES)
        plan_arguments = {
            "devices": devices,
            "policy": policy,
            "memory_tolerance": memory_tolerance,
            "device_memory_limit": device_memory_limit,
            "workers_per_device": workers_per_device,
        }
        self.gpucluster_plan = gpucluster.plan(
            topology,
            **plan_arguments,
            _stacklevel=2,  # a PlanWarning points at the line that builds the cluster
        )
        if not self.gpucluster_plan["workers"]:
            raise gpucluster.PlanError(
                f"no compute device to start a worker on ({topology}); gpucluster.topology() shows what the machine has"
            )
        self._private_directory = None
        if local_directory is None:
            # Workers' files (spilled data, uploaded code, locks) in a directory of this user's
            # own, never the shared `dask-scratch-space` of the temporary directory, which another
            # user may have made first; removed when the cluster is closed or collected, and, if
            # this process is killed outright, by the next cluster this user starts.
            self._private_directory = _native.PrivateDirectory("gpucluster-dask")
            local_directory = self._private_directory.path
        try:
            spec = json.loads(
                _native.cluster_spec(
                    topology,
                    devices=devices,
                    policy=str(policy),
                    memory_tolerance=float(memory_tolerance),
                    device_memory_limit=str(device_memory_limit),
                    workers_per_device=workers_per_device,
                    protocol="auto" if protocol is None else protocol,
                    insecure=insecure,
                    credentials_given=credentials_given,
                    host=host,
                    dashboard=_text(dashboard_address),
                    memory_limit=_text(memory_limit),
                    # Counts by their repr: the spec reads `4`, and refuses `2.5`, `True` or `'2'`.
                    threads=repr(threads_per_worker),
                    workers=None if n_workers is None else repr(n_workers),
                    rmm_pool_size=_text(rmm_pool_size),
                    local_directory=local_directory,
                    facts=json.dumps(python_facts()),
                )
            )
        except BaseException:
            if self._private_directory is not None:
                self._private_directory.remove()
            raise
        self.gpucluster_spec = spec
        for note in spec["notes"]:
            warnings.warn(note, RuntimeWarning, stacklevel=2)

        kwargs.setdefault("name", f"gpucluster {topology}")
        # As distributed's LocalCluster: Dask's INFO lines hidden unless asked for.
        silence_logs = kwargs.setdefault("silence_logs", logging.WARN)
        workers = {
            w["name"]: _nanny(w, spec["protocol"], security, local_directory, silence_logs) for w in spec["workers"]
        }
        s = spec["scheduler"]
        scheduler = {
            "cls": _SpecScheduler,
            "options": {
                "gpucluster_config": s["dask_config"],
                "protocol": s["protocol"],
                "host": s["host"],
                "dashboard_address": s["http_address"],
                "dashboard": s["dashboard"] is not None,
                "security": security,
                "preload": s["preload"],
                # Its scratch space in the cluster's directory, never the shared
                # `dask-scratch-space` of the temporary directory, which another user may have
                # made first (and filled with links).
                "local_directory": local_directory,
            },
        }
        try:
            super().__init__(workers=workers, scheduler=scheduler, security=security, **kwargs)
        except BaseException:
            # A cluster that could not start (or was interrupted starting) leaves no directory:
            # its nannies stopped first, so that no worker still starting makes its files again.
            try:
                self.close(timeout=10)
            except BaseException:  # a cluster half made may not close; its directory goes anyway
                pass
            if self._private_directory is not None:
                self._private_directory.remove()
            raise

    async def _close(self) -> None:
        await super()._close()
        # The workers are gone: their private directory goes too (once; collection would too).
        private = getattr(self, "_private_directory", None)
        if private is not None:
            private.remove()

    def __repr__(self) -> str:
        return f"<gpucluster.dask.LocalCluster {self.name!r}: {len(self.worker_spec)} worker(s), {self.scheduler_address}>"

