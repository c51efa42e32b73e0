"""Both front-ends, run for real on a tiny synthetic configuration in a temporary copy."""

from __future__ import annotations

import copy
import hashlib
import html as html_lib
import json
import os
import shutil
import subprocess

import pandas as pd
import pytest

import re

import yaml

from conftest import TINY_GRID, copy_run, dump_params, make_workflow_copy, run, tool

pytestmark = pytest.mark.slow

RUN = "results/synthetic-tiny/{model}/seed-1"
TIMING_KEYS = {"wall_seconds"}


def _metrics(root, model):
    data = json.loads((root / RUN.format(model=model) / "metrics.json").read_text())
    return {k: v for k, v in data.items() if k not in TIMING_KEYS}


# a small grid (conftest.TINY_GRID), so that both front-ends run the search and train the table's
# runs with its winner
GRID = TINY_GRID


@pytest.fixture(scope="module")
def snakemake_run(tiny_run, tmp_path_factory):
    """The session's finished tiny run (`snakemake --cores 2 all`, conftest.tiny_run), copied."""
    return copy_run(tiny_run, tmp_path_factory.mktemp("smk") / "wf")


def test_snakemake_all_produces_every_output(snakemake_run):
    root = snakemake_run
    processed = root / "data/processed/synthetic-tiny"
    stats = json.loads((processed / "stats.json").read_text())
    assert stats["n_heldout_users"] == 40
    assert stats["validation_te"]["users"] > 0 and stats["test_te"]["interactions"] > 0
    for model in ("mult-vae", "popularity"):
        run_dir = root / RUN.format(model=model)
        m = json.loads((run_dir / "metrics.json").read_text())
        for key in ("recall@20", "recall@50", "ndcg@100"):
            assert 0.0 < m[key] <= 1.0 and m[f"{key}_se"] > 0
        per_user = pd.read_csv(run_dir / "per_user.csv")
        assert len(per_user) == m["n_test_users"]
        assert per_user["ndcg@100"].mean() == pytest.approx(m["ndcg@100"], abs=1e-5)
        history = pd.read_csv(run_dir / "history.csv")
        assert list(history.columns) == ["epoch", "train_loss", "beta", "val_ndcg@100", "seconds"]
        assert (root / f"logs/train_model/synthetic-tiny/{model}/seed-1.log").exists()
        assert (root / f"benchmarks/train_model/synthetic-tiny/{model}/seed-1.tsv").exists()
    vae = json.loads((root / RUN.format(model="mult-vae") / "metrics.json").read_text())
    assert vae["epochs_run"] == 3 and 1 <= vae["best_epoch"] <= 3
    assert len(pd.read_csv(root / RUN.format(model="mult-vae") / "history.csv")) == 3
    table = (root / "reports/synthetic-tiny/table1.md").read_text()
    assert "Mult-VAE" in table and "Popularity" in table
    # the self-contained HTML report holds the table and the plots
    run([tool("snakemake"), "--cores", "1", "--report", "reports/report.html", "all"], cwd=root)
    html = (root / "reports/report.html").read_bytes()
    assert len(html) > 50_000 and b"metrics_synthetic-tiny.png" in html
    # a second invocation has nothing to do
    again = run([tool("snakemake"), "--cores", "2", "all", "--dry-run"], cwd=root)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_dvc_repro_gives_the_same_metrics(snakemake_run, tmp_path):
    root = make_workflow_copy(tmp_path / "dvc", tune=GRID)
    run(["git", "init", "-q"], cwd=root)
    run([tool("dvc"), "init", "-q"], cwd=root)
    run([tool("dvc"), "repro"], cwd=root)
    for model in ("mult-vae", "popularity"):
        assert _metrics(root, model) == _metrics(snakemake_run, model)
        ours = pd.read_csv(root / RUN.format(model=model) / "per_user.csv")
        theirs = pd.read_csv(snakemake_run / RUN.format(model=model) / "per_user.csv")
        pd.testing.assert_frame_equal(ours, theirs)
    assert (root / "reports/synthetic-tiny/table1.md").exists()
    # the same search, the same winner, applied by itself in both front-ends
    tune = "results/tune/synthetic-tiny/mult-vae"
    pd.testing.assert_frame_equal(pd.read_csv(root / tune / "summary.csv"),
                                  pd.read_csv(snakemake_run / tune / "summary.csv"))
    assert _metrics(root, "mult-vae")["tuning"]["source"] == "search"
    shown = run([tool("dvc"), "metrics", "show", "--json"], cwd=root)
    assert "ndcg@100" in shown.stdout
    plots = json.loads(run([tool("dvc"), "plots", "show", "--json"], cwd=root).stdout)
    assert "reports/synthetic-tiny/plots/metrics_synthetic-tiny.png" in plots["data"]
    status = run([tool("dvc"), "status"], cwd=root)
    assert "up to date" in status.stdout.lower()


def test_config_overrides_on_the_command_line(snakemake_run):
    # --config replaces the top-level lists; a dry run shows which jobs would run
    out = run([tool("snakemake"), "--cores", "2", "all", "--dry-run", "--config", "models=[mult-vae]", "seeds=[1,2]"],
              cwd=snakemake_run)
    text = out.stdout + out.stderr
    assert "results/synthetic-tiny/mult-vae/seed-2/metrics.json" in text
    assert "popularity" not in text.split("Job stats")[-1]


def test_dvc_exp_run_downloads_a_grouplens_archive(tmp_path):
    """`dvc exp run -S 'datasets=[ml-100k]'` through the real download rule, served from 127.0.0.1."""
    from grouplens_fixtures import make_ml100k_zip, random_ratings, serve_directory

    served = tmp_path / "server"
    served.mkdir()
    archive = make_ml100k_zip(served / "ml-100k.zip",
                              random_ratings(4, n_users=400, n_items=150, n_rows=16000, half_stars=False))
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    root = make_workflow_copy(tmp_path / "dvc")
    run(["git", "init", "-q"], cwd=root)
    run([tool("dvc"), "init", "-q"], cwd=root)
    run(["git", "add", "-A"], cwd=root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], cwd=root)
    with serve_directory(served) as url:
        run([tool("dvc"), "exp", "run", "-S", "datasets=[ml-100k]", "-S", "models=[popularity]",
             "-S", f"data.ml-100k.url={url}/ml-100k.zip", "-S", f"data.ml-100k.md5={md5}"],
            cwd=root)
    metrics = json.loads((root / "results/ml-100k/popularity/seed-1/metrics.json").read_text())
    assert metrics["dataset"] == "ml-100k" and 0 < metrics["ndcg@100"] < 1
    assert (root / "data/raw/ml-100k/ml-100k.zip").read_bytes() == (served / "ml-100k.zip").read_bytes()
    shown = run([tool("dvc"), "exp", "show", "--json"], cwd=root)
    assert "ml-100k" in shown.stdout


def test_grid_winners_train_table1_and_a_grid_change_reruns_only_its_row(tiny_run, tmp_path):
    grid = copy.deepcopy(TINY_GRID)  # the finished run's grid: train.lr 0.001, 0.01 at hidden size 32
    root = copy_run(tiny_run, tmp_path / "wf")
    tune_dir = root / "results/tune/synthetic-tiny/mult-vae"
    summary = pd.read_csv(tune_dir / "summary.csv")
    assert list(summary["point"]) == [0, 1]
    assert list(summary["train.lr"]) == [0.001, 0.01]
    for _, row in summary.iterrows():
        metrics = json.loads((tune_dir / f"point-{row['point']}" / "metrics.json").read_text())
        assert row["validation_ndcg@100"] == pytest.approx(metrics["validation_ndcg@100"], abs=1e-6)
        # each grid point trained with its own settings, on the first seed
        assert metrics["identity"]["train"]["lr"] == row["train.lr"] and metrics["seed"] == 1
    assert summary["selected"].sum() == 1
    winner = summary.loc[summary["selected"]].iloc[0]
    assert winner["validation_ndcg@100"] == summary["validation_ndcg@100"].max()
    # the Table 1 run trained with the winner, by itself, and says so
    table_run = json.loads((root / RUN.format(model="mult-vae") / "metrics.json").read_text())
    assert table_run["identity"]["train"]["lr"] == winner["train.lr"]
    assert table_run["identity"]["hparams"]["hidden_size"] == 32
    assert table_run["tuning"]["source"] == "search"
    assert table_run["tuning"]["setting"] == {"train.lr": winner["train.lr"], "model.hidden_size": 32}
    popularity = json.loads((root / RUN.format(model="popularity") / "metrics.json").read_text())
    assert popularity["tuning"]["source"] == "params.yaml"  # no grid: params.yaml as written
    table = (root / "reports/synthetic-tiny/table1.md").read_text()
    assert "grid search (validation NDCG@100)" in table and "params.yaml (no grid)" in table
    # a new grid point: only that point, the summary and mult-vae's runs rerun
    grid["synthetic-tiny"]["mult-vae"]["train.lr"].append(0.003)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["tune"] = grid
    dump_params(root / "params.yaml", params)
    dry = run([tool("snakemake"), "--cores", "2", "all", "--dry-run"], cwd=root)
    stats = dry.stdout.split("Job stats:")[1].split("\n\n")[0]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", stats, re.M))
    assert counts.get("tune_point") == "1" and counts.get("summarize_tuning") == "1", stats
    assert counts.get("train_model") == "1" and counts.get("collect_runs") == "1", stats
    assert "point-2" in dry.stdout and "popularity/seed-1" not in dry.stdout.split("Job stats:")[2]
    # tuning off: no search; the runs use params.yaml as written
    off = run([tool("snakemake"), "--cores", "2", "all", "--dry-run", "--config", "tuning=false"], cwd=root)
    assert "rule tune_point:" not in off.stdout


BROWSER_PROBE = """<script>
(function () {
  var errors = [];
  window.addEventListener("error", function (e) {  // script errors and, in the capture phase, failed resources
    errors.push(e.message || ("failed to load " + (e.target && (e.target.src || e.target.href))));
  }, true);
  var consoleError = console.error;
  console.error = function () { errors.push(Array.prototype.join.call(arguments, " ")); consoleError.apply(console, arguments); };
  window.addEventListener("load", function () {
    setTimeout(function () {
      var images = Array.prototype.slice.call(document.images);
      var broken = images.filter(function (img) { return !(img.complete && img.naturalWidth > 0); });
      document.title = "EVCF-PROBE " + JSON.stringify({images: images.length, broken: broken.length,
        errors: errors, text: document.body ? document.body.innerText.length : 0});
    }, 2000);
  });
})();
</script>"""


def _open_in_chromium(page, tmp_path):
    """Load ``page`` in headless Chromium with a probe script first in its <head>; what it saw."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed: .ci/run installs Debian's chromium in CI")
        pytest.skip("needs Debian's chromium (apt-get install chromium); .ci/run installs it in CI")
    html = page.read_text(encoding="utf-8")
    head = html.lower().find("<head>")
    probed = tmp_path / page.name
    probed.write_text(html[:head + 6] + BROWSER_PROBE + html[head + 6:] if head >= 0 else BROWSER_PROBE + html,
                      encoding="utf-8")
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=15000",
                           "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=180)
    found = re.search(r"<title>EVCF-PROBE (.*?)</title>", proc.stdout, re.S)
    assert found, f"the page did not finish loading in chromium:\n{proc.stderr[-2000:]}"
    return json.loads(html_lib.unescape(found.group(1)))


@pytest.mark.parametrize("page", ["reports/synthetic-tiny/table1.html", "reports/report.html"])
def test_the_html_pages_render_in_a_browser(snakemake_run, tmp_path, page):
    """table1.html and Snakemake's report, opened in a real headless browser: they render (text on
    the page), every image loads, and nothing is written to the console as an error."""
    root = snakemake_run
    if not (root / page).exists():
        run([tool("snakemake"), "--cores", "1", "--report", "reports/report.html", "all"], cwd=root)
    seen = _open_in_chromium(root / page, tmp_path)
    assert seen["text"] > 200, seen
    assert seen["broken"] == 0, seen
    assert seen["errors"] == [], seen
