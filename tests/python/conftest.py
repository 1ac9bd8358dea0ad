"""The tests' Python environment: a secret of their own, never the user's.

Every process of a test cluster finds the secret as any gpucluster process does when no
launcher hands it one: in ``$XDG_CONFIG_HOME/gpucluster/secret``, made on first use. Pointing
XDG_CONFIG_HOME at a fresh directory exercises that path and leaves the user's home alone.
"""

from __future__ import annotations

import os
import tempfile

import pytest


@pytest.fixture(scope="session", autouse=True)
def private_config_home():
    saved = {k: os.environ.get(k) for k in ("XDG_CONFIG_HOME", "GPUCLUSTER_SECRET", "GPUCLUSTER_SECRET_FILE")}
    with tempfile.TemporaryDirectory(prefix="gpucluster-tests-") as home:
        os.environ["XDG_CONFIG_HOME"] = home
        os.environ.pop("GPUCLUSTER_SECRET", None)
        os.environ.pop("GPUCLUSTER_SECRET_FILE", None)
        yield home
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
