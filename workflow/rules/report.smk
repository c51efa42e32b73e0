# Everything under results/ that summarises runs: table, significance, plots, DVC summary metrics.


rule make_report:
    input:
        all_run_outputs(),
    output:
        report_outputs(),
    log:
        "logs/make_report.log",
    params:
        runs=" ".join(run_dir(d, m, s) for d in DATASETS for m in MODELS for s in SEEDS),
    shell:
        "evcf report --runs {params.runs} --benchmarks benchmarks --out results 2> {log}"
