"""Step 7's examples: each cohort row's sequence cut before its index date, column-wise, and capped.

The column-wise cut is compared with a per-patient reference written the plain way (one Python loop
per cohort row, as step 7 first did it) on crafted sequences with everything that can go wrong: a
person without a sequence, an index date before any visit or inside a visit, several index dates of
one person, null ages, a list column that is misaligned in one row, a null list.
"""

from __future__ import annotations

import datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cehrgpt_tutorials.prediction import histories as h

DAY = 86_400
LIST_TYPES = {"concept_ids": pa.list_(pa.string()), "epoch_times": pa.list_(pa.int64()),
              "ages": pa.list_(pa.int64()), "visit_concept_orders": pa.list_(pa.int32()),
              "record_ranks": pa.list_(pa.int32())}


def patient(person: int, visits: int, rng: np.random.Generator) -> dict:
    """A sequence of `visits` visits, one every 30 days from day 100 * person % 7, ages with gaps."""
    tokens, times = ["year:2010", "age:40", "8507", "8527"], [0, 0, 0, 0]
    day = (person % 7) * 100
    for visit in range(visits):
        if visit:
            tokens.append("W4")
            times.append(day * DAY)
        codes = [str(1000 + int(code)) for code in rng.integers(0, 20, size=int(rng.integers(1, 4)))]
        visit_tokens = ["[VS]", "9202", *codes, "[VE]"]
        tokens += visit_tokens
        # The first visit ends two days after it starts: an index date the day after its start falls inside it.
        times += [day * DAY] * (len(visit_tokens) - 1) + [(day + (2 if visit == 0 else int(rng.integers(0, 3)))) * DAY]
        day += 30
    ages = [None if rng.random() < 0.1 else 40 + position // 10 for position in range(len(tokens))]
    return {"person_id": person, "concept_ids": tokens, "epoch_times": times, "ages": ages,
            "visit_concept_orders": list(range(len(tokens))), "record_ranks": list(range(len(tokens)))}


def write_sequences(folder, persons: range, seed: int = 0) -> dict[int, dict]:
    """train/ (even persons) and test/ (odd) folders, two files each; returns the rows by person."""
    rng = np.random.default_rng(seed)
    rows = {person: patient(person, int(rng.integers(1, 8)), rng) for person in persons}
    rows[min(persons)]["record_ranks"] = rows[min(persons)]["record_ranks"][:-1]  # misaligned in one row
    rows[min(persons) + 3]["visit_concept_orders"] = None  # a null list
    schema = pa.schema([pa.field("person_id", pa.int64()), *(pa.field(n, t) for n, t in LIST_TYPES.items())])
    for split, parity in (("train", 0), ("test", 1)):
        mine = [rows[person] for person in persons if person % 2 == parity]
        (folder / split).mkdir(parents=True)
        for part in range(2):
            pq.write_table(pa.Table.from_pylist(mine[part::2], schema=schema), folder / split / f"part-{part}.parquet")
    return rows


def crafted_cohort(rows: dict[int, dict], extra_persons: list[int], seed: int = 1) -> pd.DataFrame:
    """Index dates before, inside and after each person's visits (two for some persons), plus persons
    without a sequence; sorted by person and date as the cohort query returns them."""
    rng = np.random.default_rng(seed)
    records = []
    for person in rows:  # inside the first visit, whose [VE] is dated on or after the index date
        records.append((person, datetime.date(1970, 1, 2) + datetime.timedelta(days=(person % 7) * 100), 0, 40))
    for person in [*rows, *extra_persons]:
        for _ in range(1 + int(rng.random() < 0.3)):
            day = datetime.date(1970, 1, 1) + datetime.timedelta(days=int(rng.integers(0, 900)))
            records.append((person, day, int(rng.random() < 0.3), int(rng.integers(20, 80))))
    cohort = pd.DataFrame(records, columns=["subject_id", "cohort_start_date", "label", "age_at_index"])
    cohort = cohort.drop_duplicates(["subject_id", "cohort_start_date"]).sort_values(["subject_id", "cohort_start_date"])
    cohort["cohort_end_date"] = [day + datetime.timedelta(days=365) for day in cohort["cohort_start_date"]]
    return cohort.reset_index(drop=True)


def reference_examples(cohort: pd.DataFrame, rows: dict[int, dict]) -> dict[str, list[dict]]:
    """The examples written one cohort row at a time: the plain definition the column-wise cut must meet."""
    examples = {"train": [], "test": []}
    for person, start, label, age in zip(cohort["subject_id"], cohort["cohort_start_date"], cohort["label"],
                                         cohort["age_at_index"], strict=True):
        row = rows.get(int(person))
        if row is None:
            continue
        tokens = row["concept_ids"]
        end = h.history_end(tokens, row["epoch_times"], h.index_seconds(start))
        if end == 0:
            continue
        example = {"person_id": int(person), "index_date": datetime.datetime.combine(start, datetime.time()),
                   "label": int(label), "age": int(age)}
        for column in LIST_TYPES:
            if row[column] is not None and len(row[column]) == len(tokens):
                example[column] = row[column][:end]
        if "ages" in example:
            known = [value for value in example["ages"] if value is not None]
            previous, filled = (known[0] if known else -1), []
            for value in example["ages"]:
                previous = previous if value is None else value
                filled.append(previous)
            example["ages"] = filled
        example["num_of_concepts"] = end
        example["num_of_visits"] = tokens[:end].count("[VS]")
        examples["train" if int(person) % 2 == 0 else "test"].append(example)
    for split, items in examples.items():
        shared = [name for name in items[0] if all(name in item for item in items)]
        examples[split] = [{name: item[name] for name in shared} for item in items]
    return examples


@pytest.fixture
def crafted(tmp_path):
    rows = write_sequences(tmp_path / "patient_sequence", range(10, 70))
    return tmp_path / "patient_sequence", rows, crafted_cohort(rows, extra_persons=[5, 6, 7])


def test_the_column_wise_cut_gives_the_examples_of_the_per_row_definition(crafted):
    folder, rows, cohort = crafted
    built = h.build_histories(cohort, folder)
    expected = reference_examples(cohort, rows)
    assert built.train.to_pylist() == expected["train"]
    assert built.test.to_pylist() == expected["test"]
    assert built.no_sequence == int(cohort["subject_id"].isin([5, 6, 7]).sum())
    in_examples = len(expected["train"]) + len(expected["test"])
    assert built.no_history == len(cohort) - built.no_sequence - in_examples > 0
    # The misaligned column is left out of the split with its row only; the types are step 2's.
    assert "record_ranks" not in built.train.column_names and "record_ranks" in built.test.column_names
    assert built.train.schema.field("ages").type == LIST_TYPES["ages"]
    assert built.capped == {}


def test_caps_keep_at_most_that_many_examples_per_split_with_the_share_of_positives(crafted):
    folder, rows, cohort = crafted
    uncapped = h.build_histories(cohort, folder)
    built = h.build_histories(cohort, folder, max_examples={"train": 12, "test": 1000})
    train_rows = int(cohort["subject_id"].isin([p for p in rows if p % 2 == 0]).sum())
    assert built.capped == {"train": {"cap": 12, "cohort_rows": train_rows}}
    assert 0 < built.train.num_rows <= 12
    assert built.test.to_pylist() == uncapped.test.to_pylist()  # a cap that does not bind changes nothing
    # Every kept example is one of the uncapped ones, unchanged (a column misaligned only in a row the
    # draw left out is kept, so compare the uncapped columns).
    uncapped_examples = uncapped.train.to_pylist()
    kept = built.train.select(uncapped.train.column_names).to_pylist()
    assert all(example in uncapped_examples for example in kept)
    again = h.build_histories(cohort, folder, max_examples={"train": 12, "test": 1000})
    assert again.train.to_pylist() == built.train.to_pylist()  # seeded: the same rows every run


def test_capped_rows_keep_the_share_of_positives_and_are_seeded():
    labels = np.array([1] * 30 + [0] * 270)
    rows = h.capped_rows(labels, 100)
    assert len(rows) == 100 and labels[rows].sum() == 10 and np.all(np.diff(rows) > 0)
    assert np.array_equal(rows, h.capped_rows(labels, 100))
    assert not np.array_equal(rows, h.capped_rows(labels, 100, seed=1))
    assert np.array_equal(h.capped_rows(labels, 300), np.arange(300))


def test_outcome_seen_in_future_counts_positives_whose_token_falls_in_their_time_at_risk(crafted):
    folder, rows, cohort = crafted
    outcome = ["1003"]
    expected = 0
    positives = cohort[cohort["label"] == 1]
    for person, start, end in zip(positives["subject_id"], positives["cohort_start_date"], positives["cohort_end_date"],
                                  strict=True):
        row = rows.get(int(person))
        low, high = h.index_seconds(start), h.index_seconds(end) + DAY
        expected += row is not None and any(token in outcome and low <= when < high for token, when in
                                            zip(row["concept_ids"], row["epoch_times"], strict=True))
    assert h.outcome_seen_in_future(cohort, folder, outcome) == (len(positives), expected)
    assert 0 < expected < len(positives)


def test_the_fingerprint_ignores_labels_and_sees_histories(crafted):
    folder, _, cohort = crafted
    built = h.build_histories(cohort, folder)
    relabelled = h.build_histories(cohort.assign(label=1 - cohort["label"]), folder)
    assert h.examples_fingerprint(built) == h.examples_fingerprint(relabelled)
    later = h.build_histories(cohort.assign(cohort_start_date=[day + datetime.timedelta(days=40) for day in
                                                               cohort["cohort_start_date"]]), folder)
    assert h.examples_fingerprint(built) != h.examples_fingerprint(later)


def test_the_bag_of_concepts_counts_each_examples_numeric_tokens(crafted):
    from cehrgpt_tutorials.prediction import models

    folder, _, cohort = crafted
    built = h.build_histories(cohort, folder)
    train, vocabulary = models.bag_of_concepts(built.train)
    test, same = models.bag_of_concepts(built.test, vocabulary)
    assert same is vocabulary
    concepts = sorted({token for tokens in built.train.column("concept_ids").to_pylist() for token in tokens
                       if token.isdigit()})
    assert list(vocabulary) == concepts and list(vocabulary.values()) == list(range(len(concepts)))
    for matrix, table in ((train, built.train), (test, built.test)):
        expected = np.zeros((table.num_rows, len(vocabulary)))
        for row, tokens in enumerate(table.column("concept_ids").to_pylist()):
            for token in tokens:
                if token in vocabulary:
                    expected[row, vocabulary[token]] += 1
        assert np.array_equal(matrix.toarray(), np.log1p(expected))


def test_predict_caps_examples_by_default_and_refuses_a_cap_below_one():
    from predict import parse_arguments

    arguments = parse_arguments([])
    assert (arguments.max_train_examples, arguments.max_test_examples) == (20_000, 5_000)
    assert parse_arguments(["--max-train-examples", "300"]).max_train_examples == 300
    for option in ("--max-train-examples", "--max-test-examples", "--feature-batch-size", "--fine-tune-batch-size"):
        with pytest.raises(SystemExit):
            parse_arguments([option, "0"])
