#!/bin/sh
# The 5-seed study of examples/lora_finetune.py (defaults), one seed after another, then
# the report. From the repository root: sh docs/results/lora_finetune/run_study.sh
set -e
for seed in 0 1 2 3 4; do
    python examples/lora_finetune.py --seed "$seed" --output "docs/results/lora_finetune/seed_$seed"
done
python docs/results/lora_finetune/report.py
