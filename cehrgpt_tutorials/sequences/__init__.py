"""The patient sequences: what their tokens are, which orders are valid, and how to change them without
breaking them. Every step above reads tokens through here; this package imports nothing above it.

    tokens.py        the patient_sequence columns and the time tokens cehrgpt can parse
    split.py         the held-out patients: one deterministic function of person_id
    vocabulary.py    the token classifier (Vocabulary) and the token kinds
    grammar.py       the valid orders of token kinds (VALIDITY_RULES) as a transition table
    codes.py         reading patient sequences as one flat code array plus offsets (Sequences)
    facts.py         sequence_facts: every rule and per-sequence fact, vectorized
    cleaning.py      step 3: removing malformed time tokens, filling null ages
    concept_floor.py step 2's small-cell floor on concepts held by few training persons
"""
