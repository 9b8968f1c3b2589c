"""The patient-sequence grammar, once, as a transition table: state x token class -> next state and
the rules the token breaks there. The report's validity rules (facts.py) and the constrained sampler
(generate.py) both run it, so "valid" means the same to both.

A token class is a token's kind and facts (visit type, inpatient, discharge, ...); a state is what the
rules remember (prompt position, visit depth, the previous token where a rule looks at it). `step()` is
the definition; `compile_grammar()` tabulates the states reachable from an empty sequence. The depth
saturates beyond +-DEPTH_LIMIT, where a sequence is invalid either way.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from cehrgpt_tutorials.sequences.vocabulary import (
    AGE,
    DEATH,
    INPATIENT_TIME,
    MALFORMED_TIME,
    OTHER,
    START,
    TIME,
    VISIT_END,
    VISIT_START,
    YEAR,
    Vocabulary,
)

# Structural rules: a sequence fails a rule when any of its tokens breaks it; reported per rule
# by inspect_synthetic.py, enforced at every step by the constrained sampler; step() below decides.
VALIDITY_RULES = {
    "demographic_prompt": "does not start with the 4 demographic tokens year:YYYY, age:N, gender, race",
    "nested_visit": "[VS] while a visit is still open",
    "unmatched_visit_end": "[VE] without an open visit",
    "missing_visit_type": "[VS] not followed by a visit type (a visit concept id or Visit/0) or [DEATH]",
    "time_token_not_between_visits": "a day/week/month/LT token inside a visit or before the first visit",
    "inpatient_time_token_outside_inpatient_visit": "an i-D/i-H token outside an inpatient visit "
    "(visit concepts 9201, 262, 8971, 8920)",
    "missing_discharge": "an inpatient visit whose [VE] is not preceded by a discharge token "
    "(Discharge/0 or a discharge concept)",
    "event_outside_visit": "a concept (or other token) between a [VE] and the next [VS]",
    "death_not_at_end": "[DEATH] anywhere but in a final [VS] [DEATH] [VE]",
    "death_before_any_visit": "[VS] [DEATH] [VE] as the first visit (cehrgpt's converter reads its [VE] as one "
    "before any visit and skips the patient)",
    "patient_died_discharge_misplaced": "the 'Patient died' discharge (4216643) anywhere but last in an inpatient "
    "visit, right before its [VE] (cehrgpt's converter skips the patient)",
    "not_ending_with_visit_end": "the last token is not [VE]",
    "malformed_time_token": "a time token cehrgpt's own parser rejects (e.g. i-D-3) or its OMOP converter "
    "cannot date (D2000, W4, Y1 or VS-D7-VE between visits, i-W2 in a visit)",
    "demographic_token_after_prompt": "a year:/age: token, [START] or a token of no known kind after the "
    "demographic prompt (real sequences have none; cehrgpt's converter cannot read them and skips the patient)",
}


RULES = tuple(VALIDITY_RULES)  # bit i of a rule mask = RULES[i]
RULE_BIT = {rule: 1 << index for index, rule in enumerate(RULES)}
DEPTH_LIMIT = 8
PROMPT_SIZE = 4  # year, age, gender, race
# Kinds that may stand outside a visit (anything else there is an event_outside_visit).
ALLOWED_OUTSIDE_VISIT = frozenset({VISIT_START, VISIT_END, TIME, INPATIENT_TIME, MALFORMED_TIME, DEATH})
# Kinds that belong to the prompt only (or to no sequence at all).
PROMPT_ONLY = frozenset({YEAR, AGE, START, OTHER})
TOKEN_FACTS = ("kind", "visit_type", "inpatient_visit", "discharge", "gender", "race", "patient_died")


@dataclass(frozen=True)
class TokenClass:
    kind: int
    visit_type: bool = False
    inpatient_visit: bool = False
    discharge: bool = False
    gender: bool = False
    race: bool = False
    patient_died: bool = False


END_OF_SEQUENCE = None  # the extra class after the last token (the generator's [END])


@dataclass(frozen=True)
class State:
    prompt: int = 0  # prompt tokens read so far (0..4)
    depth: int = 0  # visit depth: +1 per [VS], -1 per [VE]
    seen_visit_end: bool = False
    inpatient: bool = False  # the latest [VS] was followed by an inpatient visit type
    after_visit_start: bool = False
    after_visit_end: bool = False
    after_discharge: bool = False
    after_patient_died: bool = False  # the 'Patient died' discharge just read: only [VE] may follow
    death_open: bool = False  # [VS] [DEATH] just read: only [VE] may follow
    death_closed: bool = False  # [VS] [DEATH] [VE] just read: nothing may follow
    ended: bool = False  # past END_OF_SEQUENCE (the generator pads finished sequences)


def _prompt_fits(position: int, token: TokenClass) -> bool:
    return (token.kind == YEAR, token.kind == AGE, token.gender, token.race)[position]


def step(state: State, token: TokenClass | None) -> tuple[State, frozenset[str]]:
    """The state after `token` (END_OF_SEQUENCE: None) and the rules it breaks: THE grammar."""
    if state.ended:
        return state, frozenset()
    broken = set()
    if token is END_OF_SEQUENCE:
        if state.prompt < PROMPT_SIZE:
            broken.add("demographic_prompt")
        if state.after_visit_start:
            broken.add("missing_visit_type")
        if state.death_open:
            broken.add("death_not_at_end")
        if not state.after_visit_end:
            broken.add("not_ending_with_visit_end")
        return State(ended=True), frozenset(broken)

    kind, depth, inpatient = token.kind, state.depth, state.inpatient
    in_prompt = state.prompt < PROMPT_SIZE
    if in_prompt and not _prompt_fits(state.prompt, token):
        broken.add("demographic_prompt")
    if state.after_visit_start:  # the token after [VS]: the visit's type
        if not (token.visit_type or kind == DEATH):
            broken.add("missing_visit_type")
        inpatient = token.inpatient_visit
    death_open, death_closed = False, False
    if state.death_open and kind != VISIT_END:
        broken.add("death_not_at_end")
    if state.death_closed:
        broken.add("death_not_at_end")
    if depth <= 0 and not in_prompt and kind not in ALLOWED_OUTSIDE_VISIT:
        broken.add("event_outside_visit")
    if not in_prompt and kind in PROMPT_ONLY:
        broken.add("demographic_token_after_prompt")
    if state.after_patient_died and kind != VISIT_END:
        broken.add("patient_died_discharge_misplaced")
    if token.patient_died and not in_prompt and not (depth >= 1 and inpatient and not state.after_visit_start):
        broken.add("patient_died_discharge_misplaced")

    if kind == VISIT_START:
        if depth >= 1:
            broken.add("nested_visit")
        depth, inpatient = depth + 1, False
    elif kind == VISIT_END:
        if depth <= 0:
            broken.add("unmatched_visit_end")
        if depth >= 1 and inpatient and not state.after_discharge:
            broken.add("missing_discharge")
        death_closed = state.death_open
        depth -= 1
    elif kind == TIME:
        if depth != 0 or not state.seen_visit_end:
            broken.add("time_token_not_between_visits")
    elif kind == INPATIENT_TIME:
        if not (depth >= 1 and inpatient):
            broken.add("inpatient_time_token_outside_inpatient_visit")
    elif kind == MALFORMED_TIME:
        broken.add("malformed_time_token")
    elif kind == DEATH:
        if state.after_visit_start:
            death_open = True
            if not state.seen_visit_end:
                broken.add("death_before_any_visit")
        else:
            broken.add("death_not_at_end")

    next_state = State(
        prompt=min(state.prompt + 1, PROMPT_SIZE),
        depth=max(-DEPTH_LIMIT, min(DEPTH_LIMIT, depth)),
        seen_visit_end=state.seen_visit_end or kind == VISIT_END,
        inpatient=inpatient,
        after_visit_start=kind == VISIT_START,
        after_visit_end=kind == VISIT_END,
        after_discharge=token.discharge,
        after_patient_died=token.patient_died and not in_prompt,
        death_open=death_open,
        death_closed=death_closed,
    )
    return next_state, frozenset(broken)


@dataclass
class CompiledGrammar:
    """step() over every reachable state and every class; class index len(classes) is END_OF_SEQUENCE."""

    classes: tuple[TokenClass, ...]
    states: list[State]
    next_state: np.ndarray  # (states, classes + 1) int32
    broken: np.ndarray  # (states, classes + 1) uint16 rule mask
    steps_to_valid_end: np.ndarray  # (states,) fewest tokens before END_OF_SEQUENCE breaks no rule
    allowed: np.ndarray  # (states, classes + 1) bool: breaks no rule and a valid end stays reachable
    # (states, classes) bool: where [VE] is forbidden because an inpatient visit has no discharge yet,
    # the discharge classes after which it is allowed: the constrained sampler moves the model's [VE]
    # probability there, so a visit the model means to end does end (see closing_discharges).
    closing_discharge: np.ndarray

    @property
    def end_of_sequence(self) -> int:
        return len(self.classes)

    @property
    def initial_state(self) -> int:
        return 0

    def rule_flags(self, masks: np.ndarray) -> dict[str, np.ndarray]:
        """Rule name -> bool per sequence, from per-sequence rule masks."""
        return {rule: (masks & bit) != 0 for rule, bit in RULE_BIT.items()}


@lru_cache(maxsize=16)
def compile_grammar(classes: tuple[TokenClass, ...]) -> CompiledGrammar:
    """Enumerate the states reachable from the empty sequence over these token classes."""
    symbols = list(classes) + [END_OF_SEQUENCE]
    index = {State(): 0}
    states = [State()]
    rows_next, rows_broken = [], []
    queue = deque([State()])
    while queue:
        state = queue.popleft()
        next_row, broken_row = [], []
        for symbol in symbols:
            following, broken = step(state, symbol)
            if following not in index:
                index[following] = len(states)
                states.append(following)
                queue.append(following)
            next_row.append(index[following])
            broken_row.append(sum(RULE_BIT[rule] for rule in broken))
        rows_next.append(next_row)
        rows_broken.append(broken_row)
    # BFS order: a state's row is appended when it leaves the queue, in the order it was numbered.
    next_state = np.asarray(rows_next, dtype=np.int32)
    broken = np.asarray(rows_broken, dtype=np.uint16)

    # Fewest tokens to a state where the sequence may end (backward relaxation over clean moves).
    end = len(classes)
    clean = broken == 0
    distance = np.full(len(states), np.iinfo(np.int32).max, dtype=np.int64)
    distance[clean[:, end]] = 0
    changed = True
    while changed:
        through = np.where(clean[:, :end], distance[next_state[:, :end]] + 1, np.iinfo(np.int32).max)
        best = np.minimum(distance, through.min(axis=1, initial=np.iinfo(np.int32).max))
        changed = bool((best < distance).any())
        distance = best
    reachable_end = distance < np.iinfo(np.int32).max
    allowed = clean & np.concatenate(
        (reachable_end[next_state[:, :end]], np.ones((len(states), 1), dtype=bool)), axis=1
    )
    allowed[:, end] &= clean[:, end]
    ended = np.array([state.ended for state in states])
    allowed[ended] = True  # finished sequences: the generator replaces whatever is drawn with [PAD]
    return CompiledGrammar(tuple(classes), states, next_state, broken, distance, allowed,
                           closing_discharges(classes, next_state, allowed))


def closing_discharges(classes, next_state: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Per state, the discharge classes that may stand where [VE] may not and let [VE] follow.

    Every inpatient visit of the real sequences ends `... Discharge/0 [VE]`. A small model that wants
    to end an inpatient visit often puts its probability on [VE] without the discharge; forbidding it
    and spreading that probability over every allowed token makes the visit run on, filling with
    concepts (on the demo at threshold 11: 11 clinical concepts per inpatient visit, up to 191, against
    1.2 in the real ones; bench/RESULTS.md). Moving it to the discharge keeps what the model meant.
    """
    end = len(classes)
    visit_ends = [index for index, token_class in enumerate(classes) if token_class.kind == VISIT_END]
    discharges = np.array([token_class.discharge for token_class in classes], dtype=bool)
    closing = np.zeros((len(next_state), end), dtype=bool)
    for visit_end in visit_ends:
        forbidden = ~allowed[:, visit_end]
        then_allowed = allowed[next_state[:, :end], visit_end]  # after each class, may [VE] follow?
        closing |= forbidden[:, None] & allowed[:, :end] & discharges[None, :] & then_allowed
    return closing


def token_classes(vocabulary: Vocabulary) -> tuple[tuple[TokenClass, ...], np.ndarray]:
    """The distinct token classes of a vocabulary and the class index of each of its codes."""
    facts = [vocabulary.fact(name) for name in TOKEN_FACTS]
    tuples = [TokenClass(int(kind), *map(bool, flags)) for kind, *flags in zip(*facts, strict=True)]
    classes = tuple(sorted(set(tuples), key=lambda c: tuple(getattr(c, name) for name in TOKEN_FACTS)))
    position = {token_class: number for number, token_class in enumerate(classes)}
    return classes, np.asarray([position[t] for t in tuples], dtype=np.int32)


def check_sequences(
    codes: np.ndarray, offsets: np.ndarray, vocabulary: Vocabulary
) -> tuple[np.ndarray, CompiledGrammar]:
    """The rule mask (uint16, bits RULE_BIT) of every sequence codes[offsets[i]:offsets[i + 1]].

    One table lookup per token: a loop over positions, each step over every sequence still that long
    (sequences sorted longest first, so the active ones are a prefix).
    """
    classes, class_of_code = token_classes(vocabulary)
    grammar = compile_grammar(classes)
    count = len(offsets) - 1
    lengths = np.diff(offsets)
    order = np.argsort(-lengths, kind="stable")
    sorted_lengths, sorted_starts = lengths[order], offsets[:-1][order]
    token_class = class_of_code[codes] if len(codes) else np.empty(0, dtype=np.int32)
    state = np.zeros(count, dtype=np.int32)
    masks = np.zeros(count, dtype=np.uint16)
    # active[p] = how many sequences have a token at position p
    longest = int(sorted_lengths[0]) if count else 0
    active_counts = count - np.searchsorted(sorted_lengths[::-1], np.arange(longest), side="right")
    for position in range(longest):
        active = int(active_counts[position])
        current = state[:active]
        symbol = token_class[sorted_starts[:active] + position]
        masks[:active] |= grammar.broken[current, symbol]
        state[:active] = grammar.next_state[current, symbol]
    masks |= grammar.broken[state, grammar.end_of_sequence]
    result = np.empty(count, dtype=np.uint16)
    result[order] = masks
    return result, grammar
