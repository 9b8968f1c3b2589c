#!/bin/sh
# Step 4 of the CEHR-XGPT tutorial: pretrain a CEHR-GPT on the patient sequences.
#
# Runs cehrgpt's own runner (python -m cehrgpt.runners.hf_cehrgpt_pretrain_runner) with a named
# profile's settings (cehrgpt_tutorials/pipeline/profiles.py) and prints the full command first, so you
# can copy and change it. The options are checked and the decisions made in pipeline/training_options.py.
#
# Reads:  DATA_FOLDER (default $CEHR_GPT_DATA_DIR/patient_sequence); its train/ split when it has one
# Writes: MODEL_DIR (default $CEHR_GPT_MODEL_DIR): the tokenizer, the tokenized dataset
#         (dataset_prepared/), per-epoch checkpoints, training_inputs.txt (the runner arguments and
#         data checksums the run was started with) and, at the end, the model itself.
#
# Example (after `source setup_env.sh`):
#   sh cehrgpt_tutorials/scripts/train_cehrgpt.sh --profile demo
#   sh cehrgpt_tutorials/scripts/train_cehrgpt.sh --profile seed --num_train_epochs 20   # runner args override
#
# Re-running the same command resumes from the last checkpoint; with other data or arguments it stops
# and names what changed (pipeline/run_stamp.py). --fresh moves the previous run aside first; nothing
# is ever deleted. A visible GPU is used automatically; --nproc N runs N processes under torchrun.

set -u
set -f  # no filename globbing: a runner argument like '*' reaches the runner as written

# shellcheck source=shell_helpers.sh
. "$(dirname "$0")/shell_helpers.sh" || { echo "error: cannot read shell_helpers.sh beside $0" >&2; exit 1; }
TUTORIAL_ROOT=$(cd "$(dirname "$0")/../.." && pwd -P) || die "cannot find the tutorial's folder"
PYTHON_BIN=$(command -v python || command -v python3) || die "no python on PATH: run 'source setup_env.sh'"
# `tutorial` (shell_helpers.sh) runs this checkout's modules; the runner gets PYTHONPATH as it is.

# Sets PROFILE DATA_FOLDER MODEL_DIR FRESH PRINT_ARGS NPROC TOKENIZATION TOKENIZATION_NOTE, and
# PROFILE_ARGS and RUNNER_EXTRA (quoted words), or prints the usage and exits.
answer=$(tutorial cehrgpt_tutorials.pipeline.training_options plan "$0" "$@") || exit_as_ours $?
eval "$answer"
# One run per model folder: a second one stops here, naming the first.
[ "$PRINT_ARGS" = 1 ] || hold_lock 9 "$MODEL_DIR" "the model folder"
# Sets CORES DEVICE LOADER_ARGS, and exports the threads of CPU processes sharing the cores.
answer=$(tutorial cehrgpt_tutorials.pipeline.training_options launch "$NPROC") || exit_as_ours $?
eval "$answer"

# --- The runner command (positional parameters hold it word by word: POSIX sh has no arrays) ---------
if [ "$NPROC" -gt 1 ]; then
    # torchrun starts NPROC copies of the runner on this machine; --standalone picks a free port for
    # them to meet. The runner tokenizes in the first process only.
    set -- "$PYTHON_BIN" -u -m torch.distributed.run --standalone --nproc_per_node "$NPROC" \
        -m cehrgpt.runners.hf_cehrgpt_pretrain_runner
else
    set -- "$PYTHON_BIN" -u -m cehrgpt.runners.hf_cehrgpt_pretrain_runner
fi
# The runner's early stopping needs per-epoch evaluation and saving with load_best_model_at_end.
# --preprocessing_num_workers: one per core (step 3 fills the null ages that kept it at 1).
set -- "$@" \
    --model_name_or_path "$MODEL_DIR" \
    --tokenizer_name_or_path "$MODEL_DIR" \
    --output_dir "$MODEL_DIR" \
    --data_folder "$DATA_FOLDER" \
    --dataset_prepared_path "$MODEL_DIR/dataset_prepared" \
    --do_train true \
    --seed 42 \
    --eval_strategy epoch \
    --save_strategy epoch \
    --load_best_model_at_end true \
    --save_total_limit 1 \
    --logging_steps 10 \
    --report_to none \
    --preprocessing_num_workers "$CORES"
# The profile's and the loader's arguments, then the user's exactly as typed, last, so theirs win.
eval "set -- \"\$@\" $PROFILE_ARGS $LOADER_ARGS $RUNNER_EXTRA"
if [ "$PRINT_ARGS" = 1 ]; then
    printf '%s\n' "$@"
    exit 0
fi

# Resume (same data and arguments), refuse (naming what changed) or, with --fresh, move the previous
# run aside; then stamp the run and mark its model unfinished until the runner is done.
if [ "$FRESH" = 1 ]; then
    tutorial cehrgpt_tutorials.pipeline.training start-run --fresh "$MODEL_DIR" "$DATA_FOLDER" -- "$@"
else
    tutorial cehrgpt_tutorials.pipeline.training start-run "$MODEL_DIR" "$DATA_FOLDER" -- "$@"
fi || exit_as_ours $?

echo "profile $PROFILE on $DEVICE"
echo "data:  $DATA_FOLDER"
echo "model: $MODEL_DIR"
echo "\$ $(print_command "$@")"
started=$(date +%s)
if [ "$TOKENIZATION" = prepare ]; then
    echo "tokenizing: cehrgpt_tutorials/pipeline/prepare_dataset.py, then the runner loads it ($TOKENIZATION_NOTE)"
    tutorial cehrgpt_tutorials.pipeline.prepare_dataset --runner-command "$@" ||
        die "tokenizing the sequences failed after $(( $(date +%s) - started ))s (the messages above say why; --tokenization runner leaves it to the runner)"
else
    echo "tokenizing: the runner's own ($TOKENIZATION_NOTE)"
fi
"$@"
status=$?
elapsed=$(( $(date +%s) - started ))
if [ "$status" -ne 0 ]; then
    printf 'error: training failed (exit %s) after %ss; the runner'"'"'s messages are above\n' "$status" "$elapsed" >&2
    exit "$status"
fi
# Checks the runner wrote a model, then removes the marker that says it is unfinished.
tutorial cehrgpt_tutorials.pipeline.training finish-run "$MODEL_DIR" || exit_as_ours $?
echo "trained in $((elapsed / 60))m$((elapsed % 60))s; model and tokenizer in $MODEL_DIR"
