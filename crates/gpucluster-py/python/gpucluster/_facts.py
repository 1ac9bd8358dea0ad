"""What this Python offers a Dask cluster: the facts gpucluster's cluster spec is built from.

Run by ``gpucluster dask local|worker`` as a script (``python -c`` with this file's text, so it
also works in a Python without the gpucluster package, which is one of the facts), printing one
JSON object; imported by :class:`gpucluster.dask.LocalCluster`, which asks the same in process.
Only the standard library: nothing is imported to find out whether it can be (Dask's import alone
takes about 0.4 s of a cluster's start on a 2-core machine).
"""

import importlib.metadata
import importlib.util
import json
import sys


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that cannot be imported
        return False


def python_facts() -> dict:
    """``{"executable": PATH, "distributed": VERSION, "dask_cuda": bool, "ucxx": bool, "gpucluster":
    bool, "bokeh": bool, "rmm": bool}``, as ``launcher::dask::PythonFacts`` reads it. Raises
    AssertionError where Dask is not installed."""
    assert _has("dask") and _has("distributed"), "No module named distributed"
    backends = importlib.metadata.entry_points(group="distributed.comm.backends")
    return {
        "executable": sys.executable,
        "distributed": importlib.metadata.version("distributed"),
        "dask_cuda": _has("dask_cuda"),
        "ucxx": _has("distributed_ucxx"),
        "gpucluster": any(e.name == "gpucluster" for e in backends),
        "bokeh": _has("bokeh"),
        "rmm": _has("rmm"),
    }


if __name__ == "__main__":
    print(json.dumps(python_facts()))
