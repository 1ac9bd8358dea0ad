"""The ``gpucluster://`` comm: Dask's TCP comm, plus a side channel for device frames.

distributed finds this backend through the ``distributed.comm.backends`` entry point, so
``dask worker --protocol gpucluster``, ``LocalCluster(protocol="gpucluster")`` and a scheduler
on ``tcp://`` with ``gpucluster://`` workers work with no other set-up.

What travels where:

- Messages and host frames travel as distributed's TCP comm carries them (this class *is*
  that comm, with the same framing and sharding).
- Device frames (objects with ``__cuda_array_interface__``, produced by the ``cuda``
  serializers, as the UCX comm does) go through a transport connection between the two worker
  processes, when both ends are GPU workers of one host, one user, one network namespace
  (checked in the handshake, not guessed from the IP): host-staged between MIG instances,
  cuda-ipc where it works. In their place the TCP message carries an empty frame, and its first
  frame describes which frames are device frames, their sizes, and the side channel's token.
- Anything else (a scheduler, a client, a peer on another host) gets exactly the TCP comm.

Security: every connection proves the cluster's secret in both directions before its first
message (HMAC-SHA256 challenges computed by the Rust transport; the secret comes from
``gpucluster._native.cluster_secret()``): a peer without it gets nothing, and nothing it sends is
read. Local side channels check that the peer is the same user (``SO_PEERCRED``).

Copies run on a thread pool of this module (never Dask's single offload thread) with the GIL
released, so neither the event loop nor other threads wait on them. A read or write that is
cancelled or fails aborts the comm and its side channels, which unblocks any copy in flight;
device buffers stay referenced until their copy has returned.

This module holds the Dask-facing glue only; the transport (rings, IPC, authentication, the
secret) is Rust, in ``gpucluster._native``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tornado.iostream import StreamClosedError

from distributed.comm.core import CommClosedError
from distributed.comm.tcp import (
    C_INT_MAX,
    TCP,
    TCPBackend,
    TCPConnector,
    TCPListener,
    _add_frames_header,
    convert_stream_closed_error,
    read_bytes_rw,
)
from distributed.comm.utils import from_frames, to_frames
from distributed.protocol.utils import unpack_frames
from distributed.utils import ensure_memoryview, nbytes

from gpucluster import _engine, _native
from gpucluster._engine import engine

logger = logging.getLogger(__name__)

#: The scheme, as Dask addresses spell it.
PREFIX = "gpucluster://"
#: Version of the handshake entry and of the descriptor frame.
VERSION = 1
#: How long a peer has to prove the secret (per direction of the handshake).
AUTH_TIMEOUT = 10.0
#: How long a side channel may take to set up.
CHANNEL_TIMEOUT = 30.0

_MAGIC_CHALLENGE = b"GCDC"
_DESCRIPTOR = struct.Struct("<4sBQ16s")
_DESCRIPTOR_MAGIC = b"GCL1"

_executor: ThreadPoolExecutor | None = None
_secret: _native.ClusterSecret | None = None


def _copies() -> ThreadPoolExecutor:
    """The threads that run side-channel copies (each blocks for the length of a transfer)."""
    global _executor
    with _engine.state_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="gpucluster-copy")
        return _executor


def _cluster_secret() -> _native.ClusterSecret:
    global _secret
    with _engine.state_lock:
        if _secret is None:
            _secret = _native.cluster_secret()
        return _secret


def _path() -> str:
    """``GPUCLUSTER_COMM_PATH``: ``auto`` (cuda-ipc where it works), ``host-staged`` (as MIG
    instances get) or ``cuda-ipc``."""
    path = os.environ.get(_native.ENV["COMM_PATH"], "auto")
    return path if path in ("auto", "host-staged", "cuda-ipc") else "auto"


def _host_facts() -> dict[str, Any]:
    return {"boot_id": _native.boot_id(), "netns": _native.net_namespace(), "uid": _native.uid()}


def _device_pointer(frame) -> tuple[int, int]:
    """(address, stream) of a device frame; the stream to wait for before reading it (0: the
    legacy default stream, as the UCX comm synchronizes when the producer names none)."""
    cai = frame.__cuda_array_interface__
    stream = cai.get("stream")
    return int(cai["data"][0]), int(stream) if stream else 0


def _room(n: int) -> int:
    """Bytes to allocate for a device frame of ``n`` bytes: a short frame gets the room the
    transport needs to copy it padded, on a copy engine (``COPY_ENGINE_MIN``; a shorter
    host-to-device copy waits for the GPU's time-sliced engine, about 140 us between processes)."""
    return _native.COPY_ENGINE_MIN if 0 < n < _native.COPY_ENGINE_MIN else n


def _allocate(n: int, kind: str):
    """A receive buffer of ``n`` bytes and its capacity (what the transport may write), as
    distributed's deserializers expect it: RMM where it is installed (its deserializer insists on
    ``rmm.DeviceBuffer``), else CuPy, else numba; on a simulated device, simulated device memory.
    A short frame's buffer has the room of :func:`_room` behind it."""
    if kind in ("sim", "sim-mig"):
        eng = engine()
        if eng is None:  # pragma: no cover - a worker has an engine
            raise CommClosedError("no simulated device in this process")
        return eng.alloc(n), n
    room = _room(n)
    try:
        import rmm

        buffer = rmm.DeviceBuffer(size=room)
        if room != n:
            # Shrinking within its capacity keeps the allocation where it is (RMM's resize); if
            # this RMM did otherwise, the frame gets an exact buffer and an unpadded copy.
            ptr = buffer.ptr
            try:
                buffer.resize(n)
            except Exception:  # noqa: BLE001 - any RMM without it: unpadded, as before
                return rmm.DeviceBuffer(size=n), n
            if buffer.ptr != ptr or buffer.size != n:
                return rmm.DeviceBuffer(size=n), n
        return buffer, room
    except ImportError:
        pass
    try:
        import cupy

        return cupy.empty(room, dtype="u1")[:n], room
    except ImportError:
        import numba.cuda

        return numba.cuda.device_array((room,), dtype="u1")[:n], room


class GpuclusterComm(TCP):
    """Dask's TCP comm, with device frames on a side channel between two GPU workers."""

    def __init__(self, stream, local_addr: str, peer_addr: str, deserialize: bool = True):
        super().__init__(stream, local_addr, peer_addr, deserialize)
        self._send_channel = None  # ours, opened on the first device frame we write
        self._send_token = os.urandom(16)
        self._recv_channels: dict[bytes, Any] = {}
        self._in_flight: dict[int, tuple] = {}

    # -- handshake -------------------------------------------------------------------------

    def handshake_info(self) -> dict[str, Any]:
        info = super().handshake_info()
        eng = engine()
        info["gpucluster"] = {
            "v": VERSION,
            **_host_facts(),
            "local_name": eng.local_name if eng is not None else None,
            "device": eng.device if eng is not None else None,
        }
        return info

    def _framed(self) -> bool:
        """Whether messages carry a descriptor frame: both ends are gpucluster comms (known
        once the handshake is done)."""
        return "gpucluster" in self.local_info and "gpucluster" in self.remote_info

    def _side_channel(self) -> bool:
        """Whether device frames may go over a side channel: both ends are GPU workers of one
        host (boot), network namespace and user, on the same kind of device."""
        mine, theirs = self.local_info.get("gpucluster"), self.remote_info.get("gpucluster")
        if not mine or not theirs or theirs.get("v") != VERSION:
            return False
        same = all(mine.get(k) == theirs.get(k) for k in ("boot_id", "netns", "uid", "device"))
        return bool(same and mine.get("local_name") and theirs.get("local_name"))

    # -- writing ---------------------------------------------------------------------------

    async def write(self, msg, serializers=None, on_error="message"):
        if self.stream is None:
            raise CommClosedError()
        if not self._framed():
            return await super().write(msg, serializers=serializers, on_error=on_error)
        side = self._side_channel()
        if side:
            rest = tuple(s for s in (serializers or ("dask", "pickle", "error")) if s != "cuda")
            serializers = ("cuda", *rest)
        frames = await to_frames(
            msg,
            allow_offload=self.allow_offload,
            serializers=serializers,
            on_error=on_error,
            context={"sender": self.local_info, "recipient": self.remote_info, **self.handshake_options},
            frame_split_size=self.max_shard_size,
        )
        device = [side and hasattr(f, "__cuda_array_interface__") for f in frames]
        sizes = [nbytes(f) for f in frames]
        host = [b"" if d else f for f, d in zip(frames, device)]
        n = len(frames)
        descriptor = _DESCRIPTOR.pack(_DESCRIPTOR_MAGIC, VERSION, n, self._send_token) + struct.pack(
            f"<{n}?{n}Q", *device, *sizes
        )
        try:
            total = self._write_frames([descriptor, *host])
            if any(device):
                channel = await self._open_send_channel()
                for f, d, size in zip(frames, device, sizes):
                    if d and size:
                        ptr, stream = _device_pointer(f)
                        await self._copy(channel.send, f, ptr, size, stream)
                total += sum(s for s, d in zip(sizes, device) if d)
        except _native.TransportError as e:
            self.abort()
            raise CommClosedError(f"{self.peer_address}: a device frame could not be sent: {e}") from e
        except BaseException:
            self.abort()
            raise
        return total

    def _write_frames(self, frames) -> int:
        """Queues `frames` on the TCP stream exactly as distributed's TCP comm does."""
        stream = self.stream
        if stream is None:
            raise CommClosedError()
        frames, frames_nbytes, total = _add_frames_header(frames)
        try:
            for each_nbytes, each in zip(frames_nbytes, frames):
                if not each_nbytes:
                    continue
                each = ensure_memoryview(each)
                for start in range(0, each_nbytes, C_INT_MAX):
                    chunk = each[start : start + C_INT_MAX]
                    if stream._write_buffer is None:
                        raise StreamClosedError()
                    stream._write_buffer.append(chunk)
                    stream._total_write_index += chunk.nbytes
            stream.write(b"")
        except StreamClosedError as e:
            self.stream = None
            self._closed = True
            convert_stream_closed_error(self, e)
        return total

    async def _open_send_channel(self):
        if self._send_channel is None:
            eng = engine()
            peer = self.remote_info["gpucluster"]["local_name"]
            loop = asyncio.get_running_loop()
            self._send_channel = await loop.run_in_executor(
                _copies(), eng.connect, peer, self._send_token, _path(), CHANNEL_TIMEOUT
            )
            if self._send_channel.fallback:
                logger.info("gpucluster comm to %s: %s", self.peer_address, self._send_channel.fallback)
        return self._send_channel

    async def _copy(self, call, buffer, *args):
        """Runs one blocking copy on the copy threads. `buffer` stays referenced until the copy
        has returned, even if this coroutine is cancelled (the memory must outlive the DMA)."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(_copies(), call, *args)
        # By the future's identity: buffers (CuPy arrays) are not hashable.
        self._in_flight[id(future)] = (future, buffer)

        def done(f) -> None:
            self._in_flight.pop(id(f), None)
            # Retrieved here, so that a copy whose awaiter was cancelled logs nothing.
            if not f.cancelled():
                f.exception()

        future.add_done_callback(done)
        return await asyncio.shield(future)

    # -- reading ---------------------------------------------------------------------------

    async def read(self, deserializers=None):
        if not self._framed():
            return await super().read(deserializers=deserializers)
        frames = await self._read_frames()
        try:
            frames = await self._receive_device_frames(frames)
        except _native.TransportError as e:
            # A peer that died or aborted mid-frame: Dask sees a closed comm, as over TCP.
            self.abort()
            raise CommClosedError(f"{self.peer_address}: a device frame could not be received: {e}") from e
        except BaseException:
            self.abort()
            raise
        try:
            return await from_frames(
                frames,
                deserialize=self.deserialize,
                deserializers=deserializers,
                allow_offload=self.allow_offload,
            )
        except EOFError:
            self.abort()
            raise CommClosedError("aborted stream on truncated data")

    async def _read_frames(self):
        """Reads one message's frames exactly as distributed's TCP comm does."""
        stream = self.stream
        if stream is None:
            raise CommClosedError()
        try:
            (nosplit_nbytes,) = struct.unpack("Q", await stream.read_bytes(8))
            nosplit = await read_bytes_rw(stream, nosplit_nbytes)
            frames, buffers_nbytes = unpack_frames(nosplit, partial=True)
            for buffer_nbytes in buffers_nbytes:
                frames.append(await read_bytes_rw(stream, buffer_nbytes))
        except StreamClosedError as e:
            self.stream = None
            self._closed = True
            convert_stream_closed_error(self, e)
        except BaseException:
            self.abort()
            raise
        return frames

    async def _receive_device_frames(self, frames):
        if not frames:
            raise CommClosedError("a gpucluster message without its descriptor")
        descriptor, frames = bytes(frames[0]), list(frames[1:])
        if len(descriptor) < _DESCRIPTOR.size:
            raise CommClosedError("a gpucluster message with a short descriptor")
        magic, version, n, token = _DESCRIPTOR.unpack_from(descriptor)
        if magic != _DESCRIPTOR_MAGIC or version != VERSION or n != len(frames):
            raise CommClosedError("a gpucluster message whose descriptor does not match it")
        flags = struct.unpack_from(f"<{n}?{n}Q", descriptor, _DESCRIPTOR.size)
        device, sizes = flags[:n], flags[n:]
        if not any(device):
            return frames
        if not self._side_channel():
            raise CommClosedError("device frames from a peer that may not send them")
        kind = self.local_info["gpucluster"]["device"]
        channel = await self._accept_channel(token)
        for i in range(n):
            if not device[i]:
                continue
            buffer, capacity = _allocate(sizes[i], kind)
            if sizes[i]:
                ptr, _ = _device_pointer(buffer)
                got = await self._copy(channel.recv, buffer, ptr, capacity)
                if got != sizes[i]:
                    raise CommClosedError(f"a device frame of {got} bytes where {sizes[i]} were announced")
            frames[i] = buffer
        return frames

    async def _accept_channel(self, token: bytes):
        channel = self._recv_channels.get(token)
        if channel is None:
            eng = engine()
            loop = asyncio.get_running_loop()
            channel = await loop.run_in_executor(_copies(), eng.accept, token, CHANNEL_TIMEOUT)
            self._recv_channels[token] = channel
        return channel

    # -- ending ----------------------------------------------------------------------------

    def _end_channels(self, how: str) -> None:
        channels = [self._send_channel, *self._recv_channels.values()]
        self._send_channel, self._recv_channels = None, {}
        for channel in channels:
            if channel is not None:
                try:
                    getattr(channel, how)()
                except Exception:  # pragma: no cover - ending is best effort
                    pass

    async def close(self):
        # Copies in flight end with the comm: abort, so none waits for a peer that is leaving.
        self._end_channels("abort")
        await super().close()

    def abort(self) -> None:
        self._end_channels("abort")
        super().abort()


async def _authenticate_client(stream) -> None:
    challenge = await stream.read_bytes(4 + 32)
    if challenge[:4] != _MAGIC_CHALLENGE:
        raise _native.AuthenticationError("the peer is not a gpucluster comm")
    secret = _cluster_secret()
    answer = secret.answer(challenge[4:])
    await stream.write(answer)
    proof = await stream.read_bytes(32)
    secret.check_proof(challenge[4:], answer, proof)


async def _authenticate_server(stream) -> None:
    challenge = _native.challenge()
    await stream.write(_MAGIC_CHALLENGE + challenge)
    answer = await stream.read_bytes(64)
    proof = _cluster_secret().check_answer(challenge, answer)
    await stream.write(proof)


class GpuclusterConnector(TCPConnector):
    prefix = PREFIX
    comm_class = GpuclusterComm
    encrypted = False

    async def connect(self, address, deserialize=True, **connection_args):
        comm = await super().connect(address, deserialize=deserialize, **connection_args)
        try:
            await asyncio.wait_for(_authenticate_client(comm.stream), AUTH_TIMEOUT)
        except (StreamClosedError, asyncio.TimeoutError, _native.AuthenticationError) as e:
            comm.abort()
            raise CommClosedError(
                f"{PREFIX}{address}: the peer did not prove the cluster's secret, or refused ours ({e!r}); "
                "every process of a gpucluster cluster needs the same secret (gpucluster._native.cluster_secret)"
            ) from None
        except BaseException:
            comm.abort()
            raise
        return comm


class GpuclusterListener(TCPListener):
    prefix = PREFIX
    comm_class = GpuclusterComm
    encrypted = False

    async def _prepare_stream(self, stream, address):
        try:
            await asyncio.wait_for(_authenticate_server(stream), AUTH_TIMEOUT)
        except (StreamClosedError, asyncio.TimeoutError, _native.AuthenticationError, OSError) as e:
            # A stranger, a port scanner or a client without the secret: nothing was read.
            _report_refused(address, e)
            stream.close()
            return None
        return stream


#: Refused connections since the last warning, and when that was (a flood must not flood the log).
_refused = {"count": 0, "since": 0.0}
#: At most one warning about refused connections per this many seconds.
REFUSED_EVERY = 60.0


def _report_refused(address: str, error: BaseException) -> None:
    """Warns that a connection did not prove the secret: the first at once, then at most once a
    minute with a count, so that a client with the wrong secret is seen in the cluster's log
    (it is not an INFO line) and a flood of strangers costs one line a minute."""

    now = time.monotonic()
    _refused["count"] += 1
    if now - _refused["since"] < REFUSED_EVERY:
        return
    count, _refused["count"], _refused["since"] = _refused["count"], 0, now
    logger.warning(
        "%s: refused %d connection(s) that did not prove the cluster's secret (the latest from %s: %r); "
        "a client of yours needs the gpucluster package and your secret file (GPUCLUSTER_SECRET_FILE or "
        "$XDG_CONFIG_HOME/gpucluster/secret)",
        PREFIX,
        count,
        address,
        error,
    )


class GpuclusterBackend(TCPBackend):
    """The ``gpucluster`` scheme for ``distributed.comm.backends``."""

    _connector_class = GpuclusterConnector
    _listener_class = GpuclusterListener


def _register_simulated_arrays() -> None:
    """Lets :class:`gpucluster.sim.DeviceArray` travel as a device frame."""
    from gpucluster import sim

    sim.register()


_register_simulated_arrays()
