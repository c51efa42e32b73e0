"""The stages of ``scripts/gpu_check.sh`` that are not ``evcf bench`` or the numerics check.

Each writes one JSON file; none needs an install of evcf (the repository's root is put on
``sys.path``), but all except ``env`` need evcf's dependencies.  ``env`` needs the standard library
alone: it checks that the packages the check imports are there (:data:`REQUIRED`) and, where one is
not, says which and how to carry it to a machine without network as a wheel, and exits 4::

    python3 scripts/gpu_check_stages.py env    --device cuda --out DIR/env.json
    python3 scripts/gpu_check_stages.py gemm   --device cuda --size 8192 --out DIR/gemm.json
    python3 scripts/gpu_check_stages.py tests  --out DIR/tests.json [pytest arguments after --]
    python3 scripts/gpu_check_stages.py record --summary DIR/summary.json --stage NAME --file F \\
        --status ok --rc 0 --seconds 12 --log DIR/NAME.log --limit 60 --command "python3 ..."
    python3 scripts/gpu_check_stages.py gpu-adds --summary DIR/summary.json

``record`` adds a stage's outcome (status, seconds, limit, the command it ran) to the summary, and
where the stage left no JSON of its own (it failed, or its time ran out), writes one in its place
saying so, with the end of its log.  ``gpu-adds`` (after a CPU check) says in the summary and on
the terminal what the same check on a GPU would add.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("evcf") is None:  # a copy of the repository without an install
    sys.path.insert(0, str(ROOT))

# the packages the check needs, all of them (pyproject.toml's dependencies, and pytest from its
# `test` extra): distribution name -> (import name, what needs it)
REQUIRED = {"torch": ("torch", "every stage but env"), "numpy": ("numpy", "evcf's data and models"),
            "scipy": ("scipy", "the bench's data, evaluation"),
            "pandas": ("pandas", "training's history, the numerics check's split"),
            "PyYAML": ("yaml", "params.yaml"), "matplotlib": ("matplotlib", "the report (evcf's install)"),
            "tabulate": ("tabulate", "the printed tables (evcf's install)"),
            "pytest": ("pytest", "the CUDA tests")}
# imported where present: what the check does without it is said in its output
OPTIONAL = {"jsonschema": "params.yaml's schema check (skipped without it, and the bench's params_check says so)"}
MISSING_PACKAGES = 4  # env's exit status when a required package does not import (3: the device is not usable)


def importable(name: str) -> bool:
    """Whether ``import name`` would find the module (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def requirements(names: list[str]) -> list[str]:
    """Each distribution's requirement as pyproject.toml states it (``scipy>=1.11``); the bare name
    where the file, or the package in it, is not there."""
    try:
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        project = {}
    stated = [*project.get("dependencies", []), *project.get("optional-dependencies", {}).get("test", [])]

    def key(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    by_name = {key(re.match(r"[A-Za-z0-9._-]+", r).group()): r.split(";")[0].strip() for r in stated}
    return [by_name.get(key(name), name) for name in names]


def how_to_install(missing: list[str]) -> str:
    """How to carry ``missing`` (distribution names) to a machine without network, as wheels."""
    wanted = " ".join(shlex.quote(r) for r in requirements(missing))
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return (f"{', '.join(missing)} not installed: the GPU check needs evcf's dependencies (docs/gpu.md).  Without "
            "network here, carry them as wheels:\n"
            f"  1. on a machine with network and Python {version} on the same OS and CPU as this one:\n"
            f"       python3 -m pip download -d wheels {wanted}\n"
            f"     (elsewhere: add --only-binary=:all: --python-version {version} --platform TAG, with a TAG from "
            "`python3 -m pip debug --verbose` run here; or build them with `python3 -m pip wheel -w wheels ...`)\n"
            "  2. copy the folder wheels/ here, and install from it:\n"
            f"       python3 -m pip install --no-index --find-links wheels {wanted}\n"
            "  then run the check again")


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Write ``value`` to ``path`` whole or not at all (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def stage_env(device: str, out: Path) -> int:
    """Python, the packages, torch and the device; exit 4 if a required package does not import
    (saying which, and how to carry it here as a wheel), 3 if the device is not usable."""
    env: dict[str, Any] = {"python": platform.python_version(), "executable": sys.executable,
                           "platform": platform.platform(), "device": device, "root": str(ROOT)}
    env["packages"] = {module: importable(module) for module, _ in REQUIRED.values()}
    env["packages"].update({name: importable(name) for name in OPTIONAL})
    env["packages_used_by"] = {**{module: why for module, why in REQUIRED.values()}, **OPTIONAL}
    env["missing"] = [name for name, (module, _) in REQUIRED.items() if not env["packages"][module]]
    found = importlib.util.find_spec("evcf")
    env["evcf"] = str(Path(found.origin).parent) if found and found.origin else None  # which evcf runs
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        env["commit"] = commit.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["commit"] = None  # no git there, or no .git in the copy
    if env["missing"]:
        env.update(usable=False, problem=how_to_install(env["missing"]))
        write_json(out, env)
        print(f"gpu_check: {env['problem']}", file=sys.stderr)
        return MISSING_PACKAGES
    try:
        import torch
    except ImportError as exc:
        env.update(torch=None, usable=False, problem=f"torch does not import: {exc}")
        write_json(out, env)
        return 3
    env.update(torch=torch.__version__, cuda_build=torch.version.cuda, cuda_available=torch.cuda.is_available(),
               threads=torch.get_num_threads())
    if device == "cuda":
        if not torch.cuda.is_available():
            env.update(usable=False, problem=f"torch {torch.__version__} cannot see CUDA (CUDA build: "
                                             f"{torch.version.cuda}): install the CUDA wheel that matches the "
                                             "driver, or run this on a GPU node")
            write_json(out, env)
            return 3
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=torch.cuda.get_device_name(0), gpu_memory_mib=props.total_memory // 2**20,
                   multiprocessors=props.multi_processor_count, capability=list(torch.cuda.get_device_capability(0)))
    env["usable"] = True
    write_json(out, env)
    return 0


def stage_gemm(device: str, size: int, repeats: int, out: Path) -> int:
    """The matrix-product rate in fp32, TF32 (CUDA only) and bf16, as the bench measures it, and the
    copy rate (the memory bandwidth that the bench's traffic floor divides by)."""
    import torch

    from evcf.bench.timer import copy_rate, gemm_rate

    dev = torch.device(device)
    result: dict[str, Any] = {"device": device, "size": size, "repeats": repeats,
                              "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
                              "torch": torch.__version__, "rates": {}, "skipped": []}
    for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                              ("bf16", torch.bfloat16, False)):
        if tf32 and dev.type != "cuda":
            result["skipped"].append("tf32 (CUDA only)")
            continue
        rate = gemm_rate(dev, dtype, size, repeats, tf32=tf32)
        result["rates"][name] = {**rate, "tflops": rate["gflops"] / 1e3}
        write_json(out, result)  # each precision as soon as it is measured
    result["copy"] = copy_rate(dev, 1024 if dev.type == "cuda" else 64)
    write_json(out, result)
    return 0


def stage_tests(out: Path, pytest_args: list[str]) -> int:
    """Run pytest on ``pytest_args``; the outcome of every test from its JUnit XML."""
    result: dict[str, Any] = {"args": pytest_args}
    junit = out.with_name(out.stem + "-junit.xml")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                           f"--junitxml={junit}", *pytest_args], cwd=ROOT)
    result.update(ran=True, pytest_exit_code=proc.returncode, seconds=round(time.perf_counter() - started, 1))
    import pytest

    result["pytest"] = pytest.__version__
    tests, counts = [], {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    if junit.is_file():
        for case in ET.parse(junit).getroot().iter("testcase"):
            outcome, message = "passed", None
            for tag in ("failure", "error", "skipped"):
                found = case.find(tag)
                if found is not None:
                    outcome = {"failure": "failed"}.get(tag, tag)
                    message = (found.get("message") or "")[:500]
                    break
            counts[outcome] += 1
            tests.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                          "seconds": float(case.get("time") or 0.0), "message": message})
    result.update(counts=counts, total=len(tests), tests=tests)
    write_json(out, result)
    return 0  # a failing test is a result, recorded above; the check goes on


def stage_record(summary: Path, stage: str, file: Path, status: str, rc: int, seconds: int, log: Path,
                 limit: int | None, command: str | None = None) -> int:
    """Add one stage to the summary (with the command it ran, None where nothing ran); write a
    stand-in JSON where the stage left none."""
    done = json.loads(summary.read_text()) if summary.is_file() else {"stages": {}}
    entry: dict[str, Any] = {"status": status, "exit_code": rc, "seconds": seconds, "limit_s": limit,
                             "file": file.name, "log": log.name, "command": command.strip() if command else None}
    if not file.is_file():
        tail = log.read_text(errors="replace")[-4000:] if log.is_file() else ""
        write_json(file, {"stage": stage, "status": status, "exit_code": rc, "measured": False,
                          "note": f"the stage wrote no results ({status}); the end of its log follows",
                          "log_tail": tail})
        entry["stand_in"] = True
    done["stages"][stage] = entry
    done["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_json(summary, done)
    return 0


# what the check on CUDA measures that its CPU mode cannot (said after a CPU check)
GPU_ADDS = {
    "gemm": "the TF32 rate, and 8192^3 products and a 1 GiB copy instead of 128^3 and 64 MiB",
    "bench-fp32": "ML-20M's shape (116,677 x 20,108, 8M clicks) and recipes instead of tiny sizes; a pipelined "
                  "throughput that differs from the synchronised step (a CPU does its work as it is issued)",
    "bench-tf32": "the whole stage: the bench with TF32 matrix products (CUDA only, skipped here)",
    "bench-bf16": "as bench-fp32, under bf16 autocast on the GPU's tensor cores",
    "tests": "tests/test_cuda.py run on the device (every test skips here: no CUDA)",
    "numerics": "the tf32 setting beside fp32 and bf16, two seeds, the recipes' whole schedules (here: one "
                "epoch, one seed)",
}


def stage_gpu_adds(summary: Path) -> int:
    """Say in the summary and on the terminal what the check on a GPU would add to this CPU run."""
    done = json.loads(summary.read_text()) if summary.is_file() else {"stages": {}}
    done["gpu_adds"] = GPU_ADDS
    write_json(summary, done)
    print("gpu_check: every stage ran on the CPU at tiny sizes; on CUDA the check adds:")
    for stage, what in GPU_ADDS.items():
        print(f"  {stage}: {what}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("env")
    e.add_argument("--device", default="cuda")
    e.add_argument("--out", type=Path, required=True)
    g = sub.add_parser("gemm")
    g.add_argument("--device", default="cuda")
    g.add_argument("--size", type=int, default=8192)
    g.add_argument("--repeats", type=int, default=10)
    g.add_argument("--out", type=Path, required=True)
    t = sub.add_parser("tests")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("pytest_args", nargs=argparse.REMAINDER)
    r = sub.add_parser("record")
    r.add_argument("--summary", type=Path, required=True)
    r.add_argument("--stage", required=True)
    r.add_argument("--file", type=Path, required=True)
    r.add_argument("--status", required=True)
    r.add_argument("--rc", type=int, required=True)
    r.add_argument("--seconds", type=int, required=True)
    r.add_argument("--log", type=Path, required=True)
    r.add_argument("--limit", type=int, default=None)
    r.add_argument("--command", dest="stage_command", default=None, help="the stage's command line, as it ran")
    a = sub.add_parser("gpu-adds")
    a.add_argument("--summary", type=Path, required=True)
    args = p.parse_args(argv)
    if args.command == "env":
        return stage_env(args.device, args.out)
    if args.command == "gemm":
        return stage_gemm(args.device, args.size, args.repeats, args.out)
    if args.command == "tests":
        return stage_tests(args.out, [a for a in args.pytest_args if a != "--"])
    if args.command == "gpu-adds":
        return stage_gpu_adds(args.summary)
    return stage_record(args.summary, args.stage, args.file, args.status, args.rc, args.seconds, args.log,
                        args.limit, args.stage_command)


if __name__ == "__main__":
    sys.exit(main())
