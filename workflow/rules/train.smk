# One model, one dataset, one seed, with the winner of its grid (tune.smk) applied; then the row
# file that gathers a (dataset, model)'s seeds.
# The checkpoint beside the results is not a declared output: Snakemake deletes the outputs of a
# failed job, and the checkpoint is what a rerun resumes from.  `evcf train` reuses it only when it
# was written by the same run (settings, split, code, libraries, device: evcf/identity.py); `code`
# below (the hash of the code that runs for this model: get_code in common.smk) makes Snakemake itself
# rerun exactly the runs whose code changed.


rule train_model:
    input:
        split=get_train_input,
        tuned="results/tune/{dataset}/{model}/winner.json",
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
        device=get_device,
        code=get_code,
    threads: config.get("threads", 2)
    resources:
        **RESOURCES["train"],
    shell:
        "evcf train --data data/processed/{wildcards.dataset} --dataset {wildcards.dataset} "
        "--model {wildcards.model} --seed {wildcards.seed} {params.args} --tuned {input.tuned} "
        "--device {params.device} --threads {threads} "
        "--out results/{wildcards.dataset}/{wildcards.model}/seed-{wildcards.seed} 2> {log}"


rule collect_runs:
    input:
        get_collect_input,
    output:
        "results/{dataset}/{model}.json",
    log:
        "logs/collect_runs/{dataset}/{model}.log",
    params:
        runs=get_collect_runs,
    shell:
        "evcf collect --runs {params.runs} --out {output} 2> {log}"
