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
PYTHON_BIN=$(command -v python || command -v python3) || die "no python on PATH: run 'source setup_env.sh'"
TUTORIAL_ROOT=$(cd "$(dirname "$0")/../.." && pwd -P) || die "cannot find the tutorial's folder"
export PYTHONPATH="$TUTORIAL_ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's cehrgpt_tutorials

# Checks the options, refuses a model whose training has not finished, finds the prompts (train/ when
# step 2 split the patients) and makes OUTPUT_DIR. Sets NUM_PATIENTS BATCH_SIZE CONTEXT_WINDOW TOP_P
# SAMPLER SAMPLING_STRATEGY MODEL_DIR PROMPT_DATA OUTPUT_DIR ASKED_OF_GENERATOR and GENERATOR_EXTRA
# (quoted words), or prints the usage and exits.
answer=$("$PYTHON_BIN" -m cehrgpt_tutorials.pipeline.synthetic_options generate "$0" "$@") || exit_as_ours $?
eval "$answer"
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

set -- "$PYTHON_BIN" -u -m cehrgpt_tutorials.generate \
    --sampler "$SAMPLER" \
    --model_folder "$MODEL_DIR" \
    --tokenizer_folder "$MODEL_DIR" \
    --output_folder "$staging" \
    --num_of_patients "$ASKED_OF_GENERATOR" \
    --batch_size "$BATCH_SIZE" \
    --buffer_size "$BATCH_SIZE" \
    --context_window "$CONTEXT_WINDOW" \
    --sampling_strategy "$SAMPLING_STRATEGY" \
    --top_p "$TOP_P" \
    --demographic_data_path "$PROMPT_DATA"
eval "set -- \"\$@\" $GENERATOR_EXTRA"

echo "generating $NUM_PATIENTS patients in batches of $BATCH_SIZE (the generator runs N // batch + 1 batches, so it is asked for N - 1 = $ASKED_OF_GENERATOR)"
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
