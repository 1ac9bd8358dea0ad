"""Device arrays on simulated device memory, for trying and testing the ``gpucluster://`` comm
without a GPU.

A :class:`DeviceArray` is a 1-D array of bytes in simulated device memory (host memory that the
transport treats as a device, in anonymous shared memory). It has a
``__cuda_array_interface__`` and is registered with distributed's ``cuda`` serializers, so
between two workers of a ``gpucluster`` cluster on a simulated machine
(``GPUCLUSTER_DEVICE=sim``) it moves exactly as a CuPy array moves between two workers on
GPUs: over the side channel, as a device frame. Over any other comm it travels as bytes, through
the ``dask`` serializers.
"""

from __future__ import annotations

from gpucluster import _native
from gpucluster._engine import engine

#: The engine of a process that is no worker (a client, a test), made when first needed.
_own_engine: list = []


def _device():
    """A simulated device for arrays made outside a worker (a client, a test)."""
    eng = engine()
    if eng is not None:
        return eng
    if not _own_engine:
        _own_engine.append(_native.Engine("sim"))
    return _own_engine[0]


class DeviceArray:
    """``nbytes`` bytes of simulated device memory, shaped as a 1-D array of ``uint8``."""

    # Unhashable, as CuPy and NumPy arrays are: code that moves frames must not rely on hashing
    # them.
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, buffer, via: str = "made here"):
        self.buffer = buffer
        #: How it reached this process: "made here", "device frame" (over a side channel) or
        #: "bytes" (through the host, as over any other comm).
        self.via = via

    @classmethod
    def empty(cls, nbytes: int) -> DeviceArray:
        return cls(_device().alloc(nbytes))

    @classmethod
    def from_bytes(cls, data: bytes) -> DeviceArray:
        array = cls.empty(len(data))
        if data:
            array.buffer.write(data)
        return array

    @property
    def nbytes(self) -> int:
        return self.buffer.nbytes

    def __len__(self) -> int:
        return self.buffer.nbytes

    @property
    def __cuda_array_interface__(self) -> dict:
        return self.buffer.__cuda_array_interface__

    def tobytes(self) -> bytes:
        return self.buffer.read(self.buffer.nbytes) if self.buffer.nbytes else b""

    def __repr__(self) -> str:
        return f"DeviceArray({self.nbytes} bytes of simulated device memory)"


_registered: list = []


def register() -> None:
    """Registers :class:`DeviceArray` with distributed's serializers (once per process)."""
    if _registered:
        return
    from distributed.protocol import dask_deserialize, dask_serialize
    from distributed.protocol.cuda import cuda_deserialize, cuda_serialize

    @cuda_serialize.register(DeviceArray)
    def _cuda_serialize(x):
        # The array itself is the frame (it has a __cuda_array_interface__), as for CuPy.
        return {"nbytes": x.nbytes}, [x]

    @cuda_deserialize.register(DeviceArray)
    def _cuda_deserialize(header, frames):
        (frame,) = frames
        # A frame the comm received is simulated device memory of this process already; one
        # that came as bytes (a comm without a side channel) is copied in.
        if hasattr(frame, "__cuda_array_interface__") and hasattr(frame, "read"):
            return DeviceArray(frame, via="device frame")
        array = DeviceArray.from_bytes(bytes(frame))
        array.via = "bytes"
        return array

    @dask_serialize.register(DeviceArray)
    def _dask_serialize(x):
        return {"nbytes": x.nbytes}, [x.tobytes()]

    @dask_deserialize.register(DeviceArray)
    def _dask_deserialize(header, frames):
        array = DeviceArray.from_bytes(bytes(frames[0]))
        array.via = "bytes"
        return array

    from dask.sizeof import sizeof

    @sizeof.register(DeviceArray)
    def _sizeof(x):
        return x.nbytes

    _registered.append(True)


# Registered on import: a worker that unpickles a DeviceArray's type (over any comm) imports this
# module, and can then deserialize it.
register()
