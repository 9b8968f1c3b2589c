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
#    or visit does not exist) on synthetic_cdm and cdm, and prints both counts; cdm's are computed once
#    and reused while cdm is unchanged (real_cdm_plausibility.json beside SAMPLE_FOLDER);
# 4. prints the psql URI and two example queries comparing cdm and synthetic_cdm, with answers.
# It never writes into the real CDM's schema: a --schema equal to --source-schema is refused.
#
# Reads:  SAMPLE_FOLDER/generated_sequences (default $SYNTHETIC_DATA_OUTPUT_DIR/top_p10000_constrained)
#         SOURCE_OMOP_FOLDER/concept ... (default $OMOP_DIR, step 1's export)
# Writes: SAMPLE_FOLDER/censored_sequences/ (unless --no-censor), SAMPLE_FOLDER/restored_omop/<table>/,
#         SAMPLE_FOLDER/../real_cdm_plausibility.json and schema synthetic_cdm in the database
#         (--dsn, else the PG* variables, else the embedded demo server).
#
# Example (after `source setup_env.sh`):
#   sh cehrgpt_tutorials/scripts/restore_synthetic.sh
#   sh cehrgpt_tutorials/scripts/restore_synthetic.sh --dsn "postgresql://me@db.example.org/omop"

set -u
set -f  # no filename globbing: paths and names are used as written

SCRIPTS=$(cd "$(dirname "$0")" && pwd -P) && [ -n "$SCRIPTS" ] || { echo "error: cannot find the folder of $0" >&2; exit 1; }
ROOT=$(cd "$SCRIPTS/../.." && pwd -P) || { echo "error: cannot find the repository above $SCRIPTS" >&2; exit 1; }
# shellcheck source=shell_helpers.sh
. "$SCRIPTS/shell_helpers.sh" || { echo "error: cannot read $SCRIPTS/shell_helpers.sh" >&2; exit 1; }
PYTHON_BIN=$(command -v python || command -v python3) || die "no python on PATH: run 'source setup_env.sh'"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's cehrgpt_tutorials

# Checks the options before anything runs (the real CDM is never a target). Sets SAMPLE_FOLDER
# SOURCE_OMOP_FOLDER SCHEMA SOURCE_SCHEMA DSN CPU_CORES and CENSOR_ARGS (quoted words; empty with
# --no-censor), or prints the usage and exits.
answer=$("$PYTHON_BIN" -m cehrgpt_tutorials.pipeline.synthetic_options restore "$0" "$@") || exit_as_ours $?
eval "$answer"
OMOP_FOLDER="$SAMPLE_FOLDER/restored_omop"
# One writer in the synthetic data folder (generation, restore, report): a second stops here.
hold_lock 9 "$(dirname "$SAMPLE_FOLDER")" "the synthetic data folder"

SEQUENCES="$SAMPLE_FOLDER/generated_sequences"
if [ -n "$CENSOR_ARGS" ]; then
    eval "set -- $CENSOR_ARGS"
    "$PYTHON_BIN" -m cehrgpt_tutorials.report.timeline censor "$SEQUENCES" "$SAMPLE_FOLDER/censored_sequences" "$@" ||
        exit_as_ours $?
    SEQUENCES="$SAMPLE_FOLDER/censored_sequences"
else
    echo "not censoring (--no-censor): synthetic visits may start after the source's last date"
fi

sh "$SCRIPTS/omop_pipeline.sh" \
    --patient-sequence-folder "$SEQUENCES" \
    --omop-folder "$OMOP_FOLDER" \
    --source-omop-folder "$SOURCE_OMOP_FOLDER" \
    --cpu-cores "$CPU_CORES" || exit $?  # its own message says why (exit 3: nothing converted)

tables=$("$PYTHON_BIN" -m cehrgpt_tutorials.pipeline.synthetic_options restored-tables "$OMOP_FOLDER") ||
    exit_as_ours $?
set -- "$PYTHON_BIN" "$ROOT/load_omop.py" --input-dir "$OMOP_FOLDER" --schema "$SCHEMA" --tables "$tables" --replace
# The printed command leaves the DSN out (it may hold a password).
printf '$ %s%s\n' "$(print_command "$@")" "${DSN:+ --dsn <your dsn>}"
[ -n "$DSN" ] && set -- "$@" --dsn "$DSN"
"$@" || exit_as_ours $?

# In the synthetic data folder, not the sample's: every sample restored against the same CDM shares it.
set -- "$PYTHON_BIN" -m cehrgpt_tutorials.omop.plausibility --schema "$SCHEMA" --source-schema "$SOURCE_SCHEMA" \
    --cache "$(dirname "$SAMPLE_FOLDER")/real_cdm_plausibility.json"
[ -n "$DSN" ] && set -- "$@" --dsn "$DSN"
"$@" || exit_as_ours $?

set -- "$PYTHON_BIN" -m cehrgpt_tutorials.omop.synthetic_queries --source-schema "$SOURCE_SCHEMA" --schema "$SCHEMA"
[ -n "$DSN" ] && set -- "$@" --dsn "$DSN"
"$@" || exit_as_ours $?
