"""Token vocabulary of the report: every distinct token of real and synthetic sequences, numbered
once, with what kind of token it is (visit start/end, time token, concept, demographic, ...).

Shared by the validity rules (validity.py), bench/visit_end_leak.py and anything else that has to
tell tokens apart the way inspect_synthetic.py does: `Vocabulary().codes(tokens)` numbers tokens and
`vocabulary.fact("kind")[codes]` gives their kinds (the constants below).
"""

from __future__ import annotations

import math
import re

import numpy as np
from cehrgpt.models.special_tokens import VISIT_CONCEPT_IDS

from cehrgpt_tutorials.sequences.tokens import INPATIENT_VISIT_CONCEPT_IDS, time_token_problem

DEMOGRAPHIC_PROMPT_SIZE = 4  # year, age, gender, race: the prompt cehrgpt's generator starts from
# (cehrgpt.generation.omop_converter_batch.DISCHARGE_CONCEPT_LIST; importing it would load torch).
DISCHARGE_CONCEPT_IDS = frozenset({"4216643", "4021968", "4146681", "4161979"})
PATIENT_DIED_CONCEPT_ID = "4216643"  # the discharge the converter turns into a death record
# Visit concept ids cehrgpt knows, for when the concept table is not at hand ("0" is written Visit/0).
KNOWN_VISIT_CONCEPT_IDS = frozenset(VISIT_CONCEPT_IDS) - {"0"}

# Token kinds (one small integer per distinct token, so every check is a numpy comparison).
OTHER, VISIT_START, VISIT_END, DEATH, START, YEAR, AGE, CONCEPT = range(8)
TIME, INPATIENT_TIME, MALFORMED_TIME = range(8, 11)
VISIT_PLACEHOLDER, DISCHARGE_PLACEHOLDER, GENDER_PLACEHOLDER, RACE_PLACEHOLDER = range(11, 15)
YEAR_PATTERN = re.compile(r"year:(\d{4})")
AGE_PATTERN = re.compile(r"age:(\d{1,3})")
INPATIENT_HOUR_PATTERN = re.compile(r"i-H(\d+)")
PLACEHOLDER_KINDS = {
    "Visit": VISIT_PLACEHOLDER,
    "Discharge": DISCHARGE_PLACEHOLDER,
    "Gender": GENDER_PLACEHOLDER,
    "Race": RACE_PLACEHOLDER,
}
# Between-visit D/W/M/Y<n> and LT, inpatient i-D<n>: days as cehrgpt.gpt_utils counts them.
SIMPLE_TIME_PATTERN = re.compile(r"(?:i-(?=D))?([DWMY])(\d+)|LT")
DAYS_PER_UNIT = {"D": 1, "W": 7, "M": 30, "Y": 365}
# The between-visit time tokens cehrgpt's OMOP converter can date: its ATT_TIME_TOKENS
# (gpt_utils.generate_artificial_time_tokens: D0-D1999, W0-W3, M0-M11 and LT; a test compares). Any
# other time token between visits (D2000, W4, Y1, VS-D7-VE, ...) makes it skip the patient.
CONVERTER_TIME_TOKEN_LIMITS = {"D": 2000, "W": 4, "M": 12}


# ---------------------------------------------------------------------------------------------
# Tokens: one shared vocabulary (real and synthetic codes compare), classified once per token.
# ---------------------------------------------------------------------------------------------


class Vocabulary:
    """Every distinct token seen, numbered in order of appearance, with per-token facts as numpy arrays."""

    def __init__(self, visit_concept_ids: frozenset[str] = frozenset()):
        self.tokens: list[str] = []
        self.code_of: dict[str, int] = {}
        self.visit_concept_ids = KNOWN_VISIT_CONCEPT_IDS | visit_concept_ids
        self.discharge_concept_ids = DISCHARGE_CONCEPT_IDS | visit_concept_ids
        self._facts: dict[str, list] = {name: [] for name in self.FACTS}

    FACTS = ("kind", "number", "visit_type", "inpatient_visit", "discharge", "gender", "race", "patient_died")

    def __len__(self) -> int:
        return len(self.tokens)

    def codes(self, strings) -> np.ndarray:
        """The code of each string (new strings are added)."""
        codes = np.empty(len(strings), dtype=np.int32)
        for index, token in enumerate(strings):
            code = self.code_of.get(token)
            if code is None:
                code = self.code_of[token] = len(self.tokens)
                self.tokens.append(token)
                for name, value in zip(self.FACTS, self._classify(token), strict=True):
                    self._facts[name].append(value)
            codes[index] = code
        return codes

    def fact(self, name: str) -> np.ndarray:
        dtype = {"kind": np.int8, "number": np.float64}.get(name, bool)
        return np.asarray(self._facts[name], dtype=dtype)

    def _classify(self, token: str):
        """(kind, number, is visit type, is inpatient visit type, is discharge, gender-like, race-like,
        is the 'Patient died' discharge)."""
        kind, number = OTHER, math.nan
        if token in ("[VS]", "VS"):
            kind = VISIT_START
        elif token in ("[VE]", "VE"):
            kind = VISIT_END
        elif token == "[DEATH]":
            kind = DEATH
        elif token == "[START]":
            kind = START
        elif match := YEAR_PATTERN.fullmatch(token):
            kind, number = YEAR, float(match.group(1))
        elif match := AGE_PATTERN.fullmatch(token):
            kind, number = AGE, float(match.group(1))
        elif token.isdigit():
            kind = CONCEPT
        elif token.startswith(("Visit/", "Discharge/", "Gender/", "Race/")):
            kind = PLACEHOLDER_KINDS[token.split("/", 1)[0]]
        elif token.startswith("i-H"):
            # Inpatient hour tokens: cehrgpt does not count them as time tokens, its converter reads i-H<n>.
            kind = INPATIENT_TIME if INPATIENT_HOUR_PATTERN.fullmatch(token) else MALFORMED_TIME
            number = 0.0
        elif match := SIMPLE_TIME_PATTERN.fullmatch(token):
            # The forms cehrbert_data writes, decided without importing cehrgpt (and torch, ~3 s);
            # tests/test_report.py checks these verdicts against cehrgpt's parser and converter.
            number = 1095.0 if token == "LT" else float(int(match.group(2)) * DAYS_PER_UNIT[match.group(1)])
            if token.startswith("i-"):
                kind = INPATIENT_TIME
            elif token == "LT" or (str(int(match.group(2))) == match.group(2)  # the converter's list: D7, not D007
                                   and int(match.group(2)) < CONVERTER_TIME_TOKEN_LIMITS.get(match.group(1), 0)):
                kind = TIME
            else:
                kind = MALFORMED_TIME  # the parser reads it, the converter cannot date it
        elif time_token_problem(token) is not None:  # any other shape: cehrgpt's own parser decides
            kind = MALFORMED_TIME
        elif _is_time_token(token):
            # Other shapes cehrgpt's parser reads (VS-D7-VE, i-W2, ETHOS buckets): the converter dates
            # none of them between visits, and inside inpatient visits only its own i-D form.
            kind = INPATIENT_TIME if token.startswith("i-") and _converter_dates_inpatient(token) else MALFORMED_TIME
            number = float(_days_of_time_token(token))
        is_concept = kind == CONCEPT
        return (
            kind,
            number,
            kind == VISIT_PLACEHOLDER or (is_concept and token in self.visit_concept_ids),
            is_concept and token in INPATIENT_VISIT_CONCEPT_IDS,
            kind == DISCHARGE_PLACEHOLDER or (is_concept and token in self.discharge_concept_ids),
            kind == GENDER_PLACEHOLDER or is_concept,
            kind == RACE_PLACEHOLDER or is_concept,
            is_concept and token == PATIENT_DIED_CONCEPT_ID,
        )


def _is_time_token(token: str) -> bool:
    from cehrgpt.gpt_utils import is_att_token

    return is_att_token(token)


def _days_of_time_token(token: str) -> float:
    from cehrgpt.gpt_utils import extract_time_interval_in_days

    return extract_time_interval_in_days(token)


def _converter_dates_inpatient(token: str) -> bool:
    from cehrgpt.gpt_utils import is_inpatient_att_token

    return is_inpatient_att_token(token)
