"""Step 6: how faithful, well formed, private and useful are the synthetic patients?

Reads:  the generator's runs under --synthetic-dir (each top_* folder's generated_sequences/), the real
        training sequences and step 2's held-out test/ patients (--real-dir), the source CDM's exported
        tables (--omop-dir: person, conditions, drugs, procedures, visits, concept names) and, when there,
        the OMOP folder restored from a run.
Writes: per run, <run>/report/ (replaced whole): report.json, report.md, PNG plots and the attribute
        inference attack's config. Prints the seed script's summary, then one line per metric; exits 1
        with a one-line error when an input is missing or no run has a structurally valid sequence.
What each metric means: `--help`; how they are computed: the cehrgpt_tutorials.report package.

Example:
    python inspect_synthetic.py
    python inspect_synthetic.py --run top_p10000_constrained --restored-omop-dir \
        omop_synthea/synthetic_data/top_p10000_constrained/restored_omop
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
from pathlib import Path

from cehrgpt_tutorials.errors import fail
from cehrgpt_tutorials.paths import cehr_gpt_data_dir, omop_dir, synthetic_data_output_dir
from cehrgpt_tutorials.report.all_runs import report_all_runs
from cehrgpt_tutorials.report.metrics import METRICS
from cehrgpt_tutorials.report.privacy import NN_SAMPLE_SIZE, PRIVACY_SAMPLE_SIZE
from cehrgpt_tutorials.sequences.grammar import VALIDITY_RULES


def parse_arguments(argv=None):
    epilog = "Metrics:\n" + "\n".join(f"  {name}: {text}" for name, text in METRICS.items())
    epilog += "\n\nValidity rules (a sequence is valid when it breaks none):\n"
    epilog += "\n".join(f"  {rule}: {text}" for rule, text in VALIDITY_RULES.items())
    parser = argparse.ArgumentParser(
        description="Fidelity, validity and privacy report on cehrgpt's synthetic patient sequences.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--synthetic-dir", type=Path, help="a run folder (top_p10000_constrained), its generated_sequences folder, "
        "or the parent of several top_* runs (default: $SYNTHETIC_DATA_OUTPUT_DIR)")
    add("--run", help="inspect only the run with this name (e.g. top_p10000_constrained) under --synthetic-dir")
    add("--real-dir", type=Path, help="real patient_sequence folder (default: $CEHR_GPT_DATA_DIR/patient_sequence)")
    add("--omop-dir", type=Path, help="the source CDM's exported OMOP tables (person, condition_occurrence, "
        "drug_exposure, procedure_occurrence), to compare the synthetic patients with the CDM (default: $OMOP_DIR)")
    add("--concept-dir", type=Path, help="OMOP concept table folder, for names (default: <omop-dir>/concept)")
    add("--restored-omop-dir", type=Path, help="OMOP folder cehrgpt's converter restored from the run "
        "(default: <run>/restored_omop when it exists)")
    add("--report-dir", type=Path, help="where to write the report (default: <run>/report; with several runs, "
        "<report-dir>/<run>)")
    add("--nn-sample", type=int, default=NN_SAMPLE_SIZE,
        help="query sequences per side for the nearest-neighbour distances (default: %(default)s)")
    add("--privacy-sample", type=int, default=PRIVACY_SAMPLE_SIZE,
        help="patients per set for the membership and attribute inference attacks (default: %(default)s)")
    add("--source-visit-dir", type=Path, help="the source CDM's visit_occurrence table (Parquet): its last "
        "visit_start_date is the date synthetic visits should not pass (default: <omop-dir>/visit_occurrence)")
    add("--source-end-date", type=datetime.date.fromisoformat,
        help="that date given directly (YYYY-MM-DD) instead of read from --source-visit-dir")
    add("--seed", type=int, default=0, help="seed of the samples (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    concept_dir_given = arguments.concept_dir is not None
    arguments.omop_dir_given = arguments.omop_dir is not None
    arguments.omop_dir = arguments.omop_dir or omop_dir()
    arguments.synthetic_dir = arguments.synthetic_dir or synthetic_data_output_dir()
    arguments.real_dir = arguments.real_dir or cehr_gpt_data_dir() / "patient_sequence"
    arguments.concept_dir = arguments.concept_dir or arguments.omop_dir / "concept"
    if arguments.nn_sample < 1:
        fail("--nn-sample must be at least 1")
    if arguments.privacy_sample < 2:
        fail("--privacy-sample must be at least 2")
    with contextlib.ExitStack() as locks:
        return report_all_runs(arguments, concept_dir_given, locks)


if __name__ == "__main__":
    raise SystemExit(main())
