"""scripts/gpu_check.sh: run here with ``--device cpu`` (tiny sizes), from a copy of the working tree
without an install and with the packages that the GPU machines lack made unimportable, it writes
every file it promises, each holding numbers; without a package it needs, it stops at once and says
which and how to carry it there as a wheel.  (What the GPU itself measures is not checked here.)"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("mult-vae", "vamp", "hvamp-gated")
# not on the GPU machines' images, which carry numpy, scipy, pandas, PyYAML, pytest, matplotlib and
# tabulate beside torch (issue 27), and not needed by the check: it must run without them
ABSENT = ("jsonschema", "implicit", "sklearn")

BLOCKER = '''
# as if the modules named in EVCF_TEST_BLOCKED_MODULES (packages, or dotted module names) were not
# installed: every finder says "not found"
import os, sys

_BLOCKED = set(filter(None, os.environ.get("EVCF_TEST_BLOCKED_MODULES", "").split(",")))


class _Absent:
    def __init__(self, inner):
        self._inner = inner

    def find_spec(self, name, path=None, target=None):
        if name in _BLOCKED or name.split(".")[0] in _BLOCKED:
            return None
        return self._inner.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self._inner, attr)


sys.meta_path[:] = [_Absent(finder) for finder in sys.meta_path]
'''


def positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def bare_env(tmp_path: Path, blocked: tuple[str, ...]) -> dict[str, str]:
    """This venv's python3 first on PATH; ``blocked`` unimportable (a sitecustomize on PYTHONPATH)."""
    site = tmp_path / "blocker"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(site),
               EVCF_TEST_BLOCKED_MODULES=",".join(blocked))
    return env


def copy_tree(dest: Path) -> Path:
    """The working tree's code, tests, scripts, params.yaml and pyproject.toml, as copied to a GPU machine."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in ("evcf", "scripts", "tests"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    for name in ("params.yaml", "pyproject.toml"):
        shutil.copy2(ROOT / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu-check")
    tree = copy_tree(tmp / "tree")
    dest = tmp / "out"
    proc = subprocess.run(["bash", str(tree / "scripts" / "gpu_check.sh"), str(dest), "--device", "cpu"],
                          cwd=tmp, env=bare_env(tmp, ABSENT), capture_output=True, text=True, timeout=600)
    return proc, dest, tree


def load(dest: Path, name: str) -> dict:
    return json.loads((dest / name).read_text())


@pytest.mark.slow  # runs scripts/gpu_check.sh whole (a subprocess pipeline)
def test_the_check_runs_to_the_end_and_says_what_each_stage_did(checked):
    proc, dest, _ = checked
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    stages = load(dest, "summary.json")["stages"]
    assert list(stages) == ["env", "gemm", "bench-fp32", "bench-tf32", "bench-bf16", "tests", "numerics"]
    assert {name: s["status"] for name, s in stages.items()} == {
        **{name: "ok" for name in stages}, "bench-tf32": "skipped (CUDA only)"}
    assert not any(s.get("stand_in") for s in stages.values())
    for name, s in stages.items():
        assert (dest / s["file"]).is_file() and (dest / s["log"]).is_file(), name
    limits = json.loads(subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--limits", "--device", "cpu"],
                                       capture_output=True, text=True, timeout=60, check=True).stdout)["limits_s"]
    # what ran: each stage's command and its own limit (a skipped stage ran nothing)
    assert stages["bench-tf32"]["command"] is None and "bench-tf32" not in limits
    for name in ("env", "gemm", "bench-fp32", "bench-bf16", "tests", "numerics"):
        assert stages[name]["limit_s"] == limits[name], name
    assert stages["env"]["command"].endswith("env --device cpu --out " + str(dest / "env.json"))
    assert "gemm_rate" not in stages["gemm"]["command"] and " gemm --device cpu --size 128 " in stages["gemm"]["command"]
    for precision in ("fp32", "bf16"):
        assert f"-m evcf.cli --log-level INFO bench --users 200 " in stages[f"bench-{precision}"]["command"]
        assert f"--precision {precision} " in stages[f"bench-{precision}"]["command"]
    assert stages["tests"]["command"].endswith("tests/test_cuda.py")
    assert "scripts/numerics_check.py --device cpu --models mult-vae vamp --seeds 1 " in stages["numerics"]["command"]


@pytest.mark.slow  # runs scripts/gpu_check.sh whole (a subprocess pipeline)
def test_the_cpu_check_says_what_a_gpu_would_add(checked):
    proc, dest, _ = checked
    adds = load(dest, "summary.json")["gpu_adds"]
    assert set(adds) == {"gemm", "bench-fp32", "bench-tf32", "bench-bf16", "tests", "numerics"}
    assert "TF32" in adds["bench-tf32"] and "test_cuda.py" in adds["tests"] and "tf32" in adds["numerics"]
    assert "on CUDA the check adds:" in proc.stdout and "  bench-tf32: the whole stage" in proc.stdout


def limits_of(device: str) -> dict:
    out = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--limits", "--device", device],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_the_stages_limits_fit_the_default_budget_and_the_cuda_check_fits_nine_minutes():
    """Every stage can run to its own limit within the default budget (none is cut short or skipped
    by the ones before it), and on CUDA the budget plus the last stage's kill grace is <= 9 minutes."""
    cuda, cpu = limits_of("cuda"), limits_of("cpu")
    assert list(cuda["limits_s"]) == ["env", "gemm", "bench-fp32", "bench-tf32", "bench-bf16", "tests", "numerics"]
    for plan in (cuda, cpu):
        assert sum(plan["limits_s"].values()) <= plan["default_budget_s"], plan
        assert all(limit >= 20 for limit in plan["limits_s"].values()), plan
    assert cuda["default_budget_s"] + cuda["grace_s"] <= 9 * 60


def test_limits_that_overrun_the_budget_stop_the_check_before_it_starts(tmp_path):
    script = (ROOT / "scripts" / "gpu_check.sh").read_text().replace("tests=110", "tests=400")
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "gpu_check.sh").write_text(script)
    proc = subprocess.run(["bash", str(tmp_path / "scripts" / "gpu_check.sh"), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "more than the default budget of 520 s" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # runs scripts/gpu_check.sh whole (a subprocess pipeline)
def test_env_names_the_copy_torch_and_the_missing_packages(checked):
    _, dest, tree = checked
    env = load(dest, "env.json")
    assert env["usable"] is True and env["device"] == "cpu" and env["torch"]
    assert Path(env["root"]) == tree and Path(env["evcf"]) == tree / "evcf"  # the copy's, not an installed one
    assert env["packages"]["jsonschema"] is False and env["packages"]["pytest"] is True


@pytest.mark.slow  # runs scripts/gpu_check.sh whole (a subprocess pipeline)
def test_gemm_rates_in_each_precision_that_the_device_has(checked):
    _, dest, _ = checked
    gemm = load(dest, "gemm.json")
    assert set(gemm["rates"]) == {"fp32", "bf16"} and gemm["skipped"] == ["tf32 (CUDA only)"]
    assert gemm["rates"]["bf16"]["dtype"] == "bfloat16" and gemm["rates"]["fp32"]["tf32"] is False
    for rate in gemm["rates"].values():
        assert positive(rate["gflops"]) and rate["tflops"] == pytest.approx(rate["gflops"] / 1e3)
    assert positive(gemm["copy"]["gbs"]) and gemm["copy"]["mib"] == 64  # the traffic floor's divisor


@pytest.mark.slow  # runs scripts/gpu_check.sh whole (a subprocess pipeline)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bench_has_latency_and_pipelined_throughput_for_each_model(checked, precision):
    _, dest, _ = checked
    bench = load(dest, f"bench-{precision}.json")
    assert bench["precision"] == precision and bench["device"] == "cpu"
    assert bench["params_check"].startswith("yaml only")  # jsonschema absent: said, not hidden
    assert bench["recipes"].endswith("data.ml-20m") and set(bench["models"]) == set(MODELS)
    for name, m in bench["models"].items():
        assert m["precision"] == precision, name
        for key in ("step_s", "epoch_s", "users_per_s", "pipelined_step_s", "pipelined_steps_per_s",
                    "pipelined_users_per_s", "pipelined_epoch_s", "step_flops", "floor_epoch_s", "eval_s",
                    "step_bytes", "traffic_floor_epoch_s", "x_traffic_floor", "pipelined_x_traffic_floor"):
            assert positive(m[key]), (name, key, m[key])
        assert len(m["step_times_s"]) == 2 and m["pipelined_steps"] == 4
        assert sum(m["pipelined_round_steps"]) == 4 and len(m["pipelined_round_step_s"]) == 4
        # 2e-3: both figures are rounded to 4 significant digits in the JSON (see test_bench.ROUNDED)
        assert m["pipelined_epoch_s"] == pytest.approx(m["pipelined_step_s"] * m["steps_per_epoch"], rel=2e-3)
        assert m["pipelined_users_per_s"] == pytest.approx(m["batch_size"] / m["pipelined_step_s"], rel=2e-3)
    assert load(dest, "bench-tf32.json") == {"stage": "bench-tf32", "measured": False, "skipped": "CUDA only"}


@pytest.mark.slow  # runs scripts/gpu_check.sh whole (a subprocess pipeline)
def test_tests_json_lists_every_cuda_test(checked):
    _, dest, tree = checked
    tests = load(dest, "tests.json")
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                                "tests/test_cuda.py"], cwd=tree, capture_output=True, text=True, timeout=120)
    ids = sorted(line.split("::", 1)[1] for line in collected.stdout.splitlines() if "::" in line)
    assert tests["ran"] is True and tests["total"] == len(ids) > 0
    assert sorted(t["test"].split("::", 1)[1] for t in tests["tests"]) == ids
    assert tests["counts"] == {"passed": 0, "failed": 0, "error": 0, "skipped": len(ids)}  # no CUDA here
    assert all(t["message"] == "needs a CUDA device" for t in tests["tests"])


@pytest.mark.slow  # runs scripts/gpu_check.sh whole (a subprocess pipeline)
def test_numerics_compares_each_setting_with_fp32_for_both_models(checked):
    _, dest, _ = checked
    numerics = load(dest, "numerics.json")
    assert numerics["complete"] is True and numerics["skipped"] == ["tf32 (CUDA only)"]
    assert [(r["model"], r["setting"]) for r in numerics["runs"]] == [
        ("mult-vae", "fp32"), ("mult-vae", "bf16"), ("vamp", "fp32"), ("vamp", "bf16")]
    for r in numerics["runs"]:
        assert 0.0 < r["ndcg@100"] < 1.0 and 0.0 <= r["recall@20"] <= 1.0 and positive(r["train_s"])
    assert numerics["params_check"].startswith("yaml only")


def test_a_stage_that_wrote_nothing_leaves_a_stand_in_and_its_status(tmp_path):
    log = tmp_path / "bench-fp32.log"
    log.write_text("Traceback ...\nRuntimeError: CUDA out of memory\n")
    summary = tmp_path / "summary.json"
    for stage, status, rc in (("gemm", "ok", 0), ("bench-fp32", "timed out after 90 s", 124)):
        if stage == "gemm":
            (tmp_path / "gemm.json").write_text('{"rates": {}}\n')
        subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check_stages.py"), "record", "--summary",
                        str(summary), "--stage", stage, "--file", str(tmp_path / f"{stage}.json"), "--status", status,
                        "--rc", str(rc), "--seconds", "90", "--log", str(tmp_path / f"{stage}.log"),
                        "--limit", "90"], check=True, timeout=60)
    stages = json.loads(summary.read_text())["stages"]
    assert stages["gemm"]["status"] == "ok" and "stand_in" not in stages["gemm"]
    assert json.loads((tmp_path / "gemm.json").read_text()) == {"rates": {}}  # its own file, untouched
    assert stages["bench-fp32"] == {"status": "timed out after 90 s", "exit_code": 124, "seconds": 90, "limit_s": 90,
                                    "file": "bench-fp32.json", "log": "bench-fp32.log", "command": None,
                                    "stand_in": True}
    stand_in = json.loads((tmp_path / "bench-fp32.json").read_text())
    assert stand_in["measured"] is False and stand_in["status"] == "timed out after 90 s"
    assert stand_in["log_tail"].endswith("CUDA out of memory\n")


@pytest.mark.slow  # runs scripts/gpu_check.sh whole (a subprocess pipeline)
def test_a_failing_stage_does_not_stop_the_later_ones(tmp_path):
    """Without evcf.training, nothing trains: each bench fails, and the stages after it still run."""
    tree = copy_tree(tmp_path / "tree")
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "bench-fp32.json").write_text('{"models": {"mult-vae": {"epoch_s": 1.0}}}\n')  # an earlier check's
    proc = subprocess.run(["bash", str(tree / "scripts" / "gpu_check.sh"), str(dest), "--device", "cpu"],
                          cwd=tmp_path, env=bare_env(tmp_path, ("evcf.training",)), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stages = load(dest, "summary.json")["stages"]
    assert list(stages) == ["env", "gemm", "bench-fp32", "bench-tf32", "bench-bf16", "tests", "numerics"]
    assert stages["gemm"]["status"] == "ok"
    for name in ("bench-fp32", "bench-bf16", "numerics"):
        assert stages[name]["status"].startswith("failed (exit ") and stages[name]["stand_in"] is True, name
        stand_in = load(dest, f"{name}.json")
        assert stand_in["measured"] is False and "No module named 'evcf.training'" in stand_in["log_tail"]
    assert stages["tests"]["status"] == "ok" and load(dest, "tests.json")["pytest_exit_code"] != 0  # recorded


@pytest.mark.slow  # runs scripts/gpu_check.sh whole (a subprocess pipeline)
def test_without_cuda_the_cuda_check_stops_at_once_and_says_why(tmp_path):
    dest = tmp_path / "out"
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(dest)], cwd=tmp_path,
                          env=bare_env(tmp_path, ()), capture_output=True, text=True, timeout=300)
    if json.loads((dest / "env.json").read_text())["cuda_available"]:
        pytest.skip("this machine has CUDA")
    assert proc.returncode == 3 and "the device is not usable" in proc.stderr
    env = json.loads((dest / "env.json").read_text())
    assert env["usable"] is False and "cannot see CUDA" in env["problem"]
    assert sorted(p.name for p in dest.iterdir()) == ["env.json", "env.log"]  # nothing measured, nothing faked


def test_without_a_required_package_the_check_stops_at_once_and_says_how_to_carry_it(tmp_path):
    """scipy, PyYAML (imported as yaml) and pytest (the `test` extra) unimportable: the env stage names
    each by its distribution, with pyproject.toml's requirement, in the pip commands that carry it to
    a machine without network as a wheel; the check exits 4 and measures nothing."""
    tree = copy_tree(tmp_path / "tree")
    dest = tmp_path / "out"
    proc = subprocess.run(["bash", str(tree / "scripts" / "gpu_check.sh"), str(dest), "--device", "cpu"],
                          cwd=tmp_path, env=bare_env(tmp_path, (*ABSENT, "scipy", "yaml", "pytest")),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert "required packages are missing" in proc.stderr
    assert "scipy, PyYAML, pytest not installed" in proc.stderr
    wanted = "'scipy>=1.11' 'pyyaml>=6' 'pytest>=8'"  # pyproject.toml's requirements, as the shell takes them
    assert f"python3 -m pip download -d wheels {wanted}" in proc.stderr
    assert f"python3 -m pip install --no-index --find-links wheels {wanted}" in proc.stderr
    env = json.loads((dest / "env.json").read_text())
    assert env["missing"] == ["scipy", "PyYAML", "pytest"] and env["usable"] is False
    assert env["packages"]["numpy"] is True and env["packages"]["yaml"] is False
    assert "pip download" in env["problem"] and "--no-index --find-links wheels" in env["problem"]
    assert sorted(p.name for p in dest.iterdir()) == ["env.json", "env.log"]  # nothing measured, nothing faked
