"""Aligning: the visits of the sequence, each token beside the OMOP row it stands for, and the rows
the sequence left out, placed where they happened."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

import numpy as np

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
from cehrgpt_tutorials.show_patient.omop_rows import CLINICAL_TABLES, Row
from cehrgpt_tutorials.show_patient.patients import Patient

CONVERTER_DOMAINS = ("Condition", "Drug", "Procedure", "Measurement", "Visit")


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
