#!/bin/sh
# Step 5b of the CEHR-XGPT tutorial, first half: generated sequences -> OMOP CDM tables (Parquet).
#
# Same command line as cehrgpt's scripts/omop_pipeline.sh, and the same three programs:
#   1. cehrgpt.generation.omop_converter_batch: one person (with visits, conditions, drugs,
#      procedures, measurements, death) per usable sequence;
#   2. cehrgpt.omop.observation_period and 3. cehrgpt.omop.condition_era (Spark) rebuild those two
#      tables from the converted ones.
# Differences: it says how many sequences converted and why the others were skipped; when none
# converted it stops before Spark with that summary and a hint (exit 3) instead of Spark's
# "Unable to infer schema for Parquet"; a table the model never produced (e.g. no procedures) gets
# an empty file with the right columns; --domain-tables reaches the Spark apps as a list.
#
# Reads:  PATIENT_SEQUENCE_FOLDER/*.parquet (the generator's output)
#         SOURCE_OMOP_FOLDER/concept (+ concept_ancestor, concept_relationship, ... when present)
# Writes: OMOP_FOLDER/{person,visit_occurrence,condition_occurrence,procedure_occurrence,
#         drug_exposure,death,measurement,observation_period,condition_era}/, the vocabulary tables
#         copied from SOURCE_OMOP_FOLDER, and the converter's concept_errors.txt / export_errors.txt,
#         all built in a hidden folder beside OMOP_FOLDER that replaces it in one step at the end.
#
# Example (after `source setup_env.sh`):
#   sh cehrgpt_tutorials/scripts/omop_pipeline.sh \
#       --patient-sequence-folder "$SYNTHETIC_DATA_OUTPUT_DIR/top_p10000_constrained/generated_sequences" \
#       --omop-folder "$SYNTHETIC_DATA_OUTPUT_DIR/top_p10000_constrained/restored_omop" \
#       --source-omop-folder "$OMOP_DIR" --cpu-cores 2

set -u
set -f  # no filename globbing: paths and table lists are used as written

# shellcheck source=shell_helpers.sh
. "$(dirname "$0")/shell_helpers.sh" || { echo "error: cannot read shell_helpers.sh beside $0" >&2; exit 1; }

BUFFER_SIZE=1280
CPU_CORES=$(nproc 2>/dev/null || echo 2)
DOMAIN_TABLES="condition_occurrence drug_exposure procedure_occurrence measurement"
CONVERTED_TABLES="person visit_occurrence condition_occurrence procedure_occurrence drug_exposure death measurement"
DERIVED_TABLES="observation_period condition_era"
# concept is required (the converter looks up each concept's domain); the others are copied so
# the restored CDM is complete when the source has them.
VOCABULARY_TABLES="concept concept_ancestor concept_relationship vocabulary domain concept_class relationship concept_synonym drug_strength"
NOTHING_CONVERTED_EXIT_CODE=3

usage() {
    cat <<EOF
Usage: $0 -p PATIENT_SEQUENCE_FOLDER -o OMOP_FOLDER -s SOURCE_OMOP_FOLDER [-b N] [-c N] [-d "TABLES"]

Converts generated patient sequences into OMOP CDM tables and rebuilds observation_period and
condition_era.

  -p, --patient-sequence-folder PATH   generated sequences (*.parquet)
  -o, --omop-folder PATH               output folder for the OMOP tables
  -s, --source-omop-folder PATH        OMOP folder with the vocabulary (concept, ...) to copy
  -b, --buffer-size N                  sequences the converter holds before writing (default $BUFFER_SIZE)
  -c, --cpu-cores N                    converter processes (default: this machine's $CPU_CORES cores)
  -d, --domain-tables "LIST"           tables observation_period is built from
                                       (default "$DOMAIN_TABLES")
  -h, --help                           show this help
Options also take the --name=value form. Exit status: 0 done, 1 bad input or a failed step,
$NOTHING_CONVERTED_EXIT_CODE no sequence could be converted.
EOF
}

log() {
    printf '[%s] %s\n' "$(date '+%H:%M:%S')" "$*"
}

positive_integer() {
    case "$2" in
        ''|*[!0-9]*|0) die "$1 must be a positive whole number, got '$2'" ;;
    esac
}

# Runs a command after printing it, so a learner sees (and can copy) what ran.
run() {
    printf '$ %s\n' "$(print_command "$@")"
    "$@" || die "step failed (exit $?): $(print_command "$@")"
}

PATIENT_SEQUENCE_FOLDER=""
OMOP_FOLDER=""
SOURCE_OMOP_FOLDER=""
while [ $# -gt 0 ]; do
    option="$1"
    case "$option" in
        -h|--help) usage; exit 0 ;;
        --*=*) value="${option#*=}"; option="${option%%=*}"; shift ;;
        -p|-o|-s|-b|-c|-d|--patient-sequence-folder|--omop-folder|--source-omop-folder|--buffer-size|--cpu-cores|--domain-tables)
            [ $# -ge 2 ] || die "$option needs a value (see --help)"
            value="$2"; shift 2 ;;
        *) die "unknown option '$option' (see --help)" ;;
    esac
    case "$option" in
        -p|--patient-sequence-folder) PATIENT_SEQUENCE_FOLDER="$value" ;;
        -o|--omop-folder) OMOP_FOLDER="$value" ;;
        -s|--source-omop-folder) SOURCE_OMOP_FOLDER="$value" ;;
        -b|--buffer-size) BUFFER_SIZE="$value" ;;
        -c|--cpu-cores) CPU_CORES="$value" ;;
        -d|--domain-tables) DOMAIN_TABLES="$value" ;;
        *) die "unknown option '$option' (see --help)" ;;
    esac
done

# --- Checks before anything is deleted or started ----------------------------------------------
[ -n "$PATIENT_SEQUENCE_FOLDER" ] || die "--patient-sequence-folder is required (see --help)"
[ -n "$OMOP_FOLDER" ] || die "--omop-folder is required (see --help)"
[ -n "$SOURCE_OMOP_FOLDER" ] || die "--source-omop-folder is required (see --help)"
positive_integer --buffer-size "$BUFFER_SIZE"
positive_integer --cpu-cores "$CPU_CORES"
[ -d "$PATIENT_SEQUENCE_FOLDER" ] ||
    die "patient sequence folder '$PATIENT_SEQUENCE_FOLDER' does not exist (run generate_synthetic.sh first)"
ls "$PATIENT_SEQUENCE_FOLDER" | grep -q 'parquet$' ||
    die "'$PATIENT_SEQUENCE_FOLDER' has no Parquet files (expected the generator's generated_sequences folder)"
[ -d "$SOURCE_OMOP_FOLDER/concept" ] ||
    die "source OMOP folder '$SOURCE_OMOP_FOLDER' has no concept/ table (the converter needs it to find each concept's domain)"
for table in $DOMAIN_TABLES; do
    case " $CONVERTED_TABLES " in
        *" $table "*) ;;
        *) die "--domain-tables: '$table' is not a table the converter writes ($CONVERTED_TABLES)" ;;
    esac
done
PYTHON_BIN=$(command -v python || command -v python3) || die "no python on PATH: run 'source setup_env.sh'"
PATIENT_SEQUENCE_FOLDER=$(physical_dir "$PATIENT_SEQUENCE_FOLDER") || exit 1
SOURCE_OMOP_FOLDER=$(physical_dir "$SOURCE_OMOP_FOLDER") || exit 1
mkdir -p "$(dirname "$OMOP_FOLDER")" || die "cannot create the folder of '$OMOP_FOLDER'"
OMOP_FOLDER="$(physical_dir "$(dirname "$OMOP_FOLDER")")/$(basename "$OMOP_FOLDER")" || exit 1
[ "$OMOP_FOLDER" != "$SOURCE_OMOP_FOLDER" ] ||
    die "--omop-folder must differ from --source-omop-folder: its tables are deleted and rewritten"
TUTORIAL_ROOT=$(cd "$(dirname "$0")/../.." && pwd -P) || die "cannot find the tutorial's folder"
export PYTHONPATH="$TUTORIAL_ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's cehrgpt_tutorials
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
copied=""
for table in $VOCABULARY_TABLES; do
    if [ -d "$SOURCE_OMOP_FOLDER/$table" ]; then
        cp -R "$SOURCE_OMOP_FOLDER/$table" "$BUILD/$table" || die "cannot copy $table into $BUILD"
        copied="$copied $table"
    fi
done
log "copied vocabulary tables:$copied"

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
