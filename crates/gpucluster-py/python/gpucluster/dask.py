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

This module holds the Dask glue only; planning is Rust (``gpucluster._native``).
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import warnings
from typing import Any

import dask.config
from dask.utils import format_bytes, parse_bytes
from distributed import Nanny, Scheduler, SpecCluster
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.system import MEMORY_LIMIT
from distributed.worker_memory import parse_memory_limit

import gpucluster
from gpucluster import _native

__all__ = ["LocalCluster"]

#: Where workers and the scheduler listen unless told otherwise: this host only.
DEFAULT_HOST = "127.0.0.1"

logger = logging.getLogger(__name__)


#: The most threads a worker may be asked for (a typing slip such as ``10**6`` would otherwise
#: start the worker and fail there, in hundreds of lines of another process's traceback).
MAX_THREADS_PER_WORKER = 4096

#: The least host memory a worker may be limited to (Dask reads ``1.5`` as 1.5 bytes).
MIN_HOST_MEMORY = 64 << 20


def _whole(name: str, value: Any, most: int) -> int:
    """``value`` as a whole number from 1 to ``most``, or an error that names ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise ValueError(f"{name}: a whole number from 1 to {most}, not {value!r}")
    return value


def _protocol(protocol: Any, security: Any, insecure: bool) -> str:
    """The comm protocol, checked before anything starts: one this Python has, and one that
    keeps other users out unless the caller says otherwise (as ``dask local --insecure``)."""
    from distributed import Security
    from distributed.comm.registry import get_backend

    if protocol is None:
        protocol = "gpucluster"
    if not isinstance(protocol, str) or not protocol.strip(":/"):
        raise ValueError(f"protocol: a Dask comm protocol such as 'gpucluster' (the default) or 'tls', not {protocol!r}")
    protocol = protocol.removesuffix("://")
    if security is not None and not isinstance(security, Security):
        raise TypeError(f"security: a distributed.Security (TLS certificates), not {type(security).__name__}")
    try:
        get_backend(protocol)
    except ValueError:
        ucx = " (pip install distributed-ucxx-cu12 or -cu13)" if protocol.startswith("ucx") else ""
        raise ValueError(
            f"protocol={protocol!r}: no such Dask comm in this Python{ucx}; use 'gpucluster' (the default: "
            "every connection proves your secret, device frames over gpucluster's transport) or 'tls' with security="
        ) from None
    if protocol in ("tls", "wss") and security is None:
        raise ValueError(f"protocol={protocol!r} needs security=distributed.Security(...) with its certificates")
    if not isinstance(insecure, bool):
        raise TypeError(f"insecure: True or False, not {insecure!r}")
    if protocol == "ws":
        # distributed's websocket listener binds every interface whatever `host` says.
        raise ValueError(
            "protocol='ws' listens on every interface of this host whatever host= says; use 'gpucluster' "
            "(the default), 'tls' or 'wss' with security=, or 'tcp' with insecure=True"
        )
    # Only what authenticates every connection closes the cluster: the gpucluster comm's secret,
    # or TLS with certificates. `Security(require_encryption=True)` alone does not: distributed
    # checks it in its TCP comm only, and a websocket comm with it accepts anyone.
    if protocol not in ("gpucluster", "tls", "wss") and not insecure:
        raise ValueError(
            f"protocol={protocol!r} lets every user of this host (and of any host that reaches it) connect to the "
            "scheduler and run code as you: keep the default protocol='gpucluster' (every connection proves your "
            "secret), use protocol='tls' with security=distributed.Security(..., require_encryption=True), or pass "
            "insecure=True on a machine nobody else uses"
        )
    return protocol


def _host(host: Any) -> str:
    """The address to listen on, resolved before anything starts."""
    import socket

    if not isinstance(host, str) or not host:
        raise ValueError(f"host: an address such as '127.0.0.1' (the default: this host only), not {host!r}")
    try:
        socket.getaddrinfo(host, None)
    except (OSError, UnicodeError) as e:
        raise ValueError(f"host={host!r}: cannot be resolved ({e}); give an address or a name of this host") from None
    return host


def _dashboard(address: Any, host: str) -> str | None:
    """Where the scheduler serves its dashboard: ``None`` for none; a port or ``":PORT"`` on
    ``host`` (this host only by default, not every interface as Dask would)."""
    if address is None:
        return None
    if isinstance(address, int) and not isinstance(address, bool):
        address = str(address)
    if not isinstance(address, str) or not address.strip():
        raise ValueError(
            f"dashboard_address: an address such as ':8787' (on host=, this host by default) or None (no dashboard), not {address!r}"
        )
    port = address.rsplit(":", 1)[-1]
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(
            f"dashboard_address: HOST:PORT or :PORT with a port from 0 (any free one) to 65535, not {address!r}"
        )
    if importlib.util.find_spec("bokeh") is None:
        raise ValueError(
            "dashboard_address: Dask's dashboard needs bokeh, which this Python lacks: pip install bokeh, "
            "or leave dashboard_address=None"
        )
    return _native.dashboard_address(address, host)


def _host_memory(memory_limit: Any, workers: int) -> int | None:
    """Each worker's host memory limit in bytes (``None``: no limit), checked before anything
    starts; by default this host's memory split evenly between the workers."""
    if memory_limit is None:
        total = _native.host_memory()
        return total // workers if total else parse_memory_limit("auto", 1, total_cores=workers, logger=logger)
    grammar = (
        "host memory per worker in Dask's grammar: a size such as '16GB', bytes, a fraction of this host's "
        "memory such as 0.25, 'auto' (split between the workers) or 0 (no limit)"
    )
    if isinstance(memory_limit, bool) or (isinstance(memory_limit, str) and not memory_limit.strip()):
        raise ValueError(f"memory_limit: {grammar}, not {memory_limit!r}")
    class MoreThanTheHost(Exception):
        pass

    class Refuse:
        """Dask's parser logs, and uses the host's memory instead, where a limit is above it."""

        def warning(self, *args: Any) -> None:
            raise MoreThanTheHost

    try:
        limit = parse_memory_limit(memory_limit, 1, total_cores=workers, logger=Refuse())
    except MoreThanTheHost:
        raise ValueError(
            f"memory_limit: {memory_limit!r} is more than this host's memory ({format_bytes(MEMORY_LIMIT)}); "
            "give at most that per worker, or 0 for no limit"
        ) from None
    except (ValueError, TypeError, OverflowError):
        raise ValueError(f"memory_limit: {grammar}, not {memory_limit!r}") from None
    if limit is not None and limit < 0:
        raise ValueError(f"memory_limit: {grammar}, not {memory_limit!r}")
    if limit is not None and limit < MIN_HOST_MEMORY:
        # Dask reads 1.5 as 1.5 bytes: a worker that would pause at once.
        raise ValueError(
            f"memory_limit: {limit} bytes per worker is too little to run one (at least {MIN_HOST_MEMORY >> 20} MiB); "
            f"{grammar}, not {memory_limit!r}"
        )
    return limit


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



class _QuietScheduler(Scheduler):
    """A scheduler whose HTTP server serves nothing: distributed's default routes (``/info``,
    ``/metrics``, ...) show task names, call stacks and worker logs to whoever reaches the port,
    so without a dashboard asked for there are none (as ``gpucluster dask local`` does)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        with dask.config.set({"distributed.scheduler.http.routes": []}):
            super().__init__(*args, **kwargs)


def _without_worker_routes() -> dict[str, Any]:
    """distributed's configuration section with the worker's HTTP routes removed."""
    section = copy.deepcopy(dask.config.get("distributed"))
    section.setdefault("worker", {}).setdefault("http", {})["routes"] = []
    return section


class _CPUAffinity(WorkerPlugin):
    """Pins every thread of the worker process to the CPUs near its device (the plan's
    ``cpu_affinity``), as ``gpucluster up`` pins its workers and dask-cuda's ``CPUAffinity`` does
    (which pins only the thread it runs on)."""

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


def _affinity(cpu_list: str | None, simulated: bool) -> list[int]:
    """The CPUs to pin a worker to: its device's, where they are this machine's and fewer than
    this process may use (a simulated machine's CPUs are not this machine's)."""
    if simulated or not cpu_list:
        return []
    allowed = os.sched_getaffinity(0)
    cpus = [c for c in _native.cpu_list(cpu_list) if c in allowed]
    return cpus if cpus and len(cpus) < len(allowed) else []


def _rmm_pool_bytes(size: str | int | None, simulated: bool) -> int | None:
    """``rmm_pool_size`` in bytes (Dask's grammar: ``"10GB"``, ``"10GiB"`` or a number), checked
    before any worker starts."""
    if size is None:
        return None
    if simulated:
        raise ValueError("rmm_pool_size: RMM allocates on real GPUs; a simulated topology has none")
    if importlib.util.find_spec("rmm") is None:
        raise ValueError("rmm_pool_size needs RMM in this Python: pip install rmm-cu12 (or rmm-cu13)")
    try:
        n = parse_bytes(size) if isinstance(size, str) else int(size)
    except (ValueError, TypeError) as e:
        raise ValueError(f"rmm_pool_size: a size such as \"10GB\" or a number of bytes, not {size!r}") from e
    if n <= 0:
        raise ValueError(f"rmm_pool_size: more than 0 bytes, not {size!r}")
    return n


def _device_host_file(worker_local_directory: str, *, device_memory_limit: int, memory_limit: int | None) -> Any:
    """The worker's data store: dask-cuda's ``DeviceHostFile``, which moves the least recently
    used device objects to host memory past ``device_memory_limit`` and host objects to disk past
    ``memory_limit``, as ``LocalCUDACluster``'s workers do. Called in the worker (distributed
    fills in ``worker_local_directory``), so the client never imports dask-cuda."""
    from dask_cuda.device_host_file import DeviceHostFile

    return DeviceHostFile(
        worker_local_directory, device_memory_limit=device_memory_limit, memory_limit=memory_limit
    )


def _spills_device_memory(*, simulated: bool, explicit: bool) -> bool:
    """Whether workers can enforce their device memory limits: with dask-cuda's device-to-host
    spilling, where dask-cuda is installed and the devices are real. A limit the user asked for
    that nothing can enforce is said (once), not dropped silently."""
    if simulated:
        return False
    if importlib.util.find_spec("dask_cuda") is None:
        if explicit:
            warnings.warn(
                "device_memory_limit is enforced by dask-cuda's device spilling, which this Python "
                "lacks: workers only get it as GPUCLUSTER_DEVICE_MEMORY_LIMIT. "
                "pip install dask-cuda (or pass device_memory_limit=None) to say which you want",
                RuntimeWarning,
                stacklevel=3,
            )
        return False
    return True


def _worker_data(device_limit: int | None, memory_limit: int | None) -> tuple[Any, dict[str, Any]] | None:
    """A worker's ``data`` option: dask-cuda's ``DeviceHostFile`` with its own limits (``None``
    where it has no device limit: Dask's own host spilling)."""
    if not device_limit:
        return None
    return (_device_host_file, {"device_memory_limit": device_limit, "memory_limit": memory_limit})


def _devices(devices: Any) -> str | None:
    if devices is None:
        return None
    if isinstance(devices, (list, tuple)):
        return ",".join(str(d) for d in devices)
    return str(devices)


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
    - ``memory_limit``: host memory per worker (Dask's grammar); by default this host's memory
      split evenly between the workers.
    - ``protocol``: ``"gpucluster"`` (default: every connection proves the user's secret),
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
    Each worker's threads are pinned to the CPUs near its device, where the machine says which.
    - ``policy`` (``"strict"``, ``"warn"``, ``"largest-group"``, ``"grouped"``),
      ``memory_tolerance`` (percent), ``workers_per_device``, ``topology`` (``"nvml"``, or
      ``"sim:NAME"``, ``"file:PATH"``, ``"smi:PATH"``).

    Further keyword arguments go to :class:`distributed.SpecCluster` (``asynchronous``,
    ``silence_logs``, ``name``, ...). ``gpucluster_plan`` holds the plan the cluster was built
    from (``plan`` is Dask's: the workers it wants).
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
        dashboard_address: str | None = None,
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
        if n_workers is not None:
            n_workers = _whole("n_workers", n_workers, 1 << 20)
        threads_per_worker = _whole("threads_per_worker", threads_per_worker, MAX_THREADS_PER_WORKER)
        protocol = _protocol(protocol, security, insecure)
        host = _host(host)
        dashboard_address = _dashboard(dashboard_address, host)
        local_directory = _local_directory(local_directory)
        self.gpucluster_plan = gpucluster.plan(
            topology,
            devices=_devices(devices if devices is not None else CUDA_VISIBLE_DEVICES),
            policy=policy,
            memory_tolerance=memory_tolerance,
            device_memory_limit=device_memory_limit,
            workers_per_device=workers_per_device,
            _stacklevel=2,  # a PlanWarning points at the line that builds the cluster
        )
        planned = self.gpucluster_plan["workers"]
        if not planned:
            raise gpucluster.PlanError(
                f"no compute device to start a worker on ({topology}); gpucluster.topology() shows what the machine has"
            )
        if n_workers is not None and n_workers > len(planned):
            raise ValueError(
                f"n_workers={n_workers}: the plan has {len(planned)} worker(s) ({workers_per_device} per compute "
                "device); ask for at most that many, or for more per device with workers_per_device="
            )
        planned = planned[:n_workers]
        simulated = topology != "nvml"
        paths = [p for p in self.gpucluster_plan["paths"] if p["from"] != "*"]
        host_staged_only = bool(paths) and all(p["path"] == "host-staged" for p in paths)
        host_bytes = _host_memory(memory_limit, len(planned))
        pool_bytes = _rmm_pool_bytes(rmm_pool_size, simulated)
        spills = _spills_device_memory(
            simulated=simulated,
            # Asked for, not the default, and not "no limit".
            explicit=not (isinstance(device_memory_limit, str) and device_memory_limit == "default")
            and any(w.get("device_memory_limit_bytes") for w in planned),
        )
        self._private_directory = None
        if local_directory is None:
            # Workers' files (spilled data, uploaded code, locks) in a directory of this user's
            # own, never the shared `dask-scratch-space` of the temporary directory, which another
            # user may have made first; removed when the cluster is closed or collected, and, if
            # this process is killed outright, by the next cluster this user starts.
            self._private_directory = _native.PrivateDirectory("gpucluster-dask")
            local_directory = self._private_directory.path

        # Workers' HTTP servers take any free port on `host`: the dashboard's port is the
        # scheduler's. Without a dashboard, they serve nothing.
        http_address = f"{host}:0"
        workers = {}
        for w in planned:
            env = dict(w["env"])
            # The device the gpucluster comm moves frames on and the path it takes, the NVML
            # diagnostics, UCX's CUDA context and the device limit: one definition, in Rust,
            # shared with `gpucluster dask local`.
            env.update(
                _native.worker_device_env(
                    w["kind"],
                    simulated=simulated,
                    host_staged_only=host_staged_only,
                    ucx=protocol.startswith("ucx"),
                    device_memory_limit=w.get("device_memory_limit_bytes"),
                )
            )
            options: dict[str, Any] = {
                "name": w["name"],
                "env": env,
                "nthreads": threads_per_worker,
                "resources": {k: float(v) for k, v in w["resources"].items()},
                "memory_limit": host_bytes or 0,
                "protocol": protocol,
                "host": host,
                "dashboard_address": http_address,
                "dashboard": dashboard_address is not None,
                "security": security,
            }
            if dashboard_address is None:
                # The worker process's own configuration (an environment variable would come too
                # late: the nanny sets its env after the worker has imported distributed).
                # The nanny merges it shallowly over its own: the whole `distributed` section.
                options["config"] = {"distributed": _without_worker_routes()}
            options["local_directory"] = local_directory
            data = _worker_data(w.get("device_memory_limit_bytes"), host_bytes) if spills else None
            if data is not None:
                options["data"] = data
            plugins = []
            cpus = _affinity(w.get("cpu_affinity"), simulated)
            if cpus:
                plugins.append(_CPUAffinity(cpus))
            if pool_bytes is not None:
                plugins.append(_RMMPool(pool_bytes))
            if plugins:
                options["plugins"] = plugins
            workers[w["name"]] = {"cls": Nanny, "options": options}

        scheduler = {
            "cls": Scheduler if dashboard_address is not None else _QuietScheduler,
            "options": {
                "protocol": protocol,
                "host": host,
                "dashboard_address": dashboard_address if dashboard_address is not None else http_address,
                "dashboard": dashboard_address is not None,
                "security": security,
                # Its scratch space in the cluster's directory, never the shared
                # `dask-scratch-space` of the temporary directory, which another user may have
                # made first (and filled with links).
                "local_directory": local_directory,
            },
        }
        if protocol.startswith("ucx") and not simulated:
            # The scheduler runs in this process: its UCX needs the CUDA context first too (as
            # LocalCUDACluster sets it).
            dask.config.set({"distributed-ucxx.create-cuda-context": True, "distributed.comm.ucx.create-cuda-context": True})
        kwargs.setdefault("name", f"gpucluster {topology}")
        # As distributed's LocalCluster: Dask's INFO lines hidden unless asked for.
        silence_logs = kwargs.setdefault("silence_logs", logging.WARN)
        for spec in workers.values():
            spec["options"]["silence_logs"] = silence_logs
        super().__init__(workers=workers, scheduler=scheduler, security=security, **kwargs)

    async def _close(self) -> None:
        await super()._close()
        # The workers are gone: their private directory goes too (once; collection would too).
        private = getattr(self, "_private_directory", None)
        if private is not None:
            private.remove()

    def __repr__(self) -> str:
        return f"<gpucluster.dask.LocalCluster {self.name!r}: {len(self.worker_spec)} worker(s), {self.scheduler_address}>"
