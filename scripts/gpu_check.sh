#!/usr/bin/env bash
# The GPU check (issue 22): one command, on a machine with Python 3, a CUDA torch and evcf's other
# dependencies (pyproject.toml; pytest too), no network needed, from a copy of the repository's
# working tree without an install of evcf itself:
#
#   bash scripts/gpu_check.sh OUTDIR                # on CUDA, within 9 minutes (--budget 520 s, + 10 s grace)
#   bash scripts/gpu_check.sh OUTDIR --device cpu   # tiny sizes on the CPU: checks the script itself
#   bash scripts/gpu_check.sh --limits [--device D] # each stage's limit and the default budget, as JSON
#
# Each stage runs under its own time limit (the `limits` lists below; --limits prints them), and the
# default budget fits their sum, so that every stage can run to its end: on CUDA 520 s, + 10 s for
# the last stage's kill grace, within 9 minutes (tests/bench/test_gpu_check.py fails if they stop fitting).
#
# It writes into OUTDIR, each file as soon as its stage ends (a stage cut short by its time limit
# keeps what it measured, or leaves a stand-in JSON that says so; no stage stops the ones after it):
#   env.json          Python, the packages, torch, the GPU; stops the check if a required package does
#                     not import (exit 4: it names each, and how to carry it here as a wheel with
#                     `pip download` and `pip install --no-index --find-links`) or if the device is
#                     not usable (exit 3)
#   gemm.json         the matrix-product rate (TFLOP/s) in fp32, TF32 and bf16 (8192^3 on CUDA), and
#                     the copy rate (GB/s: the memory bandwidth that the bench's traffic floor divides by)
#   bench-fp32.json   `evcf bench` at the ML-20M shape for Mult-VAE, Vamp and H+Vamp (Gated),
#   bench-tf32.json   params.yaml's recipes, in each precision: per-step latency (20 synchronised
#   bench-bf16.json   steps after 3 warm-up) and pipelined throughput (100 steps queued in 5 rounds,
#                     one synchronisation each: steps/s, users/s, s/epoch), FLOP floor and
#                     memory-traffic floor (bytes a step's operations move / copy rate), evaluation
#   tests.json        tests/test_cuda.py's outcome, test by test
#   numerics.json     fp32 vs TF32 vs bf16 test NDCG@100 and Recall@20, Mult-VAE and Vamp, seeds
#                     1-2, on the synthetic data (scripts/numerics_check.py; rewritten after each run)
#   summary.json      each stage's status (ok, failed, timed out, skipped), seconds, limit, file and
#                     the command it ran; on the CPU, what a GPU would add (gpu_adds)
#   *.log             each stage's output
# Without jsonschema, params.yaml is read but not checked against its schema (the bench's
# params_check says so).  On the CPU the TF32 parts are skipped (CUDA only) and said so.  Options:
#   --device cuda|cpu   (default cuda)
#   --budget SECONDS    the whole check's time (default 520 on CUDA, which the stages' limits fit);
#                       each stage gets at most its own limit and what is left of the budget
#   --limits            print the stages' limits and the default budget (JSON) and exit
# Environment: PYTHON (default python3).
set -uo pipefail  # no -e: a failing stage is recorded in summary.json and the next one runs

usage() { echo "usage: bash scripts/gpu_check.sh OUTDIR [--device cuda|cpu] [--budget SECONDS] | --limits [--device D]" >&2; exit 2; }

dest=""
device=cuda
budget=""
print_limits=""
while [ $# -gt 0 ]; do
    case "$1" in
        --device) [ $# -ge 2 ] || usage; device=$2; shift 2 ;;
        --budget) [ $# -ge 2 ] || usage; budget=$2; shift 2 ;;
        --limits) print_limits=1; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        -*) echo "gpu_check: unknown option $1" >&2; usage ;;
        *) [ -z "$dest" ] || usage; dest=$1; shift ;;
    esac
done
[ -n "$dest" ] || [ -n "$print_limits" ] || usage
case "$device" in cuda|cpu) ;; *) echo "gpu_check: --device must be cuda or cpu, got $device" >&2; exit 2 ;; esac

if [ "$device" = cuda ]; then
    # ML-20M's shape and params.yaml's recipes for ml-20m
    bench_size=(--shape ml-20m --steps 20 --warmup 3 --pipelined-steps 100 --eval-users 10000)
    gemm_size=8192
    precisions=(fp32 tf32 bf16)
    numerics_args=(--seeds 1 2 --settings fp32 tf32 bf16)
    # the whole check within 9 minutes: 520 s, + 10 s of the last stage's kill grace, + 10 s spare;
    # each stage's own limit (seconds), which together must fit the budget (tests/bench/test_gpu_check.py)
    default_budget=520
    limits=(env=40 gemm=30 bench-fp32=70 bench-tf32=70 bench-bf16=70 tests=110 numerics=130)
else
    # tiny sizes: a check of the script, not a measurement (the recipes are still ml-20m's)
    small='"hidden_size": 32, "latent_size": 8'
    bench_size=(--users 200 --items 100 --nnz 3000 --steps 2 --warmup 1 --pipelined-steps 4 --eval-users 50 --threads 1
                --gemm-size 128 --hparams "{\"mult-vae\": {$small}, \"vamp\": {$small, \"n_pseudo\": 8},
                \"hvamp-gated\": {\"hidden_size\": 32, \"z1_size\": 8, \"z2_size\": 8, \"n_pseudo\": 8}}")
    gemm_size=128
    precisions=(fp32 tf32 bf16)
    numerics_args=(--seeds 1 --settings fp32 tf32 bf16 --epochs 1)
    default_budget=720  # a loaded 2-core machine; the stages' limits below fit it
    limits=(env=60 gemm=60 bench-fp32=120 bench-bf16=120 tests=120 numerics=200)  # no bench-tf32: CUDA only
fi
limits_sum=0
for kv in "${limits[@]}"; do limits_sum=$(( limits_sum + ${kv#*=} )); done
if [ -n "$print_limits" ]; then
    printf '{"device": "%s", "default_budget_s": %d, "grace_s": 10, "limits_s": {' "$device" "$default_budget"
    sep=""; for kv in "${limits[@]}"; do printf '%s"%s": %s' "$sep" "${kv%%=*}" "${kv#*=}"; sep=", "; done
    printf '}}\n'
    exit 0
fi
if [ "$limits_sum" -gt "$default_budget" ]; then  # a guard for edits: tests/bench/test_gpu_check.py checks it too
    echo "gpu_check: the stages' limits add up to $limits_sum s, more than the default budget of $default_budget s" >&2
    exit 2
fi
[ -n "$budget" ] || budget=$default_budget
case "$budget" in ''|*[!0-9]*) echo "gpu_check: --budget must be whole seconds, got $budget" >&2; exit 2 ;; esac

root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$dest" || exit 2
dest=$(cd "$dest" && pwd)
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
cd "$root" || exit 2
started=$(date +%s)
deadline=$(( started + budget ))
stages="$root/scripts/gpu_check_stages.py"

limit_of() { local kv; for kv in "${limits[@]}"; do [ "${kv%%=*}" = "$1" ] && echo "${kv#*=}"; done; }

# stage NAME FILE LIMIT COMMAND...: run COMMAND under the smaller of LIMIT and the budget left,
# its output in NAME.log; record its outcome (and a stand-in FILE if it wrote none) in summary.json
stage() {
    local name=$1 file=$2 limit=$3; shift 3
    local left=$(( deadline - $(date +%s) ))
    local log="$dest/$name.log" rc status t0
    if [ "$left" -lt 10 ]; then
        rm -f "$file"
        echo "gpu_check: $name skipped: the budget of $budget s is spent"
        echo "skipped: the budget of $budget s was spent before this stage" >"$log"
        "$PYTHON" "$stages" record --summary "$dest/summary.json" --stage "$name" --file "$file" \
            --status "skipped (budget spent)" --rc -1 --seconds 0 --log "$log" --command "$(printf '%q ' "$@")"
        return
    fi
    [ "$limit" -le "$left" ] || limit=$left
    rm -f "$file"  # a file from an earlier check must not pass for this one's
    echo "gpu_check: $name (at most $limit s) -> $(basename "$file")"
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124|137) status="timed out after $limit s" ;;
        *) status="failed (exit $rc)" ;;
    esac
    echo "gpu_check: $name: $status in $(( $(date +%s) - t0 )) s"
    "$PYTHON" "$stages" record --summary "$dest/summary.json" --stage "$name" --file "$file" --status "$status" \
        --rc "$rc" --seconds "$(( $(date +%s) - t0 ))" --log "$log" --limit "$limit" --command "$(printf '%q ' "$@")"
}

# skip NAME FILE WHY: a stage that does not apply here, said so in FILE and summary.json
skip() {
    local name=$1 file=$2 why=$3
    echo "gpu_check: $name skipped: $why"
    printf '{"stage": "%s", "measured": false, "skipped": "%s"}\n' "$name" "$why" >"$file"
    echo "skipped: $why" >"$dest/$name.log"
    "$PYTHON" "$stages" record --summary "$dest/summary.json" --stage "$name" --file "$file" \
        --status "skipped ($why)" --rc 0 --seconds 0 --log "$dest/$name.log"
}

rm -f "$dest/summary.json" "$dest/env.json"
echo "gpu_check: device $device, budget $budget s, results in $dest"
env_command=("$PYTHON" "$stages" env --device "$device" --out "$dest/env.json")
timeout --kill-after=10 "$(limit_of env)" "${env_command[@]}" >"$dest/env.log" 2>&1
rc=$?
if [ "$rc" -ne 0 ]; then
    cat "$dest/env.log" >&2
    if [ "$rc" -eq 4 ]; then
        echo "gpu_check: required packages are missing (above, and in $dest/env.json); nothing measured" >&2
        exit 4
    fi
    echo "gpu_check: the device is not usable (see $dest/env.json); nothing measured" >&2
    exit 3
fi
"$PYTHON" "$stages" record --summary "$dest/summary.json" --stage env --file "$dest/env.json" --status ok \
    --rc 0 --seconds "$(( $(date +%s) - started ))" --log "$dest/env.log" --limit "$(limit_of env)" \
    --command "$(printf '%q ' "${env_command[@]}")"

stage gemm "$dest/gemm.json" "$(limit_of gemm)" \
    "$PYTHON" "$stages" gemm --device "$device" --size "$gemm_size" --out "$dest/gemm.json"

for precision in "${precisions[@]}"; do
    if [ "$precision" = tf32 ] && [ "$device" != cuda ]; then
        skip "bench-$precision" "$dest/bench-$precision.json" "CUDA only"
        continue
    fi
    stage "bench-$precision" "$dest/bench-$precision.json" "$(limit_of "bench-$precision")" \
        "$PYTHON" -m evcf.cli --log-level INFO bench "${bench_size[@]}" --models mult-vae vamp hvamp-gated \
        --params params.yaml --device "$device" --precision "$precision" --reference-steps 0 --skip-preprocess \
        --out "$dest/bench-$precision.json"
done

stage tests "$dest/tests.json" "$(limit_of tests)" \
    "$PYTHON" "$stages" tests --out "$dest/tests.json" -- -rxXs tests/test_cuda.py

stage numerics "$dest/numerics.json" "$(limit_of numerics)" \
    "$PYTHON" scripts/numerics_check.py --device "$device" --models mult-vae vamp "${numerics_args[@]}" \
    --out "$dest/numerics.json"

if [ "$device" != cuda ]; then
    # the CPU mode ran every stage; say what the same check on a GPU would add
    "$PYTHON" "$stages" gpu-adds --summary "$dest/summary.json"
fi
echo "gpu_check: done in $(( $(date +%s) - started )) s; see $dest/summary.json"
