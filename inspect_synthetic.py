"""Step 6 of the CEHR-XGPT tutorial: do the synthetic patients look like the real ones, are they
well formed, did the model copy anyone, are they useful, and do they stay within the real data's
calendar? A fidelity, validity, privacy and utility report with plots (cehrgpt_tutorials/inspect/).

Reads:
  --synthetic-dir  cehrgpt's generator output: a run folder such as
                   $SYNTHETIC_DATA_OUTPUT_DIR/top_p10000_constrained (its generated_sequences/*.parquet), or the
                   parent holding several top_* runs (each is inspected, newest first).
  --real-dir       the training sequences, cehrbert_data's patient_sequence (part files; train/ and
                   test/ subfolders: step 2's held-out split, the real patients the model never saw).
  --omop-dir       the source CDM's exported OMOP tables (default $OMOP_DIR): person and the condition, drug
                   and procedure tables, to compare the synthetic patients with the CDM itself (skipped,
                   with a note, when they are not there).
  --source-visit-dir the source CDM's visit_occurrence (default <omop-dir>/visit_occurrence): its last date.
  --concept-dir    the OMOP concept table (Parquet), for concept names and which ids are visit types.
  --restored-omop-dir (optional) the OMOP folder cehrgpt's converter restored from this run.
Writes, per run (default <run>/report, replaced atomically): report.json, report.md, PNG plots and
attribute_inference_config.yml (the data-derived config the attribute inference attack used).

Prints the seed script's summary (number of sequences, min/max/mean length, the 5 most common tokens
after [VS], the first 50 tokens of one sequence), then one line per metric. Exit status 1 with a
one-line error when a folder is missing or empty, or when no run has a structurally valid sequence.

Example:
    python inspect_synthetic.py
    python inspect_synthetic.py --synthetic-dir omop_synthea/synthetic_data/top_p10000_constrained \\
        --restored-omop-dir omop_synthea/synthetic_data/top_p10000_constrained/restored_omop
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
from pathlib import Path

from cehrgpt_tutorials.common import (
    PipelineError,
    cehr_gpt_data_dir,
    fail,
    omop_dir,
    patient_sequence_files,
    synthetic_data_output_dir,
)
from cehrgpt_tutorials.inspect.cdm_fidelity import MIN_CDM_PREVALENCE, read_cdm_prevalence
from cehrgpt_tutorials.inspect.evaluate import ReportOptions, inspect_run
from cehrgpt_tutorials.inspect.inputs import find_runs, load_real, visit_concept_ids
from cehrgpt_tutorials.inspect.privacy import NN_SAMPLE_SIZE, PRIVACY_SAMPLE_SIZE
from cehrgpt_tutorials.inspect.report import METRICS, percent
from cehrgpt_tutorials.inspect.sequences import sequences_from_lists  # noqa: F401
from cehrgpt_tutorials.inspect.timeline import source_end_date
from cehrgpt_tutorials.inspect.validity import VALIDITY_RULES, analyse  # noqa: F401
from cehrgpt_tutorials.inspect.vocabulary import (  # noqa: F401
    INPATIENT_TIME,
    TIME,
    VISIT_END,
    VISIT_START,
    Vocabulary,
)
from cehrgpt_tutorials.locks import output_lock

# The imports marked F401 are for scripts written against the one-file version, which imported these
# names from here (the tests of other branches); they now live in the package.

# ---------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------


def parse_arguments(argv=None):
    epilog = "Metrics:\n" + "\n".join(f"  {name}: {text}" for name, text in METRICS.items())
    epilog += "\n\nValidity rules (a sequence is valid when it breaks none):\n"
    epilog += "\n".join(f"  {rule}: {text}" for rule, text in VALIDITY_RULES.items())
    parser = argparse.ArgumentParser(
        description="Fidelity, validity and privacy report on cehrgpt's synthetic patient sequences.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--synthetic-dir",
        type=Path,
        default=None,
        help="a run folder (top_p10000_constrained), its generated_sequences folder, or the parent of several top_* runs "
        "(default: $SYNTHETIC_DATA_OUTPUT_DIR)",
    )
    parser.add_argument(
        "--run",
        default=None,
        help="inspect only the run with this name (e.g. top_p10000_constrained) under --synthetic-dir",
    )
    parser.add_argument(
        "--real-dir",
        type=Path,
        default=None,
        help="real patient_sequence folder (default: $CEHR_GPT_DATA_DIR/patient_sequence)",
    )
    parser.add_argument(
        "--omop-dir",
        type=Path,
        default=None,
        help="the source CDM's exported OMOP tables (person, condition_occurrence, drug_exposure, "
        "procedure_occurrence), to compare the synthetic patients with the CDM (default: $OMOP_DIR)",
    )
    parser.add_argument(
        "--concept-dir",
        type=Path,
        default=None,
        help="OMOP concept table folder, for names (default: <omop-dir>/concept)",
    )
    parser.add_argument(
        "--restored-omop-dir",
        type=Path,
        default=None,
        help="OMOP folder cehrgpt's converter restored from the run (default: <run>/restored_omop when it exists)",
    )
    parser.add_argument(
        "--report-dir",
        type=Path,
        default=None,
        help="where to write the report (default: <run>/report; with several runs, <report-dir>/<run>)",
    )
    parser.add_argument(
        "--nn-sample",
        type=int,
        default=NN_SAMPLE_SIZE,
        help="query sequences per side for the nearest-neighbour distances (default: %(default)s)",
    )
    parser.add_argument(
        "--privacy-sample",
        type=int,
        default=PRIVACY_SAMPLE_SIZE,
        help="patients per set for the membership and attribute inference attacks (default: %(default)s)",
    )
    parser.add_argument(
        "--source-visit-dir",
        type=Path,
        default=None,
        help="the source CDM's visit_occurrence table (Parquet): its last visit_start_date is the date "
        "synthetic visits should not pass (default: <omop-dir>/visit_occurrence)",
    )
    parser.add_argument(
        "--source-end-date",
        type=datetime.date.fromisoformat,
        default=None,
        help="that date given directly (YYYY-MM-DD) instead of read from --source-visit-dir",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples (default: %(default)s)")
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
        return inspect_all(arguments, concept_dir_given, locks)


def inspect_all(arguments, concept_dir_given: bool, locks: contextlib.ExitStack) -> int:
    """Every run of --synthetic-dir against the real sequences; the locks are held until main returns."""
    try:
        if not arguments.concept_dir.is_dir() or not patient_sequence_files(arguments.concept_dir):
            if concept_dir_given:
                raise PipelineError(
                    f"concept table not found: {arguments.concept_dir} (no Parquet files there)"
                )
            print(f"note: no concept table at {arguments.concept_dir}: concepts are shown by id only")
            arguments.concept_dir = None
        if arguments.restored_omop_dir is not None and not arguments.restored_omop_dir.is_dir():
            raise PipelineError(f"restored OMOP folder not found: {arguments.restored_omop_dir}")
        runs = find_runs(arguments.synthetic_dir)
        if arguments.run is not None:
            named = [run for run in runs if run.name == arguments.run]
            if not named:
                raise PipelineError(
                    f"no run named {arguments.run} in {arguments.synthetic_dir} (runs: {', '.join(r.name for r in runs)})"
                )
            runs = named
        # One writer in a synthetic data folder (generation, restore, report): a second stops here.
        for folder in sorted({run.folder.parent.resolve() for run in runs}):
            locks.enter_context(output_lock(folder, "the synthetic data folder"))
        vocabulary = Vocabulary(visit_concept_ids(arguments.concept_dir))
        real = load_real(arguments.real_dir, vocabulary, arguments.nn_sample, arguments.seed)
        print(
            f"Real sequences: {real.description}; {percent(float(real.train_facts.valid.mean()))} structurally valid"
        )
        cdm = read_source_cdm(arguments)
    except PipelineError as error:
        fail(str(error))

    source_end, source_note = arguments.source_end_date, "--source-end-date"
    if source_end is None:
        visit_dir = arguments.source_visit_dir or arguments.omop_dir / "visit_occurrence"
        try:
            source_end = source_end_date(visit_dir)
        except PipelineError as error:
            fail(str(error))
        if source_end is None and arguments.source_visit_dir is not None:
            fail(f"source visit table not found: {visit_dir} (no Parquet files there)")
        source_note = f"the last visit_start_date of {visit_dir}"
    options = ReportOptions(real_dir=arguments.real_dir, concept_dir=arguments.concept_dir,
                            nn_sample=arguments.nn_sample, privacy_sample=arguments.privacy_sample,
                            seed=arguments.seed, source_end_date=source_end, source_end_note=source_note,
                            cdm=cdm)
    failures, reports = [], []
    for index, run in enumerate(runs):
        if arguments.report_dir is None:
            report_dir = run.folder / "report"
        else:
            report_dir = arguments.report_dir if len(runs) == 1 else arguments.report_dir / run.name
        # A restored folder belongs to one run: the one named applies to the newest run; otherwise a
        # run's own restored_omop/ (where the tutorial's omop_pipeline.sh step writes it) is used.
        restored = arguments.restored_omop_dir if index == 0 else None
        if arguments.restored_omop_dir is None and (run.folder / "restored_omop" / "person").is_dir():
            restored = run.folder / "restored_omop"
        try:
            report = inspect_run(run, real, vocabulary, options, report_dir, restored)
        except PipelineError as error:
            failures.append(f"{run.name}: {error}")
            print(f"\n== {run.name}: skipped: {error}")
            continue
        reports.append(report)
        if report["num_valid"] == 0:
            worst = max(report["invalid_reasons"].items(), key=lambda item: item[1])
            failures.append(
                f"{run.name}: no structurally valid sequence (0 of {report['num_sequences']:,}; most common problem: "
                f"{worst[0]}, {worst[1]:,} sequences; report in {report_dir})"
            )
    if len(runs) > 1:
        print(
            f"\nInspected {len(reports)} of {len(runs)} runs (newest first): {', '.join(run.name for run in runs)}"
        )
    usable = [report for report in reports if report["num_valid"] > 0]
    if not usable:
        fail("; ".join(failures) if failures else "nothing to inspect")
    for failure in failures:
        print(f"warning: {failure}")
    return 0


def read_source_cdm(arguments):
    """The source CDM's frequent concepts, read once for every run; a --omop-dir given without its
    tables is an error, the default one missing (a fresh clone) only a note."""
    cdm = read_cdm_prevalence(arguments.omop_dir, arguments.concept_dir)
    if cdm.missing and arguments.omop_dir_given:
        raise PipelineError(cdm.missing)
    if cdm.missing:
        print(f"note: {cdm.missing}: the comparison with the source CDM is skipped")
    else:
        print(f"Source CDM: {arguments.omop_dir} ({cdm.persons:,} persons, {len(cdm.prevalence)} condition, drug "
              f"and procedure concepts held by >= {MIN_CDM_PREVALENCE:.0%} of them)")
    return cdm


if __name__ == "__main__":
    raise SystemExit(main())
