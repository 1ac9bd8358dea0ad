"""``gpucluster.dask.LocalCluster`` on simulated machines: the planned workers, each with its own
device, limits and resources; the strict refusal; device arrays moving between its workers over
the gpucluster comm; nothing left behind after ``close()``."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from distributed import Client, Security

import gpucluster
from gpucluster.dask import LocalCluster
from gpucluster.sim import DeviceArray


def own_env():
    keys = ("CUDA_VISIBLE_DEVICES", "GPUCLUSTER_DEVICE", "GPUCLUSTER_DEVICE_MEMORY_LIMIT", "GPUCLUSTER_COMM_PATH")
    return {k: os.environ.get(k) for k in keys}


def children() -> set[int]:
    """This process's live (not zombie) children, but multiprocessing's resource tracker (Python's
    own helper, which lives as long as this process)."""
    found = set()
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        try:
            with open(f"/proc/{os.getpid()}/task/{task}/children") as f:
                found.update(int(p) for p in f.read().split())
        except OSError:
            pass
    alive = set()
    for pid in found:
        try:
            with open(f"/proc/{pid}/stat") as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                tracker = b"multiprocessing.resource_tracker" in f.read()
        except OSError:
            continue
        if not zombie and not tracker:
            alive.add(pid)
    return alive


def spec_of(
    topology: str, *, dask_cuda: bool, device_memory_limit: str = "default", facts_bokeh: bool | None = None, **request
) -> dict:
    """The cluster spec LocalCluster runs, for a Python with dask-cuda or not (the decisions are
    the spec's; the Rust tests cover real devices, which a machine without a GPU cannot plan)."""
    import json

    from gpucluster._facts import python_facts

    facts = {**python_facts(), "dask_cuda": dask_cuda}
    if facts_bokeh is not None:
        facts["bokeh"] = facts_bokeh
    arguments = dict(
        devices=None, policy="strict", memory_tolerance=2.0, device_memory_limit=device_memory_limit,
        workers_per_device=1, protocol="auto", insecure=False, credentials_given=False, host="127.0.0.1",
        dashboard=None, memory_limit=None, threads="1", workers=None, rmm_pool_size=None, local_directory="/d",
    )
    arguments.update(request)
    return json.loads(gpucluster._native.cluster_spec(topology, **arguments, facts=json.dumps(facts)))


def test_one_worker_per_mig_instance_each_with_its_own_device_and_limits(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    before = children()
    plan = gpucluster.plan("sim:a30")
    with LocalCluster(topology="sim:a30", memory_limit="2GiB") as cluster, Client(cluster) as client:
        assert cluster.scheduler_address.startswith("gpucluster://127.0.0.1:")
        client.wait_for_workers(4, timeout=60)
        info = client.scheduler_info(n_workers=-1)["workers"]
        by_name = {w["name"]: (address, w) for address, w in info.items()}
        assert sorted(by_name) == sorted(w["name"] for w in plan["workers"])
        envs = client.run(own_env)
        for planned in plan["workers"]:
            address, w = by_name[planned["name"]]
            assert w["resources"] == {"GPU": 1.0}
            assert w["memory_limit"] == 2 << 30
            env = envs[address]
            assert env["CUDA_VISIBLE_DEVICES"] == planned["device_uuid"], "a MIG worker sees exactly its instance"
            assert env["GPUCLUSTER_DEVICE"] == "sim-mig"
            assert env["GPUCLUSTER_DEVICE_MEMORY_LIMIT"] == str(planned["device_memory_limit_bytes"])
            assert env["GPUCLUSTER_COMM_PATH"] == "host-staged", "MIG instances have no CUDA IPC"
        # No dashboard asked for: the HTTP servers listen on this host only and serve nothing
        # (distributed's default routes show task names, call stacks and logs to anyone).
        http = [(cluster.scheduler.http_server.address, cluster.scheduler.http_server.port)]
        http += list(client.run(lambda dask_worker: (dask_worker.http_server.address, dask_worker.http_server.port)).values())
        for address, port in http:
            assert address == "127.0.0.1", http
            for route in ("/health", "/info/main/workers.html", "/metrics", "/json/counts.json"):
                with pytest.raises(urllib.error.HTTPError) as refused:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}{route}", timeout=5)
                assert refused.value.code == 404, (port, route)
        # A device array made on one worker and taken by a task on another: a device frame.
        a, b = list(info)[:2]
        x = client.submit(DeviceArray.from_bytes, bytes(range(256)) * 4096, workers=[a], pure=False)
        ok, via = client.submit(lambda x: (x.tobytes() == bytes(range(256)) * 4096, x.via), x, workers=[b]).result(60)
        assert (ok, via) == (True, "device frame")
    deadline = time.monotonic() + 10
    while children() - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not children() - before, "close() leaves no worker or nanny behind"


def test_the_policies_are_the_planners(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(gpucluster.PlanError, match="not alike") as raised:
        LocalCluster(topology="sim:a100-80gb-mixed")
    assert "class A" in str(raised.value) and 'policy="' in str(raised.value) and "--policy" not in str(raised.value)
    with LocalCluster(topology="sim:a100-80gb-mixed", policy="grouped", n_workers=2) as cluster:
        assert len(cluster.worker_spec) == 2
        resources = [spec["options"]["resources"] for spec in cluster.worker_spec.values()]
        assert all(r["GPU"] == 1.0 and len(r) == 2 for r in resources), resources


def test_devices_are_chosen_as_with_local_cuda_cluster(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    plan = gpucluster.plan("sim:a30")
    second = plan["workers"][1]["device_uuid"]
    with LocalCluster(topology="sim:a30", CUDA_VISIBLE_DEVICES=[second[:12]]) as cluster:
        assert [s["options"]["env"]["CUDA_VISIBLE_DEVICES"] for s in cluster.worker_spec.values()] == [second]
    with pytest.raises(ValueError, match="either devices or CUDA_VISIBLE_DEVICES"):
        LocalCluster(topology="sim:a30", devices="0", CUDA_VISIBLE_DEVICES="0")
    with pytest.raises(ValueError, match="n_workers"):
        LocalCluster(topology="sim:a30", n_workers=0)
    with pytest.raises(gpucluster.TopologyError):
        LocalCluster(topology="sim:nope")


KILLED_CLIENT = """
import os, sys, time
from distributed import Client
from gpucluster.dask import LocalCluster
if __name__ == "__main__":
    with LocalCluster(topology="sim:a30", n_workers=2) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        print(*client.run(os.getpid).values(), flush=True)
        print(cluster._private_directory.path, flush=True)
        time.sleep(120)
"""


def test_a_killed_client_process_takes_its_workers_with_it(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    script = tmp_path / "client.py"
    script.write_text(KILLED_CLIENT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2, "the workers' pids"
        private = proc.stdout.readline().strip()
        assert os.path.isdir(private), private
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(os.path.exists(f"/proc/{p}") for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in pids if os.path.exists(f"/proc/{p}")], "workers outlived their killed client"
        # Nothing could remove its private directory as it died; the next cluster of this user does.
        with LocalCluster(topology="sim:a30", n_workers=1):
            assert not os.path.exists(private), f"{private} is left from the killed client"
    finally:
        proc.kill()
        proc.wait()


def test_workers_keep_their_files_in_a_private_directory_removed_on_close(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with LocalCluster(topology="sim:h100", n_workers=1) as cluster, Client(cluster) as client:
        client.wait_for_workers(1, timeout=60)
        where = client.run(lambda dask_worker: dask_worker.local_directory)
        (directory,) = where.values()
        # Not the shared dask-scratch-space of /tmp: a directory of this user's alone.
        # The worker's directory lies in the cluster's private one (in $XDG_RUNTIME_DIR or the
        # temporary directory).
        private = os.path.realpath(directory)
        while not os.path.basename(private).startswith("gpucluster-dask-") and private != "/":
            private = os.path.dirname(private)
        assert private != "/", directory
        st = os.stat(private)
        assert st.st_uid == os.getuid() and st.st_mode & 0o077 == 0, oct(st.st_mode)
    assert not os.path.exists(private), f"{private} is left after close()"


def test_rmm_pool_size_is_checked_before_any_worker_starts(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    before = children()
    with pytest.raises(ValueError, match="simulated"):
        LocalCluster(topology="sim:h100", rmm_pool_size="1GB")
    assert children() == before


def test_workers_get_the_device_environment_dask_local_gives(monkeypatch):
    # One Rust spec for both launchers: the comm's device, the path, NVML off when simulated
    # (that both front ends print the same spec is tested from Rust, crates/gpucluster/tests/dask.rs).
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    cluster = LocalCluster(topology="sim:a30", n_workers=2)
    try:
        (first, _) = cluster.gpucluster_spec["workers"]
        env = cluster.worker_spec[first["name"]]["options"]["env"]
        assert env["GPUCLUSTER_DEVICE"] == "sim-mig"
        assert env["GPUCLUSTER_COMM_PATH"] == "host-staged"
        assert first["dask_config"]["distributed.diagnostics.nvml"] is False
        assert env["GPUCLUSTER_DEVICE_MEMORY_LIMIT"] == str(first["device_memory_limit_bytes"])
        config = cluster.worker_spec[first["name"]]["options"]["config"]
        assert config["distributed"]["worker"]["http"]["routes"] == [], "the worker serves nothing"
        assert config["distributed"]["diagnostics"]["nvml"] is False
    finally:
        cluster.close()


# A stand-in for dask-cuda's DeviceHostFile, planted where a worker imports it: it records what
# it was built with. The real class moves device objects to host memory past its limit; that
# part is dask-cuda's and is checked on a GPU (tests/gpu/local_cluster_features.py).
STUB_DEVICE_HOST_FILE = '''
class DeviceHostFile(dict):
    def __init__(self, worker_local_directory, *, device_memory_limit=None, memory_limit=None):
        super().__init__()
        self.built_with = (worker_local_directory, device_memory_limit, memory_limit)
'''


@pytest.fixture
def stub_dask_cuda(tmp_path, monkeypatch):
    package = tmp_path / "dask_cuda"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "device_host_file.py").write_text(STUB_DEVICE_HOST_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in ("dask_cuda", "dask_cuda.device_host_file"):
        sys.modules.pop(name, None)


def test_a_worker_that_spills_keeps_its_data_in_dask_cudas_device_host_file(stub_dask_cuda):
    from gpucluster.dask import _device_host_file, _nanny

    spec = spec_of("sim:a30", dask_cuda=True)
    # Simulated devices hold no device objects: nothing to enforce, nothing to warn about.
    assert not spec["dask_cuda"] and not spec["workers"][0]["spills_device_memory"]
    assert "data" not in _nanny(spec["workers"][0], "gpucluster", None, "/d", None)["options"]
    # A worker the spec says spills (real devices with dask-cuda) keeps its data in the store.
    worker = {**spec["workers"][0], "spills_device_memory": True}
    options = _nanny(worker, spec["protocol"], None, "/d", None)["options"]
    assert options["data"] == (
        _device_host_file,
        {"device_memory_limit": worker["device_memory_limit_bytes"], "memory_limit": worker["memory_limit_bytes"]},
    )


def test_distributed_builds_the_data_store_in_the_worker_with_its_directory(stub_dask_cuda, tmp_path):
    # What a worker does with the `data` option (distributed's WorkerMemoryManager), on the real
    # distributed: the store is built in the worker, in the worker's own directory.
    import asyncio

    from distributed import Scheduler, Worker

    from gpucluster.dask import _device_host_file

    async def build():
        async with Scheduler(host="127.0.0.1", port=0, dashboard_address=":0", dashboard=False) as s:
            data = (_device_host_file, {"device_memory_limit": 5 << 30, "memory_limit": 7 << 30})
            async with Worker(s.address, data=data, local_directory=str(tmp_path), dashboard=False) as w:
                return type(w.data).__module__, w.data.built_with, w.local_directory

    module, (directory, device, host), local = asyncio.run(build())
    assert module == "dask_cuda.device_host_file"
    assert (directory, device, host) == (local, 5 << 30, 7 << 30)


def test_notes_of_the_spec_are_warnings_at_the_callers_line(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.warns(RuntimeWarning, match="insecure=True: no TLS") as caught:
        cluster = LocalCluster(topology="sim:a30", n_workers=1, protocol="tcp", insecure=True)
    cluster.close()
    assert {w.filename for w in caught} == {__file__}, [(w.filename, w.lineno) for w in caught]


def test_workers_are_pinned_only_where_their_device_has_fewer_cpus_than_this_process():
    # The spec's rule (and the command line's): a simulated machine's CPUs are not this one's.
    assert all(not w["cpus"] for w in spec_of("sim:dgx-a100", dask_cuda=False)["workers"])


def test_the_affinity_plugin_pins_every_thread_of_the_worker(monkeypatch):
    from gpucluster.dask import _CPUAffinity

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    one = min(os.sched_getaffinity(0))
    with LocalCluster(topology="sim:h100", n_workers=1, threads_per_worker=2) as cluster, Client(cluster) as client:
        client.wait_for_workers(1, timeout=60)
        client.register_plugin(_CPUAffinity([one]))

        def affinities():
            return {int(t): sorted(os.sched_getaffinity(int(t))) for t in os.listdir("/proc/self/task")}

        (threads,) = client.run(affinities).values()
    # Every thread: the event loop, the executor's threads, the comm's, not only the caller's.
    assert len(threads) > 2 and all(cpus == [one] for cpus in threads.values()), threads


# Found by a newcomer's attack: each of these started workers that then failed far away (628
# lines of "Nanny failed to start"), or was taken silently for something else.
BAD_ARGUMENTS = [
    ({"memory_limit": -5}, ValueError, "memory_limit: host memory per worker"),
    ({"memory_limit": "-5GB"}, ValueError, "memory_limit"),
    ({"memory_limit": ""}, ValueError, "memory_limit"),
    ({"memory_limit": "lots"}, ValueError, "memory_limit"),
    ({"memory_limit": float("nan")}, ValueError, "memory_limit"),
    ({"memory_limit": [1]}, ValueError, "memory_limit"),
    ({"threads_per_worker": 10**30}, ValueError, "threads_per_worker: a whole number from 1 to 4096"),
    ({"workers_per_device": 2.5}, ValueError, "workers_per_device: a whole number from 1 to 64"),
    ({"workers_per_device": "2"}, ValueError, "workers_per_device"),
    ({"workers_per_device": -1}, ValueError, "workers_per_device"),
    ({"workers_per_device": 10**30}, ValueError, "workers_per_device"),
    ({"workers_per_device": True}, ValueError, "workers_per_device"),
    ({"n_workers": True}, ValueError, "n_workers"),
    ({"n_workers": 100}, ValueError, "n_workers=100: the plan has 4 worker"),
    ({"protocol": "nope"}, ValueError, 'protocol="nope": no such Dask comm'),
    ({"protocol": ""}, ValueError, 'protocol="": no such Dask comm'),
    ({"protocol": 5}, ValueError, "protocol"),
    ({"protocol": "tls"}, ValueError, "needs its certificates: give security="),
    ({"protocol": "tcp"}, ValueError, "lets every user of this host"),
    ({"security": 5}, TypeError, "security: a distributed.Security"),
    ({"host": ""}, ValueError, "host: an address"),
    ({"host": "nope.invalid"}, ValueError, 'host="nope.invalid": cannot be resolved'),
    ({"host": "::1 "}, ValueError, "host: an address has no spaces"),
    ({"n_workers": 2**70}, ValueError, "n_workers: a whole number at least 1, not 1180591620717411303424"),
    ({"dashboard_address": ""}, ValueError, "dashboard_address"),
    ({"local_directory": ""}, ValueError, "local_directory"),
    # Found by the second attack round.
    ({"protocol": "ws", "insecure": True}, ValueError, 'protocol="ws": distributed\'s websocket listener binds every interface'),
    ({"protocol": "tcp", "security": Security(require_encryption=True)}, ValueError, "security: a distributed.Security with the cluster's certificates"),
    ({"security": Security(require_encryption=True)}, ValueError, "without them it closes nothing"),
    ({"security": Security(tls_ca_file="ca.pem")}, ValueError, "lacks tls_scheduler_cert, tls_worker_cert, tls_client_cert"),
    ({"host": "8.8.8.8"}, ValueError, 'host="8.8.8.8": this machine cannot listen on 8.8.8.8'),
    ({"dashboard_address": "[::1]:8787"}, ValueError, "dashboard_address: Dask's dashboard listens on IPv4 only"),
    ({"memory_limit": ""}, ValueError, "memory_limit: host memory per worker in Dask's grammar"),
    ({"memory_limit": 1e-11}, ValueError, "is too little to run one"),
    ({"protocol": "tcp", "insecure": "no"}, TypeError, "insecure: True or False"),
    ({"dashboard_address": ":"}, ValueError, "dashboard_address: HOST:PORT or :PORT"),
    ({"dashboard_address": ":abc"}, ValueError, "dashboard_address: HOST:PORT or :PORT"),
    ({"dashboard_address": -1}, ValueError, "dashboard_address"),
    ({"dashboard_address": 70000}, ValueError, "dashboard_address"),
    ({"local_directory": 5}, TypeError, "local_directory: a path"),
    ({"memory_limit": 10**30}, ValueError, "is more than this host's memory"),
    ({"memory_limit": 1.5}, ValueError, "is too little to run one"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_ARGUMENTS, ids=lambda v: repr(v)[:40])
def test_bad_arguments_are_refused_before_any_process_starts(monkeypatch, kwargs, error, message):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    before = children()
    with pytest.raises(error, match=re.escape(message)):
        LocalCluster(topology="sim:a30", **kwargs)
    assert children() == before


def test_nothing_listens_beyond_this_host_and_the_dashboard_port_is_the_schedulers(monkeypatch):
    import psutil

    with pytest.raises(ValueError, match="needs bokeh"):  # as `dask local --dashboard` without it
        spec_of("sim:a30", dask_cuda=False, dashboard=":8787", facts_bokeh=False)
    # A bare port (the README's ":8787") means this host, not every interface as Dask reads it.
    dashboard = lambda address, host: spec_of(  # noqa: E731
        "sim:a30", dask_cuda=False, dashboard=address, host=host, facts_bokeh=True
    )["scheduler"]["dashboard"]
    assert dashboard(":8787", "127.0.0.1") == "127.0.0.1:8787"
    with pytest.raises(ValueError, match="listens on IPv4 only"):  # Dask's dashboard takes no IPv6
        dashboard("8787", "::1")
    assert dashboard("127.0.0.2:8787", "127.0.0.1") == "127.0.0.2:8787"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    # Where the dashboard's HTTP server listens is distributed's, with or without bokeh (which
    # draws it, and which the tests' environment lacks): pretend it is there.
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "bokeh" else real(name, *a))
    with LocalCluster(topology="sim:a30", n_workers=2, dashboard_address=":0") as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        me = psutil.Process()
        listening = [
            (p.pid, c.laddr)
            for p in [me, *me.children(recursive=True)]
            for c in p.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
    assert listening and all(addr.ip == "127.0.0.1" for _, addr in listening), listening


def test_the_schedulers_scratch_space_is_the_clusters_not_the_shared_temporary_directory(tmp_path, monkeypatch):
    import tempfile

    import dask

    # Another user may have made `dask-scratch-space` in /tmp first and filled it with links.
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with dask.config.set({"temporary-directory": None}):
        with LocalCluster(topology="sim:a30", n_workers=1) as cluster, Client(cluster) as client:
            client.wait_for_workers(1, timeout=60)
    assert not (tmp_path / "dask-scratch-space").exists(), list(tmp_path.iterdir())


def test_an_open_protocol_is_taken_only_when_asked_for(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.warns(RuntimeWarning, match="no TLS"):
        cluster = LocalCluster(topology="sim:a30", n_workers=1, protocol="tcp", insecure=True)
    with cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")


def test_a_plan_warning_points_at_the_line_that_builds_the_cluster(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.warns(gpucluster.PlanWarning) as caught:
        cluster = LocalCluster(topology="sim:a100-80gb-mixed", policy="warn", n_workers=1)
    cluster.close()
    assert {w.filename for w in caught} == {__file__}, [(w.filename, w.lineno) for w in caught]
