"""The native transport as the comm uses it: channels between engines, on simulated device
memory. What a user would check: bytes arrive intact, a dead peer is noticed at once, nothing is
left behind, and nobody else gets in."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from gpucluster import _native

MiB = 1 << 20


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def ring_mappings() -> int:
    with open("/proc/self/maps") as maps:
        return sum("gpucluster-ring" in line for line in maps)


def settles(what: str, want: int, count, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while count() > want and time.monotonic() < deadline:
        time.sleep(0.02)
    assert count() <= want, f"{what}: {count()} left, {want} before"


def test_a_channel_carries_messages_intact_in_both_paths():
    a, b = _native.Engine("sim"), _native.Engine("sim")
    for path in ("host-staged", "cuda-ipc"):
        token = os.urandom(16)
        tx = a.connect(b.local_name, token, path)
        rx = b.accept(token)
        assert tx.path == path and tx.fallback is None
        for n in (1, 4 * MiB - 1, 4 * MiB + 1, 20 * MiB):
            data = os.urandom(n)
            src, dst = a.alloc(n), b.alloc(n)
            src.write(data)
            sender = threading.Thread(target=tx.send, args=(src.ptr, n))
            sender.start()
            assert rx.recv(dst.ptr, n, timeout=10) == n
            sender.join()
            assert dst.read(n) == data, f"{path}: {n} bytes arrived different"


def test_cuda_ipc_between_mig_instances_falls_back_with_the_reason():
    a, b = _native.Engine("sim-mig"), _native.Engine("sim-mig")
    token = os.urandom(16)
    tx = a.connect(b.local_name, token, "auto")
    b.accept(token)
    assert tx.path == "host-staged"
    assert "cuda-ipc unavailable" in (tx.fallback or ""), tx.fallback


def test_hostile_arguments_are_clear_errors():
    a = _native.Engine("sim")
    with pytest.raises(ValueError, match="expected cuda, sim or sim-mig"):
        _native.Engine("tpu")
    with pytest.raises(ValueError, match="16 bytes"):
        a.connect(a.local_name, b"short")
    with pytest.raises(ValueError, match="expected auto"):
        a.connect(a.local_name, os.urandom(16), "carrier-pigeon")
    with pytest.raises(ValueError, match="positive number of seconds"):
        a.accept(os.urandom(16), timeout=-1)
    with pytest.raises(_native.TransportError):
        a.connect("gpucluster-comm-nobody-listens-here", os.urandom(16), timeout=1)
    with pytest.raises(_native.Timeout):
        a.accept(os.urandom(16), timeout=0.2)
    token = os.urandom(16)
    tx = a.connect(a.local_name, token)
    rx = a.accept(token)
    buf = a.alloc(100)
    # An address the simulated device never gave out is an error, not a stray write.
    with pytest.raises(_native.TransportError, match="allocation"):
        tx.send(buf.ptr + 4096 * 1024, 10)
    with pytest.raises(ValueError):
        buf.write(b"x" * 101)
    with pytest.raises(ValueError):
        buf.read(101)
    del rx


SENDER = """
import sys, time
from gpucluster import _native
engine = _native.Engine("sim")
channel = engine.connect(sys.argv[1], bytes.fromhex(sys.argv[2]), "host-staged")
buf = engine.alloc(int(sys.argv[3]))
print("sending", flush=True)
channel.send(buf.ptr, buf.nbytes)
print("sent", flush=True)
time.sleep(60)
"""


def test_a_peer_killed_mid_message_fails_the_receive_within_a_second():
    engine = _native.Engine("sim")
    token = os.urandom(16)
    n = 256 * MiB
    sender = subprocess.Popen(
        [sys.executable, "-c", SENDER, engine.local_name, token.hex(), str(n)], stdout=subprocess.PIPE, text=True
    )
    try:
        channel = engine.accept(token, timeout=30)
        assert sender.stdout.readline().strip() == "sending"
        # The sender has filled the ring and waits for us; stop it, then start taking the message:
        # the receive gets the first slots and then waits on a peer that sends nothing.
        time.sleep(0.2)
        sender.send_signal(signal.SIGSTOP)
        dst = engine.alloc(n)
        failure: list = []

        def receive():
            try:
                channel.recv(dst.ptr, n)
            except Exception as e:  # noqa: BLE001 - the test inspects it
                failure.append((e, time.monotonic()))

        t = threading.Thread(target=receive)
        t.start()
        time.sleep(0.5)
        assert t.is_alive(), "the receive finished although the sender was stopped mid-message"
        killed = time.monotonic()
        sender.kill()
        t.join(timeout=5)
        assert not t.is_alive(), "the receive still waits on a dead peer"
        (error, at), = failure
        assert isinstance(error, _native.PeerGone), repr(error)
        assert at - killed < 1.0, f"noticed {at - killed:.2f} s after the kill"
    finally:
        sender.kill()
        sender.wait()


def test_abort_unblocks_a_receive_in_flight():
    a, b = _native.Engine("sim"), _native.Engine("sim")
    token = os.urandom(16)
    a.connect(b.local_name, token)
    rx = b.accept(token)
    dst = b.alloc(MiB)
    failure: list = []
    t = threading.Thread(target=lambda: failure.append(pytest.raises(_native.PeerGone, rx.recv, dst.ptr, MiB)))
    t.start()
    time.sleep(0.2)
    rx.abort()
    t.join(timeout=2)
    assert not t.is_alive() and failure, "abort did not end the receive"


def test_a_thousand_channels_leave_nothing_behind():
    a, b = _native.Engine("sim"), _native.Engine("sim")
    src, dst = a.alloc(4096), b.alloc(4096)
    src.write(b"\x5a" * 4096)
    # One round first, so that lazily made state (thread pools, the device) is in the baseline.
    baseline = None
    rings = ring_mappings()
    for i in range(1001):
        token = os.urandom(16)
        tx = a.connect(b.local_name, token, "host-staged")
        rx = b.accept(token)
        tx.send(src.ptr, 4096)
        assert rx.recv(dst.ptr, 4096, timeout=10) == 4096
        tx.close()
        rx.close()
        del tx, rx
        if baseline is None:
            time.sleep(0.3)  # the acceptor's thread for this channel's token ends
            baseline = (fds(), threads(), ring_mappings())
    assert dst.read(4096) == b"\x5a" * 4096
    settles("descriptors", baseline[0], fds)
    settles("threads", baseline[1], threads)
    settles("shared rings mapped", rings, ring_mappings)


def test_another_user_cannot_open_a_channel():
    if os.geteuid() != 0:
        pytest.skip("needs root, to run a second process as another user (nobody)")
    engine = _native.Engine("sim")
    code = (
        "import os, sys\n"
        "from gpucluster import _native\n"
        "e = _native.Engine('sim')\n"
        "try:\n"
        "    e.connect(sys.argv[1], os.urandom(16), timeout=5)\n"
        "    print('INTRUDED')\n"
        "except _native.TransportError as err:\n"
        "    print('refused:', err)\n"
    )
    env = dict(os.environ, HOME="/nonexistent", XDG_CONFIG_HOME="/nonexistent")
    out = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code, engine.local_name],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert "refused" in out.stdout and "INTRUDED" not in out.stdout, out.stdout + out.stderr


def test_the_secret_is_the_users_own_file_closed_to_others(private_config_home, tmp_path):
    path = os.path.join(private_config_home, "gpucluster", "secret")
    _native.cluster_secret()
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    # Two processes of the user agree: an answer made with one is accepted by the other.
    challenge = _native.challenge()
    answer = _native.cluster_secret().answer(challenge)
    proof = _native.cluster_secret().check_answer(challenge, answer)
    _native.cluster_secret().check_proof(challenge, answer, proof)
    # A secret of someone else's making is refused, and so is a file others can read.
    other = tmp_path / "secret"
    other.write_text("00" * 32)
    other.chmod(0o644)
    env = dict(os.environ, GPUCLUSTER_SECRET_FILE=str(other))
    out = subprocess.run(
        [sys.executable, "-c", "from gpucluster import _native; _native.cluster_secret()"],
        capture_output=True, text=True, env=env,
    )
    assert out.returncode != 0 and "chmod 600" in out.stderr, out.stderr
    with pytest.raises(_native.AuthenticationError):
        _native.cluster_secret().check_answer(challenge, b"\0" * 64)
