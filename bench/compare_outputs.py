"""Are two `make demo` output folders the same? For a change that must not change behaviour (a
refactor, a dependency bump): run `make demo` before and after, in two clones, and compare.

Compares, in order of the pipeline:
  - step 1: every exported OMOP table (rows, sorted, must be equal);
  - steps 2-3: patient_sequence/ train and test (rows sorted by person_id, must be equal);
  - step 4: the model's final evaluation loss and the number of training steps (trainer_state.json);
  - step 5: the generated sequences of each run (sorted token lists);
  - step 6: report.json of each run, key by key (timings and paths are ignored).
Prints one line per comparison and exits 1 when anything differs.

Example:
    python bench/compare_outputs.py /path/to/clone_before/omop_synthea /path/to/clone_after/omop_synthea
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

OMOP_TABLES = ("person", "visit_occurrence", "condition_occurrence", "drug_exposure", "procedure_occurrence",
               "death", "measurement", "concept")
IGNORED_REPORT_KEYS = ("seconds", "time", "created", "dir", "path", "folder")


def sorted_rows(folder: Path) -> pa.Table | None:
    files = [str(path) for path in sorted(folder.rglob("*.parquet"))
             if not any(part.startswith((".", "_")) for part in path.relative_to(folder).parts)]
    if not files:
        return None
    table = ds.dataset(files, format="parquet").to_table()
    keys = [name for name in table.column_names if not pa.types.is_nested(table.schema.field(name).type)]
    return table.sort_by([(name, "ascending") for name in keys]) if keys else table


def same_rows(before: Path, after: Path) -> str:
    first, second = sorted_rows(before), sorted_rows(after)
    if first is None or second is None:
        return "missing" if (first is None) != (second is None) else "absent in both"
    if first.num_rows != second.num_rows:
        return f"DIFFERENT rows: {first.num_rows:,} vs {second.num_rows:,}"
    return f"same ({first.num_rows:,} rows)" if first.equals(second) else f"DIFFERENT values ({first.num_rows:,} rows)"


def trainer_summary(model_dir: Path) -> tuple | None:
    states = sorted(model_dir.rglob("trainer_state.json"), key=lambda path: path.stat().st_mtime)
    if not states:
        return None
    state = json.loads(states[-1].read_text())
    losses = [entry["eval_loss"] for entry in state.get("log_history", []) if "eval_loss" in entry]
    return state.get("global_step"), [round(loss, 6) for loss in losses]


def flat(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(flat(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def report_differences(before: Path, after: Path) -> list[str]:
    first, second = flat(json.loads(before.read_text())), flat(json.loads(after.read_text()))
    differences = []
    for key in sorted(set(first) | set(second)):
        if any(word in key for word in IGNORED_REPORT_KEYS):
            continue
        if first.get(key) != second.get(key):
            differences.append(f"{key}: {first.get(key)!r} vs {second.get(key)!r}")
    return differences


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="the first omop_synthea folder")
    parser.add_argument("after", type=Path, help="the second omop_synthea folder")
    arguments = parser.parse_args(argv)
    lines, different = [], False
    for table in OMOP_TABLES:
        lines.append(f"step 1  {table:<22} {same_rows(arguments.before / table, arguments.after / table)}")
    for split in ("train", "test"):
        folder = Path("patient_sequence") / split
        lines.append(f"step 2  {str(folder):<22} {same_rows(arguments.before / folder, arguments.after / folder)}")
    models = [trainer_summary(folder / "cehrgpt_model") for folder in (arguments.before, arguments.after)]
    lines.append(f"step 4  model (steps, eval losses) {'same' if models[0] == models[1] else 'DIFFERENT'}: "
                 f"{models[0]} vs {models[1]}")
    runs = sorted(path.name for path in (arguments.before / "synthetic_data").glob("top_*"))
    for run in runs:
        relative = Path("synthetic_data") / run
        generated = same_rows(arguments.before / relative / "generated_sequences",
                              arguments.after / relative / "generated_sequences")
        lines.append(f"step 5  {run} generated sequences {generated}")
        reports = [folder / relative / "report" / "report.json" for folder in (arguments.before, arguments.after)]
        if all(path.exists() for path in reports):
            differences = report_differences(*reports)
            lines.append(f"step 6  {run} report.json: " + ("same" if not differences else
                         f"DIFFERENT in {len(differences)} keys: " + "; ".join(differences[:10])))
    for line in lines:
        different |= "DIFFERENT" in line or "missing" in line
        print(line)
    return 1 if different else 0


if __name__ == "__main__":
    sys.exit(main())
