"""``gpucluster.topology()``, ``plan()`` and ``presets()``: the same data as ``gpucluster list
--json``, ``plan --json`` and ``list --presets --json``; errors as exceptions with the command
line's message."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import gpucluster

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess:
    """The gpucluster binary of this checkout (cargo builds it before the tests run)."""
    binary = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "gpucluster"
    assert binary.exists(), f"{binary}: run `cargo build -p gpucluster` (cargo xtask ci does)"
    env = {k: v for k, v in os.environ.items() if k not in ("GPUCLUSTER_TOPOLOGY", "CUDA_VISIBLE_DEVICES")}
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("preset", ["a30", "dgx-a100", "a100-80gb-mixed", "legacy-r460"])
def test_a_simulated_machine_is_what_list_json_prints(preset):
    want = cli("--topology", f"sim:{preset}", "list", "--json")
    assert want.returncode == 0, want.stderr
    got = gpucluster.topology(f"sim:{preset}")
    assert got == json.loads(want.stdout)
    # Plain data: every MIG instance with its own memory, never the parent's.
    for gpu in got["hosts"][0]["gpus"]:
        for mig in gpu["mig_instances"]:
            assert 0 < mig["memory_bytes"] < gpu["memory_bytes"]


def test_a_saved_snapshot_reads_back_unchanged(tmp_path):
    saved = tmp_path / "machine.json"
    saved.write_text(json.dumps(gpucluster.topology("sim:h200")))
    assert gpucluster.topology(f"file:{saved}") == gpucluster.topology("sim:h200")


def test_errors_are_typed_and_say_what_the_command_line_says(tmp_path):
    with pytest.raises(gpucluster.TopologyError, match="unknown simulated machine `nope`; the presets are: .*a30"):
        gpucluster.topology("sim:nope")
    with pytest.raises(gpucluster.TopologyError, match="unknown topology source"):
        gpucluster.topology("gpu:0")
    bad = tmp_path / "bad.txt"
    bad.write_text("GPU 0: NVIDIA A100 (UUID: not-a-uuid)\n")
    with pytest.raises(gpucluster.TopologyError) as raised:
        gpucluster.topology(f"smi:{bad}")
    said = cli("--topology", f"smi:{bad}", "list")
    assert said.returncode != 0
    assert str(raised.value) in said.stderr
    with pytest.raises(TypeError):
        gpucluster.topology(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "source, kwargs, flags",
    [
        ("sim:a30", {}, []),
        ("sim:dgx-a100", {"device_memory_limit": "0.5"}, ["--device-memory-limit", "0.5"]),
        ("sim:a100-80gb-mixed", {"policy": "grouped"}, ["--policy", "grouped"]),
        ("sim:a30", {"workers_per_device": 2}, ["--workers-per-device", "2"]),
        ("sim:h100-mixed", {"devices": ["2", "3"]}, ["--devices", "2,3"]),
    ],
)
def test_a_plan_is_what_plan_json_prints(monkeypatch, source, kwargs, flags):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    want = cli("--topology", source, "plan", "--json", *flags)
    assert want.returncode == 0, want.stderr
    got = gpucluster.plan(source, **kwargs)
    assert got == json.loads(want.stdout)
    # Each worker sees its own device first; a MIG worker sees nothing else.
    for worker in got["workers"]:
        visible = worker["env"]["CUDA_VISIBLE_DEVICES"].split(",")
        assert visible[0] == worker["device_uuid"]
        assert worker["kind"] != "mig" or visible == [worker["device_uuid"]]


def test_cuda_visible_devices_selects_as_on_the_command_line(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert [w["gpu_index"] for w in gpucluster.plan("sim:hgx-h100")["workers"]] == [0]


def test_unlike_slices_are_refused_with_the_command_lines_classes_and_fixes(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(gpucluster.PlanError) as raised:
        gpucluster.plan("sim:a100-80gb-mixed")
    said = cli("--topology", "sim:a100-80gb-mixed", "plan")
    assert said.returncode != 0
    message = str(raised.value)
    assert "not alike" in message and "class A" in message and "class B" in message
    assert message in said.stderr
    with pytest.raises(gpucluster.PlanError, match="policy"):
        gpucluster.plan("sim:a30", policy="lenient")
    with pytest.raises(gpucluster.PlanError, match="out of range"):
        gpucluster.plan("sim:a30", workers_per_device=0)
    with pytest.raises(gpucluster.PlanError, match="out of range"):
        gpucluster.plan("sim:a30", memory_tolerance=-1)
    with pytest.raises(gpucluster.PlanError, match="is not a device"):
        gpucluster.plan("sim:a30", devices="GPU-zz")
    with pytest.raises(gpucluster.TopologyError):
        gpucluster.plan("sim:nope")


def test_errors_are_the_packages_and_pickle():
    # Named as the package exports them, so tracebacks say gpucluster.PlanError and they cross
    # process boundaries (multiprocessing, concurrent.futures).
    import pickle

    with pytest.raises(gpucluster.PlanError) as refused:
        gpucluster.plan("sim:a100-80gb-mixed")
    assert type(refused.value).__module__ == "gpucluster"
    back = pickle.loads(pickle.dumps(refused.value))
    assert type(back) is gpucluster.PlanError and str(back) == str(refused.value)
    for error in (gpucluster.TopologyError, gpucluster.TransportError, gpucluster.PeerGone):
        assert error.__module__ == "gpucluster" and getattr(gpucluster, error.__name__) is error


def test_the_package_says_its_version():
    from importlib import metadata

    assert gpucluster.__version__ == metadata.version("gpucluster")


def test_presets_are_what_list_presets_prints():
    want = cli("list", "--presets", "--json")
    assert want.returncode == 0, want.stderr
    got = gpucluster.presets()
    assert got == json.loads(want.stdout)["presets"]
    assert {"a30", "a100-80gb-2x7", "dgx-a100", "h100-mixed"} <= {p["name"] for p in got}
    assert all(p["description"] and "\n" not in p["description"] for p in got)
    for p in got:
        gpucluster.topology(p["topology"])
