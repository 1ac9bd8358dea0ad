"""Whether a Dask scheduler completes Dask's own handshake: ``python -c`` with this file's text and
``ADDRESS [CA CERT KEY]``, exit status 0 if it does.

Run by ``gpucluster dask worker`` before it starts workers, so that a port that accepts
connections but is not a scheduler, or a scheduler that does not speak, is said at once rather
than after minutes of retries. It needs only distributed (and, for a ``gpucluster://`` scheduler,
the gpucluster comm, which distributed finds by its entry point).
"""

import asyncio
import sys


async def _connect(address: str, security) -> None:
    from distributed.comm import connect

    comm = await connect(address, timeout=5, **security.get_connection_args("client"))
    await comm.close()


def check(address: str, ca: str = "", cert: str = "", key: str = "") -> None:
    """Connects to ``address`` (over TLS with ``ca``, ``cert`` and ``key``) within 10 s; raises
    what Dask raised where the handshake fails."""
    from distributed import Security

    if ca:
        security = Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key, require_encryption=True)
    else:
        security = Security()
    asyncio.run(asyncio.wait_for(_connect(address, security), 10))


if __name__ == "__main__":
    check(*sys.argv[1:5])
