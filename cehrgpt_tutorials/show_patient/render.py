"""Printing the aligned patient: the prompt, each visit's tokens beside their rows, what was left out and why."""

from __future__ import annotations

import collections
import textwrap

import numpy as np

from cehrgpt_tutorials.sequences.vocabulary import AGE, DEATH, YEAR, Vocabulary
from cehrgpt_tutorials.show_patient.alignment import Block, align, token_name
from cehrgpt_tutorials.show_patient.omop_rows import Row, concept_token
from cehrgpt_tutorials.show_patient.patients import STEP2_TABLES, Patient

SHOWN_VISITS = 10  # without --all
SHOWN_ROWS = 8  # left-out OMOP rows per place, without --all
WIDTH = 100  # a terminal's columns
REASONS = {
    "concept 0": "the row has no standard concept (concept_id 0)",
    "rare concept": "not in step 2's qualified_concept_list: seen in too few patients (--min_num_of_patients)",
    "before visit 1": "dated before the sequence's first visit (step 2's --start_date, or nothing kept then)",
    "nothing kept": "a visit none of whose condition/drug/procedure rows is in the sequence",
}


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _wrapped(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(text, WIDTH, subsequent_indent=indent, break_on_hyphens=False, break_long_words=False)


def _rows(count: int) -> str:
    return f"{count} row" + ("" if count == 1 else "s")


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
        gender, race = (concept_token(person.get(column)) for column in ("gender_concept_id", "race_concept_id"))
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
