#!/bin/bash
# The reverse-curse evaluation of docs/reproduction.md, after its fine-tuning commands.
# usage: bash scripts/reverse-curse-eval.sh   (writes runs/eval/rc-*.json and .md)
set -euo pipefail
rc=../shared/data/reversal_curse
ev=target/release/examples/evaluate
# descriptions get 48 generated tokens, names 12; one denoising step per token (MDM)
tasks="$rc/p2d_prompts_test.jsonl:gen=48,$rc/p2d_reverse_prompts_test.jsonl:gen=12,$rc/d2p_prompts_test.jsonl:gen=12,$rc/d2p_reverse_prompts_test.jsonl:gen=48"
mkdir -p runs/eval
# all 300 questions of each file: the baseline and the MDM without guidance
$ev --checkpoint runs/rc-arm/model --tasks "$tasks" --no-progress --json runs/eval/rc-arm.json --markdown runs/eval/rc-arm.md
$ev --checkpoint runs/rc-mdm/model --tasks "$tasks" --cfg 0 --no-progress --json runs/eval/rc-mdm-cfg0.json --markdown runs/eval/rc-mdm-cfg0.md
# the CFG sweep and the longer-fine-tuned MDM on the first 60 questions of each file
for w in 0 0.4 0.8; do
  $ev --checkpoint runs/rc-mdm/model --tasks "$tasks" --cfg $w --limit 60 --no-progress \
      --json runs/eval/rc-mdm-cfg$w-limit60.json --markdown runs/eval/rc-mdm-cfg$w-limit60.md
done
$ev --checkpoint runs/rc-mdm2/model --tasks "$tasks" --limit 60 --no-progress \
    --json runs/eval/rc-mdm2-cfg0-limit60.json --markdown runs/eval/rc-mdm2-cfg0-limit60.md
$ev --checkpoint runs/rc-arm/model --tasks "$tasks" --limit 60 --no-progress \
    --json runs/eval/rc-arm-limit60.json --markdown runs/eval/rc-arm-limit60.md
