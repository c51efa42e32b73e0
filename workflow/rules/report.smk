# One report per dataset, in reports/<dataset>/: table, significance, plots, DVC summary metrics.
# Each dataset has its own folder, so running another selection never overwrites or orphans it.


rule make_report:
    input:
        get_report_input,
    output:
        report_files("{dataset}"),
    log:
        "logs/make_report/{dataset}.log",
    params:
        runs=get_report_runs,
        out=get_report_out,
        # the reproduction verdicts' tolerance δ per dataset (params.yaml report.tolerance)
        tolerance=shlex.quote(json.dumps(config.get("report", {}).get("tolerance", {}), sort_keys=True)),
    shell:
        "evcf report --runs {params.runs} --benchmarks benchmarks --out {params.out} "
        "--tolerance {params.tolerance} 2> {log}"
