#!/bin/sh
# Step 2 of the CEHR-XGPT tutorial: OMOP Parquet tables -> patient sequences for pre-training.
#
# Runs cehrbert_data's two Spark apps with spark-submit, as the official tutorial's script does:
#   1. generate_included_concept_list: the concepts seen in at least --min_num_of_patients patients
#      (written to OUTPUT_FOLDER/qualified_concept_list);
#   2. generate_training_data: one row per patient (OUTPUT_FOLDER/patient_sequence), restricted to
#      those concepts, with day time tokens between and inside visits.
# Before them it writes the held-out split: OUTPUT_FOLDER/patient_splits (person_id, split), decided
# per person by cehrgpt_tutorials.sequences.split.is_test_person (--test_fraction, default 0.15), which app 2
# reads, so it writes patient_sequence/train and patient_sequence/test. Training and generation use
# train/ only; inspect_synthetic.py uses test/ as the real patients the model never saw. An input
# folder with its own patient_splits (not written by us) keeps that split; --test_fraction 0: no split.
#
# Reads:  INPUT_FOLDER/{person,visit_occurrence,concept,condition_occurrence,procedure_occurrence,
#         drug_exposure}/ (one Parquet folder per table, as export_omop.py writes them) and death/
#         when it exists.
# Writes: OUTPUT_FOLDER/patient_sequence/{train,test} (the result; patient_sequence itself with
#         --test_fraction 0), patient_splits, qualified_concept_list, the apps' intermediate
#         folders (all_patient_events, events_to_fix, clinical_events, att_events, ...), spark_input/
#         (links, see below) and logs/<app>.log. Nothing is written into INPUT_FOLDER.
#
# Example (after `source setup_env.sh`, which puts spark-submit on PATH and sets SPARK_SUBMIT_OPTIONS):
#   sh cehrgpt_tutorials/scripts/create_cehrgpt_pretraining_data.sh \
#       --input_folder "$OMOP_DIR" --output_folder "$CEHR_GPT_DATA_DIR" --start_date 1985-01-01
#
# POSIX sh (runs under dash). Differences from the official script: the concept list reaches the
# second app even when the input and output folders differ, Java and the input tables are checked
# before Spark starts, the first failing app stops the script with the end of its log, death is
# included only when there is a death table, and small inputs get a JVM setting that halves the
# run time on a busy 2-core machine.

set -u
set -f  # no filename globbing: `--master local[2]` must reach spark-submit as written

MIN_NUM_OF_PATIENTS=""  # empty: chosen from the number of persons (sequences/concept_floor.py)
DOMAIN_TABLES="condition_occurrence procedure_occurrence drug_exposure"
REQUIRED_TABLES="person visit_occurrence concept $DOMAIN_TABLES"
# Tables the apps read when they are there (drug roll-up); linked if present. patient_splits: below.
OPTIONAL_TABLES="concept_ancestor concept_relationship"
TEST_FRACTION=""  # empty: cehrgpt_tutorials.sequences.split.DEFAULT_TEST_FRACTION
SPLIT_MARKER=_cehrgpt_tutorial_split.json  # cehrgpt_tutorials.sequences.split.SPLIT_MARKER: our split, not the user's
LOG_LINES_ON_FAILURE=40

usage() {
    cat <<EOF
Usage: $0 --input_folder INPUT_FOLDER --output_folder OUTPUT_FOLDER --start_date YYYY-MM-DD
          [--min_num_of_patients N] [--test_fraction F] [--shuffle_partitions N] [--dry_run]

Builds CEHR-GPT patient sequences from OMOP Parquet tables with cehrbert_data's Spark apps.

  --input_folder PATH         OMOP tables, one Parquet folder per table (read only)
  --output_folder PATH        where qualified_concept_list/ and patient_sequence/ are written
  --start_date DATE           keep events on or after this date (YYYY-MM-DD), e.g. 1985-01-01
  --min_num_of_patients N     keep concepts seen in at least N patients (default: the official 100 at
                              1,000,000 persons and above, proportionally fewer below, never under 11;
                              concepts held by fewer than min(11, N) training persons in the sequences
                              are removed too)
  --test_fraction F           share of persons held out as patient_sequence/test, decided per person_id
                              by cehrgpt_tutorials.sequences.split.is_test_person (default 0.15); 0: no split.
                              An INPUT_FOLDER/patient_splits of your own is used as it is.
  --shuffle_partitions N      Spark's shuffle partitions, i.e. patient_sequence part files (default:
                              from the input size, 2 x cores at least; see the script's comments)
  --dry_run                   check the input, print the Spark settings it would use, write nothing
  -h, --help                  show this help

Run 'source setup_env.sh' first: it puts spark-submit on PATH, selects Java 11 and sets
SPARK_SUBMIT_OPTIONS (master, driver and executor memory) for this machine.

Example:
  $0 --input_folder "\$OMOP_DIR" --output_folder "\$CEHR_GPT_DATA_DIR" --start_date 1985-01-01
EOF
}

# shellcheck source=shell_helpers.sh
. "$(dirname "$0")/shell_helpers.sh" || { echo "error: cannot read shell_helpers.sh beside $0" >&2; exit 1; }

# --- Command line (same options as the official script, plus --min_num_of_patients) -------------
INPUT_FOLDER=""
OUTPUT_FOLDER=""
START_DATE=""
SHUFFLE_PARTITIONS=""
DRY_RUN=0
if [ $# -eq 0 ]; then
    usage >&2
    exit 2
fi
while [ $# -gt 0 ]; do
    option="$1"
    case "$option" in
        -h|--help) usage; exit 0 ;;
        --dry_run) DRY_RUN=1; shift; continue ;;
        --input_folder|--output_folder|--start_date|--min_num_of_patients|--test_fraction|--shuffle_partitions)
            [ $# -ge 2 ] || die "$option needs a value (see --help)"
            value="$2"
            shift 2
            ;;
        --input_folder=*|--output_folder=*|--start_date=*|--min_num_of_patients=*|--test_fraction=*|--shuffle_partitions=*)
            value="${option#*=}"
            option="${option%%=*}"
            shift
            ;;
        -*) die "unknown option '${option%%=*}' (see --help)" ;;
        *) die "unexpected argument '$option' (see --help)" ;;
    esac
    case "$option" in
        --input_folder) INPUT_FOLDER="$value" ;;
        --output_folder) OUTPUT_FOLDER="$value" ;;
        --start_date) START_DATE="$value" ;;
        --min_num_of_patients) MIN_NUM_OF_PATIENTS="$value" ;;
        --test_fraction) TEST_FRACTION="$value" ;;
        --shuffle_partitions) SHUFFLE_PARTITIONS="$value" ;;
    esac
done
[ -n "$INPUT_FOLDER" ] || die "--input_folder is required (see --help)"
[ -n "$OUTPUT_FOLDER" ] || die "--output_folder is required (see --help)"
[ -n "$START_DATE" ] || die "--start_date is required (see --help)"
printf '%s\n' "$START_DATE" | grep -Eq '^[0-9]{4}-[0-9]{2}-[0-9]{2}$' ||
    die "--start_date must look like YYYY-MM-DD, got '$START_DATE'"
case "$MIN_NUM_OF_PATIENTS" in
    '') ;;
    *[!0-9]*) die "--min_num_of_patients must be a whole number, got '$MIN_NUM_OF_PATIENTS'" ;;
esac
if [ -n "$TEST_FRACTION" ]; then
    printf '%s\n' "$TEST_FRACTION" | grep -Eq '^(0|0?\.[0-9]+)$' ||
        die "--test_fraction must be 0 (no split) or a number between 0 and 1 such as 0.15, got '$TEST_FRACTION'"
fi
case "$SHUFFLE_PARTITIONS" in
    '') ;;
    *[!0-9]*|0) die "--shuffle_partitions must be a positive whole number, got '$SHUFFLE_PARTITIONS'" ;;
esac

# --- Checks before Spark starts (a Spark failure costs a minute and 200 lines of Java) ------------
[ -d "$INPUT_FOLDER" ] || die "input folder '$INPUT_FOLDER' does not exist (run step 1, export_omop.py)"
INPUT_FOLDER=$(cd "$INPUT_FOLDER" && pwd -P) || die "cannot enter input folder '$INPUT_FOLDER'"

missing=""
for table in $REQUIRED_TABLES; do
    [ -d "$INPUT_FOLDER/$table" ] || missing="$missing $table"
done
[ -z "$missing" ] ||
    die "input folder $INPUT_FOLDER lacks the table folder(s):$missing (one Parquet folder per OMOP table, as export_omop.py writes them)"

command -v spark-submit >/dev/null 2>&1 ||
    die "spark-submit is not on PATH: run 'source setup_env.sh' first"

# Spark 3.1.2 runs on Java 8 or 11 only; Java 17 fails deep inside Spark with InaccessibleObjectException.
if [ -n "${JAVA_HOME:-}" ]; then java_bin="$JAVA_HOME/bin/java"; else java_bin=$(command -v java || true); fi
[ -n "$java_bin" ] && [ -x "$java_bin" ] ||
    die "no Java found (JAVA_HOME='${JAVA_HOME:-}'): run 'source setup_env.sh', which selects Java 11"
java_version=$("$java_bin" -version 2>&1 | sed -n '1s/[^"]*"\([^"]*\)".*/\1/p')
case "$java_version" in
    1.8.*|1.8|8|8.*|11|11.*) ;;
    *) die "Spark 3.1.2 needs Java 8 or 11, but $java_bin is Java '${java_version:-unknown}': run 'source setup_env.sh'" ;;
esac

PYTHON_BIN="${PYSPARK_PYTHON:-python}"
# The import's own error (a traceback on stderr) is shown above ours, not hidden.
CEHRBERT_DATA_HOME=$("$PYTHON_BIN" -c 'import os, cehrbert_data; print(os.path.dirname(cehrbert_data.__file__))') ||
    die "cannot import cehrbert_data with $PYTHON_BIN (the error is above): run 'source setup_env.sh' (or 'make setup')"
# The split is written by this checkout's cehrgpt_tutorials, wherever the script is run from.
TUTORIAL_ROOT=$(cd "$(dirname "$0")/../.." && pwd -P) || die "cannot find the tutorial's folder"

# SPARK_SUBMIT_OPTIONS holds several options, read as shell words (quotes work, as in the official
# script's eval): --driver-java-options '-Xss4m -Dx=y' stays one value.
SPARK_OPTIONS="${SPARK_SUBMIT_OPTIONS:-}"
(eval "set -- $SPARK_OPTIONS") >/dev/null 2>&1 ||
    die "SPARK_SUBMIT_OPTIONS is not a valid list of shell words: $SPARK_OPTIONS"
[ -n "$SPARK_OPTIONS" ] ||
    echo "warning: SPARK_SUBMIT_OPTIONS is empty, Spark uses its defaults (source setup_env.sh to size it)" >&2

# Shuffle partitions from the size of the tables the apps read. Spark writes one patient_sequence
# part file per shuffle partition, and each shuffle task holds its share of all events, so a fixed
# count (setup_env.sh's 2 x cores, right for the demo) makes files and tasks grow with the data:
# cleanup and the runner's tokenization then hold GBs per file. One partition per
# INPUT_MB_PER_PARTITION of input keeps part files near 128 MB (the sequences are about a quarter
# of the tables' size, bench/RESULTS.md), with 2 x cores as the floor so every core works.
# Your own setting wins: --shuffle_partitions, or spark.sql.shuffle.partitions in
# SPARK_SUBMIT_OPTIONS or in spark-defaults.conf outside setup_env.sh's block.
INPUT_MB_PER_PARTITION=512
tables_mb=$(for table in $REQUIRED_TABLES $OPTIONAL_TABLES death; do
        [ -d "$INPUT_FOLDER/$table" ] && find -L "$INPUT_FOLDER/$table" -type f -exec ls -lnL {} +
    done | awk '{bytes += $5} END {print int(bytes / 1048576)}')

# The JVM's optimizing compiler (C2) spends more CPU compiling Spark's generated code than a short
# run gains from it: on small input, stop at the quick compiler (C1). Both apps, 2 cores, C1 against
# C2 (bench/RESULTS.md): the Synthea demo (~1 MB of tables) 59 s against 67 s; in one later session,
# 10x the demo (11 MB) 163 s against 167 s, a draw, and 100x (114 MB) 997 s against 546 s: C1 is
# 1.8x slower once a run lasts minutes. So C1 only up to QUICK_JIT_MAX_TABLES_MB of the tables the apps
# read, and never when you set driver Java options yourself. Placed before SPARK_SUBMIT_OPTIONS, so
# your options win.
TUNING_OPTIONS=""
QUICK_JIT_MAX_TABLES_MB=16
spark_defaults="${SPARK_CONF_DIR:-${SPARK_HOME:-/nonexistent}/conf}/spark-defaults.conf"
case "$SPARK_OPTIONS" in
    *driver-java-options*|*extraJavaOptions*) user_java_options=1 ;;
    *) if grep -Eqs '^[[:space:]]*spark\.driver\.extraJavaOptions' "$spark_defaults"; then user_java_options=1; else user_java_options=0; fi ;;
esac
if [ "${tables_mb:-0}" -le "$QUICK_JIT_MAX_TABLES_MB" ] && [ "$user_java_options" = 0 ]; then
    TUNING_OPTIONS="--driver-java-options -XX:TieredStopAtLevel=1"
fi
spark_cores=$(printf '%s\n' "$SPARK_OPTIONS" | sed -n 's/.*local\[\([0-9][0-9]*\)[],].*/\1/p')
[ -n "$spark_cores" ] || spark_cores=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)
user_partitions=""
case "$SPARK_OPTIONS" in
    *spark.sql.shuffle.partitions*) user_partitions="set in SPARK_SUBMIT_OPTIONS" ;;
    *) if sed '/>>> cehrgpt-tutorial/,/<<< cehrgpt-tutorial/d' "$spark_defaults" 2>/dev/null |
            grep -Eq '^[[:space:]]*spark\.sql\.shuffle\.partitions'; then
           user_partitions="set in $spark_defaults"
       fi ;;
esac
if [ -n "$SHUFFLE_PARTITIONS" ]; then
    partitions_note="$SHUFFLE_PARTITIONS (--shuffle_partitions)"
elif [ -n "$user_partitions" ]; then
    partitions_note="yours ($user_partitions)"
else
    SHUFFLE_PARTITIONS=$(( (tables_mb + INPUT_MB_PER_PARTITION - 1) / INPUT_MB_PER_PARTITION ))
    [ "$SHUFFLE_PARTITIONS" -ge $((spark_cores * 2)) ] || SHUFFLE_PARTITIONS=$((spark_cores * 2))
    partitions_note="$SHUFFLE_PARTITIONS (${tables_mb} MB of input tables, $spark_cores cores)"
fi
[ -z "$SHUFFLE_PARTITIONS" ] ||
    TUNING_OPTIONS="${TUNING_OPTIONS:+$TUNING_OPTIONS }--conf spark.sql.shuffle.partitions=$SHUFFLE_PARTITIONS"
# The concept threshold: yours, or sized to the number of persons; and the floor that holds in the
# training sequences (sequences/concept_floor.py decides both).
choice=$(PYTHONPATH="$TUTORIAL_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON_BIN" -m cehrgpt_tutorials.sequences.concept_floor \
    choose "$INPUT_FOLDER/person" ${MIN_NUM_OF_PATIENTS:+--threshold "$MIN_NUM_OF_PATIENTS"}) || exit 1
MIN_NUM_OF_PATIENTS=$(printf '%s' "$choice" | cut -f1)
FLOOR=$(printf '%s' "$choice" | cut -f2)
threshold_note="$MIN_NUM_OF_PATIENTS: $(printf '%s' "$choice" | cut -f3-)"

if [ "$DRY_RUN" = 1 ]; then
    echo "min_num_of_patients $threshold_note"
    echo "Spark options: ${TUNING_OPTIONS:+$TUNING_OPTIONS }${SPARK_OPTIONS:-(none)}"
    echo "Partitions:    $partitions_note"
    echo "Dry run: nothing was written"
    exit 0
fi

mkdir -p "$OUTPUT_FOLDER" || die "cannot create output folder '$OUTPUT_FOLDER'"
OUTPUT_FOLDER=$(cd "$OUTPUT_FOLDER" && pwd -P) || die "cannot enter output folder '$OUTPUT_FOLDER'"
# One run per output folder, and none while step 3 rewrites the sequences: a second stops here.
hold_lock 9 "$OUTPUT_FOLDER" "the sequences' output folder"
hold_lock 8 "$OUTPUT_FOLDER/patient_sequence" "the patient sequences"
LOG_DIR="$OUTPUT_FOLDER/logs"
mkdir -p "$LOG_DIR" || die "cannot create $LOG_DIR"

# The apps write into a hidden staging folder; what they wrote replaces the previous outputs only once
# both have finished, patient_sequence last. A run stopped at any point leaves the previous sequences
# whole; the next run removes its staging folder (and puts back a folder stopped mid-swap).
STAGING="$OUTPUT_FOLDER/.patient_sequence.tmp-$$"
for product in patient_sequence qualified_concept_list; do
    PYTHONPATH="$TUTORIAL_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON_BIN" -m cehrgpt_tutorials.files clean "$OUTPUT_FOLDER/$product" ||
        die "cannot clean up what an earlier run left in $OUTPUT_FOLDER (the message above says why)"
done
mkdir "$STAGING" || die "cannot create the staging folder $STAGING"
trap 'trap "" INT TERM; rm -rf "$STAGING"' EXIT
trap 'exit 130' INT TERM

# --- The held-out split (app 2 reads <its input>/patient_splits) ---------------------------------
# SPLITS: the patient_splits folder app 2 reads, or empty for no split.
SPLITS=""
OUR_SPLITS="$OUTPUT_FOLDER/patient_splits"
if [ -d "$INPUT_FOLDER/patient_splits" ] && [ ! -f "$INPUT_FOLDER/patient_splits/$SPLIT_MARKER" ]; then
    [ "$TEST_FRACTION" != 0 ] ||
        die "--test_fraction 0, but $INPUT_FOLDER/patient_splits (yours) would still split the patients: remove it or pass another --input_folder"
    [ -z "$TEST_FRACTION" ] ||
        echo "warning: --test_fraction $TEST_FRACTION is ignored: $INPUT_FOLDER/patient_splits (yours) decides the split" >&2
    SPLITS="$INPUT_FOLDER/patient_splits"
    split_note="$SPLITS (your own)"
elif [ "$TEST_FRACTION" = 0 ]; then
    # Ours from an earlier run (same folder in and out) would still be read by app 2.
    if [ -f "$OUR_SPLITS/$SPLIT_MARKER" ]; then
        rm -rf "$OUR_SPLITS" || die "cannot remove the earlier split $OUR_SPLITS"
    fi
    split_note="none (--test_fraction 0): one patient_sequence folder"
else
    PYTHONPATH="$TUTORIAL_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON_BIN" -m cehrgpt_tutorials.sequences.split \
        "$INPUT_FOLDER/person" "$OUR_SPLITS" ${TEST_FRACTION:+--test-fraction "$TEST_FRACTION"} ||
        die "could not write the patient split $OUR_SPLITS (the message above says why)"
    SPLITS="$OUR_SPLITS"
    split_note="$SPLITS (patient_sequence/train and /test)"
fi

# The second app reads the concept list from its *input* folder. Rather than writing into the
# user's (possibly read-only) OMOP folder, it reads a folder of links: one per input table plus one
# to the concept list the first app wrote (relative, so it still points to it after the move).
TRAINING_INPUT="$STAGING/spark_input"
mkdir "$TRAINING_INPUT" || die "cannot create $TRAINING_INPUT"
for table in $REQUIRED_TABLES $OPTIONAL_TABLES death; do
    if [ -d "$INPUT_FOLDER/$table" ]; then
        ln -s "$INPUT_FOLDER/$table" "$TRAINING_INPUT/$table" || die "cannot link $INPUT_FOLDER/$table"
    fi
done
if [ -n "$SPLITS" ]; then
    ln -s "$SPLITS" "$TRAINING_INPUT/patient_splits" || die "cannot link $SPLITS"
fi
ln -s ../qualified_concept_list "$TRAINING_INPUT/qualified_concept_list" ||
    die "cannot link the concept list into $TRAINING_INPUT"

# Death is optional in OMOP; with a death table the sequences end with a death token. It is not
# added to --domain_table_list: cehrbert_data 0.1.1 then looks for death.visit_occurrence_id, which
# OMOP's death table does not have (AnalysisException); --include_death reads it the right way.
DEATH_OPTION=""
if [ -d "$INPUT_FOLDER/death" ]; then
    DEATH_OPTION="--include_death"
fi

echo "Input folder:  $INPUT_FOLDER"
echo "Output folder: $OUTPUT_FOLDER"
echo "Start date:    $START_DATE"
echo "min_num_of_patients $threshold_note"
echo "Spark options: ${TUNING_OPTIONS:+$TUNING_OPTIONS }${SPARK_OPTIONS:-(none)}"
echo "Partitions:    $partitions_note"
echo "Java:          $java_bin ($java_version)"
echo "Held out:      $split_note"
echo "App 2 reads:   links to the input tables + the new concept list (staged, then kept as $OUTPUT_FOLDER/spark_input)"

# run_app NAME APP.py ARG...: print the spark-submit command, run it with its output in
# logs/NAME.log, time it, and stop the whole script with the end of the log when it fails.
run_app() {
    app_name="$1"
    shift
    log_file="$LOG_DIR/$app_name.log"
    eval "set -- spark-submit $TUNING_OPTIONS $SPARK_OPTIONS \"\$@\""
    echo ""
    echo "== $app_name"
    printf '+'
    for word in "$@"; do
        case "$word" in
            # Quoted when the shell would split or glob it, so the printed line can be pasted.
            ''|*[!A-Za-z0-9_./:=@%+,-]*) printf " '%s'" "$(printf '%s' "$word" | sed "s/'/'\\\\''/g")" ;;
            *) printf ' %s' "$word" ;;
        esac
    done
    printf '\n'
    echo "  (Spark output: $log_file)"
    started=$(date +%s)
    if "$@" >"$log_file" 2>&1; then
        status=0
    else
        status=$?
    fi
    elapsed=$(($(date +%s) - started))
    if [ "$status" -ne 0 ]; then
        echo "" >&2
        echo "---- last $LOG_LINES_ON_FAILURE lines of $log_file ----" >&2
        tail -n "$LOG_LINES_ON_FAILURE" "$log_file" >&2
        echo "----" >&2
        die "$app_name failed (exit $status after ${elapsed}s); full log: $log_file"
    fi
    echo "  $app_name took $((elapsed / 60))m $((elapsed % 60))s"
}

total_started=$(date +%s)

# shellcheck disable=SC2086  # DOMAIN_TABLES is a word list
run_app generate_included_concept_list \
    "$CEHRBERT_DATA_HOME/apps/generate_included_concept_list.py" \
    --input_folder "$INPUT_FOLDER" \
    --output_folder "$STAGING" \
    --min_num_of_patients "$MIN_NUM_OF_PATIENTS" \
    --ehr_table_list $DOMAIN_TABLES

[ -d "$STAGING/qualified_concept_list" ] ||
    die "generate_included_concept_list wrote no qualified_concept_list (log: $LOG_DIR/generate_included_concept_list.log)"

# shellcheck disable=SC2086
run_app generate_training_data \
    "$CEHRBERT_DATA_HOME/apps/generate_training_data.py" \
    --input_folder "$TRAINING_INPUT" \
    --output_folder "$STAGING" \
    -d "$START_DATE" \
    --att_type day \
    --inpatient_att_type day \
    -iv \
    -ip \
    --include_concept_list \
    --gpt_patient_sequence \
    --should_construct_artificial_visits \
    --disconnect_problem_list_records \
    $DEATH_OPTION \
    --domain_table_list $DOMAIN_TABLES

SEQUENCES="$OUTPUT_FOLDER/patient_sequence"
if [ -n "$SPLITS" ]; then
    [ -d "$STAGING/patient_sequence/train" ] && [ -d "$STAGING/patient_sequence/test" ] ||
        die "generate_training_data wrote no patient_sequence/train and /test (log: $LOG_DIR/generate_training_data.log)"
    written="$SEQUENCES/train and $SEQUENCES/test"
else
    [ -d "$STAGING/patient_sequence" ] ||
        die "generate_training_data wrote no patient_sequence (log: $LOG_DIR/generate_training_data.log)"
    written="$SEQUENCES"
fi
# The floor holds for what reaches the model: concepts the cut let through that fewer than FLOOR
# training persons hold in the sequences go (sequences/concept_floor.py).
PYTHONPATH="$TUTORIAL_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON_BIN" -m cehrgpt_tutorials.sequences.concept_floor enforce \
    "$STAGING/patient_sequence" --concept-list "$STAGING/qualified_concept_list" --floor "$FLOOR" \
    --concept-dir "$INPUT_FOLDER/concept" || exit_as_ours $?
# Every folder the apps wrote replaces its previous version in one rename each, the sequences last.
trap '' INT TERM
PYTHONPATH="$TUTORIAL_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON_BIN" -m cehrgpt_tutorials.files replace-each \
    "$STAGING" "$OUTPUT_FOLDER" --last patient_sequence ||
    die "cannot move the new sequences into $OUTPUT_FOLDER (the message above says why)"
trap 'exit 130' INT TERM

total=$(($(date +%s) - total_started))
echo ""
echo "Patient sequences written to $written (both apps: $((total / 60))m $((total % 60))s)"
# Quoted, so the line can be pasted whatever the folder's name.
echo "Next: python cleanup_tokens.py --patient-sequence-dir '$(printf '%s' "$OUTPUT_FOLDER/patient_sequence" | sed "s/'/'\\\\''/g")'"
