#!/bin/sh
# Step 2 of the CEHR-XGPT tutorial: OMOP Parquet tables -> patient sequences for pre-training, with
# cehrbert_data's two Spark apps as the official tutorial runs them: generate_included_concept_list, then
# generate_training_data (patient_sequence/train and /test after the held-out split). Options: --help.
# Decisions (options, checks, Spark settings, the split) are in cehrgpt_tutorials/pipeline/step2_settings.py;
# this script is the glue: the lock, the staging folder, and the two command lines it prints and runs.

set -u
set -f  # no filename globbing: `--master local[2]` must reach spark-submit as written

# shellcheck source=shell_helpers.sh
. "$(dirname "$0")/shell_helpers.sh" || { echo "error: cannot read shell_helpers.sh beside $0" >&2; exit 1; }
PYTHON_BIN="${PYSPARK_PYTHON:-python}"
TUTORIAL_ROOT=$(cd "$(dirname "$0")/../.." && pwd -P) || die "cannot find the tutorial's folder"

# Sets INPUT_FOLDER, OUTPUT_FOLDER, START_DATE, TUNING_OPTIONS, SPLIT_SOURCE, ... (see plan()).
settings=$(tutorial cehrgpt_tutorials.pipeline.step2_settings plan "$0" "$@") || exit $?
eval "$settings"
[ "$SHOW_HELP" = 0 ] || { tutorial cehrgpt_tutorials.pipeline.step2_settings usage "$0"; exit 0; }
# The import's own error (a traceback on stderr) is shown above ours, not hidden.
CEHRBERT_DATA_HOME=$("$PYTHON_BIN" -c 'import os, cehrbert_data; print(os.path.dirname(cehrbert_data.__file__))') ||
    die "cannot import cehrbert_data with $PYTHON_BIN (the error is above): run 'source setup_env.sh' (or 'make setup')"
# Read as shell words (quotes work, as in the official script's eval): '-Xss4m -Dx=y' stays one value.
(eval "set -- $SPARK_OPTIONS") >/dev/null 2>&1 ||
    die "SPARK_SUBMIT_OPTIONS is not a valid list of shell words: $SPARK_OPTIONS"
# The concept threshold (yours, or sized to the persons) and the floor held in the training sequences.
choice=$(tutorial cehrgpt_tutorials.sequences.concept_floor choose "$INPUT_FOLDER/person" \
    ${MIN_NUM_OF_PATIENTS:+--threshold "$MIN_NUM_OF_PATIENTS"}) || exit 1
MIN_NUM_OF_PATIENTS=$(printf '%s' "$choice" | cut -f1)
FLOOR=$(printf '%s' "$choice" | cut -f2)
threshold_note="$MIN_NUM_OF_PATIENTS: $(printf '%s' "$choice" | cut -f3-)"
if [ "$DRY_RUN" = 1 ]; then
    printf '%s\n' "min_num_of_patients $threshold_note" "Spark options: $SPARK_OPTIONS_NOTE" \
        "Partitions:    $PARTITIONS_NOTE" "Dry run: nothing was written"
    exit 0
fi

mkdir -p "$OUTPUT_FOLDER" || die "cannot create output folder '$OUTPUT_FOLDER'"
# One run per output folder, and none while step 3 rewrites the sequences: a second stops here.
hold_lock 9 "$OUTPUT_FOLDER" "the sequences' output folder"
hold_lock 8 "$OUTPUT_FOLDER/patient_sequence" "the patient sequences"
LOG_DIR="$OUTPUT_FOLDER/logs"
mkdir -p "$LOG_DIR" || die "cannot create $LOG_DIR"
# The apps write into a hidden staging folder that replaces the previous outputs only once both have
# finished, patient_sequence last: a run stopped at any point leaves the previous sequences whole.
STAGING="$OUTPUT_FOLDER/.patient_sequence.tmp-$$"
{ tutorial cehrgpt_tutorials.files clean "$OUTPUT_FOLDER/patient_sequence" &&
    tutorial cehrgpt_tutorials.files clean "$OUTPUT_FOLDER/qualified_concept_list"; } ||
    die "cannot clean up what an earlier run left in $OUTPUT_FOLDER (the message above says why)"
mkdir "$STAGING" || die "cannot create the staging folder $STAGING"
trap 'trap "" INT TERM; rm -rf "$STAGING"' EXIT
trap 'exit 130' INT TERM
if [ "$SPLIT_SOURCE" = ours ]; then
    tutorial cehrgpt_tutorials.sequences.split "$INPUT_FOLDER/person" "$SPLITS" ${TEST_FRACTION:+--test-fraction "$TEST_FRACTION"} ||
        die "could not write the patient split $SPLITS (the message above says why)"
fi
# App 2 reads the concept list from its input folder: it reads links (staging/spark_input), not the OMOP folder.
tutorial cehrgpt_tutorials.pipeline.step2_settings stage "$INPUT_FOLDER" "$OUTPUT_FOLDER" "$STAGING" --split "$SPLIT_SOURCE" ||
    exit_as_ours $?

printf '%s\n' "Input folder:  $INPUT_FOLDER" "Output folder: $OUTPUT_FOLDER" "Start date:    $START_DATE" \
    "min_num_of_patients $threshold_note" "Spark options: $SPARK_OPTIONS_NOTE" "Partitions:    $PARTITIONS_NOTE" \
    "Java:          $JAVA_NOTE" "Held out:      $SPLIT_NOTE" \
    "App 2 reads:   links to the input tables + the new concept list (staged, then kept as $OUTPUT_FOLDER/spark_input)"

# run_app NAME APP.py ARG...: print the spark-submit command, run it with its output in logs/NAME.log,
# time it, and stop the whole script with the end of the log when it fails. Our options come first, so yours win.
run_app() {
    app_name="$1" log_file="$LOG_DIR/$1.log"
    shift
    eval "set -- spark-submit $TUNING_OPTIONS $SPARK_OPTIONS \"\$@\""
    printf '\n== %s\n+ %s\n  (Spark output: %s)\n' "$app_name" "$(print_command "$@")" "$log_file"
    started=$(date +%s)
    "$@" >"$log_file" 2>&1
    status=$?
    elapsed=$(($(date +%s) - started))
    if [ "$status" -ne 0 ]; then
        printf '\n---- last 40 lines of %s ----\n' "$log_file" >&2
        tail -n 40 "$log_file" >&2
        echo "----" >&2
        die "$app_name failed (exit $status after ${elapsed}s); full log: $log_file"
    fi
    echo "  $app_name took $((elapsed / 60))m $((elapsed % 60))s"
}

total_started=$(date +%s)
# shellcheck disable=SC2086  # DOMAIN_TABLES is a word list
run_app generate_included_concept_list "$CEHRBERT_DATA_HOME/apps/generate_included_concept_list.py" \
    --input_folder "$INPUT_FOLDER" --output_folder "$STAGING" --min_num_of_patients "$MIN_NUM_OF_PATIENTS" \
    --ehr_table_list $DOMAIN_TABLES
[ -d "$STAGING/qualified_concept_list" ] ||
    die "generate_included_concept_list wrote no qualified_concept_list (log: $LOG_DIR/generate_included_concept_list.log)"
# --include_death (with a death table), not death in --domain_table_list: cehrbert_data 0.1.1 would look
# for death.visit_occurrence_id, which OMOP's death table does not have.
# shellcheck disable=SC2086  # DEATH_OPTION is one word or none; DOMAIN_TABLES a word list
run_app generate_training_data "$CEHRBERT_DATA_HOME/apps/generate_training_data.py" \
    --input_folder "$STAGING/spark_input" --output_folder "$STAGING" -d "$START_DATE" \
    --att_type day --inpatient_att_type day -iv -ip --include_concept_list --gpt_patient_sequence \
    --should_construct_artificial_visits --disconnect_problem_list_records $DEATH_OPTION \
    --domain_table_list $DOMAIN_TABLES
for folder in $SEQUENCE_FOLDERS; do
    [ -d "$STAGING/$folder" ] ||
        die "generate_training_data wrote no $SEQUENCE_FOLDERS_NOTE (log: $LOG_DIR/generate_training_data.log)"
done
# The floor holds for what reaches the model (sequences/concept_floor.py).
tutorial cehrgpt_tutorials.sequences.concept_floor enforce "$STAGING/patient_sequence" \
    --concept-list "$STAGING/qualified_concept_list" --floor "$FLOOR" --concept-dir "$INPUT_FOLDER/concept" ||
    exit_as_ours $?
# Every folder the apps wrote replaces its previous version in one rename each, the sequences last.
trap '' INT TERM
tutorial cehrgpt_tutorials.files replace-each "$STAGING" "$OUTPUT_FOLDER" --last patient_sequence ||
    die "cannot move the new sequences into $OUTPUT_FOLDER (the message above says why)"
trap 'exit 130' INT TERM
total=$(($(date +%s) - total_started))
printf '\nPatient sequences written to %s (both apps: %dm %ds)\nNext: %s\n' \
    "$WRITTEN_NOTE" $((total / 60)) $((total % 60)) "$NEXT_STEP"
