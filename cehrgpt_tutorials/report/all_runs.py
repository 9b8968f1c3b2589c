"""Step 6 for every run of a synthetic data folder: the inputs checked and read once, then one report
per run (evaluate.inspect_run); inspect_synthetic.py is its command line."""

from __future__ import annotations

import contextlib
import datetime
from pathlib import Path

from cehrgpt_tutorials.errors import PipelineError, fail
from cehrgpt_tutorials.files import parquet_files
from cehrgpt_tutorials.locks import output_lock
from cehrgpt_tutorials.omop.concepts import visit_concept_ids
from cehrgpt_tutorials.report.cdm_fidelity import MIN_CDM_PREVALENCE, read_cdm_prevalence
from cehrgpt_tutorials.report.evaluate import ReportOptions, inspect_run
from cehrgpt_tutorials.report.inputs import Run, find_runs, load_real
from cehrgpt_tutorials.report.metrics import percent
from cehrgpt_tutorials.report.timeline import source_end_date
from cehrgpt_tutorials.sequences.vocabulary import Vocabulary


def report_all_runs(arguments, concept_dir_given: bool, locks: contextlib.ExitStack) -> int:
    """Every run of --synthetic-dir against the real sequences; the locks are held until main returns."""
    try:
        arguments.concept_dir = checked_concept_dir(arguments.concept_dir, concept_dir_given)
        if arguments.restored_omop_dir is not None and not arguments.restored_omop_dir.is_dir():
            raise PipelineError(f"restored OMOP folder not found: {arguments.restored_omop_dir}")
        runs = selected_runs(arguments.synthetic_dir, arguments.run)
        # One writer in a synthetic data folder (generation, restore, report): a second stops here.
        for folder in sorted({run.folder.parent.resolve() for run in runs}):
            locks.enter_context(output_lock(folder, "the synthetic data folder"))
        vocabulary = Vocabulary(visit_concept_ids(arguments.concept_dir))
        real = load_real(arguments.real_dir, vocabulary, arguments.nn_sample, arguments.seed)
        print(
            f"Real sequences: {real.description}; {percent(float(real.train_facts.valid.mean()))} structurally valid"
        )
        cdm = read_source_cdm(arguments)
        source_end, source_note = source_end_and_note(arguments)
    except PipelineError as error:
        fail(str(error))
    options = ReportOptions(real_dir=arguments.real_dir, concept_dir=arguments.concept_dir,
                            nn_sample=arguments.nn_sample, privacy_sample=arguments.privacy_sample,
                            seed=arguments.seed, source_end_date=source_end, source_end_note=source_note,
                            cdm=cdm)
    failures, reports = [], []
    for index, run in enumerate(runs):
        report_dir = run_report_dir(arguments.report_dir, run, len(runs))
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
    return finish(runs, reports, failures)


def checked_concept_dir(concept_dir: Path, given: bool) -> Path | None:
    """The concept table folder; a default one without Parquet files is only a note (ids without names)."""
    if concept_dir.is_dir() and parquet_files(concept_dir):
        return concept_dir
    if given:
        raise PipelineError(f"concept table not found: {concept_dir} (no Parquet files there)")
    print(f"note: no concept table at {concept_dir}: concepts are shown by id only")
    return None


def selected_runs(synthetic_dir: Path, name: str | None) -> list[Run]:
    """The runs to report, newest first: all of them, or the one named."""
    runs = find_runs(synthetic_dir)
    if name is None:
        return runs
    named = [run for run in runs if run.name == name]
    if not named:
        raise PipelineError(f"no run named {name} in {synthetic_dir} (runs: {', '.join(r.name for r in runs)})")
    return named


def source_end_and_note(arguments) -> tuple[datetime.date | None, str]:
    """The date synthetic visits should not pass (--source-end-date, else the source's last visit), and
    where it came from; None: no visit table, estimated later from the real sequences."""
    if arguments.source_end_date is not None:
        return arguments.source_end_date, "--source-end-date"
    visit_dir = arguments.source_visit_dir or arguments.omop_dir / "visit_occurrence"
    source_end = source_end_date(visit_dir)
    if source_end is None and arguments.source_visit_dir is not None:
        raise PipelineError(f"source visit table not found: {visit_dir} (no Parquet files there)")
    return source_end, f"the last visit_start_date of {visit_dir}"


def run_report_dir(report_dir: Path | None, run: Run, run_count: int) -> Path:
    """<run>/report by default; --report-dir itself for one run, <report-dir>/<run> for several."""
    if report_dir is None:
        return run.folder / "report"
    return report_dir if run_count == 1 else report_dir / run.name


def finish(runs: list[Run], reports: list[dict], failures: list[str]) -> int:
    """0 when a run has a valid sequence (the failures printed as warnings), else a one-line error."""
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
