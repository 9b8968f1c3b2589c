"""Show one patient: a real training patient's token sequence beside the OMOP rows it came from, or
(--synthetic) a synthetic patient's tokens beside the OMOP rows cehrgpt's converter restored from them.

What step 2 does to a patient is easiest to see on one: each visit of the sequence, its tokens, and
beside each concept token the OMOP row it stands for (same person, concept and date). The OMOP rows
step 2 left out (concept 0, concepts below its patient threshold, visits with nothing kept, events
before the first visit) are listed as "in OMOP, not in the sequence" where they happened.

Reads (the defaults come from setup_env.sh's variables):
  real       $CEHR_GPT_DATA_DIR/patient_sequence/train (test/ too for --person-id): step 2's sequences,
             dated by their epoch_times column (the dates column holds weeks since 1970: without
             epoch_times a token matches the rows of its week);
             $OMOP_DIR/{person,visit_occurrence,condition_occurrence,drug_exposure,procedure_occurrence,death}
             (step 1), and the qualified_concept_list beside patient_sequence (the concepts step 2 kept)
  synthetic  the newest run in $SYNTHETIC_DATA_OUTPUT_DIR: its censored_sequences/ (what the restore
             converted; generated_sequences/ without it) and restored_omop/<table> (step 5), dated as
             cehrgpt's converter dates them
  names      $OMOP_DIR/concept (concept ids only without it)

Examples:
    python -m cehrgpt_tutorials.show_patient                 # the first training patient with 3+ visits
    python -m cehrgpt_tutorials.show_patient --person-id 1 --all
    python -m cehrgpt_tutorials.show_patient --random --seed 7
    python -m cehrgpt_tutorials.show_patient --synthetic
"""

from __future__ import annotations

import argparse
import collections
import datetime
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from cehrgpt_tutorials.errors import PipelineError, fail
from cehrgpt_tutorials.files import parquet_files
from cehrgpt_tutorials.omop.concepts import read_concepts
from cehrgpt_tutorials.paths import cehr_gpt_data_dir, omop_dir, synthetic_data_output_dir
from cehrgpt_tutorials.report.inputs import find_runs
from cehrgpt_tutorials.report.timeline import visit_dates
from cehrgpt_tutorials.sequences.codes import sequences_from_lists
from cehrgpt_tutorials.sequences.facts import sequence_facts
from cehrgpt_tutorials.sequences.tokens import SEQUENCE_TOKEN_COLUMN, check_patient_sequence_schema
from cehrgpt_tutorials.sequences.vocabulary import (
    AGE,
    CONCEPT,
    DEATH,
    INPATIENT_TIME,
    TIME,
    VISIT_END,
    VISIT_START,
    YEAR,
    Vocabulary,
)

MIN_VISITS = 3  # "a patient with a few visits": enough to show the time tokens between visits
SHOWN_VISITS = 10  # without --all
SHOWN_ROWS = 8  # left-out OMOP rows per place, without --all
WIDTH = 100  # a terminal's columns
EPOCH = datetime.date(1970, 1, 1)
# OMOP tables whose rows tokens stand for: concept column, date column. Step 2 reads the first three
# (create_cehrgpt_pretraining_data.sh's DOMAIN_TABLES); the converter also writes measurements.
CLINICAL_TABLES = {
    "condition_occurrence": ("condition_concept_id", "condition_start_date"),
    "drug_exposure": ("drug_concept_id", "drug_exposure_start_date"),
    "procedure_occurrence": ("procedure_concept_id", "procedure_date"),
    "measurement": ("measurement_concept_id", "measurement_date"),
}
STEP2_TABLES = ("condition_occurrence", "drug_exposure", "procedure_occurrence")
NOT_READ_BY_STEP2 = ("measurement", "observation", "device_exposure")
CONVERTER_DOMAINS = ("Condition", "Drug", "Procedure", "Measurement", "Visit")
REASONS = {
    "concept 0": "the row has no standard concept (concept_id 0)",
    "rare concept": "not in step 2's qualified_concept_list: seen in too few patients (--min_num_of_patients)",
    "before visit 1": "dated before the sequence's first visit (step 2's --start_date, or nothing kept then)",
    "nothing kept": "a visit none of whose condition/drug/procedure rows is in the sequence",
}


@dataclass
class Row:
    """One OMOP row of the person: what the alignment needs of it."""

    table: str
    concept: str  # the concept id as a token string; "[DEATH]" for the death table
    day: datetime.date | None
    end: datetime.date | None = None
    discharge: str | None = None  # visit_occurrence's discharged_to_concept_id
    used: bool = False


@dataclass
class Patient:
    """One sequence and the OMOP rows of the same person_id."""

    person_id: int
    tokens: list[str]
    windows: list[tuple[datetime.date, datetime.date] | None]  # the days each token may stand for
    rows: list[Row]
    person: dict | None  # the OMOP person row
    title: str
    synthetic: bool
    omop: Path  # the folder of `rows`: step 1's tables, or the restored ones
    kept_concepts: set[str] | None = None  # step 2's qualified_concept_list (real patients)
    unread_tables: dict[str, int] = field(default_factory=dict)  # rows of tables step 2 does not read


@dataclass
class Line:
    """One token of a visit, and the OMOP row it stands for (table empty: none, note says why)."""

    token: str
    name: str
    table: str = ""
    day: datetime.date | None = None
    note: str = ""


@dataclass
class Block:
    """One visit of the sequence with the tokens before it, and the OMOP rows the sequence left out
    there (leftovers_before: between the previous visit and this one; leftovers: on its dates)."""

    gap: list[int]
    lines: list[Line]
    window: tuple[datetime.date, datetime.date] | None
    visit_type: str
    gap_days: int = 0  # what the time tokens before it add up to
    leftovers_before: list[Row] = field(default_factory=list)
    leftovers: list[Row] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Reading: one sequence, and the OMOP rows of its person_id.
# ---------------------------------------------------------------------------------------------


def _day(value) -> datetime.date | None:
    if isinstance(value, datetime.datetime):
        return value.date()
    if isinstance(value, str) and value:
        return datetime.date.fromisoformat(value[:10])
    return value if isinstance(value, datetime.date) else None


def _concept(value) -> str:
    return "0" if value is None else str(value)


def _person_table(folder: Path, person_id: int | None, columns: list[str]) -> pa.Table | None:
    """The rows of one person (all rows: person_id None) of an OMOP table folder; None without one."""
    files = parquet_files(folder) if folder.is_dir() else []
    if not files:
        return None
    try:
        dataset = ds.dataset([str(path) for path in files], format="parquet")
        present = [name for name in columns if name in dataset.schema.names]
        condition = None if person_id is None else pc.field("person_id") == person_id
        return dataset.to_table(columns=present, filter=condition)
    except (OSError, pa.ArrowException) as error:
        raise PipelineError(f"cannot read {folder}: {error}") from None


def read_rows(omop: Path, person_id: int, tables) -> list[Row]:
    """The person's visits, rows of `tables` and death, in date order (visits first on a day)."""
    columns = ["visit_concept_id", "visit_start_date", "visit_end_date", "discharged_to_concept_id",
               "discharge_to_concept_id"]  # OMOP 5.3 spells it discharge_to
    visits = _person_table(omop / "visit_occurrence", person_id, columns)
    rows = [
        Row("visit_occurrence", _concept(record.get("visit_concept_id")), _day(record.get("visit_start_date")),
            _day(record.get("visit_end_date")),
            _concept(record.get("discharged_to_concept_id", record.get("discharge_to_concept_id"))))
        for record in (visits.to_pylist() if visits is not None else [])
    ]
    for table in tables:
        concept_column, date_column = CLINICAL_TABLES[table]
        found = _person_table(omop / table, person_id, [concept_column, date_column])
        rows += [Row(table, _concept(record.get(concept_column)), _day(record.get(date_column)))
                 for record in (found.to_pylist() if found is not None else [])]
    deaths = _person_table(omop / "death", person_id, ["death_date"])
    rows += [Row("death", "[DEATH]", _day(record.get("death_date")))
             for record in (deaths.to_pylist() if deaths is not None else [])]
    return sorted(rows, key=lambda row: (row.day or datetime.date.min, row.table != "visit_occurrence"))


def read_person(omop: Path, person_id: int) -> dict | None:
    found = _person_table(omop / "person", person_id, ["gender_concept_id", "race_concept_id", "year_of_birth"])
    return found.to_pylist()[0] if found is not None and found.num_rows else None


def _visit_counts(tokens: pa.ChunkedArray) -> np.ndarray:
    """[VS] tokens per row of a concept_ids column."""
    column = tokens.combine_chunks()
    starts = pc.fill_null(pc.equal(pc.list_flatten(column), "[VS]"), False).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(column).to_numpy()
    return np.bincount(parents[starts], minlength=len(column))


def pick_sequence(files: list[Path], person_id: int | None, seed: int | None, pick_random: bool,
                  eligible: np.ndarray | None = None) -> dict | None:
    """The sequence of person_id; else the first (or, pick_random, a seeded random) one with
    MIN_VISITS visits or more, among the `eligible` person ids when given. None: no such sequence."""
    columns = ["person_id", SEQUENCE_TOKEN_COLUMN, "epoch_times", "dates"]
    try:
        check_patient_sequence_schema(pq.read_schema(files[0]), files[0])
        if person_id is not None:
            dataset = ds.dataset([str(path) for path in files], format="parquet")
            found = dataset.to_table(columns=[c for c in columns if c in dataset.schema.names],
                                     filter=pc.field("person_id") == person_id)
            return found.slice(0, 1).to_pylist()[0] if found.num_rows else None
        candidates = []
        for path in files:
            table = pq.read_table(path, columns=["person_id", SEQUENCE_TOKEN_COLUMN])
            chosen = _visit_counts(table[SEQUENCE_TOKEN_COLUMN]) >= MIN_VISITS
            if eligible is not None:
                chosen &= np.isin(pc.fill_null(table["person_id"], -1).to_numpy(), eligible)
            candidates += [(path, int(row)) for row in np.flatnonzero(chosen)]
            if candidates and not pick_random:
                break
        if not candidates:
            return None
        path, row = candidates[int(np.random.default_rng(seed).integers(len(candidates))) if pick_random else 0]
        present = [c for c in columns if c in pq.read_schema(path).names]
        return pq.read_table(path, columns=present).slice(row, 1).to_pylist()[0]
    except (OSError, pa.ArrowException) as error:
        raise PipelineError(f"cannot read the sequences in {files[0].parent}: {error}") from None


# ---------------------------------------------------------------------------------------------
# Dating the tokens: a real sequence's own dates, a synthetic one's as the converter dates it.
# ---------------------------------------------------------------------------------------------


def sequence_windows(record: dict) -> list[tuple[datetime.date, datetime.date] | None]:
    """Each token's day from epoch_times (seconds since 1970, one per token), else its week from dates
    (cehrbert_data's date_in_week: weeks since 1970-01-01)."""
    count = len(record[SEQUENCE_TOKEN_COLUMN])
    # Step 2 runs Spark in UTC (setup_env.sh's spark.sql.session.timeZone), so a day is 86,400 s from midnight.
    if record.get("epoch_times") and len(record["epoch_times"]) == count:
        days = [None if s is None else EPOCH + datetime.timedelta(days=s // 86400) for s in record["epoch_times"]]
        return [None if day is None else (day, day) for day in days]
    if record.get("dates") and len(record["dates"]) == count:
        starts = [None if w is None else EPOCH + datetime.timedelta(weeks=w) for w in record["dates"]]
        return [None if start is None else (start, start + datetime.timedelta(days=6)) for start in starts]
    return [None] * count


def converter_windows(tokens: list[str]) -> list[tuple[datetime.date, datetime.date] | None]:
    """The day cehrgpt's converter gives each token of a visit: the visit's start (timeline.visit_dates)
    moved by the inpatient day tokens before it."""
    vocabulary = Vocabulary()
    sequences = sequences_from_lists([tokens], vocabulary)
    facts = sequence_facts(sequences, vocabulary)
    starts = visit_dates(facts)
    shift = len(tokens) - int(sequences.lengths[0])  # a leading [START] is not in `sequences`
    kind, number = vocabulary.fact("kind"), vocabulary.fact("number")
    codes = vocabulary.codes(tokens)
    windows: list = [None] * len(tokens)
    for start, position in zip(starts, facts.visit_positions, strict=True):
        if np.isnat(start):
            continue
        day = start.astype(datetime.date)
        for index in range(int(position) + shift, len(tokens)):
            if kind[codes[index]] == INPATIENT_TIME:
                day += datetime.timedelta(days=int(number[codes[index]]))
            windows[index] = (day, day)
            if kind[codes[index]] == VISIT_END:
                break
    return windows


# ---------------------------------------------------------------------------------------------
# Aligning: visits of the sequence, each token with the OMOP row it stands for.
# ---------------------------------------------------------------------------------------------


def split_visits(kinds: np.ndarray) -> tuple[list[int], list[tuple[list[int], list[int]]], list[int]]:
    """Token positions: the prompt (before the first [VS] or time token), each visit ([VS] .. [VE]) with
    the tokens before it, and what follows the last visit."""
    prompt, visits, pending, current = [], [], [], None
    for index, kind in enumerate(kinds):
        if kind == VISIT_START:
            if current is not None:  # a [VS] inside a visit: the unclosed visit ends here
                visits.append((pending, current))
                pending = []
            current = [index]
        elif current is not None:
            current.append(index)
            if kind == VISIT_END:
                visits.append((pending, current))
                pending, current = [], None
        elif not visits and not pending and kind not in (TIME, INPATIENT_TIME):
            prompt.append(index)
        else:
            pending.append(index)
    if current is not None:
        visits.append((pending, current))
        pending = []
    return prompt, visits, pending


def _within(day: datetime.date | None, window) -> bool:
    return day is not None and window is not None and window[0] <= day <= window[1]


def _claim(rows: list[Row], tables, concept: str, window, any_day: bool = False) -> Row | None:
    """The first unused row of `tables` with this concept within the window (or on any day), else a
    used one; every row of the same table, concept and day is marked used: one token stands for
    all of them (step 2 keeps one per day)."""
    found = [row for row in rows if row.table in tables and row.concept == concept
             and (any_day or _within(row.day, window))]
    if not found:
        return None
    chosen = next((row for row in found if not row.used), found[0])
    for row in found:
        if (row.table, row.concept, row.day) == (chosen.table, chosen.concept, chosen.day):
            row.used = True
    return chosen


def _visit_window(positions: list[int], windows) -> tuple[datetime.date, datetime.date] | None:
    known = [windows[index] for index in positions if windows[index] is not None]
    return (min(w[0] for w in known), max(w[1] for w in known)) if known else None


def match_visit(patient: Patient, positions: list[int], facts: dict, names: dict) -> tuple[list[Line], str]:
    """One line per token of a visit, with its OMOP row; and the visit's type token."""
    tokens, windows, rows = patient.tokens, patient.windows, patient.rows
    window = _visit_window(positions, windows)
    type_token = tokens[positions[1]] if len(positions) > 1 else ""
    inpatient = len(positions) > 1 and facts["inpatient_visit"][positions[1]]  # only these end with a discharge
    visit_row = None
    lines = []
    for order, index in enumerate(positions):
        token, kind = tokens[index], facts["kind"][index]
        line = Line(token, token_name(token, kind, names, facts["number"][index]))
        row = None
        if order == 1 and kind != DEATH:  # the visit type
            concept = token.split("/", 1)[1] if "/" in token else token
            row = visit_row = _claim(rows, ("visit_occurrence",), concept, window)
        elif kind == DEATH:
            row = _claim(rows, ("death",), "[DEATH]", None, any_day=True)
        elif inpatient and facts["discharge"][index] and index + 1 < len(tokens) and facts["kind"][index + 1] == VISIT_END:
            concept = token.split("/", 1)[1] if "/" in token else token
            if visit_row is not None and visit_row.discharge == concept:
                line.table, line.day = "visit_occurrence", visit_row.end
                line.note = "discharged_to_concept_id"
            elif visit_row is not None:
                line.note = f"the visit's discharged_to_concept_id is {visit_row.discharge}"
            lines.append(line)
            continue
        elif kind == CONCEPT:
            row = _claim(rows, CLINICAL_TABLES, token, windows[index])
        elif kind == INPATIENT_TIME and windows[index] is not None:
            line.day = windows[index][0]
        if row is not None:
            line.table, line.day = row.table, row.day
        elif kind in (CONCEPT, DEATH) or order == 1:
            line.note = missing_note(patient, token, names, windows[index])
        lines.append(line)
    return lines, type_token


def missing_note(patient: Patient, token: str, names: dict, window) -> str:
    """Why a token has no OMOP row beside it."""
    if not patient.synthetic and token.startswith("Visit/"):
        return "no visit_occurrence then: step 2 built this visit"
    if not patient.synthetic:
        when = "" if window is None else f" on {window[0]}" + ("" if window[0] == window[1] else f"..{window[1]}")
        return f"not in OMOP{when}"
    if patient.person is None:
        return "not restored: the converter skipped this patient"
    domain = names.get(token, ("", ""))[1]
    if domain and domain not in CONVERTER_DOMAINS:
        return f"no row: the converter writes no {domain} rows"
    return "no restored row"


def align(patient: Patient, names: dict) -> tuple[list[int], list[Block], list[int], list[Row]]:
    """The prompt, the visits (with their tokens' rows and the rows left out around them), the tokens
    after the last visit and the rows left out after it."""
    vocabulary = Vocabulary()
    codes = vocabulary.codes(patient.tokens)
    facts = {name: vocabulary.fact(name)[codes] for name in ("kind", "number", "discharge", "inpatient_visit")}
    prompt, visits, trailing = split_visits(facts["kind"])
    blocks = []
    for gap, positions in visits:
        lines, visit_type = match_visit(patient, positions, facts, names)
        days = sum(int(facts["number"][index]) for index in gap if facts["kind"][index] == TIME)
        window = _visit_window(positions, patient.windows)
        # A real [DEATH] visit carries the date of the visit before it; the death row has the day.
        death_day = next((line.day for line in lines if line.table == "death"), None)
        blocks.append(Block(gap, lines, (death_day, death_day) if death_day else window, visit_type, days))
    after = []
    for row in (row for row in patient.rows if not row.used):
        inside = next((block for block in blocks if _within(row.day, block.window)), None)
        later = next((block for block in blocks if block.window and row.day and block.window[0] > row.day), None)
        if inside is not None:
            inside.leftovers.append(row)
        elif later is not None:
            later.leftovers_before.append(row)
        else:
            after.append(row)
    return prompt, blocks, trailing, after


# ---------------------------------------------------------------------------------------------
# Printing.
# ---------------------------------------------------------------------------------------------


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _wrapped(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(text, WIDTH, subsequent_indent=indent, break_on_hyphens=False, break_long_words=False)


def _rows(count: int) -> str:
    return f"{count} row" + ("" if count == 1 else "s")


def token_name(token: str, kind: int, names: dict, number: float) -> str:
    if token in names:
        return names[token][0] or "(no name)"
    if kind == VISIT_START:
        return "visit start"
    if kind == VISIT_END:
        return "visit end"
    if kind == DEATH:
        return "death"
    if kind in (TIME, INPATIENT_TIME) and np.isfinite(number):
        return f"+{int(number)} days" + (" (inside the stay)" if kind == INPATIENT_TIME else "")
    if kind == YEAR:
        return f"first visit in {int(number)}"
    if kind == AGE:
        return f"aged {int(number)} then"
    if token.endswith("/0"):
        return f"{token.split('/')[0].lower()} unknown (0)"
    return ""


def _line(token: str, name: str, table: str, day, note: str, indent: int = 2) -> str:
    right = f"{table:<20} {day or ''}" if table or day else ("" if not note else f"-- {note}")
    if (table or day) and note:
        right += f"  {note}"
    return f"{' ' * indent}{_short(token, 14 - indent):<{14 - indent}} {_short(name, 36):<36} {right}".rstrip()


def leftover_lines(patient: Patient, rows: list[Row], names: dict, heading: str, limit: int | None) -> list[str]:
    if not rows:
        return []
    first_day = next((w[0] for w in patient.windows if w is not None), None)
    out = [f"  {heading}:"]
    for row in rows[:limit]:
        name = "death" if row.table == "death" else names.get(row.concept, ("", ""))[0]
        if row.table == "visit_occurrence" and row.end and row.end != row.day:
            name = f"{name or 'visit'}, to {row.end}"
        reason = left_out_reason(patient, row, first_day)
        out.append(_line(row.concept, name, row.table, row.day, reason, indent=4))
    if limit is not None and len(rows) > limit:
        out.append(f"    ... {_rows(len(rows) - limit)} more (--all shows them)")
    return out


def left_out_reason(patient: Patient, row: Row, first_day) -> str:
    """A short why for a real OMOP row the sequence does not have (REASONS explains each)."""
    if patient.synthetic:
        return ""
    if first_day is not None and row.day is not None and row.day < first_day:
        return "before visit 1"
    if row.concept == "0" and row.table != "death":
        return "concept 0"
    if row.table in STEP2_TABLES and patient.kept_concepts is not None and row.concept not in patient.kept_concepts:
        return "rare concept"
    if row.table == "visit_occurrence" and not any(
        other.used and other.table in STEP2_TABLES and row.day <= other.day <= (row.end or row.day)
        for other in patient.rows if other.day is not None
    ):
        return "nothing kept"
    return ""


def prompt_lines(patient: Patient, prompt: list[int], names: dict) -> list[str]:
    tokens = [patient.tokens[index] for index in prompt]
    vocabulary = Vocabulary()
    codes = vocabulary.codes(tokens)
    kinds, numbers = vocabulary.fact("kind")[codes], vocabulary.fact("number")[codes]
    described = [_short(token_name(token, kind, names, number), 30) if kind in (YEAR, AGE)
                 else f"{token} {_short(token_name(token, kind, names, number), 30)}".rstrip()
                 for token, kind, number in zip(tokens, kinds, numbers, strict=True)]
    lines = [f"Prompt: {' '.join(tokens)}", *_wrapped(f"  = {'; '.join(described)}", "    ")]
    person = patient.person
    if person is None:
        lines.append(f"  OMOP person {patient.person_id}: none" + (" (not restored)" if patient.synthetic else ""))
    else:
        gender, race = (_concept(person.get(column)) for column in ("gender_concept_id", "race_concept_id"))
        lines.append(
            f"  OMOP person {patient.person_id}: born {person.get('year_of_birth')}; gender {gender} "
            f"{names.get(gender, ('',))[0]}; race {race} {names.get(race, ('',))[0]}".rstrip()
        )
    return lines


def visit_header(number: int, total: int, block: Block, gap_tokens: list[str], names: dict) -> str:
    when = "undated" if block.window is None else str(block.window[0])
    kind = names.get(block.visit_type, ("",))[0] or token_name(block.visit_type, DEATH if block.visit_type == "[DEATH]"
                                                                  else -1, names, np.nan) or block.visit_type
    after = f", after {' '.join(gap_tokens)}" if gap_tokens else ""
    if "LT" in gap_tokens:
        after += " (3 years or more)"
    elif block.gap_days:
        after += f" ({block.gap_days} days)"
    text = f"-- visit {number} of {total}: {when}, {kind}{after} "
    return text + "-" * max(3, WIDTH - len(text))


def render(patient: Patient, names: dict, show_all: bool) -> list[str]:
    prompt, blocks, trailing, after = align(patient, names)
    heading = "in restored OMOP, not from these tokens" if patient.synthetic else "in OMOP, not in the sequence"
    limit = None if show_all else SHOWN_ROWS
    out = [line for paragraph in patient.title.split("\n") for line in _wrapped(paragraph)]
    out += ["", *prompt_lines(patient, prompt, names), "", _line("token", "concept", "OMOP row", "", "")]
    shown = blocks if show_all else blocks[:SHOWN_VISITS]
    for number, block in enumerate(shown, 1):
        out += leftover_lines(patient, block.leftovers_before, names, f"{heading}, before visit {number}", limit)
        gap = [patient.tokens[index] for index in block.gap]
        out.append(visit_header(number, len(blocks), block, gap, names))
        out += [_line(line.token, line.name, line.table, line.day, line.note) for line in block.lines]
        out += leftover_lines(patient, block.leftovers, names, heading, limit)
    hidden = blocks[len(shown):]
    if hidden:
        tokens = sum(len(block.lines) + len(block.gap) for block in hidden)
        rows = sum(len(block.leftovers) + len(block.leftovers_before) for block in hidden) + len(after)
        out.append(f"... {len(hidden)} more visits ({tokens} tokens; {_rows(rows)} {heading}): --all shows them")
    if trailing:
        out.append("After the last visit: " + " ".join(patient.tokens[index] for index in trailing))
    if not hidden:
        out += leftover_lines(patient, after, names, f"{heading}, after the last visit", limit)
    return out + [""] + summary_lines(patient, len(blocks))


def summary_lines(patient: Patient, visits: int) -> list[str]:
    counted = [row for row in patient.rows if row.table != "death"]
    tables = collections.Counter(row.table for row in counted)
    used = collections.Counter(row.table for row in counted if row.used)
    kept = ", ".join(f"{used[table]} of {count} {table}" for table, count in tables.items()) or "no rows"
    if patient.synthetic:
        return _wrapped(f"The sequence has {visits} visits. Rows the converter restored for this person, and how "
                        f"many stand beside a token: {kept}.")
    first_day = next((w[0] for w in patient.windows if w is not None), None)
    reasons = collections.Counter(left_out_reason(patient, row, first_day) for row in counted if not row.used)
    lines = _wrapped(f"Step 2 kept, of this person's OMOP rows: {kept} (kept: a token of its concept has its "
                     "date).")
    if patient.unread_tables:
        lines += _wrapped("Not read by step 2: " + ", ".join(f"{table} ({_rows(count)})"
                                                           for table, count in patient.unread_tables.items()) + ".")
    for reason, count in reasons.items():
        if reason:
            lines += _wrapped(f"  {reason} ({_rows(count)}): {REASONS[reason]}", "    ")
    return lines


# ---------------------------------------------------------------------------------------------
# The two kinds of patient, and the command line.
# ---------------------------------------------------------------------------------------------


def _chosen(files: list[Path], options: argparse.Namespace, where: str, eligible=None, uncensored=()) -> dict:
    """The sequence the options ask for, or a one-line error (naming censoring when it left the person out)."""
    record = pick_sequence(files, options.person_id, options.seed, options.random, eligible)
    if record is None and options.person_id is not None:
        if uncensored and pick_sequence(list(uncensored), options.person_id, None, False) is not None:
            raise PipelineError(f"person {options.person_id} is not in {where}: censoring left it out (its first "
                                "visit is after the censor date); generated_sequences has it")
        raise PipelineError(f"person {options.person_id} is not among the sequences in {where}")
    if record is None:
        raise PipelineError(f"no sequence with {MIN_VISITS} or more visits in {where}: pass --person-id")
    return record


def load_real(options: argparse.Namespace) -> Patient:
    sequence_dir, omop = options.sequence_dir, options.omop_dir
    if not sequence_dir.is_dir():
        raise PipelineError(f"patient sequences not found: {sequence_dir} (run step 2, or pass --sequence-dir)")
    if not (omop / "visit_occurrence").is_dir():
        raise PipelineError(f"OMOP tables not found: {omop}/visit_occurrence (run step 1, or pass --omop-dir)")
    train = sequence_dir / "train" if (sequence_dir / "train").is_dir() else sequence_dir
    # A chosen person may be held out (test/); the default and --random pick training patients.
    files = parquet_files(sequence_dir if options.person_id is not None else train)
    if not files:
        raise PipelineError(f"no Parquet files in {train}: is step 2 done?")
    record = _chosen(files, options, str(sequence_dir if options.person_id is not None else train))
    person_id = int(record["person_id"])
    held_out = (sequence_dir / "test").is_dir() and _in_folder(sequence_dir / "test", person_id)
    split, folder = ("held-out", sequence_dir / "test") if held_out else ("training", train)
    tokens = [token or "" for token in record[SEQUENCE_TOKEN_COLUMN]]
    # Step 2 writes its concept list beside patient_sequence.
    kept = _person_table(sequence_dir.parent / "qualified_concept_list", None, ["standard_concept_id"])
    unread = {table: found.num_rows for table in NOT_READ_BY_STEP2
              if (found := _person_table(omop / table, person_id, ["person_id"])) is not None and found.num_rows}
    dating = "epoch_times" if record.get("epoch_times") else "dates (weeks)"
    title = (f"Real patient {person_id}: {split} sequence in {folder} ({len(tokens)} tokens), beside the OMOP rows "
             f"of person {person_id} in {omop} (step 1). Token dates: the sequence's {dating} column.")
    return Patient(person_id, tokens, sequence_windows(record), read_rows(omop, person_id, STEP2_TABLES),
                   read_person(omop, person_id), title, synthetic=False, omop=omop,
                   kept_concepts=None if kept is None else {str(c) for c in kept.column(0).to_pylist()},
                   unread_tables=unread)


def _in_folder(folder: Path, person_id: int) -> bool:
    found = _person_table(folder, person_id, ["person_id"])
    return found is not None and found.num_rows > 0


def load_synthetic(options: argparse.Namespace) -> Patient:
    run = find_runs(options.synthetic_dir)[0]
    censored = run.folder / "censored_sequences"
    sequence_dir = censored if parquet_files(censored) else run.sequence_dir
    restored = run.folder / "restored_omop"
    if not (restored / "person").is_dir():
        raise PipelineError(f"no restored OMOP in {restored} (run restore_synthetic.sh first)")
    files = parquet_files(sequence_dir)
    if not files:
        raise PipelineError(f"no Parquet files in {sequence_dir}: did generation finish?")
    persons = _person_table(restored / "person", None, ["person_id"])
    eligible = None if persons is None or not persons.num_rows else pc.drop_null(persons["person_id"]).to_numpy()
    if options.person_id is None and eligible is not None:
        if pick_sequence(files, None, options.seed, False, eligible) is None:
            eligible = None  # no restored patient with a few visits: show an unrestored one
    uncensored = parquet_files(run.sequence_dir) if sequence_dir == censored else []
    record = _chosen(files, options, str(sequence_dir), eligible, uncensored)
    person_id = int(record["person_id"])
    tokens = [token or "" for token in record[SEQUENCE_TOKEN_COLUMN]]
    title = (f"Synthetic patient {person_id}: sequence in {sequence_dir} ({len(tokens)} tokens), beside the OMOP "
             f"rows cehrgpt's converter restored from it in {restored}. Token dates: as the converter dates "
             "them (1 January of the year token, moved by each time token).")
    return Patient(person_id, tokens, converter_windows(tokens), read_rows(restored, person_id, CLINICAL_TABLES),
                   read_person(restored, person_id), title, synthetic=True, omop=restored)


def concept_names(patient: Patient, concept_dirs: list[Path]) -> dict[str, tuple[str, str]]:
    ids = {int(token) for token in patient.tokens if token.isdigit() and len(token) < 19}
    ids |= {int(row.concept) for row in patient.rows if row.concept.isdigit() and len(row.concept) < 19}
    if patient.person:
        ids |= {int(patient.person[c]) for c in ("gender_concept_id", "race_concept_id") if patient.person.get(c)}
    concept_dir = next((folder for folder in concept_dirs if folder.is_dir()), None)
    return read_concepts(concept_dir, sorted(ids)) if concept_dir else {}


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic", action="store_true", help="a synthetic patient and its restored OMOP rows")
    parser.add_argument("--person-id", type=int, help="whom to show (default: the first with 3+ visits)")
    parser.add_argument("--random", action="store_true", help="a random patient with 3+ visits")
    parser.add_argument("--seed", type=int, help="seed of --random (default: a new choice each time)")
    parser.add_argument("--all", action="store_true", help=f"every visit and row (default: {SHOWN_VISITS} visits)")
    parser.add_argument("--sequence-dir", type=Path, help="step 2's patient_sequence "
                        "(default: $CEHR_GPT_DATA_DIR/patient_sequence)")
    parser.add_argument("--omop-dir", type=Path, help="step 1's OMOP tables, with concept/ (default: $OMOP_DIR)")
    parser.add_argument("--synthetic-dir", type=Path, help="a generated run, or the folder of runs "
                        "(default: $SYNTHETIC_DATA_OUTPUT_DIR, newest run)")
    options = parser.parse_args(argv)
    if options.random and options.person_id is not None:
        parser.error("--random and --person-id choose differently: pass one")
    options.sequence_dir = options.sequence_dir or cehr_gpt_data_dir() / "patient_sequence"
    options.omop_dir = options.omop_dir or omop_dir()
    options.synthetic_dir = options.synthetic_dir or synthetic_data_output_dir()
    if options.random and options.seed is None:
        options.seed = int(np.random.SeedSequence().entropy % 2**31)
    return options


def main(argv=None) -> int:
    options = parse_arguments(argv)
    try:
        patient = load_synthetic(options) if options.synthetic else load_real(options)
        names = concept_names(patient, [options.omop_dir / "concept", patient.omop / "concept"])
        lines = render(patient, names, options.all)
    except PipelineError as error:
        fail(str(error))
    if options.random:
        lines.append(f"(--random --seed {options.seed} chose person {patient.person_id}: "
                     f"--person-id {patient.person_id} shows it again)")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
