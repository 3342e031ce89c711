#!/bin/bash
# usage: bash scripts/reverse-curse-eval.sh  (after the two finetune runs of docs/reproduction.md)
# reverse-curse evaluation of the fine-tuned models (docs/reproduction.md)
set -e
rc=../shared/data/reversal_curse
tasks="$rc/p2d_prompts_test.jsonl:gen=48,$rc/p2d_reverse_prompts_test.jsonl:gen=12,$rc/d2p_prompts_test.jsonl:gen=12,$rc/d2p_reverse_prompts_test.jsonl:gen=48"
mkdir -p runs/eval
target/release/examples/evaluate --checkpoint runs/rc-arm/model --tasks "$tasks" --no-progress \
    --json runs/eval/rc-arm.json --markdown runs/eval/rc-arm.md
for w in 0 0.4 0.8; do
  target/release/examples/evaluate --checkpoint runs/rc-mdm/model --tasks "$tasks" --cfg $w --no-progress \
      --json runs/eval/rc-mdm-cfg$w.json --markdown runs/eval/rc-mdm-cfg$w.md
done
