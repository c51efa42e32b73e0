# `snakemake tune`: the grids of params.yaml `tune`, each point trained with the first seed and
# judged on validation NDCG@100 only; the summary marks the winner.  Copy winners into
# data.<dataset>.model_params by hand (the table runs never read tuning results).


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
        device=config.get("device", "auto"),
        code=CODE,
    threads: config.get("threads", 2)
    shell:
        "evcf train --data data/processed/{wildcards.dataset} --dataset {wildcards.dataset} "
        "--model {wildcards.model} --seed {params.seed} {params.args} "
        "--device {params.device} --threads {threads} "
        "--out results/tune/{wildcards.dataset}/{wildcards.model}/point-{wildcards.point} 2> {log}"


rule summarize_tuning:
    input:
        get_tune_summary_input,
    output:
        "results/tune/{dataset}/{model}.csv",
    log:
        "logs/summarize_tuning/{dataset}/{model}.log",
    params:
        settings=get_tune_settings,
        points=get_tune_point_dirs,
    shell:
        "evcf tune-summary --points {params.points} --settings {params.settings} --out {output} 2> {log}"


rule tune:
    input:
        tune_outputs(),
