# The search before the Table 1 runs (evcf/tuning.py).  Every (dataset, model) with a grid (params.yaml
# `tune`, `tune.default` for datasets without their own) is searched with the first seed and judged
# on validation NDCG@100 only; `summarize_tuning` writes summary.csv and winner.json, and the Table 1
# runs (train.smk) apply the winner.  A model without a grid, or `tuning: false`, gets a winner.json
# that says "params.yaml" and changes nothing.
#
# tuning: full     every grid point trains its whole schedule (tune_point).
# tuning: halving  successive halving (tune_rung, decide_rung): rung r has a fixed number of slots;
#                  slot s of rung r > 0 trains the s-th point promoted by rung r - 1 from its
#                  checkpoint to the rung's budget.  The DAG is static (the number of jobs is known
#                  before anything runs); which point a slot trains is read from the decision file.
# tune_from        a dataset may take another dataset's winners instead of its own search.


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
        code=get_code,
    priority: 1  # grid points first: each search, its summary and its Table 1 runs form the longest chain
    threads: config.get("threads", 2)
    resources:
        **RESOURCES["train"],
    shell:
        "evcf train --data data/processed/{wildcards.dataset} --dataset {wildcards.dataset} "
        "--model {wildcards.model} --seed {params.seed} {params.args} "
        "--device {params.device} --threads {threads} "
        "--out results/tune/{wildcards.dataset}/{wildcards.model}/point-{wildcards.point} 2> {log}"


rule tune_rung:
    input:
        split=get_train_input,
        promoted=get_rung_promoted,
    output:
        "results/tune/{dataset}/{model}/rung-{rung}/slot-{slot}.json",
    log:
        "logs/tune_rung/{dataset}/{model}/rung-{rung}/slot-{slot}.log",
    benchmark:
        "benchmarks/tune_rung/{dataset}/{model}/rung-{rung}/slot-{slot}.tsv"
    params:
        args=get_rung_args,
        seed=SEEDS[0],
        device=get_device,
        code=get_code,
    threads: config.get("threads", 2)
    resources:
        **RESOURCES["train"],
    shell:
        "evcf tune-rung --data data/processed/{wildcards.dataset} --dataset {wildcards.dataset} "
        "--model {wildcards.model} --seed {params.seed} --rung {wildcards.rung} {params.args} "
        "--points-dir results/tune/{wildcards.dataset}/{wildcards.model} "
        "--device {params.device} --threads {threads} --result {output} 2> {log}"


rule decide_rung:
    input:
        get_decide_input,
    output:
        "results/tune/{dataset}/{model}/rung-{rung}/decision.json",
    log:
        "logs/decide_rung/{dataset}/{model}/rung-{rung}.log",
    params:
        args=get_decide_args,
    shell:
        "evcf tune-decide --results {input} {params.args} --out {output} 2> {log}"


rule summarize_tuning:
    input:
        get_tune_summary_input,
    output:
        summary="results/tune/{dataset}/{model}/summary.csv",
        winner="results/tune/{dataset}/{model}/winner.json",
    log:
        "logs/summarize_tuning/{dataset}/{model}.log",
    params:
        args=get_tune_summary_args,
        seed=SEEDS[0],
    shell:
        "evcf tune-summary {params.args} --dataset {wildcards.dataset} --seed {params.seed} "
        "--out-dir results/tune/{wildcards.dataset}/{wildcards.model} 2> {log}"


rule tune:
    input:
        tune_outputs(),
