# Config validation and the input/params functions of the rules.
import json
import shlex
import subprocess
import sys

from pathlib import Path

import yaml

from evcf.config import check_plain_yaml, raw_path, run_settings, settings_sources, synthetic_spec, tune_points, validate
from evcf.data.split import SPLIT_OUTPUTS  # the split rule's outputs; the training rules' inputs
from evcf.tuning import halving_settings, rung_slots, tuning_mode
from evcf.errors import EvcfError
from evcf.identity import code_hash
from evcf.models import model_class
from evcf.stopping import install as install_stop_handlers
from snakemake.io import report as in_report  # `report` alone is a keyword of the Snakefile grammar



def _read_configfiles(revision=None):
    """The config file(s) as written (before --config), or as committed at ``revision`` (git), or
    None where that is unknown (not a git checkout, the file not committed)."""
    merged = {}
    for path in workflow.configfiles:
        try:
            if revision is None:
                text = Path(path).read_text()
            else:
                text = subprocess.run(["git", "show", f"{revision}:./{Path(path).as_posix()}"], check=True,
                                      capture_output=True, text=True).stdout
            merged.update(yaml.safe_load(text) or {})
        except (OSError, subprocess.CalledProcessError, yaml.YAMLError):
            return None
    return merged


# Everything is checked before any job starts: no anchors in the config file, every key known,
# every value typed and valid, every run and grid point buildable.  Values typed with --config are
# read as YAML (numbers arrive as numbers), win over every layer of the file, and errors in them
# name the command line.  A setting changed in params.yaml since the last commit (`dvc exp run -S`
# writes there) that a more specific layer or a grid would override is refused (evcf/config/overrides.py).
try:
    for _configfile in workflow.configfiles:
        check_plain_yaml(_configfile)
    FILE_CONFIG = _read_configfiles()
    validate(config, overrides=workflow.config_settings.config, committed=_read_configfiles("HEAD"),
             written=FILE_CONFIG)
except EvcfError as exc:
    sys.stderr.write(f"error: {exc}\n")
    sys.exit(2)

# A signal to Snakemake stops its training jobs with a checkpoint, and evcf's line saying what was
# stopped is the last on the terminal (evcf/stopping.py).  Installed once Snakemake's own handlers are.
onstart:
    install_stop_handlers()


DATASETS = config["datasets"]
MODELS = config["models"]
SEEDS = config["seeds"]


def get_code(wildcards):
    """The hash of the code that runs for this model (evcf/identity.py: its modules by import
    analysis, docstrings and comments left out): a param of the training rules, so that editing
    that code reruns this model's jobs, and editing the report, the bench or another model's file
    reruns none."""
    return code_hash(wildcards.model)




wildcard_constraints:
    dataset="[a-z0-9][a-z0-9-]*",
    model="[a-z0-9][a-z0-9-]*",
    seed="[0-9]+",
    point="[0-9]+",
    rung="[0-9]+",
    slot="[0-9]+",


def q(value):
    """A value as one shell word (JSON with sorted keys for dicts: the same settings always give the
    same command, so a no-op override reschedules nothing)."""
    return shlex.quote(json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value))


def run_dir(dataset, model, seed):
    return f"results/{dataset}/{model}/seed-{seed}"


def model_seeds(model):
    """The seeds a model runs with: all of them, or only the first for a seedless model."""
    return SEEDS if model_class(model).seeded else SEEDS[:1]


RUN_FILES = ("metrics.json", "history.csv", "per_user.csv")
DEVICE = config.get("device", "auto")


def uses_gpu(model):
    """A GPU job: `device: cuda` (or cuda:N) and a model whose fit gains from one (its class's
    `uses_gpu`: the VAE models, CDAE and EASE).  Popularity, SLIM and WMF fit on CPUs: they would
    hold a GPU they barely use."""
    return DEVICE.startswith("cuda") and model_class(model).uses_gpu


def get_gpu(wildcards):
    """1 for a GPU job, else 0: both its `gpu` resource (sbatch --gpus=1 on SLURM; locally, run with
    `--resources gpu=<number of GPUs>` so that jobs never share one) and its `gpu_slots` resource
    (`--resources gpu_slots=N` runs up to N GPU jobs at once on the one GPU; docs/gpu.md: when
    sharing helps, how to pick N, each job's memory cap)."""
    return 1 if uses_gpu(wildcards.model) else 0


def get_device(wildcards):
    return "cpu" if DEVICE.startswith("cuda") and not uses_gpu(wildcards.model) else DEVICE


# The resources of the jobs that need more than Snakemake's defaults, defined once for the rules
# (`resources: **RESOURCES["train"]`): the split holds a dataset's ratings in memory (Netflix: 100M
# rows); a training job (train_model, tune_point, tune_rung) its split and model, and a GPU where it
# uses one (get_gpu).  On SLURM the profile (workflow/profiles/slurm) sets memory and time per rule.
RESOURCES = {
    "split": dict(mem_mb=8000),
    "train": dict(mem_mb=4000, runtime=720, gpu=get_gpu, gpu_slots=get_gpu),
}


def get_collect_input(wildcards):
    """Every run of one (dataset, model) row."""
    return [f"{run_dir(wildcards.dataset, wildcards.model, s)}/{name}"
            for s in model_seeds(wildcards.model) for name in RUN_FILES]


def get_collect_runs(wildcards):
    return " ".join(run_dir(wildcards.dataset, wildcards.model, s) for s in model_seeds(wildcards.model))


def all_run_outputs():
    """The row files of the selection (each depends on its runs)."""
    return [f"results/{d}/{m}.json" for d in DATASETS for m in MODELS]


def get_raw_input(wildcards):
    """The raw file a split needs; Netflix (local only) has none Snakemake could make."""
    entry = config["data"][wildcards.dataset]
    return [] if entry.get("local") else [raw_path(config, wildcards.dataset)]


def get_download_args(wildcards):
    entry = config["data"][wildcards.dataset]
    args = [f"--url {q(entry['url'])}"]
    return " ".join(args + get_checksum_args(wildcards))


def get_checksum_args(wildcards):
    """The pinned checksum of a downloaded archive (download and split check it), or --unverified
    where params.yaml says so explicitly; none for local and synthetic data."""
    entry = config["data"][wildcards.dataset]
    if not entry.get("url"):
        return []
    args = [f"--{key} {q(entry[key])}" for key in ("md5", "sha256") if entry.get(key)]
    return args or (["--unverified"] if entry.get("unverified") else [])


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
        *get_checksum_args(wildcards),
    ]
    if entry.get("fingerprint"):
        args.append(f"--fingerprint {q(entry['fingerprint'])}")
    return " ".join(args)


def get_train_input(wildcards):
    return expand("data/processed/{dataset}/{name}", dataset=wildcards.dataset, name=SPLIT_OUTPUTS)


def get_train_args(wildcards):
    hparams, train = run_settings(config, wildcards.dataset, wildcards.model)
    args = f"--hparams {q(hparams)} --train {q(train)}"
    # the values the command line changed, credited in metrics.json and the report (none: no argument)
    typed = settings_sources(config, wildcards.dataset, wildcards.model, FILE_CONFIG)
    return f"{args} --settings-source {q(typed)}" if typed else args


PLOTS = {"metrics": "test metrics", "learning_curves": "learning curves",
         "per_user_ndcg": "per-user NDCG@100", "train_time": "training time"}  # evcf/report/plots.py
REPORT_FILES = ("table1.md", "table1.csv", "table1.tex", "table1.html", "significance.csv", "claims.csv",
                "summary.json")  # what evcf report writes (tests/report/test_report.py compares)
# the files `snakemake --report` shows, with their captions (workflow/report/*.rst)
SHOWN = {"table1.html": ("table1.rst", "Table 1"),
         "significance.csv": ("significance.rst", "significance tests vs. Mult-VAE")}


def report_dir(dataset):
    return f"reports/{dataset}"


def get_report_input(wildcards):
    return [f"results/{wildcards.dataset}/{m}.json" for m in MODELS]


def get_report_out(wildcards):
    return report_dir(wildcards.dataset)


def get_report_runs(wildcards):
    return " ".join(run_dir(wildcards.dataset, m, s) for m in MODELS for s in model_seeds(m))


def report_files(dataset):
    """One dataset's report (its own folder: a run of another selection never overwrites it)."""
    out = report_dir(dataset)
    outs = [
        in_report(f"{out}/{name}", category="Table 1", subcategory=dataset,
                  caption=f"workflow/report/{SHOWN[name][0]}",
                  labels={"dataset": dataset, "table": SHOWN[name][1]})
        if name in SHOWN else f"{out}/{name}"
        for name in REPORT_FILES
    ]
    for plot, figure in PLOTS.items():
        outs.append(in_report(f"{out}/plots/{plot}_{dataset}.png", category="Plots", subcategory=dataset,
                              caption=f"workflow/report/{plot}.rst",
                              labels={"dataset": dataset, "figure": figure}))
        outs.append(f"{out}/plots/{plot}_{dataset}.csv")
    return outs


def report_outputs():
    return [path for d in DATASETS for path in report_files(d)]


def tune_outputs():
    """The tuning result of every (dataset, model) of the selection (a grid or not)."""
    return [f"results/tune/{d}/{m}/winner.json" for d in DATASETS for m in MODELS]


# ---- the search (tune.smk; evcf/tuning.py) ------------------------------------------------------
TUNING = tuning_mode(config)  # "full", "halving", or None (tuning: false)
TUNE_FROM = config.get("tune_from", {})  # dataset -> the dataset whose winners it takes


def tune_dir(wildcards):
    return f"results/tune/{wildcards.dataset}/{wildcards.model}"


def _points(wildcards):
    return tune_points(config, wildcards.dataset, wildcards.model)


def _slots(wildcards):
    """Points trained at each rung of the halving search of (dataset, model)."""
    return rung_slots(len(_points(wildcards)), halving_settings(config))


def get_tune_args(wildcards):
    point = _points(wildcards)[int(wildcards.point)]
    return f"--hparams {q(point['hparams'])} --train {q(point['train'])}"


def get_rung_promoted(wildcards):
    """Rung r > 0 reads which points rung r - 1 promoted."""
    rung = int(wildcards.rung)
    return [] if rung == 0 else [f"{tune_dir(wildcards)}/rung-{rung - 1}/decision.json"]


def get_rung_args(wildcards):
    halving, rung, slot = halving_settings(config), int(wildcards.rung), int(wildcards.slot)
    args = f"--eta {halving.eta} --rungs {halving.rungs}"
    if rung == 0:  # slot s of the first rung is grid point s
        point = _points(wildcards)[slot]
        return (f"{args} --point {slot} --setting {q(point['setting'])} --hparams {q(point['hparams'])} "
                f"--train {q(point['train'])}")
    return f"{args} --promoted {tune_dir(wildcards)}/rung-{rung - 1}/decision.json --slot {slot}"


def get_decide_input(wildcards):
    rung = int(wildcards.rung)
    return [f"{tune_dir(wildcards)}/rung-{rung}/slot-{s}.json" for s in range(_slots(wildcards)[rung])]


def get_decide_args(wildcards):
    slots, rung = _slots(wildcards), int(wildcards.rung)
    last = rung == len(slots) - 1
    return f"--keep {1 if last else slots[rung + 1]}" + (" --last" if last else "")


def get_tune_summary_input(wildcards):
    """What a (dataset, model)'s winner is made from: another dataset's winner (tune_from), every
    rung's decision (halving), every point's run (full), or nothing (no grid)."""
    if wildcards.dataset in TUNE_FROM:
        return [f"results/tune/{TUNE_FROM[wildcards.dataset]}/{wildcards.model}/winner.json"]
    n = len(_points(wildcards))
    if n and TUNING == "halving":
        return [f"{tune_dir(wildcards)}/rung-{r}/decision.json" for r in range(len(_slots(wildcards)))]
    return [f"{tune_dir(wildcards)}/point-{i}/metrics.json" for i in range(n)]


def get_tune_summary_args(wildcards):
    inputs = get_tune_summary_input(wildcards)
    if wildcards.dataset in TUNE_FROM:
        return f"--borrow {inputs[0]}"
    if inputs and TUNING == "halving":
        return "--decisions " + " ".join(inputs)
    settings = [p["setting"] for p in _points(wildcards)]
    return f"--points {' '.join(str(Path(i).parent) for i in inputs)} --settings {q(settings)}"
