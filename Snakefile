# evcf — Snakemake front-end.  The logic of every step lives in the `evcf` CLI; rules only wire
# params.yaml values into its arguments.  See docs/pipeline.md.
from snakemake.utils import min_version

min_version("8.20")


configfile: "params.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/tune.smk"


# seconds of work each: never worth a cluster job
localrules:
    all,
    all_splits,
    all_runs,
    collect_runs,
    summarize_tuning,
    tune,


rule all:
    input:
        all_run_outputs(),
        report_outputs(),
    default_target: True


rule all_splits:
    input:
        expand("data/processed/{dataset}/stats.json", dataset=config["datasets"]),


rule all_runs:
    input:
        all_run_outputs(),
