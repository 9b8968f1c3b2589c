#!/bin/sh
# Step 5a of the CEHR-XGPT tutorial: sample synthetic patient sequences from the trained model.
#
# Runs cehrgpt's generator loop through our thin driver (python -m cehrgpt_tutorials.generate, same
# arguments as cehrgpt.generation.generate_batch_hf_gpt_sequence) with 500 patients, context window
# 512 and top-p 1.0 (the model's full distribution), plus the two arguments cehrgpt's argparse
# requires and the seed's README leaves out (--batch_size, --sampling_strategy).
# --sampler constrained (default) samples only the tokens the sequence grammar allows at each step
# (cehrgpt_tutorials/sequences/grammar.py: the rules inspect_synthetic.py reports); --sampler raw is cehrgpt's
# own sampler, unchanged (the seed used it with --top-p 0.95).
# Each patient is prompted with the first 4 tokens (year, age, gender, race) of a random real
# sequence; the generator runs whole batches, so it writes a little more than asked.
#
# Reads:  MODEL_DIR (default $CEHR_GPT_MODEL_DIR): model and tokenizer from step 4
#         the real sequences for the prompts (default $CEHR_GPT_DATA_DIR/patient_sequence, its
#         train/ when step 2 split the patients)
# Writes: OUTPUT_DIR/top_p10000_constrained/generated_sequences/*.parquet (default OUTPUT_DIR =
#         $SYNTHETIC_DATA_OUTPUT_DIR; the folder name follows the sampling settings: top_p9500 for
#         --sampler raw --top-p 0.95). The previous folder of the same name (sequences and anything
#         made from them) is replaced only once the new sequences are complete.
#
# Example (after `source setup_env.sh`):
#   sh cehrgpt_tutorials/scripts/generate_synthetic.sh
#   sh cehrgpt_tutorials/scripts/generate_synthetic.sh --num-patients 50 --batch-size 25
#   sh cehrgpt_tutorials/scripts/generate_synthetic.sh --sampler raw --top-p 0.95   # the seed's sampler

set -u
set -f  # no filename globbing: generator arguments reach it as written

# shellcheck source=shell_helpers.sh
. "$(dirname "$0")/shell_helpers.sh" || { echo "error: cannot read shell_helpers.sh beside $0" >&2; exit 1; }

NUM_PATIENTS=500
BATCH_SIZE=""  # default: 50, or fewer when fewer patients are asked
CONTEXT_WINDOW=512
TOP_P=1.0
SAMPLER=constrained
SAMPLING_STRATEGY=TopPStrategy
MODEL_DIR="${CEHR_GPT_MODEL_DIR:-omop_synthea/cehrgpt_model}"
PROMPT_DATA=""
OUTPUT_DIR="${SYNTHETIC_DATA_OUTPUT_DIR:-omop_synthea/synthetic_data}"

usage() {
    cat <<EOF
Usage: $0 [--num-patients N] [--batch-size N] [--context-window N] [--top-p P] [--sampler constrained|raw]
          [--sampling-strategy TopPStrategy|TopKStrategy|TopMixStrategy] [--model-dir DIR]
          [--prompt-data DIR] [--output-dir DIR] [GENERATOR_ARGS...]

Samples synthetic patient sequences from a trained CEHR-GPT and prints where they went.

  --num-patients N        patients to generate (default $NUM_PATIENTS; whole batches, so up to one batch more)
  --batch-size N          sequences generated together (default 50, at most --num-patients)
  --context-window N      longest sequence in tokens (default $CONTEXT_WINDOW; at most the model's context)
  --top-p P               nucleus sampling threshold (default $TOP_P: the model's full distribution)
  --sampler S             constrained (default): only tokens the sequence grammar allows at each step;
                          raw: cehrgpt's own sampler, unchanged
  --sampling-strategy S   TopPStrategy (default), TopKStrategy or TopMixStrategy
  --model-dir DIR         trained model and tokenizer (default \$CEHR_GPT_MODEL_DIR)
  --prompt-data DIR       real sequences whose first 4 tokens prompt each patient
                          (default \$CEHR_GPT_DATA_DIR/patient_sequence; its train/ when split)
  --output-dir DIR        default \$SYNTHETIC_DATA_OUTPUT_DIR
  GENERATOR_ARGS          anything else goes to the generator, e.g. --temperature 0.9 --seed 1
  -h, --help              show this help
EOF
}

positive_integer() {
    case "$2" in
        ''|*[!0-9]*|0) die "$1 must be a positive whole number, got '$2'" ;;
    esac
}

while [ $# -gt 0 ]; do
    option="$1"
    case "$option" in
        -h|--help) usage; exit 0 ;;
        --num-patients|--batch-size|--context-window|--top-p|--sampler|--sampling-strategy|--model-dir|--prompt-data|--output-dir)
            [ $# -ge 2 ] || die "$option needs a value (see --help)"
            value="$2"; shift 2 ;;
        --num-patients=*|--batch-size=*|--context-window=*|--top-p=*|--sampler=*|--sampling-strategy=*|--model-dir=*|--prompt-data=*|--output-dir=*)
            value="${option#*=}"; option="${option%%=*}"; shift ;;
        *) append_word "$option"; shift; continue ;;  # kept quoted: spaces, globs, '' survive
    esac
    case "$option" in
        --num-patients) NUM_PATIENTS="$value" ;;
        --batch-size) BATCH_SIZE="$value" ;;
        --context-window) CONTEXT_WINDOW="$value" ;;
        --top-p) TOP_P="$value" ;;
        --sampler) SAMPLER="$value" ;;
        --sampling-strategy) SAMPLING_STRATEGY="$value" ;;
        --model-dir) MODEL_DIR="$value" ;;
        --prompt-data) PROMPT_DATA="$value" ;;
        --output-dir) OUTPUT_DIR="$value" ;;
    esac
done
positive_integer --num-patients "$NUM_PATIENTS"
if [ -z "$BATCH_SIZE" ]; then
    BATCH_SIZE=50
    [ "$NUM_PATIENTS" -lt "$BATCH_SIZE" ] && BATCH_SIZE=$NUM_PATIENTS
fi
positive_integer --batch-size "$BATCH_SIZE"
positive_integer --context-window "$CONTEXT_WINDOW"
case "$SAMPLER" in
    constrained|raw) ;;
    *) die "--sampler must be constrained or raw, got '$SAMPLER'" ;;
esac
case "$SAMPLING_STRATEGY" in
    TopPStrategy|TopKStrategy|TopMixStrategy) ;;
    *) die "--sampling-strategy must be TopPStrategy, TopKStrategy or TopMixStrategy, got '$SAMPLING_STRATEGY'" ;;
esac

PYTHON_BIN=$(command -v python || command -v python3) || die "no python on PATH: run 'source setup_env.sh'"
TUTORIAL_ROOT=$(cd "$(dirname "$0")/../.." && pwd -P) || die "cannot find the tutorial's folder"
export PYTHONPATH="$TUTORIAL_ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's cehrgpt_tutorials
# A model whose training has not finished (or no model) is refused with the reason.
"$PYTHON_BIN" -m cehrgpt_tutorials.pipeline.training check-finished "$MODEL_DIR" || exit 1
[ -n "$PROMPT_DATA" ] || PROMPT_DATA="${CEHR_GPT_DATA_DIR:-omop_synthea}/patient_sequence"
# Prompts come from the training patients only: the held-out test/ patients stay unseen.
[ -d "$PROMPT_DATA/train" ] && PROMPT_DATA="$PROMPT_DATA/train"
[ -d "$PROMPT_DATA" ] || die "no real sequences for the prompts at '$PROMPT_DATA' (pass --prompt-data)"
[ "${USE_TF:-}" = 0 ] || die "USE_TF is not 0, so transformers would import TensorFlow's Keras 3 and fail: run 'source setup_env.sh'"
mkdir -p "$OUTPUT_DIR" || die "cannot create '$OUTPUT_DIR'"
OUTPUT_DIR=$(physical_dir "$OUTPUT_DIR") || exit 1
# One writer in the synthetic data folder (generation, restore, report): a second stops here.
hold_lock 9 "$OUTPUT_DIR" "the synthetic data folder"
# What killed runs left (their staging folders, a swap stopped half-way): nobody else can be writing
# it, we hold the lock.
"$PYTHON_BIN" -m cehrgpt_tutorials.files clean-all "$OUTPUT_DIR" ||
    die "cannot clean up what an earlier run left in $OUTPUT_DIR (the message above says why)"

# The generator appends uuid-named files to OUTPUT/<sampling folder>/generated_sequences, so a
# second run would mix two samples. It writes into a staging folder instead; we swap it in at the end.
staging="$OUTPUT_DIR/.generate.tmp-$$"
# The cleanup itself is not interrupted (a second Ctrl-C would leave half a staging folder).
trap 'trap "" INT TERM; rm -rf "$staging"' EXIT
trap 'exit 130' INT TERM

# The generator runs (num_of_patients // batch_size + 1) batches: a whole batch too many whenever the
# batch size divides the number (500 with batch 50 -> 550). Asking it for N - 1 gives the fewest
# whole batches that reach N.
asked_of_generator=$((NUM_PATIENTS - 1))
set -- "$PYTHON_BIN" -u -m cehrgpt_tutorials.generate \
    --sampler "$SAMPLER" \
    --model_folder "$MODEL_DIR" \
    --tokenizer_folder "$MODEL_DIR" \
    --output_folder "$staging" \
    --num_of_patients "$asked_of_generator" \
    --batch_size "$BATCH_SIZE" \
    --buffer_size "$BATCH_SIZE" \
    --context_window "$CONTEXT_WINDOW" \
    --sampling_strategy "$SAMPLING_STRATEGY" \
    --top_p "$TOP_P" \
    --demographic_data_path "$PROMPT_DATA"
eval "set -- \"\$@\" $QUOTED_WORDS"

echo "generating $NUM_PATIENTS patients in batches of $BATCH_SIZE (the generator runs N // batch + 1 batches, so it is asked for N - 1 = $asked_of_generator)"
echo "\$ $(print_command "$@")"
started=$(date +%s)
"$@" || exit_as_ours $?
elapsed=$(( $(date +%s) - started ))

# The generator names its folder after the sampling settings (top_p10000_constrained for the default,
# top_p9500 for --sampler raw --top-p 0.95).
sample_folder=$(ls -A "$staging") || die "cannot read the staging folder $staging"
[ -n "$sample_folder" ] && [ -d "$staging/$sample_folder/generated_sequences" ] ||
    die "the generator exited 0 but wrote no generated_sequences folder under $staging"
target="$OUTPUT_DIR/$sample_folder"
[ -e "$target" ] && echo "replacing the previous $target (its sequences and anything restored from them)"
# One rename puts the new sample where the previous one was (files.replace_directory).
trap '' INT TERM
"$PYTHON_BIN" -m cehrgpt_tutorials.files replace "$staging/$sample_folder" "$target" ||
    die "cannot move the new sequences into $target (the previous sample is where it was)"
trap 'exit 130' INT TERM

rows=$("$PYTHON_BIN" -c 'import sys, pyarrow.dataset as ds; print(ds.dataset(sys.argv[1], format="parquet").count_rows())' \
    "$target/generated_sequences") || rows="?"
echo "generated $rows sequences (asked $NUM_PATIENTS) in $((elapsed / 60))m$((elapsed % 60))s"
echo "sequences: $target/generated_sequences"
