#!/bin/sh
# Step 5b of the CEHR-XGPT tutorial: generated sequences -> OMOP tables -> PostgreSQL schema
# synthetic_cdm, beside the real cdm.
#
# 1. omop_pipeline.sh converts the sequences into OMOP tables (and says how many converted and
#    why the others did not; it stops here when none did);
# 2. load_omop.py loads the clinical tables into schema synthetic_cdm (replacing a previous load).
#    The vocabulary stays where it is (the example queries take concept names from cdm);
# 3. prints the psql URI and two example queries comparing cdm and synthetic_cdm, with answers.
# It never writes into the real CDM's schema: a --schema equal to --source-schema is refused.
#
# Reads:  SAMPLE_FOLDER/generated_sequences (default $SYNTHETIC_DATA_OUTPUT_DIR/top_p9500)
#         SOURCE_OMOP_FOLDER/concept ... (default $OMOP_DIR, step 1's export)
# Writes: SAMPLE_FOLDER/restored_omop/<table>/ and schema synthetic_cdm in the database
#         (--dsn, else the PG* variables, else the embedded demo server).
#
# Example (after `source setup_env.sh`):
#   sh cehrgpt_tutorials/scripts/restore_synthetic.sh
#   sh cehrgpt_tutorials/scripts/restore_synthetic.sh --dsn "postgresql://me@db.example.org/omop"

set -u
set -f  # no filename globbing: paths and names are used as written

SAMPLE_FOLDER="${SYNTHETIC_DATA_OUTPUT_DIR:-omop_synthea/synthetic_data}/top_p9500"
SOURCE_OMOP_FOLDER="${OMOP_DIR:-omop_synthea}"
SCHEMA=synthetic_cdm
SOURCE_SCHEMA=cdm
DSN=""
CPU_CORES=$(nproc 2>/dev/null || echo 2)
CLINICAL_TABLES="person visit_occurrence condition_occurrence procedure_occurrence drug_exposure death measurement observation_period condition_era"
SCRIPTS=$(cd "$(dirname "$0")" && pwd -P) && [ -n "$SCRIPTS" ] || { echo "error: cannot find the folder of $0" >&2; exit 1; }
ROOT=$(cd "$SCRIPTS/../.." && pwd -P) || { echo "error: cannot find the repository above $SCRIPTS" >&2; exit 1; }
# shellcheck source=shell_helpers.sh
. "$SCRIPTS/shell_helpers.sh" || { echo "error: cannot read $SCRIPTS/shell_helpers.sh" >&2; exit 1; }

usage() {
    cat <<EOF
Usage: $0 [--sample-folder DIR] [--source-omop-folder DIR] [--schema NAME] [--source-schema NAME]
          [--dsn DSN] [--cpu-cores N]

Converts generated patients to OMOP and loads them into PostgreSQL beside the real CDM.

  --sample-folder DIR       folder holding generated_sequences/ (default \$SYNTHETIC_DATA_OUTPUT_DIR/top_p9500)
  --source-omop-folder DIR  exported OMOP tables with the vocabulary (default \$OMOP_DIR)
  --schema NAME             schema for the synthetic CDM (default $SCHEMA)
  --source-schema NAME      the real CDM's schema: never written, used by the example queries (default $SOURCE_SCHEMA)
  --dsn DSN                 libpq connection string or URI (default: PG* variables, else the demo server)
  --cpu-cores N             converter processes (default $CPU_CORES)
  -h, --help                show this help
EOF
}

while [ $# -gt 0 ]; do
    option="$1"
    case "$option" in
        -h|--help) usage; exit 0 ;;
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
        *) die "unknown option '$option' (see --help)" ;;
    esac
done

# Checked before anything runs: the real CDM is never a target.
[ "$SCHEMA" != "$SOURCE_SCHEMA" ] ||
    die "--schema $SCHEMA is the real CDM's schema (--source-schema); the synthetic CDM goes beside it, e.g. synthetic_cdm"
[ -d "$SAMPLE_FOLDER/generated_sequences" ] ||
    die "no generated sequences in '$SAMPLE_FOLDER/generated_sequences' (run generate_synthetic.sh, or pass --sample-folder)"
PYTHON_BIN=$(command -v python || command -v python3) || die "no python on PATH: run 'source setup_env.sh'"
OMOP_FOLDER="$SAMPLE_FOLDER/restored_omop"

sh "$SCRIPTS/omop_pipeline.sh" \
    --patient-sequence-folder "$SAMPLE_FOLDER/generated_sequences" \
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
"$@" || die "loading into schema $SCHEMA failed (exit $?); the message above says why"

set -- "$PYTHON_BIN" -m cehrgpt_tutorials.synthetic_queries --source-schema "$SOURCE_SCHEMA" --schema "$SCHEMA"
[ -n "$DSN" ] && set -- "$@" --dsn "$DSN"
"$@" || die "the example queries failed (exit $?)"
