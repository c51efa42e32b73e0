# The paper's protocol: every (dataset, model) with a grid (params.yaml `tune`, `tune.default` for
# datasets without their own) is searched first: each point trained with the first seed and judged on
# validation NDCG@100 only.  `summarize_tuning` writes summary.csv and winner.json, and the Table 1
# runs (train.smk) apply the winner: nothing is copied by hand.  A model without a grid, or
# `tuning: false`, gets a winner.json that says "params.yaml" and changes nothing.


rule tune_point:
    input:
        get_train_input,
    output:
        metrics="results/tune/{dataset}/{model}/point-{point}/metrics.json",
        history="results/tune/{dataset}/{model}/point-{point}/history.csv",
        per_user="results/tune/{dataset}/{model}/point-{point}/per_user.csv",
    log:
        "logs/tune_point/{dataset}/{model}/point-{point}.log",
    benchmark:
        "benchmarks/tune_point/{dataset}/{model}/point-{point}.tsv"
    params:
        args=get_tune_args,
        seed=SEEDS[0],
        device=get_device,
        code=CODE,
    threads: config.get("threads", 2)
    resources:
        mem_mb=4000,
        runtime=720,
        gpu=get_gpu,
    shell:
        "evcf train --data data/processed/{wildcards.dataset} --dataset {wildcards.dataset} "
        "--model {wildcards.model} --seed {params.seed} {params.args} "
        "--device {params.device} --threads {threads} "
        "--out results/tune/{wildcards.dataset}/{wildcards.model}/point-{wildcards.point} 2> {log}"


rule summarize_tuning:
    input:
        get_tune_summary_input,
    output:
        summary="results/tune/{dataset}/{model}/summary.csv",
        winner="results/tune/{dataset}/{model}/winner.json",
    log:
        "logs/summarize_tuning/{dataset}/{model}.log",
    params:
        settings=get_tune_settings,
        points=get_tune_point_dirs,
    shell:
        "evcf tune-summary --points {params.points} --settings {params.settings} "
        "--out-dir results/tune/{wildcards.dataset}/{wildcards.model} 2> {log}"


rule tune:
    input:
        tune_outputs(),
