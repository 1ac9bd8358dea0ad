"""The gpucluster:// comm with a real, pinned distributed, on simulated device memory.

Workers get ``GPUCLUSTER_DEVICE=sim``: their device frames are simulated device memory
(:class:`gpucluster.sim.DeviceArray`), moved over the same transport code as CUDA memory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from distributed import Client, LocalCluster

from gpucluster import comm
from gpucluster.sim import DeviceArray

CHUNK = 4 << 20  # the transport ring's default slot


def pattern(n: int, seed: int) -> bytes:
    return bytes((i * 131 + seed) % 251 for i in range(min(n, 65536))) * (n // 65536 + 1)


def make(n: int, seed: int) -> DeviceArray:
    return DeviceArray.from_bytes(pattern(n, seed)[:n])


def check(x: DeviceArray, n: int, seed: int) -> tuple[bool, str, int]:
    return x.tobytes() == pattern(n, seed)[:n], x.via, os.getpid()


@pytest.fixture(scope="module")
def cluster():
    os.environ["GPUCLUSTER_DEVICE"] = "sim"
    with LocalCluster(
        protocol="gpucluster", host="127.0.0.1", n_workers=2, threads_per_worker=1, processes=True,
        dashboard_address=None,
    ) as cluster, Client(cluster) as client:
        yield cluster, client
    os.environ.pop("GPUCLUSTER_DEVICE", None)


def test_the_scheme_is_found_through_its_entry_point():
    code = "from distributed.comm.registry import get_backend; print(type(get_backend('gpucluster')).__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "GpuclusterBackend"


@pytest.mark.parametrize("n", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 64 << 20])
def test_device_arrays_move_between_workers_byte_for_byte(cluster, n):
    _, client = cluster
    a, b = list(client.scheduler_info()["workers"])
    x = client.submit(make, n, n % 7, workers=[a], pure=False)
    ok, via, pid = client.submit(check, x, n, n % 7, workers=[b], pure=False).result()
    assert ok, f"{n} bytes arrived different"
    assert via == "device frame", f"{n} bytes went as {via}, not over the side channel"


def test_the_scheduler_and_the_client_take_part_without_a_device(cluster):
    _, client = cluster
    # The client gets the array through the host (it is no GPU worker), intact.
    x = client.submit(make, 1000, 3, pure=False)
    back = x.result()
    assert back.tobytes() == pattern(1000, 3)[:1000]
    assert back.via == "bytes"
    assert comm.engine() is None, "the client process made no transport engine"


def test_only_gpu_workers_of_one_host_and_user_use_a_side_channel():
    from gpucluster.comm import GpuclusterComm

    def side(mine, theirs):
        c = GpuclusterComm.__new__(GpuclusterComm)
        c.local_info, c.remote_info = {"gpucluster": mine}, {"gpucluster": theirs}
        return c._side_channel()

    me = {"v": 1, "boot_id": "b", "netns": "n", "uid": 1000, "local_name": "local:x", "device": "sim"}
    assert side(me, dict(me, local_name="local:y"))
    for key, other in [("uid", 1001), ("boot_id", "c"), ("netns", "m"), ("device", "cuda"), ("local_name", None)]:
        assert not side(me, dict(me, **{key: other})), f"a peer with another {key} got a side channel"
    assert not side(dict(me, local_name=None), me), "a process that is no GPU worker"


def test_a_tcp_scheduler_with_gpucluster_workers(tmp_path):
    # The tasks are this module's functions: the scheduler and the workers import it.
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, GPUCLUSTER_DEVICE="sim", PYTHONPATH=here)
    file = tmp_path / "scheduler.json"
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--protocol", "tcp", "--host", "127.0.0.1",
         "--port", "0", "--scheduler-file", str(file), "--no-dashboard"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    workers = []
    try:
        deadline = time.time() + 30
        while not file.exists() and time.time() < deadline:
            time.sleep(0.1)
        for _ in range(2):
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(file),
                 "--protocol", "gpucluster", "--host", "127.0.0.1", "--nthreads", "1", "--no-dashboard"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        with Client(scheduler_file=str(file), timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
            a, b = list(client.scheduler_info()["workers"])
            assert a.startswith("gpucluster://") and b.startswith("gpucluster://")
            x = client.submit(make, 5 << 20, 1, workers=[a], pure=False)
            ok, via, _ = client.submit(check, x, 5 << 20, 1, workers=[b], pure=False).result()
            assert ok and via == "device frame"
    finally:
        for p in [*workers, scheduler]:
            p.terminate()
        for p in [*workers, scheduler]:
            p.wait(timeout=30)


def test_a_client_without_the_secret_gets_nothing(cluster, tmp_path, caplog):
    cl, client = cluster
    comm._refused["since"] = 0.0  # the first refusal of this test warns at once
    code = (
        "import sys\n"
        "from distributed import Client\n"
        "try:\n"
        "    c = Client(sys.argv[1], timeout=5)\n"
        "    print('INTRUDED', c.run(lambda: 1))\n"
        "except Exception as e:\n"
        "    print('refused', type(e).__name__)\n"
    )
    env = dict(os.environ, GPUCLUSTER_SECRET="00" * 32)
    out = subprocess.run([sys.executable, "-c", code, cl.scheduler_address], env=env, capture_output=True, text=True)
    assert "refused" in out.stdout and "INTRUDED" not in out.stdout, out.stdout + out.stderr
    # The cluster goes on.
    assert client.submit(lambda: 42).result() == 42
    # And says so in its log, as a warning (INFO lines are hidden by the launcher), once a minute.
    warned = [r for r in caplog.records if r.name == "gpucluster.comm" and "did not prove" in r.getMessage()]
    assert warned and all(r.levelname == "WARNING" for r in warned), caplog.text
    assert len(warned) == 1, "a client retrying its way in costs one line a minute"
