#!/usr/bin/env bash
# GPU checks behind benchmarks/README.md: both engines at fp32/bf16/fp16, FSDP2 (both sharding modes),
# DeepSpeed ZeRO-2 (bf16, both engines), I-JEPA / H-JEPA ViT-B/16 (both engines, bf16; fp32 and fp16 for I-JEPA).
# BYOL / VICReg / SimCLR ResNet-50 (paper settings) and SimCLR on 32-band arrays (mode ssl).
# The Kaggle / Colab recipes' peak memory in fp16 (mode kaggle).
#   bash benchmarks/gpu_checks.sh precision|fsdp|deepspeed|jepa|ssl|kaggle RESULTS.jsonl
set -u
mode=${1:-precision}
results=${2:-gpu_results.jsonl}
run() {  # one benchmark run; its JSON line goes to $results, its log tail to stderr on failure
    log=$(mktemp)
    if timeout ${RUN_TIMEOUT:-300} "$@" >"$log" 2>&1; then grep '^{' "$log" | tee -a "$results"; else echo "FAILED: $*" | tee -a "$results"; tail -40 "$log"; fi
}
if [ "$mode" = precision ]; then
    for engine in trainer accelerate; do
        for precision in fp32 bf16 fp16; do
            run python3 benchmarks/bench_engines.py --engine "$engine" --precision "$precision" --steps 30 --workers 12
        done
    done
elif [ "$mode" = jepa ]; then
    for method in ijepa hjepa; do
        for engine in trainer accelerate; do
            run python3 benchmarks/bench_jepa.py --method "$method" --engine "$engine" --precision bf16 --steps 30 --workers 12
        done
    done
    for precision in fp32 fp16; do
        run python3 benchmarks/bench_jepa.py --method ijepa --engine trainer --precision "$precision" --steps 30 --workers 12
    done
    for precision in bf16 fp16; do
        run python3 benchmarks/bench_engines.py --engine trainer --precision "$precision" --steps 30 --workers 12
    done
elif [ "$mode" = ssl ]; then
    run python3 benchmarks/bench_methods.py --method byol --engine trainer --precision bf16 --workers 12
    run python3 benchmarks/bench_methods.py --method byol --engine trainer --precision fp32 --workers 12
    run python3 benchmarks/bench_methods.py --method vicreg --engine accelerate --precision bf16 --workers 12
    run python3 benchmarks/bench_methods.py --method vicreg --engine trainer --precision fp16 --workers 12
    run python3 benchmarks/bench_methods.py --method simclr --engine trainer --precision bf16 --bands 32 --size 96 --workers 12
elif [ "$mode" = kaggle ]; then
    run python3 benchmarks/bench_kaggle.py --part pretrain --steps 30 --workers 12
    run python3 benchmarks/bench_kaggle.py --part finetune --steps 60 --workers 12
elif [ "$mode" = deepspeed ]; then
    for engine in trainer accelerate; do
        run accelerate launch --config_file accelerate_configs/deepspeed_zero2.yaml --num_processes 1 \
            benchmarks/bench_engines.py --engine "$engine" --precision bf16 --steps 10 --workers 12 --knn
    done
else
    for config in fsdp_full_shard fsdp_shard_grad_op; do
        for engine in trainer accelerate; do
            run accelerate launch --config_file "accelerate_configs/$config.yaml" --num_processes 1 \
                benchmarks/bench_engines.py --engine "$engine" --precision bf16 --steps 10 --workers 12 --knn
        done
    done
fi
