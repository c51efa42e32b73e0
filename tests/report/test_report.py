"""Tests of evcf.report: Table 1, significance tests, plots and summary from hand-made run folders."""

from __future__ import annotations

import html as html_module
import json
import math
import re
import statistics
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from evcf.errors import EvcfError
from evcf.report import make_report
from evcf.report import published as published_module
from evcf.report.published import load_published
from evcf.report.stats import holm, paired_tests
from evcf.report.latex import render_latex
from evcf.report.markdown import render_markdown
from evcf.report.rows import canonical_model, model_label, order_datasets, order_models
from evcf.report.table import build_table

REPO = Path(__file__).resolve().parents[2]
METRICS = ("recall@20", "recall@50", "ndcg@100")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PAPER_ORDER = ["WMF", "SLIM", "CDAE", "Mult-DAE", "Mult-VAE", "Mult-VAE (Gated)", "Vamp", "H+Vamp",
               "H+Vamp (Gated)"]
SEPARATOR = "*not in the paper's Table 1:*"
SYN = "Synthetic (generated, no published values)"  # (issue 26) a generated dataset says so in every title


def published_in_file(path: Path = REPO / "evcf/report/published.yaml") -> dict:
    """(dataset, model) -> ((r20, r50, n100), citation), read from the data file without evcf."""
    data = yaml.safe_load(path.read_text())
    return {(e["dataset"], e["model"]): (tuple(e[m] for m in METRICS), data["sources"][e["source"]])
            for e in data["values"]}


TOLERANCE = {"ml-20m": 0.002, "netflix": 0.001}  # params.yaml's report.tolerance, as the CLI passes it

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


# ml-20m: three paper models × 3 seeds, popularity fitted once (n = 1); synthetic: mult-vae,
# EASE fitted once, and two models the table does not know (an ablation and a made-up name).
RUNS = (
    [("ml-20m", m, s, True) for m in ("mult-vae", "mult-dae", "hvamp-gated") for s in (1, 2, 3)]
    + [("ml-20m", "popularity", 1, False)]
    + [("synthetic", "mult-vae", s, True) for s in (1, 2)]
    + [("synthetic", "ease", 1, False)]
    + [("synthetic", "zz_model", 1, True)]
    + [("synthetic", "aa_model", s, True) for s in (1, 2)]
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
    written = make_report(runs, out, benchmarks_dir=tmp_path / "benchmarks", tolerance=TOLERANCE)
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


def md_tables(text: str) -> dict[str, list[list[str]]]:
    """Every Markdown table under its heading ("ML-20M", "ML-20M: ours and published"): body rows."""
    tables: dict[str, list[list[str]]] = {}
    heading = None
    for line in text.splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.startswith("**"):  # a bold paragraph (notes, settings) ends the heading's tables
            heading = None
        elif line.startswith("|") and heading is not None:
            tables.setdefault(heading, []).append([c.strip() for c in line.strip().strip("|").split("|")])
    return {h: rows[2:] for h, rows in tables.items()}  # skip header and rule


def md_header(text: str, heading: str) -> list[str]:
    lines = text.splitlines()
    i = next(i for i, line in enumerate(lines) if line.lstrip("#").strip() == heading)
    first = next(line for line in lines[i:] if line.startswith("|"))
    return [c.strip() for c in first.strip().strip("|").split("|")]


def fake_runs(entries) -> pd.DataFrame:
    """A runs frame as load_runs makes it, for (dataset, model, seed, r20, r50, n100) tuples."""
    return pd.DataFrame([{"dataset": d, "model": m, "seed": s, "recall@20": a, "recall@50": b,
                          "ndcg@100": c} for d, m, s, a, b, c in entries])


# --- Table ----------------------------------------------------------------------------------------

def test_returns_every_written_file(report):
    written = report["written"]
    for name in ("table1.md", "table1.csv", "table1.tex", "table1.html", "significance.csv",
                 "summary.json"):
        assert written[name] == report["out"] / name
    for dataset in ("ml-20m", "synthetic"):
        for stem in ("metrics", "learning_curves", "per_user_ndcg", "train_time"):
            for ext in ("png", "csv"):
                assert f"plots/{stem}_{dataset}.{ext}" in written
    assert all(p.is_file() for p in written.values())
    assert not list(report["out"].rglob(".*.tmp"))


def test_every_file_the_report_writes_is_a_declared_output(report):
    """What `evcf report` writes is what the Snakemake rule (common.smk REPORT_FILES, PLOTS) and the
    DVC stage (dvc.yaml make_report) declare: an undeclared file is never rebuilt when it is missing."""
    import ast
    import re

    import yaml

    repo = Path(__file__).resolve().parents[2]
    smk = (repo / "workflow/rules/common.smk").read_text()

    def literal(name: str):  # a top-level assignment of common.smk: NAME = <literal>, to its closing bracket
        source = re.search(rf"^{name} = ([({{].*?[)}}])(?:\s*#[^\n]*)?\n(?!\s)", smk, re.M | re.S).group(1)
        return ast.literal_eval(source)

    written = {name for name in report["written"] if "/" not in name}
    plots = {name.split("/")[1].rsplit("_", 1)[0] for name in report["written"] if name.startswith("plots/")}
    assert written == set(literal("REPORT_FILES"))
    assert plots == set(literal("PLOTS"))
    stage = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]["make_report"]
    declared = {Path(entry).name for key in ("outs", "metrics") for entry in stage[key]}
    assert written == declared
    assert stage["plots"] == ["reports/${item.dataset}/plots"]


def test_table_csv_ours_matches_metrics_json(report):
    table = pd.read_csv(report["out"] / "table1.csv")
    expected = expected_stats(report["root"])
    assert len(table) == len(expected)  # one row per (dataset, model, metric) that ran, no others
    assert table["mean"].notna().all()
    for rec in table.itertuples(index=False):
        mean, std, n = expected[(rec.dataset, rec.model, rec.metric)]
        assert rec.mean == pytest.approx(mean, abs=1e-12)
        assert rec.n == n
        if n == 1:
            assert math.isnan(rec.std)
        else:
            assert rec.std == pytest.approx(std, abs=1e-12)


def test_table_published_and_difference(report):
    expected = published_in_file()
    table = pd.read_csv(report["out"] / "table1.csv")
    for rec in table.itertuples(index=False):
        if (rec.dataset, rec.model) in expected:
            values, source = expected[(rec.dataset, rec.model)]
            assert rec.published == values[METRICS.index(rec.metric)]
            assert rec.published_source == source
            assert rec.diff == pytest.approx(rec.mean - rec.published)
        else:
            assert math.isnan(rec.published), rec
            assert math.isnan(rec.diff), rec
    md = (report["out"] / "table1.md").read_text()
    rows = {r[0]: r for r in md_tables(md)["ML-20M: ours and published"]}
    gated = rows["H+Vamp (Gated)"]
    published = expected[("ml-20m", "hvamp-gated")][0][0]
    assert gated[2] == f"{published:.5f}"  # ML-20M Recall@20, as many decimals as the paper printed
    mean = table.query("model == 'hvamp-gated' and dataset == 'ml-20m' and metric == 'recall@20'")["mean"]
    assert gated[1] == f"{float(mean.iloc[0]):.4f}"
    assert gated[3] == f"{float(mean.iloc[0]) - published:+.4f}"
    assert rows["Mult-VAE"][2] == "0.395"  # three decimals even where YAML drops a trailing zero


def test_published_file_holds_every_cited_row():
    """The values that the EVCF Table 1 copies (WMF, SLIM, CDAE, Mult-DAE, Mult-VAE) and its own
    H+Vamp (Gated), on both datasets, each with the paper and table it comes from."""
    published = load_published()
    for dataset in ("ml-20m", "netflix"):
        for model in ("wmf", "slim", "cdae", "mult-dae", "mult-vae"):
            for metric in METRICS:
                assert published[(dataset, model, metric)].source == "Liang et al. 2018, Table 2"
        assert published[(dataset, "hvamp-gated", "ndcg@100")].source.startswith("Kim & Suh 2019")
    assert published[("ml-20m", "wmf", "recall@20")].value == 0.360
    assert published[("netflix", "cdae", "ndcg@100")].value == 0.376
    assert {d for d, _, _ in published} == {"ml-20m", "netflix"}


def test_table_rows_per_dataset_in_paper_order(report):
    md = (report["out"] / "table1.md").read_text()
    tables = md_tables(md)
    assert [h for h in tables if ":" not in h] == ["ML-20M", SYN]  # ML-20M first
    assert [r[0] for r in tables["ML-20M"]] == [
        "Mult-DAE", "Mult-VAE", "H+Vamp (Gated)", SEPARATOR, "Popularity"]
    # models that did not run on a dataset have no row there; unknown models come last, by name
    assert [r[0] for r in tables[SYN]] == [
        "Mult-VAE", SEPARATOR, "EASE", "aa_model", "zz_model"]
    assert md_header(md, "ML-20M") == ["Model", "Recall@20", "Recall@50", "NDCG@100"]
    for heading, rows in tables.items():
        for row in rows:
            if row[0] != SEPARATOR:
                assert all(cell not in ("", "—", "-", "n/a") for cell in row), (heading, row)
    assert "n/a" not in md and "cited" not in md
    # Table 1, the comparison and the verdicts stay a few columns wide; the claims table is wider
    # (each cell: mean difference, the seeds' range, p)
    narrow = [t for h, t in tables.items() if "claims" not in h and "Directions" not in h]
    assert max(len(" | ".join(row)) + 4 for table in narrow for row in table) < 150


def test_rows_follow_the_paper_with_unknown_models_after():
    models = ["zz-last", "ease", "hvamp-gated", "popularity", "mult-vae-evcf", "wmf", "hvamp",
              "vamp", "cdae", "mult-vae-gated", "slim", "mult-vae", "mult-dae", "aa-unknown"]
    runs = fake_runs([("synthetic", m, 1, 0.1 + 0.01 * i, 0.2, 0.3) for i, m in enumerate(models)])
    table = build_table(runs, None, {})
    rows = md_tables(render_markdown(table))[SYN]
    assert [r[0] for r in rows] == [*PAPER_ORDER, SEPARATOR, "Mult-VAE (EVCF recipe)", "Popularity", "EASE",
                                    "aa-unknown", "zz-last"]
    assert list(dict.fromkeys(table["section"])) == ["paper", "extra", "other"]
    tex = render_latex(table)
    assert tex.index("H+Vamp (Gated)") < tex.index(r"\emph{not in the paper's Table 1}") \
        < tex.index("Mult-VAE (EVCF recipe)") < tex.index("Popularity") < tex.index("aa-unknown") \
        < tex.index("zz-last")


def test_n1_shows_the_value_without_plus_minus(report):
    md = (report["out"] / "table1.md").read_text()
    tables = md_tables(md)
    popularity = next(r for r in tables["ML-20M"] if r[0] == "Popularity")
    ease = next(r for r in tables[SYN] if r[0] == "EASE")
    for cell in popularity[1:] + ease[1:]:
        assert re.fullmatch(r"(\*\*)?0\.\d{4}(\*\*)? \(n=1\)†?", cell), cell
    vae = next(r for r in tables["ML-20M"] if r[0] == "Mult-VAE")
    assert all(re.fullmatch(r"0\.\d{4} ± 0\.\d{4} \(n=3\)", c) for c in vae[1:]), vae
    tex = (report["out"] / "table1.tex").read_text()
    tex_row = next(line for line in tex.splitlines() if line.startswith("EASE &"))
    assert r"\pm" not in tex_row and "(n=1)" in tex_row
    html = (report["out"] / "table1.html").read_text()
    html_row = next(line for line in html.splitlines() if '<td class="label">EASE</td>' in line)
    assert "±" not in html_row and "(n=1)" in html_row


def test_published_comparison_only_where_published_exists(report):
    md = (report["out"] / "table1.md").read_text()
    tables = md_tables(md)
    assert "ML-20M: ours and published" in tables and f"{SYN}: ours and published" not in tables
    compared = tables["ML-20M: ours and published"]
    assert [r[0] for r in compared] == ["Mult-DAE", "Mult-VAE", "H+Vamp (Gated)"]  # not Popularity
    assert md_header(md, "ML-20M: ours and published")[:4] == ["Model", "Recall@20", "publ.", "Δ"]
    assert "[1] Liang et al. 2018, Table 2" in md
    assert "No published value for Popularity on ML-20M." in md
    html = (report["out"] / "table1.html").read_text()
    assert "ML-20M: ours and published" in html and f"{SYN}: ours and published" not in html


def test_single_dataset_without_published_values(tmp_path):
    """What `--out results/<dataset>/report` gives for a dataset the papers did not use."""
    runs = [write_run(tmp_path, "synthetic", m, s) for m in ("mult-vae", "vamp") for s in (1, 2)]
    make_report(runs, tmp_path / "out")
    md = (tmp_path / "out" / "table1.md").read_text()
    assert [h for h in md_tables(md) if ":" not in h] == [SYN] and "published" not in md_header(md, SYN)
    assert "n/a" not in md and "publ." not in md
    tex = (tmp_path / "out" / "table1.tex").read_text()
    assert "ours & published" not in tex and tex.count(r"\begin{tabular}") == 1
    assert (tmp_path / "out" / "plots" / "metrics_synthetic.png").is_file()


def test_published_values_come_from_the_data_file(report, tmp_path, monkeypatch):
    data = yaml.safe_load(published_module.PUBLISHED_FILE.read_text())
    for entry in data["values"]:
        if (entry["model"], entry["dataset"]) == ("mult-vae", "ml-20m"):
            entry["recall@20"] = 0.123
    data["sources"]["ours-test"] = "A Test 2099, Table 9"
    data["values"].append({"model": "zz_model", "dataset": "synthetic", "source": "ours-test",
                           "recall@20": 0.5, "recall@50": 0.6, "ndcg@100": 0.7})
    edited = tmp_path / "published.yaml"
    edited.write_text(yaml.safe_dump(data))
    monkeypatch.setattr(published_module, "PUBLISHED_FILE", edited)

    make_report(report["runs"], tmp_path / "out")
    table = pd.read_csv(tmp_path / "out" / "table1.csv")
    vae = table.query("dataset == 'ml-20m' and model == 'mult-vae' and metric == 'recall@20'")
    assert vae["published"].item() == 0.123
    zz = table.query("dataset == 'synthetic' and model == 'zz_model' and metric == 'ndcg@100'")
    assert zz["published"].item() == 0.7 and zz["published_source"].item() == "A Test 2099, Table 9"
    tables = md_tables((tmp_path / "out" / "table1.md").read_text())
    assert next(r for r in tables["ML-20M: ours and published"] if r[0] == "Mult-VAE")[2] == "0.123"
    assert [r[0] for r in tables[f"{SYN}: ours and published"]] == ["zz_model"]


@pytest.mark.parametrize("edit, problem", [
    (lambda d: d["values"][0].pop("ndcg@100"), "missing ndcg@100"),
    (lambda d: d["values"][0].update({"recall@25": 0.1}), "unknown key(s) recall@25"),
    (lambda d: d["values"][0].update({"source": "nobody"}), "source 'nobody'"),
    (lambda d: d["values"][0].update({"recall@20": 41.3}), "recall@20 must be a number in [0, 1]"),
    (lambda d: d["values"].append(dict(d["values"][0])), "already have an entry"),
])
def test_bad_published_file_names_file_and_entry(tmp_path, edit, problem):
    data = yaml.safe_load(published_module.PUBLISHED_FILE.read_text())
    edit(data)
    path = tmp_path / "published.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(EvcfError) as err:
        load_published(path)
    assert problem in str(err.value) and str(path) in str(err.value)


def test_table_bold_on_best_and_significance_mark(report):
    table = pd.read_csv(report["out"] / "table1.csv")
    md = (report["out"] / "table1.md").read_text()
    tables = md_tables(md)
    for (dataset, metric), group in table.groupby(["dataset", "metric"]):
        rows = {r[0]: r for r in tables[{"ml-20m": "ML-20M", "synthetic": SYN}[dataset]]}
        col = 1 + METRICS.index(metric)
        best = group.loc[group["mean"].idxmax(), "label"]
        for label in group["label"]:
            assert rows[label][col].startswith("**") == (label == best), (dataset, metric, label)
    rows = {r[0]: r for r in tables["ML-20M"]}
    # hvamp-gated beats mult-vae on every user; mult-dae equals it (p = 1): mark only on the former.
    assert rows["H+Vamp (Gated)"][1].endswith("†")
    assert "†" not in rows["Mult-DAE"][1] and "†" not in rows["Mult-VAE"][1]
    assert any(line.startswith("- † significantly different from Mult-VAE") for line in md.splitlines())


def test_latex_booktabs_column_groups_and_escaping(report):
    tex = (report["out"] / "table1.tex").read_text()
    for command in (r"\toprule", r"\midrule", r"\bottomrule", r"\textbf{", r"\begin{tabular}"):
        assert command in tex
    assert r"zz\_model" in tex and "zz_model" not in tex
    assert "±" not in tex and "†" not in tex and r"$\pm$" in tex
    assert r"\multicolumn{3}{c}{ML-20M} & \multicolumn{3}{c}{" + SYN + "}" in tex
    assert r"\emph{not in the paper's Table 1}" in tex
    assert tex.count(r"\begin{tabular}") == 2  # Table 1, then the ML-20M comparison


class _Cells(HTMLParser):
    """Rows of <td>/<th> text of an HTML page, with each cell's colspan."""

    def __init__(self):
        super().__init__()
        self.rows, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = [dict(attrs).get("colspan", "1"), ""]

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append((self._cell[1].strip(), int(self._cell[0])))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data


def test_html_table_groups_columns_per_dataset(report):
    page = (report["out"] / "table1.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page
    parser = _Cells()
    parser.feed(page)
    assert parser.rows[0] == [("Model", 1), ("ML-20M", 3), (SYN, 3)]
    assert [c for c, _ in parser.rows[1]] == ["Recall@20", "Recall@50", "NDCG@100"] * 2
    labels = [row[0][0] for row in parser.rows[2:] if row and row[0][1] == 1]
    assert labels[:4] == ["Mult-DAE", "Mult-VAE", "H+Vamp (Gated)", "Popularity"]
    assert "<strong>" in page and "mailto" not in page


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


# --- Report captions ---------------------------------------------------------------------------------

def render_caption(path: Path) -> str:
    """A caption as Snakemake's report renders it: Jinja with the config, then docutils to HTML."""
    from docutils.core import publish_parts
    from jinja2 import Environment

    class Snakemake:
        config = {"datasets": ["ml-20m", "netflix"], "models": ["mult-vae"], "seeds": [1, 2, 3]}

    text = Environment().from_string(path.read_text()).render(snakemake=Snakemake)
    # report_level 2: docutils warnings (bad markup) show up in the body as system messages
    return publish_parts(text, writer_name="html",  # as Snakemake calls it
                         settings_overrides={"report_level": 2, "halt_level": 5})["body"]


@pytest.mark.filterwarnings("ignore:Argument \"writer_name\":PendingDeprecationWarning")
def test_report_captions_render_without_mailto_links():
    captions = sorted((REPO / "workflow" / "report").glob("*.rst"))
    names = {p.stem for p in captions}
    assert {"workflow", "table1", "metrics", "learning_curves", "per_user_ndcg", "train_time"} <= names
    for path in captions:
        body = render_caption(path)
        assert "mailto" not in body, path.name
        assert "system-message" not in body and "problematic" not in body, path.name
        assert "TABLE1.md" not in path.read_text() and "shared/reference" not in path.read_text()
    assert "Recall&#64;20" in render_caption(REPO / "workflow" / "report" / "workflow.rst")


# --- Significance -----------------------------------------------------------------------------------

def test_significance_matches_scipy(report):
    sig = pd.read_csv(report["out"] / "significance.csv")
    assert set(zip(sig["dataset"], sig["model"])) == {
        ("ml-20m", "mult-dae"), ("ml-20m", "hvamp-gated"), ("ml-20m", "popularity"),
        ("synthetic", "ease"), ("synthetic", "zz_model"), ("synthetic", "aa_model")}
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
    published = published_in_file()[("ml-20m", "mult-vae")][0][METRICS.index("ndcg@100")]
    assert metrics.query("model == 'mult-vae' and metric == 'ndcg@100'")["published"].item() == published
    assert metrics.query("model == 'popularity'")["published"].isna().all()

    curves = pd.read_csv(plots / "learning_curves_ml-20m.csv")
    assert {"epoch", "model", "val_ndcg@100", "beta"} <= set(curves.columns)
    assert set(curves["model"]) == {"mult-vae", "mult-dae", "hvamp-gated"}  # popularity: closed form
    assert len(curves) == 3 * 8  # seeds run 6, 7, 8 epochs: union of epochs is 1..8
    vae = curves[curves["model"] == "mult-vae"].set_index("epoch")
    assert vae.loc[1, "n_seeds"] == 3 and vae.loc[8, "n_seeds"] == 1
    assert vae.loc[1, "val_ndcg@100"] == pytest.approx(0.1 + 0.02)  # mean of 0.11, 0.12, 0.13
    assert vae.loc[1, "val_ndcg@100_min"] == pytest.approx(0.11)
    assert vae.loc[1, "val_ndcg@100_max"] == pytest.approx(0.13)
    assert curves[curves["model"] == "mult-dae"]["beta"].isna().all()

    per_user = pd.read_csv(plots / "per_user_ndcg_synthetic.csv")
    assert list(per_user["model"]) == ["mult-vae", "ease", "aa_model", "zz_model"]
    assert list(per_user["n_seeds"]) == [2, 1, 2, 1]
    assert (per_user["n_users"] == len(UIDS)).all()
    assert per_user.set_index("model").loc["ease", "median"] == pytest.approx(
        np.median(seed_averaged("synthetic", "ease")["ndcg@100"]))

    times = pd.read_csv(plots / "train_time_ml-20m.csv").set_index("model")
    assert times.loc["popularity", "mean_seconds"] == 42.5
    assert times.loc["popularity", "source"] == "benchmark"
    assert times.loc["mult-vae", "mean_seconds"] == pytest.approx(12.0)  # wall_seconds 11, 12, 13
    assert times.loc["mult-vae", "source"] == "wall_seconds"
    # (issue 26) the two sources measure different things, and the frame (and the plot) says which
    assert times.loc["popularity", "measures"].startswith("the whole job")
    assert times.loc["mult-vae", "measures"].startswith("training only") and \
        "the time evcf train prints" in times.loc["mult-vae", "measures"]
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


def _settings_run(model, seed, source="params.yaml", setting=None, selected=None, tried=None, search="",
                  tuned_on="", dataset="synthetic"):
    return {"dataset": dataset, "model": model, "seed": seed, "setting_source": source,
            "setting": json.dumps(setting or {}, sort_keys=True),
            "in_run_selected": json.dumps(selected, sort_keys=True), "in_run_tried": tried,
            "search": search, "tuned_on": tuned_on}


def test_what_each_row_ran_with_says_which_search_chose_it(tmp_path):
    """(issue 18) full grid, successive halving, a winner borrowed from another dataset: each named."""
    from evcf.report.markdown import settings_rows

    runs = pd.DataFrame([
        _settings_run("vamp", s, "search", {"train.batch_size": 50}, search="full") for s in (1, 2)
    ] + [
        _settings_run("hvamp", s, "search", {"train.max_beta": 1.0}, search="halving") for s in (1, 2)
    ] + [
        _settings_run("vamp", 1, "search", {"train.batch_size": 50}, search="full", tuned_on="ml-20m",
                      dataset="netflix"),
        _settings_run("hvamp", 1, "search", {"train.max_beta": 1.0}, search="halving", dataset="ml-20m"),
        _settings_run("hvamp", 2, "search", {"train.max_beta": 1.0}, search="full", dataset="ml-20m"),
    ])
    rows = {(d, m): (source, shown) for d, m, source, shown in settings_rows(runs)}
    assert rows[("synthetic", "Vamp")] == ("full grid search (validation NDCG@100)", "train.batch_size = 50")
    assert rows[("synthetic", "H+Vamp")] == (
        "successive halving over the grid (validation NDCG@100; a budgeted search)", "train.max_beta = 1.0")
    assert rows[("netflix", "Vamp")][0] == "full grid search (validation NDCG@100), searched on ML-20M"
    assert rows[("ml-20m", "H+Vamp")][0] == "mixed"  # one seed from each search: not one row's setting

    # end to end: the search recorded in a run's metrics.json reaches the report's runs
    from evcf.report import load_runs

    folder = write_run(tmp_path, "synthetic", "vamp", 1)
    record = json.loads((folder / "metrics.json").read_text())
    record["tuning"] = {"source": "search", "search": "halving", "setting": {"train.batch_size": 50},
                        "tuned_on": "ml-20m"}
    (folder / "metrics.json").write_text(json.dumps(record))
    loaded = load_runs([folder]).runs.iloc[0]
    assert (loaded["search"], loaded["tuned_on"]) == ("halving", "ml-20m")


def test_what_each_row_ran_with_names_grid_winners_and_in_run_picks():
    from evcf.report.markdown import settings_rows

    runs = pd.DataFrame([
        _settings_run("vamp", 1, "search", {"train.batch_size": 50}),
        _settings_run("vamp", 2, "search", {"train.batch_size": 50}),
        _settings_run("mult-vae", 1),
        # WMF: each seed searched 18 settings; seeds 1 and 3 picked one, seed 2 another
        _settings_run("wmf", 1, selected={"alpha": 1.0, "factors": 20}, tried=18),
        _settings_run("wmf", 2, selected={"alpha": 9.0, "factors": 20}, tried=18),
        _settings_run("wmf", 3, selected={"alpha": 1.0, "factors": 20}, tried=18),
        _settings_run("ease", 1, selected={"lambda": 500.0}, tried=7),
        _settings_run("popularity", 1, selected={}, tried=1),  # one setting: no search
        _settings_run("cdae", 1, "search", {"train.lr": 0.01}),
        _settings_run("cdae", 2, "params.yaml"),  # a rerun mixed with older runs
    ])
    rows = {model: (source, shown) for _, model, source, shown in settings_rows(runs)}
    assert rows["Vamp"] == ("grid search (validation NDCG@100)", "train.batch_size = 50")
    assert rows["Mult-VAE"] == ("params.yaml (no grid)", "—")
    assert rows["WMF"] == ("params.yaml (no grid); in-run search of 18 settings (validation NDCG@100)",
                           "seed 1, 3: alpha = 1.0, factors = 20; seed 2: alpha = 9.0, factors = 20")
    assert rows["EASE"] == ("params.yaml (no grid); in-run search of 7 settings (validation NDCG@100)",
                            "lambda = 500.0")
    assert rows["Popularity"] == ("params.yaml (no grid)", "—")
    assert rows["CDAE"][0] == "mixed"


# --- Reproduction verdicts ----------------------------------------------------------------------------

def test_a_dataset_without_published_values_gets_no_invented_verdicts():
    runs = fake_runs([("synthetic", m, 1, 0.3, 0.4, 0.3) for m in ("cdae", "popularity")])
    md = render_markdown(build_table(runs, None, load_published()))
    assert f"Nothing is compared on {SYN}: no published values exist for it" in md
    assert f"{SYN}: did the published results reproduce?" not in md_tables(md)  # no table of numbers
    assert not re.search(r"reproduced|above|below|inconclusive", md)


# --- The paper's claims ------------------------------------------------------------------------------

def write_values(root: Path, dataset: str, model: str, seed: int, values: np.ndarray) -> Path:
    folder = root / "results" / dataset / model / f"seed-{seed}"
    folder.mkdir(parents=True)
    frame = pd.DataFrame(values, columns=list(METRICS))
    frame.insert(0, "uid", UIDS)
    frame.to_csv(folder / "per_user.csv", index=False)
    (folder / "metrics.json").write_text(json.dumps(
        {"dataset": dataset, "model": model, "seed": seed, **{m: float(values[:, j].mean()) for j, m in enumerate(METRICS)},
         **{f"{m}_se": 0.01 for m in METRICS}}))
    (folder / "history.csv").write_text("epoch,train_loss,beta,val_ndcg@100,seconds\n1,1.0,0.1,0.2,1.0\n")
    return folder


def test_claims_from_per_user_files_with_known_winners(tmp_path):
    """H+Vamp (Gated) beats Mult-VAE on every user and seed; H+Vamp beats H+Vamp (Gated) (the gating claim
    is reversed, and H+Vamp is the strongest other paper row, so the headline is reversed too); H+Vamp
    equals Vamp exactly (the hierarchy is not shown); Vamp beats Liang's Mult-VAE; Mult-VAE (EVCF recipe)
    did not run, so the ablation's comparisons are not checked."""
    rng = np.random.default_rng(11)
    noise = lambda: rng.normal(0, 0.005, BASE.shape)  # noqa: E731
    hvamp = np.clip(BASE + 0.2 + noise(), 0, 1)
    values = {"mult-vae": BASE, "hvamp-gated": np.clip(BASE + 0.1 + noise(), 0, 1), "hvamp": hvamp, "vamp": hvamp}
    runs = [write_values(tmp_path, "ml-20m", m, s, v + 0.001 * s) for m, v in values.items() for s in (1, 2)]
    make_report(runs, tmp_path / "out", tolerance=TOLERANCE)
    md = (tmp_path / "out" / "table1.md").read_text()
    claims = {r[0]: r for r in md_tables(md)["ML-20M: the paper's claims"]}
    assert claims["H+Vamp (Gated) beats Mult-VAE"][5] == "holds on all 3 metrics"
    assert claims["H+Vamp (Gated) beats Mult-VAE"][1] == "the paper's"
    assert claims["Gating helps: H+Vamp (Gated) beats H+Vamp"][5] == "reversed on all 3 metrics (the model is worse)"
    assert claims["The hierarchy helps: H+Vamp beats Vamp"][5] == "not shown: n.s. per user on any metric"
    assert claims["The flexible prior helps: Vamp beats Mult-VAE"][5] == "holds on all 3 metrics"
    best = claims["H+Vamp (Gated) is the best paper row on every metric"]
    assert best[5] == "reversed on all 3 metrics (the model is worse)"
    assert all(" vs Vamp (p=" in cell for cell in best[2:5]), best  # H+Vamp and Vamp tie: the first in the paper's order
    assert len(claims) == 5
    assert ("Not checked here (one of its two rows did not run): the flexible prior helps: Vamp beats "
            "Mult-VAE (EVCF recipe); gating helps: Mult-VAE (Gated) beats Mult-VAE;") in md

    csv = pd.read_csv(tmp_path / "out" / "claims.csv")
    full = csv[csv["claim"] == "full-model"].set_index("metric")
    for j, metric in enumerate(METRICS):  # against scipy on the per-user files, averaged over the seeds
        x = (values["hvamp-gated"][:, j] + 0.0015)
        y = (values["mult-vae"][:, j] + 0.0015)
        assert full.loc[metric, "wilcoxon_p"] == pytest.approx(stats.wilcoxon(x, y).pvalue, rel=1e-9)
        assert full.loc[metric, "mean_diff"] == pytest.approx((x - y).mean())
        # seeds 1 and 2 are paired; both differences equal the seed-averaged one here
        assert full.loc[metric, "seed_diff_min"] == pytest.approx((x - y).mean())
        assert claims["H+Vamp (Gated) beats Mult-VAE"][2 + j] == (
            f"{(x - y).mean():+.4f} [{(x - y).mean():+.4f}, {(x - y).mean():+.4f}] "
            f"(p={full.loc[metric, 'wilcoxon_p_holm']:.2g})")
    assert np.allclose(csv["wilcoxon_p_holm"], holm(csv["wilcoxon_p"]))  # one family per dataset
    page = html_module.unescape((tmp_path / "out" / "table1.html").read_text())
    assert "ML-20M: the paper's claims" in page and "Directions on this dataset" not in page


def test_claim_verdict_lines():
    from evcf.report.verdicts import claim_verdict

    rows = pd.DataFrame({"metric": list(METRICS), "outcome": ["holds", "not shown", "reversed"],
                         "reason": ["", "seeds disagree", ""]})
    assert claim_verdict(rows) == ("partly: holds on Recall@20; reversed on NDCG@100; "
                                   "not shown (seeds disagree on Recall@50)")
    rows = pd.DataFrame({"metric": list(METRICS), "outcome": ["not shown"] * 3,
                         "reason": ["seeds disagree", "n.s. per user", "seeds disagree"]})
    assert claim_verdict(rows) == "not shown: n.s. per user on Recall@50; seeds disagree on Recall@20, NDCG@100"


def test_a_run_copied_from_its_grid_point_takes_the_points_training_time(tmp_path):
    """The first seed of a searched row is its winning grid point's run, copied by a job that takes
    seconds: its time in the plot is the point's job (benchmarks/tune_point/...), not the copy's."""
    from evcf.report import _benchmark_seconds

    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for rule, name, seconds in (("train_model", "seed-1.tsv", 4.0), ("tune_point", "point-2.tsv", 37.5)):
        folder = tmp_path / rule / "synthetic" / "vamp"
        folder.mkdir(parents=True)
        (folder / name).write_text(header + f"{seconds}\t0:00:00\t1\t1\tNA\tNA\t0\t0\t0\t0\n")
    assert _benchmark_seconds(tmp_path, "synthetic", "vamp", 1) == 4.0
    assert _benchmark_seconds(tmp_path, "synthetic", "vamp", 1, "results/tune/synthetic/vamp/point-2") == 37.5
