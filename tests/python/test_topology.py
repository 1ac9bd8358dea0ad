"""``gpucluster.topology()``, ``plan()`` and ``presets()``: the same data as ``gpucluster list
--json``, ``plan --json`` and ``list --presets --json``; errors as exceptions with the command
line's message in Python terms; plan warnings as ``PlanWarning``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
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
    # The command line's message, with keyword arguments where it names flags.
    classes = [line for line in message.splitlines() if line.startswith("  class ")]
    assert len(classes) == 2 and all(line in said.stderr for line in classes)
    assert 'policy="largest-group"   keep class A' in message and "--policy largest-group   keep class A" in said.stderr
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


@pytest.mark.parametrize(
    "source, kwargs, text",
    [
        (
            "sim:a30",
            {"device_memory_limit": 1},
            "device_memory_limit=1 leaves 4 device(s) a limit under 1 % of their memory; give a fraction",
        ),
        (
            "sim:a100-80gb-mixed",
            {"policy": "warn"},
            "the workers fall into 2 classes of memory and SMs (policy warn); "
            'use policy="grouped" to route work by size, or policy="largest-group" to keep one class',
        ),
    ],
)
def test_plan_warnings_are_plan_warnings_at_the_callers_line(monkeypatch, source, kwargs, text):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.warns(gpucluster.PlanWarning) as record:
        planned = gpucluster.plan(source, **kwargs)
    assert len(record) == 1 and str(record[0].message).startswith(text), [str(w.message) for w in record]
    assert record[0].filename == __file__
    # The finding stays in the plan, as the command line prints it.
    assert [f["severity"] for f in planned["findings"]] == ["warning"]


def test_a_wrapper_points_plan_warnings_at_its_own_caller(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def wrapper():
        return gpucluster.plan("sim:a30", device_memory_limit=1, _stacklevel=2)

    with pytest.warns(gpucluster.PlanWarning) as record:
        line = sys._getframe().f_lineno + 1  # the next line's
        wrapper()
    assert (record[0].filename, record[0].lineno) == (__file__, line)


def test_plans_without_warnings_are_silent(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gpucluster.plan("sim:a30")
        # An info finding (the classes left out) is only in the plan.
        planned = gpucluster.plan("sim:a100-80gb-mixed", policy="largest-group")
    assert [f["severity"] for f in planned["findings"]] == ["info"]
    assert issubclass(gpucluster.PlanWarning, UserWarning) and gpucluster.PlanWarning.__module__ == "gpucluster"


def nvml_works() -> bool:
    try:
        gpucluster.topology("nvml")
    except gpucluster.TopologyError:
        return False
    return True


FLAG = re.compile(r"--[a-z]")


@pytest.mark.parametrize(
    "call, error, says",
    [
        (lambda: gpucluster.plan("sim:nope"), gpucluster.TopologyError, "`gpucluster.presets()` describes each"),
        (lambda: gpucluster.topology("sim:list"), gpucluster.TopologyError, "in Python, `gpucluster.presets()`"),
        (lambda: gpucluster.plan("sim:a100-80gb-mixed"), gpucluster.PlanError, 'devices="MIG-'),
        (lambda: gpucluster.plan("sim:h100-mixed"), gpucluster.PlanError, 'with devices=... (or CUDA_VISIBLE_DEVICES)'),
        (lambda: gpucluster.plan("sim:a30", devices="GPU-zz"), gpucluster.PlanError, "(in devices=...)"),
        (lambda: gpucluster.plan("sim:a30", devices="MIG-ffffffff"), gpucluster.PlanError, "`gpucluster.topology()` shows"),
        (lambda: gpucluster.plan("sim:a30", device_memory_limit="lots"), gpucluster.PlanError, "device_memory_limit: `lots`"),
        (lambda: gpucluster.plan("sim:a30", device_memory_limit=1e-10), gpucluster.PlanError, "device_memory_limit: "),
        (lambda: gpucluster.plan("sim:a30", memory_tolerance=-1), gpucluster.PlanError, "memory_tolerance -1"),
        (lambda: gpucluster.plan("sim:a30", workers_per_device=0), gpucluster.PlanError, "workers_per_device 0"),
        pytest.param(
            lambda: gpucluster.topology("nvml"),
            gpucluster.TopologyError,
            'pass topology="sim:NAME" (see `gpucluster.presets()`)',
            marks=pytest.mark.skipif(nvml_works(), reason="this machine has NVML"),
        ),
    ],
)
def test_errors_name_keyword_arguments_not_flags(monkeypatch, call, error, says):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(error) as raised:
        call()
    message = str(raised.value)
    assert says in message
    assert not FLAG.search(message) and "gpucluster list" not in message, message


def test_a_refusals_choices_are_keyword_arguments_in_two_columns(tmp_path, monkeypatch):
    # The core names settings as data, and the binding says them in Python's words: the same
    # choices as the command line's, in the same two columns.
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    hosts = [gpucluster.topology(f"sim:{p}")["hosts"][0] for p in ("a100-80gb-2x7", "dgx-a100")]
    both = tmp_path / "both.json"
    both.write_text(json.dumps({"hosts": hosts}))
    with pytest.raises(gpucluster.PlanError) as raised:
        gpucluster.plan(f"file:{both}")
    said = cli("--topology", f"file:{both}", "plan")
    assert said.returncode != 0
    head = "to go on, choose one of:\n"
    cli_choices = said.stderr.split(head)[1].splitlines()
    devices = cli_choices[3].split()[1]
    assert cli_choices[3].startswith(f"  --devices {devices} (56 devices: ")
    assert str(raised.value).split(head)[1].splitlines() == [
        '  policy="largest-group"   keep class B (56 devices) and leave the others out',
        '  policy="grouped"         keep all; each class gets its own Dask resource (9.62GiB-14SM, 4.75GiB-14SM)',
        '  policy="warn"            keep all as they are',
        f'  devices="{devices}" (56 devices: `policy="largest-group"` keeps the same ones)',
        "                           use class B only",
        "  memory_tolerance=51      count memory within 51% as alike",
    ]


def test_every_setting_a_message_names_is_a_keyword_argument(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    # Eleven classes of instance memory: the refusal shows eight and says how to see them all.
    machine = gpucluster.topology("sim:dgx-a100")
    instances = [m for g in machine["hosts"][0]["gpus"] for m in g["mig_instances"]]
    for i, m in enumerate(instances):
        m["memory_bytes"] -= (i % 11) * (1 << 26)
    uneven = tmp_path / "uneven.json"
    uneven.write_text(json.dumps(machine))
    with pytest.raises(gpucluster.PlanError, match=r"and 3 more classes \(`policy=\"grouped\"` lists them all\)"):
        gpucluster.plan(f"file:{uneven}", memory_tolerance=0)
    # More workers than one host may run: a setting to lower, named without a value.
    huge = tmp_path / "huge.toml"
    huge.write_text('hostname = "huge"\n[[gpu]]\nproduct = "H100-80GB"\ncount = 256\nmig = ["7x1g.10gb"]\n')
    with pytest.raises(gpucluster.PlanError, match=r"; lower workers_per_device=\.\.\. or select fewer devices"):
        gpucluster.plan(f"file:{huge}", workers_per_device=2)
    # A size is a string, a number a number.
    with pytest.warns(gpucluster.PlanWarning, match='^device_memory_limit="10KB" leaves 4 device'):
        gpucluster.plan("sim:a30", device_memory_limit="10KB")
    # A snapshot file with nothing in it: what a snapshot is, in Python's words.
    empty = tmp_path / "empty.json"
    empty.write_text("\n")
    with pytest.raises(gpucluster.TopologyError, match=r"a snapshot is the JSON of `gpucluster\.topology\(\)`$"):
        gpucluster.topology(f"file:{empty}")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"memory_tolerance": None}, "memory_tolerance: a percentage"),
        ({"memory_tolerance": "abc"}, "memory_tolerance: a percentage"),
        ({"memory_tolerance": 10**400}, "memory_tolerance: a percentage"),
        ({"workers_per_device": 2.5}, "workers_per_device: a whole number"),
        ({"workers_per_device": -1}, "workers_per_device: a whole number"),
        ({"workers_per_device": 10**30}, "workers_per_device: a whole number"),
    ],
    ids=repr,
)
def test_arguments_python_cannot_hand_the_planner_are_named(kwargs, message):
    # Found by the newcomer's attack: a bare TypeError/OverflowError, or 2.5 taken for 2.
    with pytest.raises(ValueError, match=message):
        gpucluster.plan("sim:a30", **kwargs)
