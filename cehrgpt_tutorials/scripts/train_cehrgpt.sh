#!/bin/sh
# Step 4 of the CEHR-XGPT tutorial: pretrain a CEHR-GPT on the patient sequences.
#
# Runs cehrgpt's own runner (python -m cehrgpt.runners.hf_cehrgpt_pretrain_runner) with the
# settings of a named profile, and prints the full command first so you can copy and change it.
# From 16 MB of training sequences, cehrgpt_tutorials/pipeline/prepare_dataset.py tokenizes them first, the
# runner's way but 3x faster per worker, and the runner loads the result (--tokenization).
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
# Re-running the same command resumes from the last checkpoint (the runner does that when
# --overwrite_output_dir is not given). When the training data or the arguments changed since the
# run in MODEL_DIR was started, it cannot be resumed: the script stops and names what changed.
# Nothing is ever deleted: --fresh moves the previous run aside to MODEL_DIR.old-<time> first.
# A visible GPU is used automatically (the Hugging Face Trainer picks it); nothing to change.
# --nproc N runs N training processes under torchrun (one per GPU, or N CPU processes sharing the
# cores), each on its share of every batch; the model is written once, by the first.

set -u
set -f  # no filename globbing: a runner argument like '*' reaches the runner as written

# shellcheck source=shell_helpers.sh
. "$(dirname "$0")/shell_helpers.sh" || { echo "error: cannot read shell_helpers.sh beside $0" >&2; exit 1; }
TUTORIAL_ROOT=$(cd "$(dirname "$0")/../.." && pwd -P) || die "cannot find the tutorial's folder"

PROFILE=demo
DATA_FOLDER=""
MODEL_DIR="${CEHR_GPT_MODEL_DIR:-omop_synthea/cehrgpt_model}"
FRESH=0
NPROC=1
PRINT_ARGS=0
TOKENIZATION=auto
# prepare_dataset.py (see below) starts a second Python with torch (~3 s on 2 cores). Before the
# first step, 2 workers: the demo (0.6 MB of training Parquet) 11.4 s against the runner's 7.9 s,
# 10x (7.8 MB) 16.4 against 16.0 s, 100x (79 MB) 64 against 107 s (bench/RESULTS.md).
PREPARE_MIN_MB=16
STAMP_NAME=training_inputs.txt

usage() {
    cat <<EOF
Usage: $0 [--profile demo|seed|tiny] [--data-folder DIR] [--model-dir DIR] [--fresh] [--nproc N]
          [--tokenization auto|prepare|runner] [RUNNER_ARGS...]

Pretrains CEHR-GPT with cehrgpt.runners.hf_cehrgpt_pretrain_runner and prints the exact command.

  --profile NAME      demo (default): trains a usable model on the 2-core CPU demo in minutes
                      seed: the seed tutorial's architecture (hidden 192, 4 layers, 4 heads,
                            context 512) with a learning rate that trains it; for a GPU or a long run
                      tiny: 150 steps of a very small model, for the tests
  --data-folder DIR   patient sequences (default \$CEHR_GPT_DATA_DIR/patient_sequence); a folder with
                      train/ and test/ (step 2's split) trains on train/ only
  --model-dir DIR     output: tokenizer, checkpoints, model (default \$CEHR_GPT_MODEL_DIR)
  --fresh             start over: move MODEL_DIR's previous run aside to MODEL_DIR.old-<time>
                      (only a folder this script made; it is never deleted)
  --nproc N           N training processes under torchrun (default 1): one per GPU for several
                      GPUs (NCCL), or N CPU processes (gloo); per-device batch sizes are per process
  --tokenization MODE  who tokenizes the sequences before the first step (the same dataset either way):
                      prepare: cehrgpt_tutorials/pipeline/prepare_dataset.py, before the runner (3x faster
                               per worker); runner: the runner itself, as cehrgpt ships it;
                      auto (default): prepare from $PREPARE_MIN_MB MB of training Parquet, else runner
  --print-args        print the runner command one word per line and exit (bench/train_bench.py uses it)
  RUNNER_ARGS         anything else goes to the runner after the profile's arguments, so it wins,
                      e.g. --num_train_epochs 20 --learning_rate 5e-4 (see the runner's --help)
  -h, --help          show this help

Run 'source setup_env.sh' first (it sets USE_TF=0 and the folders).
EOF
}

# --- Command line: our options first; everything we don't know goes to the runner. ------------
# The user's runner arguments are kept quoted in QUOTED_WORDS (append_word), so spaces, globs
# and empty strings reach the runner as typed.
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --profile) [ $# -ge 2 ] || die "--profile needs a value (demo, seed or tiny)"; PROFILE="$2"; shift 2 ;;
        --profile=*) PROFILE="${1#*=}"; shift ;;
        --data-folder) [ $# -ge 2 ] || die "--data-folder needs a value"; DATA_FOLDER="$2"; shift 2 ;;
        --data-folder=*) DATA_FOLDER="${1#*=}"; shift ;;
        --model-dir) [ $# -ge 2 ] || die "--model-dir needs a value"; MODEL_DIR="$2"; shift 2 ;;
        --model-dir=*) MODEL_DIR="${1#*=}"; shift ;;
        --fresh) FRESH=1; shift ;;
        --nproc) [ $# -ge 2 ] || die "--nproc needs a value"; NPROC="$2"; shift 2 ;;
        --nproc=*) NPROC="${1#*=}"; shift ;;
        --print-args) PRINT_ARGS=1; shift ;;
        --tokenization) [ $# -ge 2 ] || die "--tokenization needs a value (auto, prepare or runner)"; TOKENIZATION="$2"; shift 2 ;;
        --tokenization=*) TOKENIZATION="${1#*=}"; shift ;;
        *) append_word "$1"; shift ;;
    esac
done

case "$NPROC" in
    ''|*[!0-9]*|0) die "--nproc must be a positive whole number, got '$NPROC'" ;;
esac
case "$TOKENIZATION" in
    auto|prepare|runner) ;;
    *) die "--tokenization must be auto, prepare or runner, got '$TOKENIZATION'" ;;
esac

# --- Profiles: model size and optimisation. Why these values: bench/RESULTS.md. -----------------
# hidden_size must be divisible by 3 (the time-token head splits the hidden state in three) and by
# n_head. The runner always adds an early-stopping callback, which needs per-epoch evaluation and
# saving with load_best_model_at_end (set below for every profile).
# The runner's early stopping (patience 1) ends training after the first epoch whose eval loss
# improves by less than 1% (relative). On the demo that cut the 6-epoch schedule after epoch 5 while
# the loss was still falling (1.2367 -> 1.2293, 0.6%), on some runs and not others. Stop only when
# the loss gets worse; load_best_model_at_end keeps the best epoch either way.
STOP_ONLY_WHEN_WORSE="--early_stopping_threshold 0"
case "$PROFILE" in
    demo)
        # Chosen on the full demo (bench/RESULTS.md): the seed's width and context, but 6 layers
        # instead of 4 and the qwen2 decoder block (it knows token order: cehrgpt's gpt2 block has
        # no position embeddings) with QK-norm, no dropout, batch 8 and a higher learning rate for
        # 6 epochs. On 2 CPU cores: 7 min of training, 89.2-93.4% structurally valid sequences
        # (four samples, three trainings; 4 layers: 88.6-90.2% in seven; the seed's block: 87-90%).
        PROFILE_ARGS="--backbone qwen2 --use_qk_norm true
--hidden_size 192 --num_hidden_layers 6 --n_head 4 --max_position_embeddings 512
--resid_pdrop 0 --embd_pdrop 0 --attn_pdrop 0
--per_device_train_batch_size 8 --per_device_eval_batch_size 8
--learning_rate 2e-3 --warmup_ratio 0.05 --num_train_epochs 6 $STOP_ONLY_WHEN_WORSE" ;;
    seed)
        # The seed's architecture. Its own optimiser settings (default 5e-5 for 3 epochs) leave the
        # model unable to write a valid patient (0% on the demo); 1e-3 for 8 epochs gives 90%.
        PROFILE_ARGS="--hidden_size 192 --num_hidden_layers 4 --n_head 4 --max_position_embeddings 512
--per_device_train_batch_size 16 --per_device_eval_batch_size 16
--learning_rate 1e-3 --warmup_ratio 0.05 --num_train_epochs 8 $STOP_ONLY_WHEN_WORSE" ;;
    tiny)
        # For the tests and a quick look at the whole chain: about a minute on 300 patients, and
        # good enough that some of its sequences convert to OMOP (about 1 in 5 is valid).
        PROFILE_ARGS="--backbone qwen2 --use_qk_norm true
--hidden_size 48 --num_hidden_layers 2 --n_head 2 --max_position_embeddings 512
--resid_pdrop 0 --embd_pdrop 0 --attn_pdrop 0
--per_device_train_batch_size 8 --per_device_eval_batch_size 8
--learning_rate 3e-3 --warmup_ratio 0.05 --num_train_epochs 10 --max_steps 150" ;;
    *) die "unknown profile '$PROFILE' (demo, seed or tiny)" ;;
esac

# --- Inputs ---------------------------------------------------------------------------------
[ -n "$DATA_FOLDER" ] || DATA_FOLDER="${CEHR_GPT_DATA_DIR:-omop_synthea}/patient_sequence"
# Step 2 splits the patients (patient_sequence/train and /test): train on train/ only, so test/ stays
# patients the model never saw (the runner's own evaluation split is taken from within train/).
[ -d "$DATA_FOLDER/train" ] && DATA_FOLDER="$DATA_FOLDER/train"
[ -d "$DATA_FOLDER" ] || die "no patient sequences at '$DATA_FOLDER' (run step 2, create_cehrgpt_pretraining_data.sh, or pass --data-folder)"
ls "$DATA_FOLDER" | grep -q '\.parquet$' ||
    die "'$DATA_FOLDER' has no .parquet files (expected cehrbert_data's patient_sequence output)"
DATA_FOLDER=$(physical_dir "$DATA_FOLDER") || exit 1
[ -n "$MODEL_DIR" ] || die "--model-dir is empty"
mkdir -p "$MODEL_DIR" || die "cannot create model folder '$MODEL_DIR'"
MODEL_DIR=$(physical_dir "$MODEL_DIR") || exit 1
[ "$MODEL_DIR" != / ] || die "--model-dir is the root folder /"
# A folder this script did not make is neither used nor moved (checked before anything slow).
if [ "$PRINT_ARGS" = 0 ] && [ ! -f "$MODEL_DIR/$STAMP_NAME" ] && [ -n "$(ls -A "$MODEL_DIR")" ]; then
    [ "$FRESH" = 1 ] &&
        die "--fresh: '$MODEL_DIR' was not made by this script (no $STAMP_NAME), so it is left as it is; choose another --model-dir"
    die "'$MODEL_DIR' is not empty and was not made by this script (no $STAMP_NAME): choose another --model-dir or empty it"
fi
PYTHON_BIN=$(command -v python || command -v python3) || die "no python on PATH: run 'source setup_env.sh'"
[ "${USE_TF:-}" = 0 ] || die "USE_TF is not 0, so transformers would import TensorFlow's Keras 3 and fail: run 'source setup_env.sh'"
# One run per model folder: a second one stops here, naming the first.
[ "$PRINT_ARGS" = 1 ] || hold_lock 9 "$MODEL_DIR" "the model folder"

# Counted before OMP_NUM_THREADS is set below (nproc follows it).
CORES=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
# A GPU, when visible, is used by the Trainer anyway; give it data loader workers so collation
# keeps up. On CPU, workers would only compete with the training threads for the same cores.
if "$PYTHON_BIN" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    DEVICE=cuda
    LOADER_ARGS="--dataloader_num_workers 4 --dataloader_prefetch_factor 4"
else
    DEVICE="cpu ($CORES cores)"
    LOADER_ARGS="--dataloader_num_workers 0"
fi
# Several processes: NCCL between GPUs, gloo on CPU, where the processes share the cores (torchrun
# would give each a single thread). --use_cpu: without it the Trainer on a machine without a GPU
# leaves torchrun's processes unaware of each other, each training on all the data.
if [ "$NPROC" -gt 1 ]; then
    if [ "$DEVICE" = cuda ]; then
        LOADER_ARGS="$LOADER_ARGS --ddp_backend nccl"
    else
        LOADER_ARGS="$LOADER_ARGS --use_cpu true --ddp_backend gloo"
        threads=$((CORES / NPROC))
        [ "$threads" -ge 1 ] || threads=1
        export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$threads}"
    fi
    DEVICE="$DEVICE, $NPROC processes"
    export PYTHONUNBUFFERED=1  # -u reaches torchrun only; its runners' lines should come as they happen
fi

# --- The runner command -----------------------------------------------------------------------
# --preprocessing_num_workers: one per core. The runner's tokenization (most of the time before the
# first step on a big CDM) runs that many processes; it used to be pinned to 1 because step 2 leaves
# some ages null, pandas makes those rows' ages float, and shards of int and float ages cannot be
# joined ("The features can't be aligned because the key ages ..."). cleanup_tokens.py (step 3) fills
# them, so sequences that went through step 3 tokenize with any number of workers.
PREPROCESSING_WORKERS=$CORES
# Positional parameters hold the command word by word (POSIX sh has no arrays).
if [ "$NPROC" -gt 1 ]; then
    # torchrun (torch.distributed.run) starts NPROC copies of the runner on this machine; --standalone
    # picks a free port for them to meet. The runner tokenizes in the first process only.
    set -- "$PYTHON_BIN" -u -m torch.distributed.run --standalone --nproc_per_node "$NPROC" \
        -m cehrgpt.runners.hf_cehrgpt_pretrain_runner
else
    set -- "$PYTHON_BIN" -u -m cehrgpt.runners.hf_cehrgpt_pretrain_runner
fi
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
    --preprocessing_num_workers "$PREPROCESSING_WORKERS"
# Word-split the profile's and loader's options on whitespace (none contains a space)...
for word in $PROFILE_ARGS $LOADER_ARGS; do set -- "$@" "$word"; done
# ...and the user's extra runner arguments exactly as typed, last, so theirs win.
eval "set -- \"\$@\" $QUOTED_WORDS"
if [ "$PRINT_ARGS" = 1 ]; then
    printf '%s\n' "$@"
    exit 0
fi

# --- Resume, refuse, or start over (never delete) -------------------------------------------------
# The runner resumes from MODEL_DIR's last checkpoint and reuses its tokenizer and tokenized
# dataset. That is only right when the data and the arguments are the ones that checkpoint came
# from, so we keep a stamp of both (file checksums, not times) beside the checkpoints: one line per
# runner argument (the interpreter, launcher, data loader and tokenization worker settings left out:
# they do not change the model, and the worker count follows the machine's cores) and one per data file.
STAMP_FORMAT="# train_cehrgpt.sh training inputs, format 2"
stamp_now=$(
    printf '%s\n' "$STAMP_FORMAT"
    past_module=0 skip_value=0
    for word in "$@"; do
        if [ "$past_module" = 0 ]; then
            [ "$word" = cehrgpt.runners.hf_cehrgpt_pretrain_runner ] && past_module=1
            continue
        fi
        if [ "$skip_value" = 1 ]; then skip_value=0; continue; fi
        case "$word" in
            --dataloader_*=*|--preprocessing_num_workers=*) continue ;;
            --dataloader_*|--preprocessing_num_workers) skip_value=1; continue ;;
        esac
        printf 'arg %s\n' "$(shell_quote "$word")"
    done
    (cd "$DATA_FOLDER" && find . -type f -name '*.parquet' -exec cksum {} + | sort -k 3) | sed 's/^/data /'
) || die "cannot checksum the training data in $DATA_FOLDER"

# Prints what differs between two stamps, on one line: "--num_train_epochs 6 -> 10; data: 2 files changed".
describe_changes() {
    # The old stamp is file 1, the new one (stdin) file 2. For each: option -> its last value.
    awk '
        FNR == 1 { file++; pending = "" }
        function set_option(name, value) { seen[file, name] = 1; value_of[file, name] = value; names[name] = 1 }
        /^arg / {
            word = substr($0, 5)
            if (word ~ /^--[^=]*=/) {  # --name=value
                if (pending != "") set_option(pending, "(set)")
                pending = ""
                set_option(substr(word, 1, index(word, "=") - 1), substr(word, index(word, "=") + 1))
            } else if (word ~ /^--/) {
                if (pending != "") set_option(pending, "(set)")
                pending = word
            } else if (pending != "") {
                set_option(pending, word)
                pending = ""
            }
            next
        }
        pending != "" { set_option(pending, "(set)"); pending = "" }
        /^data / { n = split(substr($0, 6), parts, " "); data[file, parts[n]] = parts[1] " " parts[2]; files[parts[n]] = 1 }
        END {
            changes = ""
            for (name in names) {
                if (!((1, name) in seen)) changes = changes "; " name " " value_of[2, name] " (new)"
                else if (!((2, name) in seen)) changes = changes "; " name " " value_of[1, name] " (gone)"
                else if (value_of[1, name] != value_of[2, name])
                    changes = changes "; " name " " value_of[1, name] " -> " value_of[2, name]
            }
            changed = added = removed = 0
            for (name in files) {
                if (!((1, name) in data)) added++
                else if (!((2, name) in data)) removed++
                else if (data[1, name] != data[2, name]) changed++
            }
            if (changed + added + removed)
                changes = changes "; the data: " changed " files changed, " added " new, " removed " gone"
            print substr(changes, 3)
        }' "$1" -
}

stamp_file="$MODEL_DIR/$STAMP_NAME"
if [ "$FRESH" = 1 ] && [ -n "$(ls -A "$MODEL_DIR")" ]; then
    previous_run="$MODEL_DIR.old-$(date +%Y%m%d-%H%M%S)"
    [ -e "$previous_run" ] && previous_run="$previous_run-$$"
    mv "$MODEL_DIR" "$previous_run" || die "--fresh: cannot move the previous run in $MODEL_DIR aside to $previous_run"
    mkdir "$MODEL_DIR" || die "cannot create model folder '$MODEL_DIR' (the previous run is in $previous_run)"
    echo "--fresh: moved the previous run in $MODEL_DIR to $previous_run (delete it yourself once you no longer need it)"
elif [ -f "$stamp_file" ]; then
    if [ "$(cat "$stamp_file")" = "$stamp_now" ]; then
        # A checkpoint the Trainer could not resume from (interrupted while it was written) is moved
        # aside, so the runner resumes from the last complete one.
        PYTHONPATH="$TUTORIAL_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON_BIN" -m cehrgpt_tutorials.pipeline.training \
            set-aside-incomplete "$MODEL_DIR" || die "cannot check the checkpoints in $MODEL_DIR (the message above says why)"
        [ -n "$(find "$MODEL_DIR" -mindepth 1 -maxdepth 1 -name 'checkpoint-*' -print)" ] &&
            echo "resuming: same data and arguments as the checkpoint in $MODEL_DIR"
    else
        if [ "$(head -n 1 "$stamp_file")" = "$STAMP_FORMAT" ]; then
            changes=$(printf '%s\n' "$stamp_now" | describe_changes "$stamp_file")
        else
            changes="recorded by an older train_cehrgpt.sh, in a form this one cannot compare"
        fi
        die "the run in $MODEL_DIR cannot be resumed with other data or arguments (${changes:-changed}): keep it and train into another --model-dir, or add --fresh to move it aside to $MODEL_DIR.old-<time> and start over"
    fi
fi
printf '%s\n' "$stamp_now" > "$stamp_file" || die "cannot write $stamp_file"
# The runner writes the final model into MODEL_DIR file by file: until it has finished, this file says
# the folder holds no usable model (generation and prediction refuse it; re-running resumes).
printf 'train_cehrgpt.sh started at %s and has not finished: re-run it with the same arguments to resume.\n' \
    "$(date '+%Y-%m-%d %H:%M:%S')" > "$MODEL_DIR/TRAINING_INCOMPLETE" || die "cannot write $MODEL_DIR/TRAINING_INCOMPLETE"

echo "profile $PROFILE on $DEVICE"
echo "data:  $DATA_FOLDER"
echo "model: $MODEL_DIR"
echo "\$ $(print_command "$@")"
started=$(date +%s)
# The runner's first job on a large CDM is tokenizing every sequence. prepare_dataset.py does it
# first with the runner's own functions and the package's own mapping, calling them the way a large
# CDM needs (same dataset, 3x faster per worker); the runner then finds it where it looks for a
# tokenized dataset and loads it. On small data the second Python start costs more than it saves.
if [ "$TOKENIZATION" = auto ]; then
    data_mb=$(find -L "$DATA_FOLDER" -maxdepth 1 -type f -name '*.parquet' -exec ls -lnL {} + |
        awk '{bytes += $5} END {print int(bytes / 1048576)}')
    if [ "${data_mb:-0}" -ge "$PREPARE_MIN_MB" ]; then TOKENIZATION=prepare; else TOKENIZATION=runner; fi
    tokenization_note="${data_mb:-0} MB of sequences; prepare_dataset.py from $PREPARE_MIN_MB MB"
else
    tokenization_note="--tokenization $TOKENIZATION"
fi
if [ "$TOKENIZATION" = prepare ]; then
    echo "tokenizing: cehrgpt_tutorials/pipeline/prepare_dataset.py, then the runner loads it ($tokenization_note)"
    PYTHONPATH="$TUTORIAL_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON_BIN" -m cehrgpt_tutorials.pipeline.prepare_dataset \
        --runner-command "$@" ||
        die "tokenizing the sequences failed after $(( $(date +%s) - started ))s (the messages above say why; --tokenization runner leaves it to the runner)"
else
    echo "tokenizing: the runner's own ($tokenization_note)"
fi
"$@"
status=$?
elapsed=$(( $(date +%s) - started ))
if [ "$status" -ne 0 ]; then
    printf 'error: training failed (exit %s) after %ss; the runner'"'"'s messages are above\n' "$status" "$elapsed" >&2
    exit "$status"
fi
[ -f "$MODEL_DIR/config.json" ] || die "the runner exited 0 but wrote no model to $MODEL_DIR"
rm -f "$MODEL_DIR/TRAINING_INCOMPLETE" || die "cannot remove $MODEL_DIR/TRAINING_INCOMPLETE"
echo "trained in $((elapsed / 60))m$((elapsed % 60))s; model and tokenizer in $MODEL_DIR"
