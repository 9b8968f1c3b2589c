#!/bin/sh
# Step 5b of the CEHR-XGPT tutorial, first half: generated sequences -> OMOP CDM tables (Parquet).
#
# Same command line as cehrgpt's scripts/omop_pipeline.sh, and the same three programs:
# cehrgpt.generation.omop_converter_batch (one person per usable sequence), then cehrgpt.omop's
# observation_period and condition_era (Spark) rebuilt from the converted tables. It also says how many
# sequences converted and why the others were skipped, and stops before Spark (exit 3) when none did.
# Writes OMOP_FOLDER/<table>/ and the vocabulary tables copied from SOURCE_OMOP_FOLDER, built in a hidden
# folder beside OMOP_FOLDER that replaces it in one step at the end. Options: --help.
# Decisions (options, checks, folders) are in cehrgpt_tutorials/pipeline/omop_pipeline_settings.py.
#
#   sh cehrgpt_tutorials/scripts/omop_pipeline.sh -p "$SYNTHETIC_DATA_OUTPUT_DIR/top_p10000_constrained/generated_sequences" \
#       -o "$SYNTHETIC_DATA_OUTPUT_DIR/top_p10000_constrained/restored_omop" -s "$OMOP_DIR" --cpu-cores 2

set -u
set -f  # no filename globbing: paths and table lists are used as written

# shellcheck source=shell_helpers.sh
. "$(dirname "$0")/shell_helpers.sh" || { echo "error: cannot read shell_helpers.sh beside $0" >&2; exit 1; }

log() {
    printf '[%s] %s\n' "$(date '+%H:%M:%S')" "$*"
}

# Runs a command after printing it, so a learner sees (and can copy) what ran.
run() {
    printf '$ %s\n' "$(print_command "$@")"
    "$@" || die "step failed (exit $?): $(print_command "$@")"
}

PYTHON_BIN=$(command -v python || command -v python3) || die "no python on PATH: run 'source setup_env.sh'"
TUTORIAL_ROOT=$(cd "$(dirname "$0")/../.." && pwd -P) || die "cannot find the tutorial's folder"
export PYTHONPATH="$TUTORIAL_ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's cehrgpt_tutorials
# Sets the three folders (physical paths), BUFFER_SIZE, CPU_CORES, DOMAIN_TABLES, ... (see plan()).
settings=$("$PYTHON_BIN" -m cehrgpt_tutorials.pipeline.omop_pipeline_settings plan "$0" "$@") || exit $?
eval "$settings"
[ "$SHOW_HELP" = 0 ] || { "$PYTHON_BIN" -m cehrgpt_tutorials.pipeline.omop_pipeline_settings usage "$0"; exit 0; }
hold_lock 8 "$OMOP_FOLDER" "the restored OMOP folder"
"$PYTHON_BIN" -m cehrgpt_tutorials.files clean "$OMOP_FOLDER" || exit_as_ours $?

log "sequences: $PATIENT_SEQUENCE_FOLDER"
log "output:    $OMOP_FOLDER"
log "source:    $SOURCE_OMOP_FOLDER"

# --- 1. Fresh output tables, vocabulary copied from the source --------------------------------
# Everything is built in a hidden staging folder beside OMOP_FOLDER, which replaces it in one rename
# at the end: until then the previous tables stay whole, and a stopped run leaves them as they were.
BUILD="$(dirname "$OMOP_FOLDER")/.$(basename "$OMOP_FOLDER").tmp-$$"
mkdir "$BUILD" || die "cannot create the staging folder $BUILD"
trap 'trap "" INT TERM; rm -rf "$BUILD"' EXIT
trap 'exit 130' INT TERM
# The converter's worker processes each create missing table folders (check, then mkdir), and
# with --cpu-cores > 1 they race: FileExistsError. Creating them first avoids that.
for table in $CONVERTED_TABLES; do
    mkdir -p "$BUILD/$table" || die "cannot create $BUILD/$table"
done
for table in $VOCABULARY_TABLES; do  # those the source has
    cp -R "$SOURCE_OMOP_FOLDER/$table" "$BUILD/$table" || die "cannot copy $table into $BUILD"
done
log "copied vocabulary tables: $VOCABULARY_TABLES"

# --- 2. Sequences -> OMOP tables ------------------------------------------------------------------
# With each sequence's own person_id (the generator numbers them 1..N) a converted person can be
# matched to its sequence, which is how the summary below finds the skipped ones.
"$PYTHON_BIN" -m cehrgpt_tutorials.omop.restore person-ids "$PATIENT_SEQUENCE_FOLDER"
case $? in
    0) person_id_option=--use_original_person_id ;;
    4) person_id_option=""
       log "note: the sequences have no distinct person_id, so skipped ones cannot be told apart below" ;;
    *) die "cannot read the sequences' person_id in $PATIENT_SEQUENCE_FOLDER (the message above says why)" ;;
esac
log "converting sequences to OMOP"
# shellcheck disable=SC2086  # person_id_option is one word or none
run "$PYTHON_BIN" -u -m cehrgpt.generation.omop_converter_batch \
    --patient_sequence_path "$PATIENT_SEQUENCE_FOLDER" \
    --output_folder "$BUILD" \
    --concept_path "$BUILD/concept" \
    --buffer_size "$BUFFER_SIZE" \
    --cpu_cores "$CPU_CORES" \
    $person_id_option

# --- 3. What converted, and why the rest did not --------------------------------------------------
"$PYTHON_BIN" -m cehrgpt_tutorials.omop.restore summary \
    --sequences "$PATIENT_SEQUENCE_FOLDER" --omop-folder "$BUILD"
status=$?
if [ "$status" -eq "$NOTHING_CONVERTED_EXIT_CODE" ]; then
    cat >&2 <<EOF
error: no generated sequence could be converted to OMOP, so there is nothing to build
observation_period and condition_era from (Spark would fail with "Unable to infer schema").
The reasons above usually mean the model is under-trained: it has not learned to end each visit
with [VE] or to write valid concept ids. Train longer or on more data (train_cehrgpt.sh --profile
demo, or add e.g. --num_train_epochs 20), then run generate_synthetic.sh and this script again.
EOF
    exit "$NOTHING_CONVERTED_EXIT_CODE"
fi
[ "$status" -eq 0 ] || die "could not summarise the conversion (exit $status)"

# --- 4. observation_period and condition_era with Spark -----------------------------------------
"$PYTHON_BIN" -m cehrgpt_tutorials.omop.restore fill-empty-tables "$BUILD" || exit_as_ours $?
log "rebuilding observation_period"
# shellcheck disable=SC2086  # the table list is meant to split into words
run "$PYTHON_BIN" -u -m cehrgpt.omop.observation_period \
    --input_folder "$BUILD" --output_folder "$BUILD" --domain_table_list $DOMAIN_TABLES
# cehrgpt's query leaves out the primary key, which a CDM database requires.
run "$PYTHON_BIN" -m cehrgpt_tutorials.omop.restore add-observation-period-ids "$BUILD"
log "rebuilding condition_era"
run "$PYTHON_BIN" -u -m cehrgpt.omop.condition_era \
    --input_folder "$BUILD" --output_folder "$BUILD" --domain_table_list condition_occurrence

trap '' INT TERM
"$PYTHON_BIN" -m cehrgpt_tutorials.files replace "$BUILD" "$OMOP_FOLDER" || exit_as_ours $?
trap 'exit 130' INT TERM
log "restored OMOP tables in $OMOP_FOLDER"
