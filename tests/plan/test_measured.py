"""`evcf plan --measured`: a finished run's costs recorded row by row, what the plan takes from such
a record (how soon early stopping ends a fit), and the quick start's plan against the committed
record of a measured quick start."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from evcf.cli import main
from evcf.errors import EvcfError
from evcf.plan import bench_figures, load_config, make_plan
from evcf.plan.measured import compare, load_records, record_run

REPO = Path(__file__).resolve().parents[2]
PARAMS = REPO / "params.yaml"
RECORD = REPO / "results/bench/quickstart-synthetic.json"
TOLERANCE = 0.30  # the plan's row against the measured row: within 30%

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _job(root: Path, step: str, model: str, name: str, seconds: float, metrics: dict, tuning: str | None = None,
         cpu: float = 90.0):
    folder = root / ("results/tune/synthetic" if step == "tune_point" else "results/synthetic") / model / name
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    if tuning is not None:
        (folder / "tuning.csv").write_text(tuning)
    bench = root / "benchmarks" / step / "synthetic" / model / f"{name}.tsv"
    bench.parent.mkdir(parents=True, exist_ok=True)
    bench.write_text(HEADER + f"{seconds}\t0:00:00\t1\t1\t1\t1\t0\t0\t{cpu}\t1\n")


def _finished_run(root: Path, cpu: float = 90.0) -> Path:
    """A run of CDAE (seeds 1 and 2, each fitting its three weight decays, stopped early at 40, 60 and
    80 of 200 epochs) and Mult-VAE-EVCF (three grid points, seeds 1 and 2, the first a copy of point 2)."""
    cdae = {"epochs": 200, "patience": 10}
    for seed in (1, 2):
        _job(root, "train_model", "cdae", f"seed-{seed}", 90.0,
             {"wall_seconds": 84.0, "identity": {"hparams": cdae}}, cpu=cpu,
             tuning="weight_decay,best_epoch,epochs_run,val_ndcg@100,selected\n1,30,40,0.1,False\n"
                    "10,50,60,0.2,True\n100,70,80,0.1,False\n")
    vae = {"wall_seconds": 14.0, "epochs_run": 30, "identity": {"train": {"epochs": 30, "patience": 0}}}
    for i in range(3):
        _job(root, "tune_point", "mult-vae-evcf", f"point-{i}", 20.0, vae, cpu=cpu)
    _job(root, "train_model", "mult-vae-evcf", "seed-1", 3.0, {**vae, "reused_from": "point-2", "wall_seconds": 0.5},
         cpu=cpu)
    _job(root, "train_model", "mult-vae-evcf", "seed-2", 20.0, vae, cpu=cpu)
    return root


SELECTION = ["datasets=[synthetic]", "models=[cdae, mult-vae-evcf]", "seeds=[1, 2]"]


def test_a_finished_run_is_recorded_row_by_row(tmp_path, capsys):
    """By hand: each job's seconds from Snakemake's benchmark, its run's from metrics.json, the
    epochs of each fit (CDAE's from tuning.csv), and the copy marked."""
    run = _finished_run(tmp_path / "run")
    with pytest.raises(EvcfError, match="0 grid points and 2 Table 1 runs finished, the selection has 0 and 3"):
        record_run(run, load_config(PARAMS, [*SELECTION, "seeds=[1, 2, 3]"]), command="x")  # seed 3 never ran
    with pytest.raises(EvcfError, match="a halving run is not recorded"):
        record_run(run, load_config(PARAMS, [*SELECTION, "tuning=halving"]), command="x")
    record = record_run(run, load_config(PARAMS, SELECTION), command="evcf plan --measured run")
    # the command: the same record written, and the measured rows printed beside the plan
    out = tmp_path / "record.json"
    assert main(["plan", "--params", str(PARAMS), "--bench", str(RECORD.parent), "--config", *SELECTION, "--measured", str(run),
                 "--write", str(out)]) == 0
    assert json.loads(out.read_text())["rows"] == record["rows"]
    assert re.search(r"^synthetic/cdae\s+[\d.]+\s+3\.0\s+[-+]\d+%$", capsys.readouterr().out, re.M)
    cdae = record["rows"]["synthetic/cdae"]["jobs"][0]
    assert cdae == {"step": "train_model", "name": "seed-1", "seconds": 90.0, "cpu_percent": 90.0, "run_seconds": 84.0,
                    "reused": False, "fit_epochs": [40, 60, 80], "epochs_bound": 200, "patience": 10}
    assert record["kind"] == "measured run" and record["command"] == "evcf plan --measured run"
    assert record["snakemake"] is None  # no Snakemake log here; a run's says how many jobs ran at a time
    log = run / ".snakemake/log/2026-01-01T000000.000000.snakemake.log"
    log.parent.mkdir(parents=True)
    log.write_text("Command: snakemake --cores 1 all\nProvided cores: 1 (use --cores to define parallelism)\n")
    assert record_run(run, load_config(PARAMS, SELECTION), command="x")["snakemake"] == {
        "log": log.name, "command": "snakemake --cores 1 all", "cores": 1}
    vae = record["rows"]["synthetic/mult-vae-evcf"]
    assert [(j["step"], j["name"], j["seconds"], j["reused"]) for j in vae["jobs"]] == [
        ("tune_point", "point-0", 20.0, False), ("tune_point", "point-1", 20.0, False),
        ("tune_point", "point-2", 20.0, False), ("train_model", "seed-1", 3.0, True),
        ("train_model", "seed-2", 20.0, False)]
    assert vae["seconds"] == 83.0


@pytest.mark.parametrize("cpu", [90.0, 20.0])
def test_the_plan_takes_early_stopping_and_a_jobs_overhead_from_a_record(tmp_path, cpu):
    """By hand.  The record's quickest job took 20 s (the copy's 3 s left out): where its jobs had a
    CPU each (90%), every job costs those 20 s whatever it trains + its test evaluation (0.1 s x 300
    / 100 users = 0.3 s); where they shared it (20%: their seconds measure the load), the bench's 2 s
    start-up instead.  CDAE's fits ran 40, 60 and 80 of 200 epochs,
    whatever the load: 30% of the bound, so a fit costs 30% of the bench's 200-epoch fit (100 s)
    and 60 validations (0.3 s each), times its 3 weight decays; the bound's hours are kept beside.
    Mult-VAE-EVCF (no patience): 3 points and one more seed at 30 epochs x (1 + 0.3) s, each job +
    its start-up and test evaluation, and the first seed's copy of the winner, a job's start-up."""
    run = _finished_run(tmp_path / "run", cpu=cpu)
    config = load_config(PARAMS, SELECTION)
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "cpu-synthetic.json").write_text(json.dumps({
        "device": "cpu", "shape": {"name": "synthetic", "items": 800}, "eval_users": 100,
        "job_startup": {"seconds": 2.0},
        "models": {"cdae": {"fit_s_extrapolated": 100.0, "eval_s": 0.1, "batch_size": 100},
                   "mult-vae-evcf": {"epoch_s": 1.0, "eval_s": 0.1, "batch_size": 50}}}))
    figures = bench_figures(bench)
    plain = {r.model: r for r in make_plan(config, device="cpu", figures=figures)}
    assert plain["cdae"].hours["full"] * 3600 == pytest.approx(2 * ((100 + 200 * 0.3) * 3 + 2 + 0.3))
    (bench / "quickstart-synthetic.json").write_text(json.dumps(record_run(run, config, command="x")))
    records = load_records(bench)
    rows = {r.model: r for r in make_plan(config, device="cpu", figures=figures, records=records)}
    assert config["data"]["synthetic"]["model_params"]["cdae"]["model"]["patience"] == 10  # the record's
    start = 20.0 if cpu == 90.0 else 2.0
    assert rows["cdae"].hours["full"] * 3600 == pytest.approx(2 * ((30 + 60 * 0.3) * 3 + start + 0.3))
    assert rows["cdae"].bound_hours["full"] * 3600 == pytest.approx(2 * ((100 + 200 * 0.3) * 3 + start + 0.3))
    assert "each fit at 30% of its 200 epochs, as the recorded run's (quickstart-synthetic.json)" in rows["cdae"].note
    assert ("each job: 20.0 s whatever it trains" in rows["cdae"].note) == (cpu == 90.0)
    vae = rows["mult-vae-evcf"]
    assert vae.bound_hours == {}  # no patience: its epochs are what it runs
    assert vae.hours["full"] * 3600 == pytest.approx(4 * (30 * 1.3 + start + 0.3) + start)
    # the record's rows beside the plan's, under the mode they were measured in
    assert compare(list(rows.values()), records, "full") == [
        ("synthetic/cdae", pytest.approx(rows["cdae"].hours["full"] * 3600), 180.0, "quickstart-synthetic.json"),
        ("synthetic/mult-vae-evcf", pytest.approx(vae.hours["full"] * 3600), 83.0, "quickstart-synthetic.json")]
    assert compare(list(rows.values()), records, "halving") == []


def _quick_start():
    config = load_config(PARAMS, ["datasets=[synthetic]"])
    records = load_records(RECORD.parent)
    rows = make_plan(config, device="cpu", figures=bench_figures(RECORD.parent), records=records)
    return config, rows, records


def test_the_quick_starts_jobs_are_the_recorded_runs_row_by_row():
    """results/bench/quickstart-synthetic.json is README command 1's run, recorded by the command it
    holds.  The plan counts each row's jobs as that run ran them: its grid points (tune_point), its
    Table 1 runs, and for a searched row the first seed's copy of the winner."""
    record = json.loads(RECORD.read_text())
    assert record["command"].startswith("evcf plan --config 'datasets=[synthetic]' --measured ")
    assert record["snakemake"]["cores"] == 1  # one job after another, as the plan's hours are
    config, rows, records = _quick_start()
    assert {f"{r.dataset}/{r.model}" for r in rows} == set(records) == {f"synthetic/{m}" for m in config["models"]}
    for row in rows:
        jobs = records[f"{row.dataset}/{row.model}"][0]["jobs"]
        steps = [j["step"] for j in jobs]
        assert steps.count("tune_point") == row.search_jobs, row.model
        copies = sum(j["reused"] for j in jobs)
        assert (steps.count("train_model") - copies, copies) == (row.table_jobs, row.copied_jobs), row.model


def test_the_quick_start_plan_is_within_30_percent_of_the_measured_quick_start_row_by_row():
    """The plan of the quick start, from results/bench's figures and the record, puts every row within
    30% of its measured seconds (each row: its grid points' jobs and its Table 1 jobs, the copy
    included).  The record is the quick start run one job after another (--cores 1) on the idle
    machine that measured the bench figures, right after them; its jobs had a CPU each.  A row
    costed at twice (or half) its time fails here."""
    config, rows, records = _quick_start()
    pairs = compare(rows, records, "full")
    assert {key for key, *_ in pairs} == {f"synthetic/{m}" for m in config["models"]}  # every row measured
    off = {key: f"plan {plan:.0f} s, measured {measured:.0f} s" for key, plan, measured, _ in pairs
           if abs(plan / measured - 1) > TOLERANCE}
    assert not off, off
