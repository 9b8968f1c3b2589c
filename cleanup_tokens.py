"""Step 3 of the CEHR-XGPT tutorial: remove the time tokens cehrgpt cannot parse from the patient sequences.

cehrbert_data (step 2) sometimes writes inpatient day tokens with a negative gap, like `i-D-3`: inside
an inpatient visit the gap is `datediff(date, previous date)` over events ordered by datetime, so a
record whose date and datetime disagree, or a visit that ends before it starts, yields a negative
number. cehrgpt raises "Invalid time token" on them (tokenizer training, age sequences) and its OMOP
converter drops every sequence holding one. A token is malformed when cehrgpt's own parser says so
(cehrgpt_tutorials.sequences.tokens.time_token_problem). Each one is removed with the values at the same
positions of the sequence's other arrays, and the few null `ages` step 2 leaves are filled
(cehrgpt_tutorials/sequences/cleaning.py says how). Files without malformed tokens are not touched, so
a second run changes nothing; a changed file is renamed into place, so a crash leaves the old one.

Reads and rewrites: PATIENT_SEQUENCE_DIR/**/*.parquet (Spark part files, train/ and test/ included).

Example:
    python cleanup_tokens.py                                   # $CEHR_GPT_DATA_DIR/patient_sequence
    python cleanup_tokens.py --patient-sequence-dir omop_synthea/patient_sequence --dry-run
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

# Run as a script: Arrow's buffers from the C library's allocator. The cleaning threads free each
# batch before reading the next; pyarrow's default allocator (mimalloc in pyarrow 25) keeps freed
# pages per thread, the C library's gives them back (bench/RESULTS.md: peak RSS 443-464 MB against
# 337-340 MB in the same time). Arrow reads the variable once, when pyarrow is imported; one you set
# yourself wins.
if __name__ == "__main__":
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

import pyarrow as pa  # noqa: E402

from cehrgpt_tutorials.errors import PipelineError, fail  # noqa: E402
from cehrgpt_tutorials.locks import output_lock  # noqa: E402
from cehrgpt_tutorials.paths import cehr_gpt_data_dir  # noqa: E402
from cehrgpt_tutorials.sequences.cleaning import CleanupReport, clean_folder  # noqa: E402


def print_report(report: CleanupReport, files: list[Path], folder: Path, dry_run: bool) -> None:
    verb = "to remove (dry run)" if dry_run else "removed"
    if report.tokens_removed == 0:
        print(f"No malformed time tokens in {len(files)} file(s) under {folder}"
              + ("." if report.filled_items else ": nothing to change."))
    else:
        print(f"Malformed time tokens {verb}, by kind:")
        for kind, count in report.tokens_by_kind.most_common():
            examples = [token for token, _ in report.tokens_by_value.most_common()
                        if report.kind_of_token[token] == kind][:5]
            print(f"  {kind:<14} {count:>8}   e.g. {', '.join(examples)}")
        print(f"Rows touched: {report.rows_touched}, patients touched: {len(report.patients_touched)}")
        print(f"Columns kept aligned with concept_ids: {', '.join(sorted(report.realigned_columns)) or 'none'}")
        for column, rows in sorted(report.unaligned_rows.items()):
            if rows:
                print(f"warning: {column} is not aligned with concept_ids in {rows} touched row(s); "
                      "those rows were left as they were")
    if report.filled_items:
        filled = ", ".join(f"{name} {count}" for name, count in sorted(report.filled_items.items()))
        print(f"Null items {'to fill' if dry_run else 'filled'} (so every worker reads them as integers): {filled}")
    if report.tokens_removed or report.filled_items:
        action = "would rewrite" if dry_run else "rewrote"
        print(f"Files: {action} {len(report.files_changed)} of {len(files)}")
    if dry_run:
        print(f"Dry run: would remove {report.tokens_removed} malformed tokens (no file changed)")
    else:
        print(f"Removed {report.tokens_removed} malformed tokens")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Example:" + __doc__.split("Example:")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patient-sequence-dir", type=Path, default=cehr_gpt_data_dir() / "patient_sequence",
                        help="folder of patient_sequence Parquet files (default: $CEHR_GPT_DATA_DIR/patient_sequence, "
                             "else omop_synthea/patient_sequence)")
    parser.add_argument("--dry-run", action="store_true", help="report what would be removed, change nothing")
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1),
                        help="files cleaned at the same time (default: cores, at most 4; each holds one record batch in memory)")
    arguments = parser.parse_args(argv)
    if arguments.jobs < 1:
        parser.error("--jobs must be at least 1")
    folder: Path = arguments.patient_sequence_dir

    try:
        if not folder.exists():
            raise PipelineError(f"patient sequence folder {folder} does not exist (run step 2, "
                                "create_cehrgpt_pretraining_data.sh, or pass --patient-sequence-dir)")
        lock = contextlib.nullcontext() if arguments.dry_run else output_lock(folder, "the patient sequences")
        with lock:  # one writer: not beside step 2 or another cleanup of this folder
            report, files = clean_folder(folder, arguments.jobs, arguments.dry_run)
    except PipelineError as error:
        fail(str(error))
    except (OSError, pa.ArrowException) as error:
        fail(f"{error} (files cleaned so far stay cleaned, the others are unchanged: fix this and re-run)")
    except KeyboardInterrupt:
        fail("interrupted (files cleaned so far stay cleaned, the others are unchanged: re-run to finish)", 130)
    print_report(report, files, folder, arguments.dry_run)


if __name__ == "__main__":
    main()
