# Config validation and the input/params functions of the rules.
import json
import shlex
import sys

from pathlib import Path

from evcf.config import raw_path, run_settings, synthetic_spec, tune_points, validate
from evcf.errors import EvcfError
from snakemake.io import report as in_report  # `report` alone is a keyword of the Snakefile grammar

try:
    validate(config)
except EvcfError as exc:
    sys.stderr.write(f"error: {exc}\n")
    sys.exit(2)

DATASETS = config["datasets"]
MODELS = config["models"]
SEEDS = config["seeds"]


wildcard_constraints:
    dataset="[a-z0-9][a-z0-9-]*",
    model="[a-z0-9][a-z0-9-]*",
    seed="[0-9]+",
    point="[0-9]+",


def q(value):
    """A value as one shell word (JSON for dicts)."""
    return shlex.quote(json.dumps(value) if isinstance(value, (dict, list)) else str(value))


def run_dir(dataset, model, seed):
    return f"results/{dataset}/{model}/seed-{seed}"


def all_run_outputs():
    return [
        f"{run_dir(d, m, s)}/{name}"
        for d in DATASETS
        for m in MODELS
        for s in SEEDS
        for name in ("metrics.json", "history.csv", "per_user.csv")
    ]


SPLIT_OUTPUTS = [
    "train.csv",
    "validation_tr.csv",
    "validation_te.csv",
    "test_tr.csv",
    "test_te.csv",
    "unique_sid.txt",
    "unique_uid.txt",
    "stats.json",
]


def get_raw_input(wildcards):
    """The raw file a split needs; Netflix (local only) has none Snakemake could make."""
    entry = config["data"][wildcards.dataset]
    return [] if entry.get("local") else [raw_path(config, wildcards.dataset)]


def get_download_args(wildcards):
    entry = config["data"][wildcards.dataset]
    args = [f"--url {q(entry['url'])}"]
    for key in ("md5", "md5_url", "sha256"):
        if entry.get(key):
            args.append(f"--{key.replace('_', '-')} {q(entry[key])}")
    return " ".join(args)


def get_synth_spec(wildcards):
    return q(synthetic_spec(config, wildcards.dataset))


def get_split_args(wildcards):
    entry = config["data"][wildcards.dataset]
    args = [
        f"--raw {q(raw_path(config, wildcards.dataset))}",
        f"--format {entry['format']}",
        f"--threshold {entry['threshold']}",
        f"--min-items {entry['min_items']}",
        f"--heldout {entry['heldout_users']}",
    ]
    if entry.get("fingerprint"):
        args.append(f"--fingerprint {q(entry['fingerprint'])}")
    return " ".join(args)


def get_train_input(wildcards):
    return expand("data/processed/{dataset}/{name}", dataset=wildcards.dataset, name=SPLIT_OUTPUTS)


def get_train_args(wildcards):
    hparams, train = run_settings(config, wildcards.dataset, wildcards.model)
    return f"--hparams {q(hparams)} --train {q(train)}"


PLOTS = ("metrics", "learning_curves", "per_user_ndcg", "train_time")  # see evcf/report/plots.py


def report_outputs():
    """The make_report rule's outputs; the table and the PNGs go into `snakemake --report`."""
    outs = [
        in_report("results/table1.md", category="Table 1", caption="workflow/report/table1.rst"),
        "results/table1.csv",
        "results/table1.tex",
        "results/significance.csv",
        "results/summary.json",
    ]
    for d in DATASETS:
        for plot in PLOTS:
            outs.append(in_report(f"results/plots/{plot}_{d}.png", category="Plots", subcategory=d,
                               labels={"dataset": d, "plot": plot}))
            outs.append(f"results/plots/{plot}_{d}.csv")
    return outs


def tune_outputs():
    """One summary per (dataset, model) grid in `tune`, for the datasets that run."""
    return [
        f"results/tune/{d}/{m}.csv" for d in DATASETS for m in config.get("tune", {}).get(d, {})
    ]


def get_tune_args(wildcards):
    point = tune_points(config, wildcards.dataset, wildcards.model)[int(wildcards.point)]
    return f"--hparams {q(point['hparams'])} --train {q(point['train'])}"


def get_tune_summary_input(wildcards):
    n = len(tune_points(config, wildcards.dataset, wildcards.model))
    return [f"results/tune/{wildcards.dataset}/{wildcards.model}/point-{i}/metrics.json" for i in range(n)]


def get_tune_point_dirs(wildcards):
    return " ".join(str(Path(p).parent) for p in get_tune_summary_input(wildcards))


def get_tune_settings(wildcards):
    return q([p["setting"] for p in tune_points(config, wildcards.dataset, wildcards.model)])
