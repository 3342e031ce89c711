#!/usr/bin/env bash
# lm-evaluation-harness against a running mdm-serve, offline: the shared PIQA file as a local task
# (piqa_local.yaml) and the model's own tokenizer for lm-eval's token counting. lm-eval needs a
# Hugging Face tokenizer folder: a copy of tokenizer.json with a tokenizer_config.json naming the
# fast tokenizer class is made in a temporary folder.
#
#   bash scripts/lm-eval/run.sh TOKENIZER_JSON MODEL_NAME [URL] [LIMIT] [MAX_LENGTH]
#
# Needs `pip install "lm-eval[api]==0.4.9" "transformers<5" "datasets<4"`.
set -euo pipefail
cd "$(dirname "$0")/../.."
tokenizer=${1:?tokenizer.json of the served model}
model=${2:?the served model name (GET /v1/models)}
url=${3:-http://127.0.0.1:8000/v1/completions}
limit=${4:-100}
max_length=${5:-2048}
tok=$(mktemp -d)
trap 'rm -rf "$tok"' EXIT
cp "$tokenizer" "$tok/tokenizer.json"
echo '{"tokenizer_class": "PreTrainedTokenizerFast"}' > "$tok/tokenizer_config.json"
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 lm_eval --model local-completions \
    --model_args "model=$model,base_url=$url,tokenizer=$tok,num_concurrent=1,max_retries=1,tokenized_requests=True,max_length=$max_length" \
    --include_path scripts/lm-eval --tasks piqa_local --limit "$limit"
