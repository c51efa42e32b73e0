# One model, one dataset, one seed.  The checkpoint beside the results is not a declared output:
# Snakemake deletes the outputs of a failed job, and the checkpoint is what a rerun resumes from.


rule train_model:
    input:
        get_train_input,
    output:
        metrics="results/{dataset}/{model}/seed-{seed}/metrics.json",
        history="results/{dataset}/{model}/seed-{seed}/history.csv",
        per_user="results/{dataset}/{model}/seed-{seed}/per_user.csv",
    log:
        "logs/train_model/{dataset}/{model}/seed-{seed}.log",
    benchmark:
        "benchmarks/train_model/{dataset}/{model}/seed-{seed}.tsv"
    params:
        args=get_train_args,
        device=config.get("device", "auto"),
    threads: config.get("threads", 2)
    resources:
        mem_mb=4000,
        runtime=720,
    shell:
        "evcf train --data data/processed/{wildcards.dataset} --dataset {wildcards.dataset} "
        "--model {wildcards.model} --seed {wildcards.seed} {params.args} "
        "--device {params.device} --threads {threads} "
        "--out results/{wildcards.dataset}/{wildcards.model}/seed-{wildcards.seed} 2> {log}"
