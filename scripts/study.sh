#!/usr/bin/env bash
# The origin's study, reproduced on this machine with open models (issue 18, docs/evaluation.md):
# does retrieval beat fine-tuning for answering from one's own documents?
#
#   scripts/study.sh [OUT]            # default eval-runs/study
#
# On one corpus (default: the Python 3.11 tutorial from python3.11-doc) it indexes the pages,
# generates questions from sampled chunks, fine-tunes the model with `hearth tune` (QLoRA;
# whole pages are held out), then answers the held-out questions four ways, all with the same
# transformers engine so that only the adapter and the retrieval differ:
#   base       the model alone, no retrieval
#   tuned      the fine-tuned model alone, no retrieval
#   rag        the model with retrieval (Hearth's way)
#   rag-tuned  the fine-tuned model with retrieval
# and compares the four runs in one table (`hearth eval compare`), with each system's key-fact
# recall on the hand-written questions of evaluation/sets whose page is in the corpus (`hearth
# eval facts`). Every stage resumes from its last output: run the same command again after an
# interruption. Each stage's wall time goes to OUT/timings.tsv.
#
# Settings (environment):
#   STUDY_MODEL       packaged model (default qwen2.5-coder-0.5b-instruct-q4_k_m, the smaller
#                     one: what `auto` serves below 2 cores; the 1.5B has three times the weights to tune)
#   STUDY_QUESTION_MODEL  packaged model that writes the questions (default STUDY_MODEL)
#   STUDY_DOCS        folder to index (default /usr/share/doc/python3.11/html/tutorial)
#   STUDY_CHUNKS      chunks sampled for questions (default 250: about 50 held out at 20%)
#   STUDY_MAX_STEPS   tuning steps at most (default 100)
#   STUDY_MAX_MINUTES tuning minutes at most (default 35)
#   STUDY_QUANTIZATION  nf4 (QLoRA, default) or none
#   STUDY_EVAL_ARGS   extra arguments of `hearth eval run` (e.g. --no-judge, --judge-model NAME)
#   STUDY_FACTS_SET   key-fact set (default evaluation/sets/python-docs.jsonl)
#   STUDY_FACTS_UNDER its questions whose page lies under this path (default tutorial/)
#   HEARTH            the hearth command (default .venv/bin/hearth)
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-eval-runs/study}
MODEL=${STUDY_MODEL:-qwen2.5-coder-0.5b-instruct-q4_k_m}
QUESTION_MODEL=${STUDY_QUESTION_MODEL:-$MODEL}
DOCS=${STUDY_DOCS:-/usr/share/doc/python3.11/html/tutorial}
CHUNKS=${STUDY_CHUNKS:-250}
MAX_STEPS=${STUDY_MAX_STEPS:-100}
MAX_MINUTES=${STUDY_MAX_MINUTES:-35}
QUANTIZATION=${STUDY_QUANTIZATION:-nf4}
FACTS_SET=${STUDY_FACTS_SET:-evaluation/sets/python-docs.jsonl}
FACTS_UNDER=${STUDY_FACTS_UNDER:-tutorial/}
read -r -a EVAL_ARGS <<< "${STUDY_EVAL_ARGS:-}"
read -r -a HEARTH_CMD <<< "${HEARTH:-.venv/bin/hearth}"
ADAPTER=study-$MODEL

mkdir -p "$OUT"
# The study's own index and history, apart from the user's; the models folder is shared.
export HEARTH_DATA_DIR=$OUT/data
export HEARTH_TRANSFORMERS_MODEL=$MODEL
export HEARTH_TRANSFORMERS_QUANTIZATION=$QUANTIZATION
MODELS_DIR=${HEARTH_MODELS_DIR:-models}
HELD_OUT=$MODELS_DIR/adapters/$ADAPTER/held-out.jsonl

stage() {  # stage NAME COMMAND...: run it, and record its wall time
    local name=$1 started=$SECONDS
    shift
    printf '\n== %s (%s)\n' "$name" "$(date +%T)"
    "$@"
    printf '%s\t%s\n' "$name" "$((SECONDS - started))" >> "$OUT/timings.tsv"
}
hearth() { "${HEARTH_CMD[@]}" "$@"; }

[ -d "$DOCS" ] || { echo "no corpus at $DOCS (apt-get install python3.11-doc)" >&2; exit 1; }
stage fetch hearth models fetch "$MODEL" "$QUESTION_MODEL"
stage index hearth ingest files "$DOCS"
# Questions come from llama.cpp, the faster engine on a CPU; the same model answers later.
stage questions env HEARTH_LLM_BACKEND=llamacpp HEARTH_LLAMACPP_MODEL="$QUESTION_MODEL" \
    "${HEARTH_CMD[@]}" eval generate -n "$CHUNKS" -o "$OUT/questions.jsonl"
stage convert hearth models convert "$MODEL"
if [ ! -f "$MODELS_DIR/adapters/$ADAPTER/hearth-adapter.json" ]; then
    stage tune hearth tune "$OUT/questions.jsonl" --name "$ADAPTER" --base "$MODEL" \
        --max-steps "$MAX_STEPS" --max-minutes "$MAX_MINUTES"
fi

export HEARTH_LLM_BACKEND=transformers
answer() {  # answer NAME ADAPTER [ARGS...]
    local name=$1 adapter=$2
    shift 2
    stage "$name" env HEARTH_TRANSFORMERS_ADAPTER="$adapter" \
        "${HEARTH_CMD[@]}" eval run "$HELD_OUT" -o "$OUT/$name" --name "$name" \
        "${EVAL_ARGS[@]}" "$@"
}
answer base "" --no-retrieval
answer tuned "$ADAPTER" --no-retrieval
answer rag ""
answer rag-tuned "$ADAPTER"

# The same four systems on the hand-written questions about the corpus's pages: key-fact recall.
FACTS_QUESTIONS=$OUT/facts-questions.jsonl
if [ ! -s "$FACTS_QUESTIONS" ]; then
    grep -F "\"source\": \"$FACTS_UNDER" "$FACTS_SET" > "$FACTS_QUESTIONS.part" || true
    [ -s "$FACTS_QUESTIONS.part" ] || { echo "no question of $FACTS_SET under $FACTS_UNDER" >&2; exit 1; }
    mv "$FACTS_QUESTIONS.part" "$FACTS_QUESTIONS"
fi
facts() {  # facts NAME ADAPTER [ARGS...]
    local name=$1 adapter=$2
    shift 2
    stage "facts-$name" env HEARTH_TRANSFORMERS_ADAPTER="$adapter" \
        "${HEARTH_CMD[@]}" eval facts "$FACTS_QUESTIONS" -o "$OUT/facts-$name" \
        --name "facts-$name" "$@"
}
facts base "" --no-retrieval
facts tuned "$ADAPTER" --no-retrieval
facts rag ""
facts rag-tuned "$ADAPTER"
stage compare hearth eval compare "$OUT/base" "$OUT/tuned" "$OUT/rag" "$OUT/rag-tuned" \
    --facts "$OUT/facts-base" --facts "$OUT/facts-tuned" --facts "$OUT/facts-rag" \
    --facts "$OUT/facts-rag-tuned" -o "$OUT/compare"
echo "The table: $OUT/compare/compare.md; each stage's seconds: $OUT/timings.tsv"
