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
import logging
from typing import Any

import dask.config
from distributed import Nanny, Scheduler, SpecCluster

import gpucluster
from gpucluster import _native

__all__ = ["LocalCluster"]

#: What every process speaking UCX needs (as ``gpucluster dask local --protocol ucx`` sets it): a
#: CUDA context made before UCX starts, or UCX does not recognise device memory.
_UCX_CUDA_CONTEXT = {
    "DASK_DISTRIBUTED_UCXX__CREATE_CUDA_CONTEXT": "True",
    "DASK_DISTRIBUTED__COMM__UCX__CREATE_CUDA_CONTEXT": "True",
}

#: Where workers and the scheduler listen unless told otherwise: this host only.
DEFAULT_HOST = "127.0.0.1"


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
      device, ``"auto"``, a fraction, bytes or a size); handed to each worker as
      ``GPUCLUSTER_DEVICE_MEMORY_LIMIT`` (bytes).
    - ``memory_limit``: host memory per worker (Dask's grammar); by default this host's memory
      split evenly between the workers.
    - ``protocol``: ``"gpucluster"`` (default), ``"tcp"`` or another Dask protocol;
      ``security``: a :class:`distributed.Security`, for TLS.
    - ``threads_per_worker`` (1), ``dashboard_address`` (``None``: no dashboard, the default;
      ``":8787"`` to serve one), ``local_directory``, ``host`` (``127.0.0.1``).
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
        device_memory_limit: str | float | int = "default",
        memory_limit: str | float | int | None = None,
        protocol: str | None = None,
        security: Any = None,
        threads_per_worker: int = 1,
        dashboard_address: str | None = None,
        local_directory: str | None = None,
        host: str = DEFAULT_HOST,
        policy: str = "strict",
        memory_tolerance: float = 2.0,
        workers_per_device: int = 1,
        **kwargs: Any,
    ) -> None:
        if devices is not None and CUDA_VISIBLE_DEVICES is not None:
            raise ValueError("give either devices or CUDA_VISIBLE_DEVICES, not both")
        if n_workers is not None and (not isinstance(n_workers, int) or n_workers < 1):
            raise ValueError(f"n_workers: a whole number of at least 1, not {n_workers!r}")
        if not isinstance(threads_per_worker, int) or threads_per_worker < 1:
            raise ValueError(f"threads_per_worker: a whole number of at least 1, not {threads_per_worker!r}")
        self.gpucluster_plan = gpucluster.plan(
            topology,
            devices=_devices(devices if devices is not None else CUDA_VISIBLE_DEVICES),
            policy=policy,
            memory_tolerance=memory_tolerance,
            device_memory_limit=device_memory_limit,
            workers_per_device=workers_per_device,
        )
        planned = self.gpucluster_plan["workers"][:n_workers]
        if not planned:
            raise gpucluster.PlanError(
                f"no compute device to start a worker on ({topology}); `gpucluster list` shows what the machine has"
            )
        simulated = topology != "nvml"
        paths = [p for p in self.gpucluster_plan["paths"] if p["from"] != "*"]
        host_staged_only = bool(paths) and all(p["path"] == "host-staged" for p in paths)
        protocol = protocol or "gpucluster"
        if memory_limit is None:
            total = _native.host_memory()
            memory_limit = total // len(planned) if total else "auto"

        # Without a dashboard, the HTTP servers listen on this host only and serve nothing.
        http_address = dashboard_address if dashboard_address is not None else f"{host}:0"
        workers = {}
        for w in planned:
            env = dict(w["env"])
            # The device the gpucluster comm moves frames on, as `gpucluster dask local` says it.
            if simulated:
                env["GPUCLUSTER_DEVICE"] = "sim-mig" if w["kind"] == "mig" else "sim"
                env["DASK_DISTRIBUTED__DIAGNOSTICS__NVML"] = "False"
            else:
                env["GPUCLUSTER_DEVICE"] = "cuda"
            if host_staged_only:
                env["GPUCLUSTER_COMM_PATH"] = "host-staged"
            if protocol.startswith("ucx") and not simulated:
                env.update(_UCX_CUDA_CONTEXT)
            limit = w.get("device_memory_limit_bytes")
            env["GPUCLUSTER_DEVICE_MEMORY_LIMIT"] = "" if limit is None else str(limit)
            options: dict[str, Any] = {
                "name": w["name"],
                "env": env,
                "nthreads": threads_per_worker,
                "resources": {k: float(v) for k, v in w["resources"].items()},
                "memory_limit": memory_limit,
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
            if local_directory is not None:
                options["local_directory"] = local_directory
            workers[w["name"]] = {"cls": Nanny, "options": options}

        scheduler = {
            "cls": Scheduler if dashboard_address is not None else _QuietScheduler,
            "options": {
                "protocol": protocol,
                "host": host,
                "dashboard_address": http_address,
                "dashboard": dashboard_address is not None,
                "security": security,
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

    def __repr__(self) -> str:
        return f"<gpucluster.dask.LocalCluster {self.name!r}: {len(self.worker_spec)} worker(s), {self.scheduler_address}>"
