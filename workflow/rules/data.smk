# Raw data in, reference split out.


rule download_dataset:
    output:
        "data/raw/{dataset}/{file}",
    log:
        "logs/download_dataset/{dataset}/{file}.log",
    params:
        args=get_download_args,
    wildcard_constraints:
        file=r"[^/]+\.(zip|tar|tar\.gz|gz)",
    shell:
        "evcf download {params.args} --dest {output} 2> {log}"


rule generate_dataset:
    output:
        "data/raw/{dataset}/ratings.csv",
    log:
        "logs/generate_dataset/{dataset}.log",
    params:
        spec=get_synth_spec,
    shell:
        "evcf synth --spec {params.spec} --out {output} 2> {log}"


rule split_dataset:
    input:
        get_raw_input,
    output:
        expand("data/processed/{{dataset}}/{name}", name=SPLIT_OUTPUTS),
    log:
        "logs/split_dataset/{dataset}.log",
    benchmark:
        "benchmarks/split_dataset/{dataset}.tsv"
    params:
        args=get_split_args,
    resources:
        **RESOURCES["split"],
    shell:
        "evcf split {params.args} --out data/processed/{wildcards.dataset} 2> {log}"
