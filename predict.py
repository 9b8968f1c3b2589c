"""Step 7 of the tutorial: use the pretrained model on prediction tasks defined in SQL.

The paper's claim is one model for three uses; steps 5-6 generate, this step predicts. For each task
(every cohort SQL in cehrgpt_tutorials/prediction/cohorts/, or the one given with --sql) it compares a
bag-of-concepts baseline with cehrgpt's features + linear probe, fine-tuning and zero-shot prediction on
the held-out patients, with bootstrap intervals and few-shot curves (cehrgpt_tutorials/prediction/).
It prints every cehrgpt command it runs; their output goes to OUTPUT_DIR/logs/.

Reads:  the CDM in PostgreSQL (--dsn, else the libpq variables, else the embedded demo server),
        $CEHR_GPT_DATA_DIR/patient_sequence (train/ and test/), the model in $CEHR_GPT_MODEL_DIR.
Writes: <cohort schema>.cohort in PostgreSQL, and OUTPUT_DIR (default $CEHR_GPT_DATA_DIR/prediction):
        predict_report.md and .json over every task, and per task (OUTPUT_DIR/<task>/, or OUTPUT_DIR
        itself with --sql) its report, roc_curves.png, calibration.png, few_shot.png, the examples
        (cohort_sequences/), each method's predictions and logs. A previous OUTPUT_DIR is replaced
        only when the new one is complete.

Your own cohort: a SQL file with one SELECT returning subject_id, cohort_start_date (the index
date), cohort_end_date (end of the time at risk) and outcome_date (first outcome in it, or NULL);
write @cdm_schema for the CDM schema, and a comment line `-- outcome_concepts: ID ...` for zero-shot
(or pass --outcome-concepts). See cehrgpt_tutorials/prediction/cohorts/*.sql.

Examples (after `source setup_env.sh`):
    python predict.py                                   # what `make predict` runs: every task
    python predict.py --sql my_cohort.sql --outcome-concepts 9201 --task-name inpatient_1y
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from cehrgpt_tutorials.environment import usable_cores
from cehrgpt_tutorials.errors import PipelineError, describe_os_error, fail
from cehrgpt_tutorials.paths import cehr_gpt_data_dir, cehr_gpt_model_dir
from cehrgpt_tutorials.prediction.cohort import COHORT_SQL_DIR, DEFAULT_COHORT_SQL
from cehrgpt_tutorials.prediction.models import FEATURE_BATCH_SIZE, FINE_TUNE_BATCH_SIZE
from cehrgpt_tutorials.sequences.split import DEFAULT_TEST_FRACTION


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sql", type=Path, default=None,
                        help=f"one cohort SQL file (default: every task in {COHORT_SQL_DIR}, "
                             f"{DEFAULT_COHORT_SQL.name} first)")
    parser.add_argument("--cohort-dir", type=Path, default=None,
                        help=f"without --sql: run every cohort SQL of this folder (default {COHORT_SQL_DIR})")
    parser.add_argument("--outcome-concepts", nargs="+", default=None, metavar="CONCEPT_ID",
                        help="with --sql: the outcome's concept ids (tokens) that zero-shot looks for in sampled "
                             "futures (default: the SQL's '-- outcome_concepts:' line)")
    parser.add_argument("--task-name", default=None, help="with --sql: its name in the report (default: the file's name)")
    parser.add_argument("--dsn", default=None,
                        help="PostgreSQL connection string (default: libpq variables or the demo server)")
    parser.add_argument("--cdm-schema", default="cdm", help="schema of the CDM tables, @cdm_schema in the SQL (default cdm)")
    parser.add_argument("--cohort-schema", default="results",
                        help="schema of the OHDSI cohort table to write, created if needed (default results)")
    parser.add_argument("--cohort-id", type=int, default=1,
                        help="cohort_definition_id of the target cohort; the outcome cohort gets the next one (default 1)")
    parser.add_argument("--patient-sequence-dir", type=Path, default=None,
                        help="step 2's patient sequences (default $CEHR_GPT_DATA_DIR/patient_sequence)")
    parser.add_argument("--model-dir", type=Path, default=None, help="the pretrained model (default $CEHR_GPT_MODEL_DIR)")
    parser.add_argument("--output-dir", type=Path, default=None, help="default $CEHR_GPT_DATA_DIR/prediction")
    parser.add_argument("--trajectories", type=int, default=10,
                        help="sampled futures per test patient (default 10: every task of make predict within 10 minutes on 2 cores; 20 gives finer probabilities for twice the sampling time)")
    parser.add_argument("--max-new-tokens", type=int, default=64,
                        help="longest sampled future in tokens (default 64: 98%% of the demo's real one-year "
                             "futures are shorter; the cost of zero-shot grows with it)")
    parser.add_argument("--workers", type=int, default=usable_cores(),
                        help="zero-shot processes side by side, one core each (default: the number of cores)")
    parser.add_argument("--no-zero-shot", action="store_true", help="skip the zero-shot predictions (the slowest part)")
    parser.add_argument("--fine-tune-epochs", type=int, default=5,
                        help="most epochs of fine-tuning; it stops earlier once the validation loss stops falling "
                             "(default 5)")
    parser.add_argument("--no-fine-tune", action="store_true", help="skip fine-tuning the model on the task")
    parser.add_argument("--max-train-examples", type=int, default=20_000,
                        help="most train examples per task, drawn seeded and stratified by outcome, the same for "
                             "every method (default 20000: a large CDM in hours; the demo has fewer)")
    parser.add_argument("--max-test-examples", type=int, default=5_000,
                        help="most test examples per task, drawn the same way (default 5000)")
    parser.add_argument("--feature-batch-size", type=int, default=FEATURE_BATCH_SIZE,
                        help="examples per forward pass of feature extraction and of fine-tuning's evaluation "
                             "(default %(default)s; raise it on a GPU)")
    parser.add_argument("--fine-tune-batch-size", type=int, default=FINE_TUNE_BATCH_SIZE,
                        help="examples per fine-tuning step (default %(default)s; raise it on a GPU)")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (default 1000)")
    parser.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION,
                        help="only for sequences without train/ and test/: the held-out share, decided as in step 2 "
                             f"(default {DEFAULT_TEST_FRACTION})")
    arguments = parser.parse_args(argv)
    if arguments.sql is None and (arguments.outcome_concepts or arguments.task_name):
        parser.error("--outcome-concepts and --task-name go with --sql (each task's SQL names its own)")
    arguments.patient_sequence_dir = arguments.patient_sequence_dir or cehr_gpt_data_dir() / "patient_sequence"
    arguments.model_dir = arguments.model_dir or cehr_gpt_model_dir()
    arguments.output_dir = arguments.output_dir or cehr_gpt_data_dir() / "prediction"
    for name in ("trajectories", "max_new_tokens", "n_boot", "workers", "fine_tune_epochs", "max_train_examples",
                 "max_test_examples", "feature_batch_size", "fine_tune_batch_size"):
        if getattr(arguments, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return arguments


def main(argv=None) -> None:
    arguments = parse_arguments(argv)
    from cehrgpt_tutorials.prediction.pipeline import run

    # Stopped by a TERM signal (make demo forwards Ctrl-C as one): unwind like Ctrl-C, so the
    # cehrgpt commands are stopped and the half-built output folder is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    try:
        run(arguments)
    except PipelineError as error:
        fail(str(error))
    except OSError as error:  # e.g. a full disk: the previous report was not replaced
        fail(f"{describe_os_error(error)}; the previous report is as it was")


if __name__ == "__main__":
    main()
