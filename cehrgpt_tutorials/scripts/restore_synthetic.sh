#!/bin/sh
# Step 5b of the CEHR-XGPT tutorial: generated sequences -> OMOP tables -> PostgreSQL schema
# synthetic_cdm, beside the real cdm.
#
# 0. censors the generated timelines at the source's last visit date (--censor-date, default: the
#    last visit_start_date of SOURCE_OMOP_FOLDER/visit_occurrence; --no-censor keeps cehrgpt's raw
#    output): cehrgpt dates a patient from the year the model wrote plus its time tokens, and nothing
#    stops it from writing visits after the real data ends, even after today;
# 1. omop_pipeline.sh converts the sequences into OMOP tables (and says how many converted and
#    why the others did not; it stops here when none did);
# 2. load_omop.py loads the clinical tables into schema synthetic_cdm (replacing a previous load).
#    The vocabulary stays where it is (the example queries take concept names from cdm);
# 3. runs plausibility checks (Data-Quality-Dashboard style: visits outside observation periods, events
#    before birth or > 30 days after death, visits after the source's last date, events whose person
#    or visit does not exist) on synthetic_cdm and cdm, and prints both counts;
# 4. prints the psql URI and two example queries comparing cdm and synthetic_cdm, with answers.
# It never writes into the real CDM's schema: a --schema equal to --source-schema is refused.
#
# Reads:  SAMPLE_FOLDER/generated_sequences (default $SYNTHETIC_DATA_OUTPUT_DIR/top_p10000_constrained)
#         SOURCE_OMOP_FOLDER/concept ... (default $OMOP_DIR, step 1's export)
# Writes: SAMPLE_FOLDER/censored_sequences/ (unless --no-censor), SAMPLE_FOLDER/restored_omop/<table>/
#         and schema synthetic_cdm in the database
#         (--dsn, else the PG* variables, else the embedded demo server).
#
# Example (after `source setup_env.sh`):
#   sh cehrgpt_tutorials/scripts/restore_synthetic.sh
#   sh cehrgpt_tutorials/scripts/restore_synthetic.sh --dsn "postgresql://me@db.example.org/omop"

set -u
set -f  # no filename globbing: paths and names are used as written

SAMPLE_FOLDER="${SYNTHETIC_DATA_OUTPUT_DIR:-omop_synthea/synthetic_data}/top_p10000_constrained"
SOURCE_OMOP_FOLDER="${OMOP_DIR:-omop_synthea}"
SCHEMA=synthetic_cdm
SOURCE_SCHEMA=cdm
DSN=""
CENSOR_DATE=""  # empty: the source's last visit date
CENSOR=1
CPU_CORES=$(nproc 2>/dev/null || echo 2)
CLINICAL_TABLES="person visit_occurrence condition_occurrence procedure_occurrence drug_exposure death measurement observation_period condition_era"
SCRIPTS=$(cd "$(dirname "$0")" && pwd -P) && [ -n "$SCRIPTS" ] || { echo "error: cannot find the folder of $0" >&2; exit 1; }
ROOT=$(cd "$SCRIPTS/../.." && pwd -P) || { echo "error: cannot find the repository above $SCRIPTS" >&2; exit 1; }
# shellcheck source=shell_helpers.sh
. "$SCRIPTS/shell_helpers.sh" || { echo "error: cannot read $SCRIPTS/shell_helpers.sh" >&2; exit 1; }

usage() {
    cat <<EOF
Usage: $0 [--sample-folder DIR] [--source-omop-folder DIR] [--schema NAME] [--source-schema NAME]
          [--dsn DSN] [--cpu-cores N] [--censor-date YYYY-MM-DD | --no-censor]

Converts generated patients to OMOP and loads them into PostgreSQL beside the real CDM.

  --sample-folder DIR       folder holding generated_sequences/ (default \$SYNTHETIC_DATA_OUTPUT_DIR/top_p10000_constrained)
  --source-omop-folder DIR  exported OMOP tables with the vocabulary (default \$OMOP_DIR)
  --schema NAME             schema for the synthetic CDM (default $SCHEMA)
  --source-schema NAME      the real CDM's schema: never written, used by the example queries (default $SOURCE_SCHEMA)
  --dsn DSN                 libpq connection string or URI (default: PG* variables, else the demo server)
  --cpu-cores N             converter processes (default $CPU_CORES)
  --censor-date DATE        cut each synthetic timeline after its last visit on or before DATE
                            (default: the last visit_start_date in SOURCE_OMOP_FOLDER/visit_occurrence)
  --no-censor               keep cehrgpt's raw timelines, visits after the source's end included
  -h, --help                show this help
EOF
}

while [ $# -gt 0 ]; do
    option="$1"
    case "$option" in
        -h|--help) usage; exit 0 ;;
        --no-censor) CENSOR=0; shift; continue ;;
        --*=*) value="${option#*=}"; option="${option%%=*}"; shift ;;
        --*) [ $# -ge 2 ] || die "$option needs a value (see --help)"; value="$2"; shift 2 ;;
        *) die "unexpected argument '$option' (see --help)" ;;
    esac
    case "$option" in
        --sample-folder) SAMPLE_FOLDER="$value" ;;
        --source-omop-folder) SOURCE_OMOP_FOLDER="$value" ;;
        --schema) SCHEMA="$value" ;;
        --source-schema) SOURCE_SCHEMA="$value" ;;
        --dsn) DSN="$value" ;;
        --cpu-cores) CPU_CORES="$value" ;;
        --censor-date) CENSOR_DATE="$value" ;;
        *) die "unknown option '$option' (see --help)" ;;
    esac
done

# Checked before anything runs: the real CDM is never a target.
[ "$SCHEMA" != "$SOURCE_SCHEMA" ] ||
    die "--schema $SCHEMA is the real CDM's schema (--source-schema); the synthetic CDM goes beside it, e.g. synthetic_cdm"
if [ -n "$CENSOR_DATE" ]; then
    [ "$CENSOR" = 1 ] || die "--censor-date and --no-censor contradict each other"
    printf '%s\n' "$CENSOR_DATE" | grep -Eq '^[0-9]{4}-[0-9]{2}-[0-9]{2}$' ||
        die "--censor-date must look like YYYY-MM-DD, got '$CENSOR_DATE'"
fi
[ -d "$SAMPLE_FOLDER/generated_sequences" ] ||
    die "no generated sequences in '$SAMPLE_FOLDER/generated_sequences' (run generate_synthetic.sh, or pass --sample-folder)"
PYTHON_BIN=$(command -v python || command -v python3) || die "no python on PATH: run 'source setup_env.sh'"
SAMPLE_FOLDER=$(physical_dir "$SAMPLE_FOLDER") || exit 1
OMOP_FOLDER="$SAMPLE_FOLDER/restored_omop"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's cehrgpt_tutorials
# One writer in the synthetic data folder (generation, restore, report): a second stops here.
hold_lock 9 "$(dirname "$SAMPLE_FOLDER")" "the synthetic data folder"

SEQUENCES="$SAMPLE_FOLDER/generated_sequences"
if [ "$CENSOR" = 1 ]; then
    if [ -n "$CENSOR_DATE" ]; then
        "$PYTHON_BIN" -m cehrgpt_tutorials.report.timeline censor "$SEQUENCES" "$SAMPLE_FOLDER/censored_sequences" \
            --censor-date "$CENSOR_DATE" || exit_as_ours $?
    else
        "$PYTHON_BIN" -m cehrgpt_tutorials.report.timeline censor "$SEQUENCES" "$SAMPLE_FOLDER/censored_sequences" \
            --source-visits "$SOURCE_OMOP_FOLDER/visit_occurrence" ||
            exit_as_ours $?
    fi
    SEQUENCES="$SAMPLE_FOLDER/censored_sequences"
else
    echo "not censoring (--no-censor): synthetic visits may start after the source's last date"
fi

sh "$SCRIPTS/omop_pipeline.sh" \
    --patient-sequence-folder "$SEQUENCES" \
    --omop-folder "$OMOP_FOLDER" \
    --source-omop-folder "$SOURCE_OMOP_FOLDER" \
    --cpu-cores "$CPU_CORES" || exit $?  # its own message says why (exit 3: nothing converted)

tables=""
for table in $CLINICAL_TABLES; do
    [ -d "$OMOP_FOLDER/$table" ] && tables="${tables:+$tables,}$table"
done
set -- "$PYTHON_BIN" "$ROOT/load_omop.py" --input-dir "$OMOP_FOLDER" --schema "$SCHEMA" --tables "$tables" --replace
# The printed command leaves the DSN out (it may hold a password).
printf '$ %s%s\n' "$(print_command "$@")" "${DSN:+ --dsn <your dsn>}"
[ -n "$DSN" ] && set -- "$@" --dsn "$DSN"
"$@" || exit_as_ours $?

set -- "$PYTHON_BIN" -m cehrgpt_tutorials.omop.plausibility --schema "$SCHEMA" --source-schema "$SOURCE_SCHEMA"
[ -n "$DSN" ] && set -- "$@" --dsn "$DSN"
"$@" || exit_as_ours $?

set -- "$PYTHON_BIN" -m cehrgpt_tutorials.omop.synthetic_queries --source-schema "$SOURCE_SCHEMA" --schema "$SCHEMA"
[ -n "$DSN" ] && set -- "$@" --dsn "$DSN"
"$@" || exit_as_ours $?
