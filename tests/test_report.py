"""Tests of evcf.report: Table 1, significance tests, plots and summary from hand-made run folders."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from evcf.errors import EvcfError
from evcf.report import make_report
from evcf.report.stats import holm, paired_tests
from evcf.report.table import canonical_model, model_label, order_datasets, order_models

METRICS = ("recall@20", "recall@50", "ndcg@100")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Transcribed from shared/reference/TABLE1.md (ML-20M: R@20, R@50, N@100).
TABLE1_ML20M = {
    "mult-dae": (0.387, 0.524, 0.419),
    "mult-vae": (0.395, 0.537, 0.426),
    "hvamp-gated": (0.41308, 0.55109, 0.44522),
}

UIDS = np.array([100 + 3 * i for i in range(30)])
BASE = np.random.default_rng(7).uniform(0.1, 0.6, size=(30, 3))  # (users, metrics)


def per_user_values(model: str, seed: int) -> np.ndarray:
    """Per-user metrics (users, 3) for a run, chosen so the significance outcome is known.

    mult-dae equals mult-vae exactly (all differences zero → p = 1); hvamp-gated is clearly better;
    the others are noisy variations.
    """
    rng = np.random.default_rng(1000 * seed + sum(map(ord, model)))
    if model in ("mult-vae", "mult-dae"):
        rng = np.random.default_rng(1000 * seed)
        values = BASE + rng.normal(0, 0.01, BASE.shape)
    elif model == "hvamp-gated":
        values = BASE + 0.15 + rng.normal(0, 0.01, BASE.shape)
    else:
        values = BASE * rng.uniform(0.5, 1.2) + rng.normal(0, 0.05, BASE.shape)
    return np.clip(values, 0.0, 1.0)


def write_run(root: Path, dataset: str, model: str, seed: int, *, iterative: bool = True,
              wall_seconds: float = 10.0) -> Path:
    folder = root / "results" / dataset / model / f"seed-{seed}"
    folder.mkdir(parents=True)
    values = per_user_values(model, seed)
    order = np.random.default_rng(seed).permutation(len(UIDS))  # rows in a different order per run
    per_user = pd.DataFrame(values[order], columns=list(METRICS))
    per_user.insert(0, "uid", UIDS[order])
    per_user.to_csv(folder / "per_user.csv", index=False)
    metrics = {"dataset": dataset, "model": model, "seed": seed,
               **{m: float(values[:, j].mean()) for j, m in enumerate(METRICS)},
               **{f"{m}_se": 0.01 for m in METRICS},
               "validation_ndcg@100": 0.3, "n_test_users": len(UIDS), "best_epoch": 3,
               "epochs_run": 5 if iterative else 1, "wall_seconds": wall_seconds, "device": "cpu",
               "evcf_version": "0.1.0"}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    if iterative:
        epochs = 5 + seed  # seeds run different numbers of epochs (early stopping)
        history = pd.DataFrame({
            "epoch": range(1, epochs + 1),
            "train_loss": np.linspace(500, 400, epochs),
            "beta": np.nan if model == "mult-dae" else np.linspace(0.0, 0.2, epochs),
            "val_ndcg@100": np.linspace(0.1, 0.3, epochs) + 0.01 * seed,
            "seconds": 1.0,
        })
        history.to_csv(folder / "history.csv", index=False)
    else:
        (folder / "history.csv").write_text("epoch,train_loss,beta,val_ndcg@100,seconds\n0,,,0.25,0.5\n")
    return folder


# ml-20m: three paper models × 3 seeds, popularity with one seed; synthetic: mult-vae, ease, unknown.
RUNS = (
    [("ml-20m", m, s, True) for m in ("mult-vae", "mult-dae", "hvamp-gated") for s in (1, 2, 3)]
    + [("ml-20m", "popularity", 1, False)]
    + [("synthetic", "mult-vae", s, True) for s in (1, 2)]
    + [("synthetic", "ease", s, False) for s in (1, 2)]
    + [("synthetic", "zz_model", 1, True)]
)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("report")
    runs = [write_run(tmp_path, d, m, s, iterative=it, wall_seconds=10.0 + s) for d, m, s, it in RUNS]
    bench = tmp_path / "benchmarks" / "train_model" / "ml-20m"
    (bench / "popularity").mkdir(parents=True)
    (bench / "popularity" / "seed-1.tsv").write_text(
        "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
        "42.5\t0:00:42\t100.1\t200.2\tNA\tNA\t0.1\t0.2\t90.0\t40.0\n")
    (bench / "mult-vae").mkdir(parents=True)
    (bench / "mult-vae" / "seed-1.tsv").write_text(  # no usable `s`: falls back to wall_seconds
        "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
        "NA\t-\t-\t-\t-\t-\t-\t-\t-\t-\n")
    out = tmp_path / "out"
    written = make_report(runs, out, benchmarks_dir=tmp_path / "benchmarks")
    return {"root": tmp_path, "out": out, "written": written, "runs": runs}


def expected_stats(root: Path) -> dict[tuple[str, str, str], tuple[float, float, int]]:
    """Mean, sample std and n per (dataset, model, metric), straight from the metrics.json files."""
    values: dict[tuple[str, str, str], list[float]] = {}
    for path in root.glob("results/*/*/seed-*/metrics.json"):
        m = json.loads(path.read_text())
        for metric in METRICS:
            values.setdefault((m["dataset"], m["model"], metric), []).append(m[metric])
    return {k: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else math.nan, len(v))
            for k, v in values.items()}


def seed_averaged(dataset: str, model: str) -> pd.DataFrame:
    seeds = sorted({s for d, m, s, _ in RUNS if d == dataset and m == model})
    mean = np.mean([per_user_values(model, s) for s in seeds], axis=0)
    return pd.DataFrame(mean, index=UIDS, columns=list(METRICS))


def markdown_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]  # skip header+rule


# --- Table ----------------------------------------------------------------------------------------

def test_returns_every_written_file(report):
    written = report["written"]
    for name in ("table1.md", "table1.csv", "table1.tex", "significance.csv", "summary.json"):
        assert written[name] == report["out"] / name
    for dataset in ("ml-20m", "synthetic"):
        for stem in ("metrics", "learning_curves", "per_user_ndcg", "train_time"):
            for ext in ("png", "csv"):
                assert f"plots/{stem}_{dataset}.{ext}" in written
    assert all(p.is_file() for p in written.values())
    assert not list(report["out"].rglob(".*.tmp"))


def test_table_csv_ours_matches_metrics_json(report):
    table = pd.read_csv(report["out"] / "table1.csv")
    expected = expected_stats(report["root"])
    ours = table[table["status"] == "ours"]
    assert len(ours) == len(expected)
    for rec in ours.itertuples(index=False):
        mean, std, n = expected[(rec.dataset, rec.model, rec.metric)]
        assert rec.mean == pytest.approx(mean, abs=1e-12)
        assert rec.n == n
        if n == 1:
            assert math.isnan(rec.std)
        else:
            assert rec.std == pytest.approx(std, abs=1e-12)


def test_table_published_and_difference(report):
    table = pd.read_csv(report["out"] / "table1.csv")
    for rec in table.itertuples(index=False):
        if rec.dataset == "ml-20m" and rec.model in TABLE1_ML20M:
            published = TABLE1_ML20M[rec.model][METRICS.index(rec.metric)]
            assert rec.published == published
            assert rec.diff == pytest.approx(rec.mean - published)
        else:
            assert math.isnan(rec.published), rec
            assert math.isnan(rec.diff), rec
    md = (report["out"] / "table1.md").read_text()
    row = next(r for r in markdown_rows(md) if r[0] == "H+Vamp (Gated)")
    assert row[1:4][1] == "0.41308"  # ML-20M Recall@20 published, as printed in the paper
    mean = table.query("model == 'hvamp-gated' and dataset == 'ml-20m' and metric == 'recall@20'")["mean"]
    assert row[3] == f"{float(mean.iloc[0]) - 0.41308:+.4f}"
    synthetic_vae = next(r for r in markdown_rows(md) if r[0] == "Mult-VAE")
    assert synthetic_vae[10:13][1:] == ["n/a", "n/a"]  # Synthetic Recall@20: no published value


def test_table_row_order_separator_and_cells(report):
    md = (report["out"] / "table1.md").read_text()
    rows = markdown_rows(md)
    labels = [r[0] for r in rows]
    assert labels == ["WMF", "SLIM", "CDAE", "Mult-DAE", "Mult-VAE", "Mult-VAE (Gated)", "Vamp",
                      "H+Vamp", "H+Vamp (Gated)", "*additional baselines (not in the paper)*",
                      "Popularity", "EASE", "zz_model"]
    header = [c.strip() for c in md.splitlines()[2].strip("|").split("|")]
    assert header[1] == "ML-20M Recall@20" and header[10] == "Synthetic Recall@20"  # ML-20M first
    by_label = dict(zip(labels, rows))
    assert by_label["WMF"][1] == "cited, Liang et al. 2018" and by_label["WMF"][2] == "n/a"
    assert by_label["WMF"][10] == "—"  # not cited for other datasets
    assert by_label["Vamp"][1] == "—"  # no runs
    assert by_label["Popularity"][10] == "—"  # runs only on ml-20m
    assert "± — (n=1)" in by_label["Popularity"][1]
    assert "(n=3)" in by_label["Mult-VAE"][1]


def test_table_bold_on_best_and_significance_mark(report):
    table = pd.read_csv(report["out"] / "table1.csv")
    md = (report["out"] / "table1.md").read_text()
    rows = {r[0]: r for r in markdown_rows(md)}
    for (dataset, metric), group in table[table["status"] == "ours"].groupby(["dataset", "metric"]):
        col = 1 + 9 * order_datasets(table["dataset"].unique()).index(dataset) + 3 * METRICS.index(metric)
        best = group.loc[group["mean"].idxmax(), "label"]
        for label in group["label"]:
            assert rows[label][col].startswith("**") == (label == best), (dataset, metric, label)
    # hvamp-gated beats mult-vae on every user; mult-dae equals it (p = 1): mark only on the former.
    assert rows["H+Vamp (Gated)"][1].endswith("†")
    assert "†" not in rows["Mult-DAE"][1] and "†" not in rows["Mult-VAE"][1]
    assert any(line.startswith("† ") for line in md.splitlines())


def test_latex_booktabs_and_escaping(report):
    tex = (report["out"] / "table1.tex").read_text()
    for command in (r"\toprule", r"\midrule", r"\bottomrule", r"\textbf{", r"\begin{tabular}"):
        assert command in tex
    assert r"zz\_model" in tex and "zz_model" not in tex
    assert "±" not in tex and "†" not in tex and r"$\pm$" in tex
    assert r"\emph{additional baselines (not in the paper)}" in tex


def test_summary_json(report):
    summary = json.loads((report["out"] / "summary.json").read_text())
    expected = expected_stats(report["root"])
    assert list(summary) == ["ml-20m", "synthetic"]
    assert set(summary["ml-20m"]) == {"mult-vae", "mult-dae", "hvamp-gated", "popularity"}
    for dataset, models in summary.items():
        for model, values in models.items():
            assert values["n_seeds"] == expected[(dataset, model, "ndcg@100")][2]
            for metric in METRICS:
                assert values[metric] == pytest.approx(expected[(dataset, model, metric)][0])


# --- Significance -----------------------------------------------------------------------------------

def test_significance_matches_scipy(report):
    sig = pd.read_csv(report["out"] / "significance.csv")
    assert set(zip(sig["dataset"], sig["model"])) == {
        ("ml-20m", "mult-dae"), ("ml-20m", "hvamp-gated"), ("ml-20m", "popularity"),
        ("synthetic", "ease"), ("synthetic", "zz_model")}
    assert (sig["reference"] == "mult-vae").all() and (sig["n_users"] == len(UIDS)).all()
    for rec in sig.itertuples(index=False):
        x = seed_averaged(rec.dataset, rec.model)[rec.metric].to_numpy()
        y = seed_averaged(rec.dataset, "mult-vae")[rec.metric].to_numpy()
        d = x - y
        if rec.model == "mult-dae":
            assert rec.wilcoxon_p == 1.0 and rec.ttest_p == 1.0 and rec.mean_diff == 0.0
            continue
        assert rec.wilcoxon_p == pytest.approx(stats.wilcoxon(x, y).pvalue, rel=1e-9)
        assert rec.ttest_p == pytest.approx(stats.ttest_rel(x, y).pvalue, rel=1e-9)
        assert rec.mean_diff == pytest.approx(d.mean())
        assert rec.cohens_dz == pytest.approx(d.mean() / d.std(ddof=1))
    for (_, _), family in sig.groupby(["dataset", "metric"]):
        assert np.allclose(family["wilcoxon_p_holm"], holm(family["wilcoxon_p"]))
        assert (family["wilcoxon_p_holm"] >= family["wilcoxon_p"]).all()
    gated = sig[sig["model"] == "hvamp-gated"]
    assert (gated["wilcoxon_p_holm"] < 0.05).all() and (gated["rank_biserial"] == 1.0).all()


def test_holm_hand_worked():
    # sorted: 0.01·3 = 0.03; 0.03·2 = 0.06; 0.04·1 = 0.04 → monotone max 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    # capped at 1: 0.5·2 = 1.0, 0.6·1 = 0.6 → 1.0
    assert holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])
    # NaN stays NaN and does not count: m = 2
    out = holm([0.02, np.nan, 0.01])
    assert math.isnan(out[1]) and out[[0, 2]] == pytest.approx([0.02, 0.02])
    assert holm([]).size == 0


def test_paired_tests_effect_sizes_and_zero_differences():
    # d = [1, -2, 3, 0]: zero dropped, ranks of |d| = 1, 2, 3 → R+ = 4, R− = 2 → r = 1/3
    result = paired_tests([2.0, 0.0, 4.0, 1.0], [1.0, 2.0, 1.0, 1.0])
    assert result["rank_biserial"] == pytest.approx(1 / 3)
    assert result["mean_diff"] == pytest.approx(0.5)
    assert result["cohens_dz"] == pytest.approx(0.5 / np.std([1, -2, 3, 0], ddof=1))
    same = paired_tests([0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    assert same["wilcoxon_p"] == 1.0 and same["ttest_p"] == 1.0 and same["rank_biserial"] == 0.0


def test_reference_absent_writes_header_only(tmp_path, caplog):
    runs = [write_run(tmp_path, "synthetic", "ease", s, iterative=False) for s in (1, 2)]
    with caplog.at_level("WARNING"):
        make_report(runs, tmp_path / "out")
    sig = (tmp_path / "out" / "significance.csv").read_text().splitlines()
    assert len(sig) == 1 and sig[0].startswith("dataset,metric,model,reference")
    assert "reference model 'mult-vae'" in caplog.text
    md = (tmp_path / "out" / "table1.md").read_text()
    assert "†" not in md and "No significance marks: Mult-VAE has no runs" in md


# --- Plots -------------------------------------------------------------------------------------------

def test_plots_are_png_with_data(report):
    plots = report["out"] / "plots"
    for png in plots.glob("*.png"):
        assert png.read_bytes()[:8] == PNG_MAGIC
    assert len(list(plots.glob("*.png"))) == 8

    metrics = pd.read_csv(plots / "metrics_ml-20m.csv")
    assert list(metrics.columns[:7]) == ["model", "label", "metric", "mean", "std", "n", "published"]
    assert len(metrics) == 4 * 3
    assert metrics.query("model == 'mult-vae' and metric == 'ndcg@100'")["published"].item() == 0.426
    assert metrics.query("model == 'popularity'")["published"].isna().all()

    curves = pd.read_csv(plots / "learning_curves_ml-20m.csv")
    assert {"epoch", "model", "val_ndcg@100", "beta"} <= set(curves.columns)
    assert set(curves["model"]) == {"mult-vae", "mult-dae", "hvamp-gated"}  # popularity: closed form
    assert len(curves) == 3 * 8  # seeds run 6, 7, 8 epochs: union of epochs is 1..8
    vae = curves[curves["model"] == "mult-vae"].set_index("epoch")
    assert vae.loc[1, "n_seeds"] == 3 and vae.loc[8, "n_seeds"] == 1
    assert vae.loc[1, "val_ndcg@100"] == pytest.approx(0.1 + 0.02)  # mean of 0.11, 0.12, 0.13
    assert curves[curves["model"] == "mult-dae"]["beta"].isna().all()

    per_user = pd.read_csv(plots / "per_user_ndcg_synthetic.csv")
    assert list(per_user["model"]) == ["mult-vae", "ease", "zz_model"]
    assert (per_user["n_users"] == len(UIDS)).all()
    assert per_user.set_index("model").loc["ease", "median"] == pytest.approx(
        np.median(seed_averaged("synthetic", "ease")["ndcg@100"]))

    times = pd.read_csv(plots / "train_time_ml-20m.csv").set_index("model")
    assert times.loc["popularity", "mean_seconds"] == 42.5
    assert times.loc["popularity", "source"] == "benchmark"
    assert times.loc["mult-vae", "mean_seconds"] == pytest.approx(12.0)  # wall_seconds 11, 12, 13
    assert times.loc["mult-vae", "source"] == "wall_seconds"
    assert len(times) == 4


# --- Names -------------------------------------------------------------------------------------------

def test_names_and_order():
    assert model_label("hvamp-gated") == "H+Vamp (Gated)"
    assert model_label("mult-vae-gated") == "Mult-VAE (Gated)"
    assert model_label("h-vamp-gated") == "H+Vamp (Gated)" and canonical_model("h-vamp") == "hvamp"
    assert model_label("new-thing") == "new-thing"
    assert order_models(["b", "ease", "a", "vamp", "popularity", "mult-dae"]) == [
        "mult-dae", "vamp", "popularity", "ease", "a", "b"]
    assert order_datasets(["synthetic", "netflix", "ml-1m", "ml-20m"]) == [
        "ml-20m", "netflix", "ml-1m", "synthetic"]


# --- Bad input ---------------------------------------------------------------------------------------

def _assert_nothing_written(out: Path):
    assert not out.exists() or not any(out.rglob("*"))


def test_missing_metrics_json_raises_and_writes_nothing(tmp_path):
    good = write_run(tmp_path, "synthetic", "mult-vae", 1)
    bad = write_run(tmp_path, "synthetic", "ease", 1, iterative=False)
    (bad / "metrics.json").unlink()
    out = tmp_path / "out"
    with pytest.raises(EvcfError) as err:
        make_report([good, bad], out)
    assert str(bad / "metrics.json") in str(err.value) and "re-run the training" in str(err.value)
    _assert_nothing_written(out)


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON"),
    (json.dumps({"dataset": "synthetic", "model": "ease", "seed": 1, "recall@20": 0.1}), "recall@50"),
    (json.dumps({"dataset": "synthetic", "model": "ease", "seed": 1, "recall@20": "x",
                 "recall@50": 0.1, "ndcg@100": 0.1}), "recall@20"),
])
def test_malformed_metrics_json_raises(tmp_path, content, problem):
    good = write_run(tmp_path, "synthetic", "mult-vae", 1)
    bad = write_run(tmp_path, "synthetic", "ease", 1, iterative=False)
    (bad / "metrics.json").write_text(content)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(EvcfError, match=problem) as err:
        make_report([good, bad], out)
    assert str(bad / "metrics.json") in str(err.value)
    _assert_nothing_written(out)


def test_bad_per_user_and_duplicates_raise(tmp_path):
    run = write_run(tmp_path, "synthetic", "mult-vae", 1)
    with pytest.raises(EvcfError, match="same dataset/model/seed"):
        make_report([run, run], tmp_path / "out")
    (run / "per_user.csv").write_text("uid,recall@20\n1,0.5\n")
    with pytest.raises(EvcfError, match="missing column"):
        make_report([run], tmp_path / "out")
    with pytest.raises(EvcfError, match="no run folders"):
        make_report([], tmp_path / "out")
    _assert_nothing_written(tmp_path / "out")
