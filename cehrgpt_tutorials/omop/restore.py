"""omop_pipeline.sh's helpers around cehrgpt's OMOP converter: what happened to each generated sequence,
and the small repairs that make the converter's output a loadable CDM (one subcommand each; --help).

The converter skips most sequences it cannot use without saying why, and its worker processes
overwrite each other's concept_errors.txt. So a sequence counts as converted when its person_id is in
the restored person table (the pipeline runs the converter with --use_original_person_id), and each
skipped one gets the first converter rule it breaks, checked in the converter's order (skip_reason).
"""

from __future__ import annotations

import argparse
import ast
import datetime
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from cehrgpt_tutorials.errors import PipelineError, fail
from cehrgpt_tutorials.files import atomic_directory

NO_SEQUENCES_EXIT_CODE = 3  # distinct from 1 (bad input) so the shell script can tell them apart
NO_DISTINCT_PERSON_IDS_EXIT_CODE = 4  # likewise: "person-ids" answers no, as opposed to failing
SHOWN_EXAMPLES = 3


def read_sequences(folder: Path) -> pa.Table:
    """The generated sequences' concept_ids and person_id (person_id may be missing)."""
    files = sorted(Path(folder).glob("*parquet"))
    if not files:
        raise PipelineError(f"no Parquet files in {folder} (expected the generator's generated_sequences)")
    dataset = ds.dataset([str(f) for f in files], format="parquet")
    if "concept_ids" not in dataset.schema.names:
        raise PipelineError(f"{folder} holds no concept_ids column: not patient sequences")
    columns = [name for name in ("person_id", "concept_ids") if name in dataset.schema.names]
    return dataset.to_table(columns=columns)


def person_ids_are_distinct(sequences: pa.Table) -> bool:
    if "person_id" not in sequences.column_names:
        return False
    ids = sequences.column("person_id")
    return ids.null_count == 0 and len(pc.unique(ids)) == len(ids)


def load_domain_map(concept_folder: Path) -> dict[int, str]:
    table = ds.dataset(str(concept_folder), format="parquet").to_table(columns=["concept_id", "domain_id"])
    return dict(zip(table.column("concept_id").to_pylist(), table.column("domain_id").to_pylist(), strict=True))


def skip_reason(concept_ids: list[str], domain_map: dict[int, str]) -> str | None:
    """The first rule of omop_converter_batch (cehrgpt 0.1.9) this sequence breaks, or None.

    Mirrors gpt_to_omop_converter_batch step by step, including what it tolerates (events after
    a [VE] are filed under the previous visit), so the reasons match what the converter did: first
    the demographic prompt, then the events in order.
    """
    from cehrgpt.generation.omop_converter_batch import START_TOKEN_SIZE, STOP_TOKENS

    tokens = list(concept_ids)
    if tokens and "start" in tokens[0].lower():
        tokens = tokens[1:]
    events = tokens[START_TOKEN_SIZE:]
    if not events:
        return "no events after the 4 demographic tokens"
    if events[-1] not in STOP_TOKENS:
        return "does not end with [VE] (cut off at the context window, or the model stopped early)"
    demographics = tokens[:START_TOKEN_SIZE]
    return _prompt_problem(demographics) or _event_problem(events, demographics, domain_map)


def _prompt_problem(demographics: list[str]) -> str | None:
    """What the converter rejects in the demographic prompt (year, age, ...), or None."""
    if "year" not in demographics[0].lower():
        return "does not start with a year token"
    try:
        birth_year = int(demographics[0].split(":")[1]) - int(demographics[1].split(":")[1])
    except (IndexError, ValueError):
        return "year/age tokens cannot be read"
    if birth_year < 1900 or birth_year > datetime.date.today().year:
        return "birth year before 1900 or in the future"
    return None


def _event_problem(events: list[str], demographics: list[str], domain_map: dict[int, str]) -> str | None:
    """The first event the converter rejects, walking the events as it does, or None."""
    from cehrgpt.generation.omop_converter_batch import ATT_TIME_TOKENS, OOV, OOV_CONCEPT_MAP
    from cehrgpt.gpt_utils import is_inpatient_att_token, is_visit_end, is_visit_start

    inpatient = False
    visit_open = False  # the converter only asks whether any visit was started before a [VE]
    for index, event in enumerate(events):
        if event == OOV:
            continue
        if is_visit_start(event):
            if index == len(events) - 1:
                return None
            following = events[index + 1]
            if following == "[DEATH]":
                if index + 2 != len(events) - 1:
                    return "[DEATH] not at the end of the sequence"
                continue
            try:
                visit_concept_id = int(following[len("Visit/"):] if following.startswith("Visit/") else following)
            except ValueError:
                return f"visit type token is not a concept id ({following})"
            if visit_concept_id not in domain_map or (
                domain_map[visit_concept_id] != "Visit" and visit_concept_id != 0
            ):
                return f"visit type is not a Visit concept in the vocabulary ({following})"
            inpatient = visit_concept_id in (9201, 262, 8971, 8920)
            visit_open = True
        elif event in ATT_TIME_TOKENS:
            continue
        elif inpatient and (is_inpatient_att_token(event) or event.startswith("i-H")):
            continue
        elif is_visit_end(event):
            if not visit_open:
                return "[VE] before any [VS]"
            if inpatient and _discharged_dead(events, index):
                return None  # the converter writes a death record and stops here
        elif event in ("START", *demographics, "[DEATH]") or event.endswith("/0"):
            continue
        else:
            try:
                concept_id = int(event)
            except ValueError:
                return f"token the converter cannot read ({_kind_of_token(event)})"
            if concept_id not in domain_map and concept_id not in OOV_CONCEPT_MAP:
                return "concept id not in the vocabulary's concept table"
            if concept_id == 4216643:  # "Patient died" as a discharge: inpatient, just before [VE]
                if not inpatient:
                    return "'Patient died' discharge outside an inpatient visit"
                if index + 1 < len(events) and not is_visit_end(events[index + 1]):
                    return "'Patient died' discharge not followed by [VE]"
    return None


def _discharged_dead(events: list[str], visit_end_index: int) -> bool:
    """True when the discharge concept before this [VE] is 'Patient died' (4216643)."""
    return visit_end_index > 0 and events[visit_end_index - 1] == "4216643"


def _kind_of_token(token: str) -> str:
    if token.startswith(("i-D", "i-H")):
        return "inpatient time token outside an inpatient visit, e.g. " + token
    if token[:1] in ("D", "W", "M"):
        return "time token out of the converter's range, e.g. " + token
    return "e.g. " + token


def read_error_file(path: Path) -> dict:
    """concept_errors.txt / export_errors.txt hold a Python dict literal written with str().

    A missing file means the converter wrote none (no errors); one that cannot be read or parsed
    raises PipelineError naming it, rather than passing for "no errors".
    """
    if not path.exists():
        return {}
    try:
        value = ast.literal_eval(path.read_text() or "{}")
    except OSError as error:
        raise PipelineError(f"cannot read the converter's {path}: {error.strerror or error}") from None
    except (SyntaxError, ValueError, MemoryError, RecursionError) as error:
        raise PipelineError(f"the converter's {path} is not the dict it writes ({type(error).__name__}); "
                            "it may be truncated") from None
    if not isinstance(value, dict):
        raise PipelineError(f"the converter's {path} holds a {type(value).__name__}, not the dict it writes")
    return value


def converted_person_ids(omop_folder: Path) -> set[int]:
    person_files = sorted((Path(omop_folder) / "person").glob("*.parquet"))
    ids: set[int] = set()
    for file in person_files:
        ids.update(pq.read_table(file, columns=["person_id"]).column(0).to_pylist())
    return ids


def summarize(sequences_folder: Path, omop_folder: Path, concept_folder: Path | None = None) -> int:
    """Print the counts and reasons; return how many sequences converted."""
    sequences = read_sequences(sequences_folder)
    generated = sequences.num_rows
    converted_ids = converted_person_ids(omop_folder)
    converted = len(converted_ids)
    skipped = generated - converted

    reasons: Counter[str] = Counter()
    examples: dict[str, str] = {}
    if skipped and person_ids_are_distinct(sequences):
        # Only when there is a reason to find: a full Athena vocabulary is millions of concepts.
        domain_map = load_domain_map(concept_folder or Path(omop_folder) / "concept")
        for person_id, concept_ids in zip(sequences.column("person_id").to_pylist(),
                                          sequences.column("concept_ids").to_pylist(), strict=True):
            if person_id in converted_ids:
                continue
            reason = skip_reason(concept_ids, domain_map) or "rejected by the converter (see concept_errors.txt)"
            reasons[reason] += 1
            examples.setdefault(reason, " ".join(concept_ids[:12]) + (" ..." if len(concept_ids) > 12 else ""))

    print(f"generated sequences   {generated}")
    print(f"converted to persons  {converted} ({converted / generated:.1%})" if generated else "converted 0")
    print(f"skipped               {skipped}")
    for reason, count in reasons.most_common():
        print(f"  {count:6d}  {reason}")
        print(f"          e.g. {examples[reason]}")
    if skipped and not reasons:
        print("  (no reasons: the sequences have no distinct person_id to match them with)")

    concept_errors = read_error_file(Path(omop_folder) / "concept_errors.txt")
    messages = Counter(entry.get("error", "?") for key, entry in concept_errors.items()
                       if key != "total" and isinstance(entry, dict))
    if messages:
        print("converter's concept_errors.txt (one worker's errors when --cpu-cores > 1):")
        for message, count in messages.most_common(SHOWN_EXAMPLES):
            print(f"  {count:6d}  {message}")
    export_errors = read_error_file(Path(omop_folder) / "export_errors.txt")
    if export_errors.get("total"):
        tables = ", ".join(f"{table} {len(rows)}" for table, rows in export_errors.items() if table != "total")
        print(f"converter's export_errors.txt: {export_errors['total']} records could not be written ({tables})")
    return converted


# Arrow types for the Python types in cehrgpt's OmopEntity.get_schema().
ARROW_TYPES = {int: pa.int64(), float: pa.float64(), str: pa.string(),
               datetime.date: pa.date32(), datetime.datetime: pa.timestamp("us")}


def entity_schemas() -> dict[str, pa.Schema]:
    from cehrgpt.generation import omop_entity

    schemas = {}
    for entity in (omop_entity.Person, omop_entity.VisitOccurrence, omop_entity.ConditionOccurrence,
                   omop_entity.ProcedureOccurrence, omop_entity.DrugExposure, omop_entity.Death,
                   omop_entity.Measurement):
        table_name = entity.get_table_name(None)
        fields = [pa.field(name, ARROW_TYPES.get(kind, pa.string())) for name, kind in entity.get_schema().items()]
        schemas[table_name] = pa.schema(fields)
    return schemas


def fill_empty_tables(omop_folder: Path) -> list[str]:
    """Write a 0-row typed Parquet file into each converter table folder that has none."""
    filled = []
    for table_name, schema in entity_schemas().items():
        folder = Path(omop_folder) / table_name
        folder.mkdir(parents=True, exist_ok=True)
        if not any(folder.glob("*.parquet")):
            pq.write_table(schema.empty_table(), folder / "empty.parquet")
            filled.append(table_name)
    return filled


def add_observation_period_ids(omop_folder: Path) -> int:
    """Give cehrgpt's observation_period an observation_period_id (1..N by person); returns N."""
    folder = Path(omop_folder) / "observation_period"
    table = ds.dataset(str(folder), format="parquet").to_table()
    if "observation_period_id" in table.column_names:
        return table.num_rows
    table = table.sort_by([("person_id", "ascending"), ("observation_period_start_date", "ascending")])
    table = table.add_column(0, "observation_period_id", pa.array(range(1, table.num_rows + 1), pa.int64()))
    # Spark's part files are replaced by one file, all at once (a crash leaves the old folder).
    with atomic_directory(folder) as staging:
        pq.write_table(table, staging / "part-00000.parquet")
    return table.num_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="action", required=True)
    ids = commands.add_parser("person-ids", help="exit 0 when every sequence has a distinct person_id (then "
                              "--use_original_person_id maps them one to one), 4 when not, 1 when unreadable")
    ids.add_argument("sequences", type=Path)
    summary = commands.add_parser("summary", help="print generated / converted / skipped and why; exit 3 when "
                                  "nothing converted")
    summary.add_argument("--sequences", type=Path, required=True, help="the generated_sequences folder")
    summary.add_argument("--omop-folder", type=Path, required=True, help="the converter's output folder")
    summary.add_argument("--concept", type=Path, help="concept table folder (default OMOP_FOLDER/concept)")
    fill = commands.add_parser("fill-empty-tables", help="write a 0-row file with the converter's columns into "
                               "each empty table folder, so Spark can read a table the model never generated")
    fill.add_argument("omop_folder", type=Path)
    number = commands.add_parser("add-observation-period-ids", help="number observation_period 1..N: the "
                                 "converter leaves out observation_period_id, the table's primary key")
    number.add_argument("omop_folder", type=Path)
    arguments = parser.parse_args()

    try:
        if arguments.action == "person-ids":
            distinct = person_ids_are_distinct(read_sequences(arguments.sequences))
            sys.exit(0 if distinct else NO_DISTINCT_PERSON_IDS_EXIT_CODE)
        if arguments.action == "summary":
            if summarize(arguments.sequences, arguments.omop_folder, arguments.concept) == 0:
                sys.exit(NO_SEQUENCES_EXIT_CODE)
        elif arguments.action == "add-observation-period-ids":
            rows = add_observation_period_ids(arguments.omop_folder)
            print(f"observation_period: {rows} rows numbered 1..{rows} (observation_period_id)")
        else:
            for table_name in fill_empty_tables(arguments.omop_folder):
                print(f"{table_name}: no rows generated; wrote an empty table so Spark can read it")
    except PipelineError as error:
        fail(str(error))


if __name__ == "__main__":
    main()
