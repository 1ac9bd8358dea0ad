"""Type stubs of gpucluster._native, the Rust bindings (crates/gpucluster-py/src/: comm, planning, dask, exceptions)."""

TOKEN_BYTES: int

class TransportError(ConnectionError):
    """A transport failure (base class)."""

class PeerGone(TransportError):
    """The peer closed the channel, died, or it was aborted."""

class Timeout(TransportError):
    """The peer did not answer in time."""

class AuthenticationError(TransportError):
    """The peer does not hold the cluster's secret."""

class PlanError(ValueError):
    """No plan can be made as asked: unknown devices, slices that are not alike under the policy."""

class TopologyError(RuntimeError):
    """The machine's topology could not be read: an unknown source, a malformed file, no driver."""

class Engine:
    """One process's end of the transport: a local listener (an unguessable abstract socket
    name, open to this user only) and the channels it opens and accepts."""

    def __init__(self, device: str) -> None:
        """Opens ``device`` (``cuda``, ``sim`` or ``sim-mig``) and starts listening."""
    @property
    def local_name(self) -> str: ...
    @property
    def device(self) -> str: ...
    def connect(self, peer: str, token: bytes, path: str = "auto", timeout: float = 30.0) -> Channel:
        """Opens a channel to the engine at ``peer``, named ``token`` (16 bytes), over ``path``
        (``auto``, ``host-staged`` or ``cuda-ipc``)."""
    def accept(self, token: bytes, timeout: float = 30.0) -> Channel:
        """Waits for the channel a peer opened with ``token``."""
    def alloc(self, nbytes: int) -> DeviceBuffer:
        """``nbytes`` of this engine's device memory."""
    def close(self) -> None:
        """Stops listening; open channels go on until closed."""

class Channel:
    """One direction of device frames between two processes."""

    @property
    def path(self) -> str: ...
    @property
    def fallback(self) -> str | None: ...
    def send(self, ptr: int, nbytes: int, stream: int = 0) -> None:
        """Sends ``nbytes`` at device address ``ptr`` once ``stream``'s work has finished."""
    def recv(self, ptr: int, capacity: int, timeout: float | None = None) -> int:
        """Receives the next message into ``ptr`` and returns its size."""
    def abort(self) -> None:
        """Ends the channel at once; copies in flight on either side fail with PeerGone."""
    def close(self) -> None: ...

class DeviceBuffer:
    """Device memory of an engine, with a ``__cuda_array_interface__``."""

    @property
    def ptr(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def __cuda_array_interface__(self) -> dict: ...
    def write(self, data: bytes, offset: int = 0) -> None: ...
    def read(self, n: int, offset: int = 0) -> bytes: ...
    def __len__(self) -> int: ...

class ClusterSecret:
    """The cluster's secret, held in Rust."""

    def answer(self, challenge: bytes) -> bytes: ...
    def check_answer(self, challenge: bytes, answer: bytes) -> bytes: ...
    def check_proof(self, challenge: bytes, answer: bytes, proof: bytes) -> None: ...

def cluster_secret() -> ClusterSecret:
    """GPUCLUSTER_SECRET, else GPUCLUSTER_SECRET_FILE, else ~/.config/gpucluster/secret."""

def challenge() -> bytes: ...
def boot_id() -> str: ...
def net_namespace() -> str: ...
def uid() -> int: ...
def cuda_available() -> bool: ...
def topology_json(source: str = "nvml") -> str:
    """The snapshot ``gpucluster --topology SOURCE list --json`` prints (use ``gpucluster.topology``)."""
def plan(
    source: str = "nvml",
    devices: str | None = None,
    policy: str = "strict",
    memory_tolerance: float = 2.0,
    device_memory_limit: str = "default",
    workers_per_device: int = 1,
) -> tuple[str, list[str]]:
    """What ``gpucluster plan --json`` prints, and each warning (or error) finding as
    ``"message; fix"`` in Python's words (use ``gpucluster.plan``)."""
def presets() -> list[tuple[str, str]]:
    """Each simulated machine's name and one-line description (use ``gpucluster.presets``)."""
def cluster_spec(
    source: str,
    *,
    devices: str | None,
    policy: str,
    memory_tolerance: float,
    device_memory_limit: str,
    workers_per_device: int,
    protocol: str,
    insecure: bool,
    credentials_given: bool,
    host: str | None,
    dashboard: str | None,
    memory_limit: str | None,
    threads: str,
    workers: str | None,
    rmm_pool_size: str | None,
    local_directory: str,
    facts: str,
) -> str:
    """The Dask cluster spec of ``source``'s plan (``launcher::dask::cluster_spec``, which
    ``gpucluster dask local`` runs too), as JSON: the protocol and why, the scheduler, one spec per
    worker, the notes. ``facts`` is ``gpucluster._facts.python_facts()`` as JSON. Raises
    ``ValueError`` for a setting that cannot be met, naming it as ``LocalCluster``'s argument."""

#: The names of the environment variables gpucluster's launchers give their workers, by role
#: (``"DEVICE"``: ``GPUCLUSTER_DEVICE``, ``"COMM_PATH"``, ``"DEVICE_MEMORY_LIMIT"``, ...).
ENV: dict[str, str]
#: The device names a launcher gives a worker in ``ENV["DEVICE"]``: ``cuda``, ``sim``, ``sim-mig``.
DEVICE_KINDS: tuple[str, ...]

#: Smallest host-to-device copy that runs on a copy engine; receive buffers of small device
#: frames get this much room, so their copy is not queued behind another process's kernels.
COPY_ENGINE_MIN: int

class PrivateDirectory:
    """A private directory of this user's (mode 0700, unguessable name, an ``owner`` file naming
    this process), removed by :meth:`remove` or when collected; one left by a killed process is
    removed by the next one made with the same prefix."""

    def __init__(self, prefix: str) -> None: ...
    @property
    def path(self) -> str: ...
    def remove(self) -> None: ...
