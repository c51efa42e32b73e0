"""`evcf plan`: jobs, epochs, hours and disk of a selection, from bench figures, before anything runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from evcf.errors import EvcfError
from evcf.plan import bench_figures, load_config, make_plan

REPO = Path(__file__).resolve().parents[2]
PARAMS = REPO / "params.yaml"


def _bench(folder: Path, device: str = "cpu", startup: float | None = None, **models) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = {"device": device, "shape": {"name": "ml-20m", "items": 20108}, "eval_users": 1000, "models": models}
    if startup is not None:
        data["job_startup"] = {"seconds": startup}
    (folder / f"{device}.json").write_text(json.dumps(data))
    return folder


def _plan(*overrides: str, bench: Path | None = None, device: str = "cpu") -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "evcf.cli", "plan", "--params", str(PARAMS), "--device", device]
    if bench is not None:
        args += ["--bench", str(bench)]
    if overrides:
        args += ["--config", *overrides]
    return subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=300)


def unwrapped(text: str) -> str:
    """The plan's output with its wrapped lines (continued with a 4-space indent) joined."""
    return text.replace("\n    ", " ")


FIGURE = {"epoch_s": 100.0, "eval_s": 10.0, "batch_size": 200, "fused_optimizer": False, "precision": "fp32"}


def test_hours_are_epochs_times_the_measured_epoch_and_its_validation(tmp_path):
    """By hand.  An epoch costs its figure's seconds + 10 s x 10,000 / 1,000 validation users; each
    job also pays 5 s of start-up and the test evaluation (100 s).  Mult-VAE: 2 seeds x 200 epochs
    at batch 500 (100 + 100 = 200 s).  Vamp's 16 points (2 likelihoods x 4 beta caps x 2 batch sizes)
    each at their own batch size: 200 (100 + 100 s an epoch) or 500 (40 + 100 s).  Under halving,
    budgets 45 / 134 / 400 for 16 / 6 / 2 points: rung 0 at each point's cost, the promoted points
    at the grid's mean (170 s), then the second seed's 400 epochs at that mean; the first seed's
    run is the winner's, copied by a job that pays its start-up only (5 s)."""
    bench = _bench(tmp_path / "bench", startup=5.0, **{"mult-vae": {**FIGURE, "batch_size": 500}, "vamp": FIGURE})
    (bench / "vamp-500.json").write_text(json.dumps({
        "device": "cpu", "shape": {"name": "ml-20m"}, "eval_users": 1000, "job_startup": {"seconds": 5.0},
        "models": {"vamp": {**FIGURE, "epoch_s": 40.0, "batch_size": 500}}}))
    config = load_config(PARAMS, ["datasets=[ml-20m]", "models=[mult-vae, vamp, hvamp]", "seeds=[1, 2]",
                                  "tuning=halving"])
    rows = {r.model: r for r in make_plan(config, device="cpu", figures=bench_figures(bench))}
    job = 5 + 100
    mult_vae = 2 * (200 * 200 + job)
    assert rows["mult-vae"].search_jobs == 0 and rows["mult-vae"].table_epochs == 400
    assert rows["mult-vae"].hours[None] * 3600 == pytest.approx(mult_vae)
    vamp = rows["vamp"]
    assert vamp.search_epochs == {"full": 16 * 400, "halving": 16 * 45 + 6 * 89 + 2 * 266}
    assert vamp.search_jobs == 16 + 6 + 2 and vamp.table_jobs == 1 and vamp.table_epochs == 400
    table = 400 * 170 + job + 5
    full = 8 * (400 * 200 + job) + 8 * (400 * 140 + job) + table
    halving = 8 * (45 * 200 + job) + 8 * (45 * 140 + job) + 6 * (89 * 170 + job) + 2 * (266 * 170 + job) + table
    assert vamp.hours["full"] * 3600 == pytest.approx(full) and vamp.hours["halving"] * 3600 == pytest.approx(halving)
    assert vamp.uncosted == 0
    assert rows["hvamp"].hours == {} and "no figure" in rows["hvamp"].note
    out = _plan("datasets=[ml-20m]", "models=[mult-vae, vamp, hvamp]", "seeds=[1, 2]", "tuning=halving",
                bench=bench)
    assert out.returncode == 0, out.stderr
    for mode, vamp_s in (("halving", halving), ("full", full)):
        hours = (mult_vae + vamp_s) / 3600
        assert f"{hours:,.1f} h ({hours / 24:,.1f} days) under tuning: {mode}" in unwrapped(out.stdout), mode
    assert "not counted: 1 of 3 rows lack figures" in unwrapped(out.stdout)
    # H+Vamp has the same 16-point grid (no figure: its epochs count, its hours cannot)
    # (H+Vamp searches num_layers too: 32 points, 32 x 45 + 11 x 89 + 4 x 266 = 3,483 under halving)
    assert "search epochs: 19,200 under tuning: full, 5,269 under tuning: halving (27% of full)" in out.stdout


def test_a_grid_point_at_a_batch_size_without_a_figure_is_not_counted_and_says_how_to_measure_it(tmp_path):
    bench = _bench(tmp_path / "bench", vamp=FIGURE)
    config = load_config(PARAMS, ["datasets=[ml-20m]", "models=[vamp]"])
    (row,) = make_plan(config, device="cpu", figures=bench_figures(bench))
    assert row.uncosted == 8  # the batch-500 half of the grid: not costed as batch 200
    table = 2 * (400 * 200 + 100) / 3600  # seeds 2 and 3 at the costed points' mean, + their test evaluations
    assert row.hours["full"] == pytest.approx(8 * (400 * 200 + 100) / 3600 + table)
    assert "not counted: 8 of 16 grid points, no figure at batch_size=500 (e.g. evcf bench --shape ml-20m " \
           "--models vamp --device cpu --params params.yaml --batch-size 500" in row.note


def test_a_cuda_figure_costs_the_pipelined_epoch(tmp_path):
    bench = _bench(tmp_path / "bench", device="cuda",
                   **{"mult-vae": {**FIGURE, "batch_size": 500, "epoch_s": 100.0, "pipelined_epoch_s": 60.0}})
    config = load_config(PARAMS, ["datasets=[ml-20m]", "models=[mult-vae]", "seeds=[1]"])
    (row,) = make_plan(config, device="cuda", figures=bench_figures(bench))
    assert row.hours[None] * 3600 == pytest.approx(200 * (60 + 100) + 100)
    assert "pipelined epoch (CUDA)" in row.notes


def test_a_figure_of_another_network_is_not_used(tmp_path):
    bench = _bench(tmp_path / "bench", vamp={**FIGURE, "hparams": {"hidden_size": 50}})
    config = load_config(PARAMS, ["datasets=[ml-20m]", "models=[vamp]"])
    (row,) = make_plan(config, device="cpu", figures=bench_figures(bench))
    assert row.hours == {} and row.uncosted == 16 and "hidden_size=600" in row.note


def test_the_figure_that_recorded_the_runs_settings_is_preferred(tmp_path):
    """SLIM: a figure from before warm starts (nothing recorded) and one measured along the warm path;
    a warm-started run uses the second, a cold one the first (the second is of another search)."""
    bench = _bench(tmp_path / "bench", slim={"fit_s_extrapolated": 1000.0})
    (bench / "later.json").write_text(json.dumps({
        "device": "cpu", "shape": {"name": "ml-20m"}, "eval_users": 1000,
        "models": {"slim": {"fit_s_extrapolated": 400.0, "hparams": {"warm_start": True}}}}))
    for warm, fit_s in ((True, 400.0), (False, 1000.0)):
        config = load_config(PARAMS, ["datasets=[ml-20m]", "models=[slim]",
                                      f"model_params={{slim: {{model: {{warm_start: {str(warm).lower()}}}}}}}"])
        (row,) = make_plan(config, device="cpu", figures=bench_figures(bench))
        assert row.unit == "run" and row.epoch_h == pytest.approx(fit_s * 16 / 3600), (warm, row.note)


def test_the_papers_defaults(tmp_path):
    out = _plan()
    assert out.returncode == 0, out.stderr
    # 300 grid points over the two datasets (per dataset: 32 for each of the three gated/EVCF-recipe
    # rows and H+Vamp, 16 for Vamp, 6 for RecVAE); 33 train_model jobs per dataset (10 seeded rows x
    # 3 seeds + 3 seedless), of which the 6 searched rows' first seeds copy their winner's run
    assert "jobs: 300 search (tune_point), 66 Table 1 runs (train_model): 54 trained, 12 copied" in out.stdout
    assert re.search(r"hours on cpu, one job after another: [\d,.]+ h \([\d,.]+ days\) under tuning: full, "
                     r"[\d,.]+ h \([\d,.]+ days\) under tuning: halving", unwrapped(out.stdout))
    # for people: 120 columns, hours in hours only (no minutes mixed in), the notes as footnotes
    lines = out.stdout.splitlines()
    assert max(map(len, lines)) <= 120
    header = next(line for line in lines if line.startswith("dataset"))
    rows = lines[lines.index(header) + 2:]
    rows = rows[:rows.index("")]
    assert len(rows) == 26 and not any("min" in row for row in rows)
    assert re.search(r"^\[1\] ", out.stdout, re.M)
    kept, before = map(float, re.search(r"disk kept by finished runs \(train.weights\): ([\d.,]+) GB; the same "
                                        r"runs' checkpoints before this policy: ([\d.,]+) GB",
                                        unwrapped(out.stdout).replace(",", "")).groups())
    assert 0 < kept < before / 4


def test_a_device_without_figures_is_refused(tmp_path):
    out = _plan(bench=_bench(tmp_path / "bench", **{"mult-vae": FIGURE}), device="cuda")
    assert out.returncode == 2 and out.stdout == ""
    assert "no evcf bench figures for device 'cuda'" in out.stderr and "gpu_check.sh" in out.stderr


def test_bad_overrides_are_refused():
    out = _plan("tuning=maybe")
    assert out.returncode == 2 and "tuning: 'maybe' is not allowed" in out.stderr and "full, halving, false" in out.stderr
    with pytest.raises(EvcfError, match="halving cuts a search by epochs, and ease has none"):
        load_config(PARAMS, ["tuning=halving", "tune={default: {ease: {model.lambdas: [[1.0], [2.0]]}}}"])
    with pytest.raises(EvcfError, match="unknown dataset 'nope'"):
        load_config(PARAMS, ["tune_from={netflix: nope}"])


def test_a_whole_fit_counts_and_a_skipped_model_says_why(tmp_path):
    """Popularity's fit is timed whole (fit_s, no extrapolation): one setting, fit + validation of
    10,000 users at 2 s per 1,000.  EASE skipped by the bench: the row gives the bench's reason."""
    bench = _bench(tmp_path / "bench", popularity={"epoch_s": None, "fit_s": 0.5, "eval_s": 2.0},
                   ease={"epoch_s": None, "note": "skipped: too many items to invert here"})
    config = load_config(PARAMS, ["datasets=[ml-20m]", "models=[popularity, ease]"])
    rows = {r.model: r for r in make_plan(config, device="cpu", figures=bench_figures(bench))}
    # the fit, its validation, and each job's test evaluation (no start-up figure here)
    assert rows["popularity"].unit == "run" and rows["popularity"].epoch_h == pytest.approx((0.5 + 20.0 + 20.0) / 3600)
    assert rows["ease"].epoch_h is None and rows["ease"].note == "no figure: the bench skipped: too many items to invert here"


def test_a_fit_that_selects_its_epoch_counts_a_validation_after_every_epoch(tmp_path):
    """CDAE validates after each of its epochs: per setting, the fit plus 200 validations of 10,000
    users at 3 s per 1,000 (by hand: 1,000 + 200 x 30 = 7,000 s), times its settings."""
    from evcf.models import build_model

    bench = _bench(tmp_path / "bench", cdae={"epoch_s": 5.0, "fit_s_extrapolated": 1000.0, "eval_s": 3.0})
    config = load_config(PARAMS, ["datasets=[ml-20m]", "models=[cdae]"])
    (row,) = make_plan(config, device="cpu", figures=bench_figures(bench))
    assert build_model("cdae", 100).config.epochs == 200  # params.yaml's ML-20M recipe keeps the default
    # five weight decays searched in the run (params.yaml model_params.cdae)
    assert row.epoch_h == pytest.approx(((1000.0 + 200 * 30.0) * 5 + 30.0) / 3600), row.note  # + the test evaluation
    assert "5 settings fitted in each run; validated after each of 200 epochs" in row.note


def test_the_quick_start_is_costed_row_by_row_from_the_committed_synthetic_figures():
    """results/bench/cpu-synthetic.json (evcf bench --shape synthetic --params params.yaml: the
    quick start's own split and recipes) costs every row of `--config datasets=[synthetic]`, in
    minutes (every row is under an hour), the total in hours and minutes.  A recipe changed in
    params.yaml since the figures were measured (another batch size or network) shows here as an
    uncosted row: rerun that bench command."""
    out = _plan("datasets=[synthetic]")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    header = next(line for line in lines if line.startswith("dataset"))
    assert "full (min)" in header and "halving (min)" in header and max(map(len, lines)) <= 120
    rows = lines[lines.index(header) + 2:]
    rows = [re.split(r"\s{2,}", row) for row in rows[:rows.index("")]]
    assert len(rows) == 13 and {row[0] for row in rows} == {"synthetic"}
    for row in rows:
        assert re.fullmatch(r"[\d,]+\.\d", row[6]) and re.fullmatch(r"[\d,]+\.\d", row[7]), row  # costed
    assert "not counted" not in out.stdout
    assert re.search(r"hours on cpu, one job after another: [\d.]+ h \(\d+ min\) under tuning: full", out.stdout)
