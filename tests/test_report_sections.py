"""The report's numbers behind the summary: the fidelity figures pinned, per-concept prevalence error, calendar time and
censoring, the CEHR-GPT authors' membership and attribute inference, dimension-wise prediction.
Each on hand-built sequences whose answer is planted.
"""

from __future__ import annotations

import datetime
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_script
from helpers import error_line
from synthetic_data import population as mixed_population

from cehrgpt_tutorials.report import privacy
from cehrgpt_tutorials.report.fidelity import (
    TOP_PAIRS,
    concept_prevalence,
    cooccurrence_r,
    distribution_metrics,
    js_distance,
    ks_statistic,
    pearson_r,
    prevalence,
    prevalence_errors,
    within_25pct_of_a_perfect_model,
    within_25pct_of_samples,
)
from cehrgpt_tutorials.report.privacy import (
    attribute_config,
    attribute_f1,
    attribute_inference,
    membership_inference,
    membership_threshold,
)
from cehrgpt_tutorials.report.timeline import calendar_time, censor_folder, visit_dates
from cehrgpt_tutorials.report.utility import dimension_wise_prediction
from cehrgpt_tutorials.sequences.codes import read_sequences, sequences_from_lists
from cehrgpt_tutorials.sequences.facts import sequence_facts
from cehrgpt_tutorials.sequences.vocabulary import Vocabulary

PROMPT = ["year:2010", "age:40", "8507", "8527"]


def facts_of(token_lists, vocabulary):
    sequences = sequences_from_lists(token_lists, vocabulary)
    return sequences, sequence_facts(sequences, vocabulary)


# --------------------------------------------------------------------------------------------
# Fidelity figures against oracles computed here, by hand with numpy, not with scipy (which the
# report uses): whatever computes Pearson r, the KS statistic and the Jensen-Shannon distance must
# agree with the definitions, and these edge cases.
# --------------------------------------------------------------------------------------------

CLOSE = {"rel": 1e-12, "abs": 1e-15}


def pearson_by_hand(x, y) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(np.corrcoef(x, y)[0, 1])


def ks_by_hand(real, synthetic) -> float:
    """The largest gap between the two empirical CDFs, over every value either side holds (nan left out)."""
    real, synthetic = (np.sort(np.asarray(side, dtype=np.float64)) for side in (real, synthetic))
    real, synthetic = real[~np.isnan(real)], synthetic[~np.isnan(synthetic)]
    points = np.union1d(real, synthetic)
    real_cdf = np.searchsorted(real, points, side="right") / len(real)
    synthetic_cdf = np.searchsorted(synthetic, points, side="right") / len(synthetic)
    return float(np.abs(real_cdf - synthetic_cdf).max())


def js_by_hand(real_counts: dict, synthetic_counts: dict) -> float:
    """sqrt of the mean Kullback-Leibler divergence (base 2) of each side's shares from their average."""
    categories = sorted(set(real_counts) | set(synthetic_counts))
    p = np.array([real_counts.get(c, 0) for c in categories], dtype=np.float64)
    q = np.array([synthetic_counts.get(c, 0) for c in categories], dtype=np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def divergence(shares):
        held = shares > 0
        return float(np.sum(shares[held] * np.log2(shares[held] / m[held])))

    return float(np.sqrt((divergence(p) + divergence(q)) / 2))


def test_pearson_r_is_the_correlation_coefficient_and_undefined_without_spread():
    x, y = [0.1, 0.5, 0.2, 0.0, 0.9, 0.33], [0.12, 0.4, 0.25, 0.01, 0.7, 0.3]
    assert pearson_r(x, y) == pytest.approx(pearson_by_hand(x, y), **CLOSE)
    assert pearson_r([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0, **CLOSE)
    # Fewer than 2 points, or a constant side: no correlation to report.
    assert pearson_r([1.0], [2.0]) is None
    assert pearson_r([1, 1, 1], [1, 2, 3]) is None
    assert pearson_r([1, 2, 3], [4, 4, 4]) is None


def test_ks_statistic_is_the_largest_cdf_gap_ignores_nan_and_is_undefined_on_an_empty_side():
    real, synthetic = np.array([1, 2, 2, 3, 5, 8, np.nan]), np.array([2, 3, 3, 4, 9, np.nan, np.nan])
    # At 2: 3 of the 6 real values, 1 of the 5 synthetic ones.
    assert ks_statistic(real, synthetic) == pytest.approx(3 / 6 - 1 / 5, **CLOSE)
    assert ks_by_hand(real, synthetic) == pytest.approx(3 / 6 - 1 / 5, **CLOSE)
    assert ks_statistic(np.array([1.0, 2.0]), np.array([2.0, 1.0])) == 0.0
    assert ks_statistic(np.array([]), np.array([1.0])) is None
    assert ks_statistic(np.array([np.nan]), np.array([1.0])) is None


def test_js_distance_is_the_base_2_definition_with_its_categories_and_shares():
    distance, categories, real, synthetic = js_distance(np.array([3, 3, 5, 7, -1, 5, 3]), np.array([3, 5, 5, 9, 9, -1]))
    # Real: three 3s, two 5s, one 7 of 6; synthetic: one 3, two 5s, two 9s of 5 (-1, missing, left out).
    assert distance == pytest.approx(js_by_hand({3: 3, 5: 2, 7: 1}, {3: 1, 5: 2, 9: 2}), **CLOSE)
    assert categories.tolist() == [3, 5, 7, 9]  # most frequent in the real data first
    assert real.tolist() == pytest.approx([1 / 2, 1 / 3, 1 / 6, 0.0], **CLOSE)
    assert synthetic.tolist() == pytest.approx([0.2, 0.4, 0.0, 0.4], **CLOSE)
    assert js_distance(np.array([1, 2]), np.array([2, 1]))[0] == 0.0
    assert js_distance(np.array([1, 1]), np.array([2]))[0] == 1.0  # disjoint: 1 in base 2
    assert js_distance(np.array([-1, -1]), np.array([1]))[0] is None  # nothing known on one side


def clinical_concepts(tokens: list[str]) -> set[str]:
    """A mixed_population patient's clinical concepts: concept ids after the prompt, visit types aside."""
    return {token for position, token in enumerate(tokens)
            if position >= 4 and token.isdigit() and tokens[position - 1] != "[VS]"}


def facts_by_hand(token_lists: list[list[str]]) -> dict[str, list]:
    """Per-patient numbers and categories of mixed_population patients, read off their tokens."""
    visit_starts = [[i for i, token in enumerate(tokens) if token == "[VS]"] for tokens in token_lists]
    return {
        "sequence_length": [len(tokens) for tokens in token_lists],
        "visits_per_patient": [len(starts) for starts in visit_starts],
        # Every D<n> of these patients stands between two visits (their inpatient stays use i-D1).
        "days_between_visits": [int(token[1:]) for tokens in token_lists for token in tokens
                                if token[0] == "D" and token[1:].isdigit()],
        "age_at_first_visit": [int(tokens[1].removeprefix("age:")) for tokens in token_lists],
        "start_year": [int(tokens[0].removeprefix("year:")) for tokens in token_lists],
        "concepts_per_patient": [len(clinical_concepts(tokens)) for tokens in token_lists],
        "visit_types": [tokens[i + 1] for tokens, starts in zip(token_lists, visit_starts, strict=True)
                        for i in starts],
        "gender": [tokens[2] for tokens in token_lists],
        "race": [tokens[3] for tokens in token_lists],
    }


def counts(values: list) -> dict:
    return {value: values.count(value) for value in set(values)}


def pair_prevalence_by_hand(token_lists: list[list[str]]) -> dict[tuple[str, str], float]:
    """Share of patients holding each pair of clinical concepts (pairs held by nobody left out)."""
    held: dict[tuple[str, str], int] = {}
    for tokens in token_lists:
        concepts = sorted(clinical_concepts(tokens))
        for i, first in enumerate(concepts):
            for second in concepts[i + 1:]:
                held[first, second] = held.get((first, second), 0) + 1
    return {pair: number / len(token_lists) for pair, number in held.items()}


def test_the_reports_fidelity_figures_on_two_populations_match_oracles_from_the_tokens():
    # 15 and 20 concepts: 20 in all, so every pair of them (190) is among the report's TOP_PAIRS.
    real_lists = mixed_population(40, seed=1, concepts=range(1001, 1016))
    synthetic_lists = mixed_population(30, seed=9, concepts=range(1001, 1021))
    vocabulary = Vocabulary()
    real, synthetic = facts_of(real_lists, vocabulary)[1], facts_of(synthetic_lists, vocabulary)[1]
    real_hand, synthetic_hand = facts_by_hand(real_lists), facts_by_hand(synthetic_lists)
    metrics = distribution_metrics(real, synthetic)
    assert set(metrics) == set(real_hand)
    for name in ("sequence_length", "visits_per_patient", "days_between_visits", "age_at_first_visit",
                 "start_year", "concepts_per_patient"):
        assert metrics[name]["distance"] == pytest.approx(ks_by_hand(real_hand[name], synthetic_hand[name]),
                                                          **CLOSE), name
        assert metrics[name]["real_mean"] == pytest.approx(np.mean(real_hand[name]), **CLOSE), name
    for name in ("visit_types", "gender", "race"):
        expected = js_by_hand(counts(real_hand[name]), counts(synthetic_hand[name]))
        assert metrics[name]["distance"] == pytest.approx(expected, **CLOSE), name
    # The figures differ from one another: a metric computed from the wrong column would not match.
    assert len({round(metric["distance"], 9) for metric in metrics.values()}) >= 7

    real_pairs, synthetic_pairs = pair_prevalence_by_hand(real_lists), pair_prevalence_by_hand(synthetic_lists)
    pairs = sorted(set(real_pairs) | set(synthetic_pairs))
    pairs_r, pair_count = cooccurrence_r(real, synthetic, len(vocabulary))
    assert pair_count == len(pairs)
    # The report counts pairs in a float32 matrix: equal to float32's precision.
    assert pairs_r == pytest.approx(pearson_by_hand([real_pairs.get(p, 0.0) for p in pairs],
                                                    [synthetic_pairs.get(p, 0.0) for p in pairs]), rel=1e-6)

    concepts = sorted(set().union(*map(clinical_concepts, real_lists + synthetic_lists)))
    real_share = [sum(c in clinical_concepts(t) for t in real_lists) / len(real_lists) for c in concepts]
    synthetic_share = [sum(c in clinical_concepts(t) for t in synthetic_lists) / len(synthetic_lists) for c in concepts]
    assert concept_prevalence(real, synthetic, len(vocabulary)).pearson_r == pytest.approx(
        pearson_by_hand(real_share, synthetic_share), **CLOSE)


def test_cooccurrence_keeps_the_top_pairs_of_each_side():
    # Patient p (1..60) holds concepts k >= p: concept k is held by k patients and pair (j, k) by j.
    # Far more than TOP_PAIRS pairs; the same patients on both sides: exactly TOP_PAIRS of them, r = 1.
    nested = [PROMPT + ["[VS]", "9202", *(str(1000 + k) for k in range(p, 61)), "[VE]"] for p in range(1, 61)]
    vocabulary = Vocabulary()
    facts = facts_of(nested, vocabulary)[1]
    pairs_r, pair_count = cooccurrence_r(facts, facts, len(vocabulary))
    assert pair_count == TOP_PAIRS and pairs_r == pytest.approx(1.0, rel=1e-6)


# --------------------------------------------------------------------------------------------
# Prevalence error
# --------------------------------------------------------------------------------------------


def test_a_concept_never_generated_has_a_prevalence_error_of_minus_100_percent():
    tokens = ["1001", "1002", "1003", "1004", "1005"]
    names = {"1001": ("flu shot", "Drug"), "1002": ("hypertension", "Condition"),
             "1003": ("hyperlipidemia", "Condition"), "1005": ("sinusitis", "Condition")}
    real = np.array([0.50, 0.20, 0.10, 0.02, 0.10])
    synthetic = np.array([0.50, 0.10, 0.00, 0.30, 0.12])  # 1003 never generated; 1004 is below 5% in real
    errors = prevalence_errors(real, synthetic, tokens, names)
    assert errors["concepts"] == 4
    assert errors["within_25pct"] == pytest.approx(2 / 4)  # 1001 (0%) and 1005 (+20%)
    assert [row["concept_id"] for row in errors["worst"]] == ["1003", "1002", "1005", "1001"]
    assert errors["worst"][0]["relative_error"] == -1.0 and errors["worst"][0]["name"] == "hyperlipidemia"
    assert [row["concept_id"] for row in errors["under_generated_conditions"]] == ["1003", "1002"]
    assert [row["concept_id"] for row in errors["over_generated_conditions"]] == ["1005"]


def test_resamples_show_how_far_the_within_25pct_share_moves_by_chance_at_the_sample_size():
    vocabulary = Vocabulary()
    visit = ["[VS]", "9202", "1001", "[VE]"]
    half = [PROMPT + visit] * 50 + [PROMPT + ["[VS]", "9202", "1002", "[VE]"]] * 50  # 1001 and 1002: 50% each
    _, real = facts_of(half, vocabulary)
    real_prevalence = prevalence(real, len(vocabulary))
    # One patient holds a concept or not: 0% or 100% against 50%, never within +-25%.
    assert within_25pct_of_samples(real, real_prevalence, 1)["p95"] == 0.0
    # 10,000 patients: 50% +- 0.5 points, always within.
    many = within_25pct_of_samples(real, real_prevalence, 10_000)
    assert many["p5"] == many["median"] == 1.0 and many["sample_size"] == 10_000
    # A concept every real patient holds is held by every sample of them.
    _, everyone = facts_of([PROMPT + visit] * 20, vocabulary)
    assert within_25pct_of_samples(everyone, prevalence(everyone, len(vocabulary)), 3)["p5"] == 1.0
    _, nobody = facts_of([PROMPT], vocabulary)
    assert within_25pct_of_samples(nobody, prevalence(nobody, len(vocabulary)), 3) is None


def test_a_perfect_model_scores_below_a_copy_of_a_small_training_set_and_not_of_a_large_one():
    vocabulary = Vocabulary()

    def patients(count):  # ten concepts, each held by every tenth patient: 10% each
        return facts_of([PROMPT + ["[VS]", "9202", str(1001 + i % 10), "[VE]"] for i in range(count)], vocabulary)[1]

    small, large = patients(40), patients(2000)
    # 10,000 patients drawn from 40 training patients hold each concept at 10% +- 0.3 points: always within
    # +-25% of those 40. A model of their population is scored against a training set of 40 drawn from it,
    # where a concept held by 4 patients is as often held by 2 or 6 (5% or 15%): often not within.
    assert within_25pct_of_samples(small, prevalence(small, len(vocabulary)), 10_000)["p5"] == 1.0
    perfect = within_25pct_of_a_perfect_model(small, len(vocabulary), 10_000)
    assert perfect["median"] < 0.7 and perfect["sample_size"] == 10_000 and perfect["training_set_size"] == 40
    # 2,000 training patients hold each concept 200 +- 13 times: the perfect model is always within.
    assert within_25pct_of_a_perfect_model(large, len(vocabulary), 10_000)["p5"] == 1.0
    _, nobody = facts_of([PROMPT], vocabulary)
    assert within_25pct_of_a_perfect_model(nobody, len(vocabulary), 3) is None


# --------------------------------------------------------------------------------------------
# Calendar time and censoring
# --------------------------------------------------------------------------------------------

# Visits dated as cehrgpt's converter does: 1 January of the year token, then every time token.
DATED = PROMPT + ["[VS]", "9202", "1001", "[VE]",  # 2010-01-01
                  "D365", "[VS]", "9201", "1002", "i-D3", "Discharge/0", "[VE]",  # 2011-01-01, 3 days
                  "LT", "[VS]", "9202", "1003", "[VE]"]  # + 3 + 1095 days (2012 is a leap year) = 2014-01-03
LATE = ["year:2030", "age:20", "8532", "8527", "[VS]", "9202", "1001", "[VE]"]


def test_visits_are_dated_like_the_converter_and_counted_after_the_source_end():
    vocabulary = Vocabulary()
    _, facts = facts_of([DATED, LATE], vocabulary)
    assert visit_dates(facts).astype(str).tolist() == ["2010-01-01", "2011-01-01", "2014-01-03", "2030-01-01"]
    _, real = facts_of([DATED[:12]], vocabulary)  # the first two visits only
    calendar = calendar_time(real, facts, datetime.date(2012, 6, 30), datetime.date(2026, 12, 2))
    assert calendar["visits_after_source_end_fraction"] == 0.5
    assert calendar["visits_after_run_date_fraction"] == 0.25
    assert calendar["real_visits_after_source_end_fraction"] == 0.0
    assert calendar["patients_with_visits_after_source_end_fraction"] == 1.0
    assert calendar["last_visit_date"] == "2030-01-01"
    per_year = calendar["visits_per_year"]
    assert per_year["years"][0] == 2010 and per_year["years"][-1] == 2030
    assert sum(per_year["synthetic"]) == 4 and sum(per_year["real"]) == 2


def test_censoring_cuts_after_the_last_visit_before_the_date_and_its_parallel_columns(tmp_path):
    rows = [["[START]"] + DATED, LATE, PROMPT + ["[VS]", "9202", "1001", "[VE]"]]
    folder = tmp_path / "generated_sequences"
    folder.mkdir()
    pq.write_table(pa.table({
        "person_id": pa.array([1, 2, 3], pa.int64()),
        "concept_ids": pa.array(rows, pa.list_(pa.string())),
        "units": pa.array([[f"u{i}" for i in range(len(row))] for row in rows], pa.list_(pa.string())),
        "ages": pa.array([[40], [20], [40]], pa.list_(pa.int64())),  # not parallel: left as it is
    }), folder / "part-0.parquet")
    totals = censor_folder(folder, tmp_path / "censored", datetime.date(2012, 6, 30))
    assert totals == {"sequences": 3, "cut": 1, "dropped": 1, "visits_removed": 2}
    censored = pq.read_table(tmp_path / "censored").to_pylist()
    assert [row["person_id"] for row in censored] == [1, 3]
    assert censored[0]["concept_ids"] == ["[START]"] + DATED[:15]  # ends with the 2011 visit's [VE]
    assert censored[0]["units"] == [f"u{i}" for i in range(16)]
    assert censored[0]["ages"] == [40]
    assert censored[1]["concept_ids"] == rows[2]
    # Nothing after the date is left.
    vocabulary = Vocabulary()
    facts = sequence_facts(read_sequences(sorted((tmp_path / "censored").glob("*.parquet")), vocabulary, ""), vocabulary)
    assert (visit_dates(facts) <= np.datetime64("2012-06-30")).all()


# --------------------------------------------------------------------------------------------
# The authors' privacy attacks
# --------------------------------------------------------------------------------------------


def patient(rng: random.Random) -> list[str]:
    tokens = [f"year:{rng.randint(1990, 2015)}", f"age:{rng.randint(0, 90)}", rng.choice(["8507", "8532"]), "8527"]
    for visit in range(rng.randint(2, 5)):
        if visit:
            tokens.append(f"D{rng.randint(1, 400)}")
        tokens += ["[VS]", "9202"] + [str(rng.randint(1001, 1060)) for _ in range(rng.randint(2, 5))] + ["[VE]"]
    return tokens


def population(count: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    return [patient(rng) for _ in range(count)]


def privacy_sets(synthetic_lists, train_lists, heldout_lists):
    vocabulary = Vocabulary()
    sets = [sequences_from_lists(lists, vocabulary) for lists in (train_lists, heldout_lists, synthetic_lists)]
    return vocabulary, [(sequences, np.arange(sequences.count)) for sequences in sets]


def test_membership_inference_tells_copies_of_training_patients_from_new_ones():
    train, heldout = population(80, seed=1), population(80, seed=2)
    vocabulary, sets = privacy_sets(train, train, heldout)
    copies = membership_inference(*sets, vocabulary, sample_size=80)
    vocabulary, sets = privacy_sets(population(80, seed=3), train, heldout)
    independent = membership_inference(*sets, vocabulary, sample_size=80)
    assert copies["sample_per_set"] == 80
    assert copies["accuracy"] >= 0.95 and copies["recall"] == 1.0
    assert 0.3 <= independent["accuracy"] <= 0.7
    # The control is the sampled training patients themselves: the same score, whatever was generated.
    assert independent["control_accuracy"] == copies["accuracy"] and independent["informative"]


def alike(count: int, seed: int) -> list[list[str]]:
    """Patients with 3 of 10 concepts and one gender and race: half of any two sets share a concept set."""
    rng = random.Random(seed)
    return [["year:2010", f"age:{rng.randint(30, 60)}", "8507", "8527", "[VS]", "9202"]
            + [str(concept) for concept in rng.sample(range(1001, 1011), 3)] + ["[VE]"] for _ in range(count)]


def test_on_patients_alike_cehrgpts_constant_threshold_is_blind_and_the_data_threshold_is_not(monkeypatch):
    train, heldout = alike(80, seed=1), alike(80, seed=2)
    vocabulary, sets = privacy_sets(train, train, heldout)
    copies = membership_inference(*sets, vocabulary, sample_size=80)
    vocabulary, sets = privacy_sets(alike(80, seed=3), train, heldout)
    fresh = membership_inference(*sets, vocabulary, sample_size=80)
    assert copies["threshold"] < 1  # nearer than one concept apart: only ages differ
    assert copies["heldout_under_threshold"] <= 0.05
    assert copies["accuracy"] >= 0.9 and copies["informative"]
    assert abs(fresh["accuracy"] - 0.5) <= 0.1 and fresh["control_accuracy"] >= 0.9
    # member_inference.THRESHOLD: every held-out patient is within 5 of a training one.
    monkeypatch.setattr(privacy, "membership_threshold", lambda distances: 5.0)
    vocabulary, sets = privacy_sets(train, train, heldout)
    constant = membership_inference(*sets, vocabulary, sample_size=80)
    assert constant["accuracy"] == 0.5 and not constant["informative"]


def test_the_membership_threshold_leaves_at_most_5_percent_of_held_out_patients_nearer():
    spread = np.random.default_rng(0).permutation(np.arange(100.0))
    assert membership_threshold(spread) == 5.0  # 0..4 are nearer: 5%
    # Ties stay on the non-member side: 3 at 0, then 10 at 2 -> threshold 2, 3% nearer.
    assert membership_threshold(np.array([0.0] * 3 + [2.0] * 10 + [7.0] * 87)) == 2.0
    # Most held-out patients have an exact twin in training: nobody can be called a member.
    assert membership_threshold(np.array([0.0] * 10 + [3.0] * 90)) == 0.0
    assert membership_threshold(np.array([4.0, 1.0])) == 1.0


def test_when_every_patient_is_the_same_the_controls_fail():
    same = [PROMPT + ["[VS]", "9202", "1001", "1002", "1003", "1004", "[VE]"]] * 30
    vocabulary, sets = privacy_sets(same, same, same)
    membership = membership_inference(*sets, vocabulary, sample_size=30)
    assert membership["control_accuracy"] == 0.5 and not membership["informative"]
    config = attribute_config(prevalence(sequence_facts(sets[0][0], vocabulary), len(vocabulary)), vocabulary.tokens)
    attributes = attribute_inference(*sets, vocabulary, config, sample_size=30)
    assert attributes["f1_control"] == attributes["f1_baseline"] == 1.0 and not attributes["informative"]


def test_attribute_inference_from_copies_beats_the_held_out_baseline():
    train, heldout = population(80, seed=1), population(80, seed=2)
    vocabulary, sets = privacy_sets(train, train, heldout)
    config = attribute_config(prevalence(sequence_facts(sets[0][0], vocabulary), len(vocabulary)), vocabulary.tokens)
    # 60 clinical concepts (1001-1060; the visit type is not one): half known, half sensitive.
    assert len(config["common_attributes"]) == 30 and len(config["sensitive_attributes"]) == 30
    copies = attribute_inference(*sets, vocabulary, config, sample_size=80)
    vocabulary, sets = privacy_sets(population(80, seed=3), train, heldout)
    independent = attribute_inference(*sets, vocabulary, config, sample_size=80)
    assert copies["f1_synthetic"] >= 0.95
    assert copies["f1_synthetic"] > copies["f1_baseline"] + 0.5
    assert abs(independent["f1_synthetic"] - independent["f1_baseline"]) < 0.1
    # The control, copies of the sampled training patients, is what the copies above scored.
    assert independent["f1_control"] == copies["f1_synthetic"] and independent["informative"]


def test_attribute_f1_is_cehrgpts_formula():
    known = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    guessed = np.array([[1, 0, 0, 0], [0, 1, 1, 1], [1, 1, 1, 1]])
    match = np.array([1, 0, 2])
    # patient 0 vs guess 1: shared 1 of 3 guessed, of 2 known -> F1 0.4; patient 1 vs guess 0: shared 0;
    # patient 2 has nothing to guess -> 0 (cehrgpt's safe_divide).
    assert attribute_f1(known, guessed, match) == pytest.approx([0.4, 0.0, 0.0])


@pytest.mark.slow
def test_the_attribute_f1_copied_from_cehrgpt_is_still_cehrgpts():
    """attribute_f1 stands in for a cehrgpt module that imports torch (~10 s)."""
    from cehrgpt.analysis.privacy.attribute_inference import cal_f1_score

    rng = np.random.default_rng(0)
    known, guessed = rng.random((50, 20)) < 0.3, rng.random((50, 20)) < 0.3
    # Matched one to one, both formulas agree...
    identity = np.arange(50)
    assert attribute_f1(known, guessed, identity) == pytest.approx(cal_f1_score(known, guessed, identity)[0])
    # ...otherwise cehrgpt 0.1.9 divides the shared concepts by the count of synthetic patient i, not of
    # i's match (vector_b, not vector_b[index_matrix]): ours uses the match's, as precision means.
    match = rng.permutation(50)
    assert attribute_f1(known, guessed, match) != pytest.approx(cal_f1_score(known, guessed, match)[0])
    assert attribute_f1(known, guessed, match) == pytest.approx(cal_f1_score(known, guessed[match], identity)[0])


# --------------------------------------------------------------------------------------------
# Utility: dimension-wise prediction
# --------------------------------------------------------------------------------------------


def grouped_patients(count: int, seed: int) -> list[list[str]]:
    """Each patient belongs to one of 4 groups; a group's 5 concepts come together (70% each), others rarely."""
    rng = random.Random(seed)
    patients = []
    for _ in range(count):
        group = rng.randrange(4)
        concepts = [str(1001 + 5 * g + i) for g in range(4) for i in range(5)
                    if rng.random() < (0.7 if g == group else 0.03)]
        patients.append(PROMPT + ["[VS]", "9202", *concepts, "[VE]"])
    return patients


def shuffled(patients: list[list[str]], seed: int) -> list[list[str]]:
    """The same prevalence of every concept, but each concept given to a random set of patients."""
    rng = random.Random(seed)
    concepts = sorted({token for tokens in patients for token in tokens[6:-1]})
    holders = {concept: [concept in tokens[6:-1] for tokens in patients] for concept in concepts}
    for flags in holders.values():
        rng.shuffle(flags)
    return [PROMPT + ["[VS]", "9202", *[c for c in concepts if holders[c][i]], "[VE]"] for i in range(len(patients))]


def utility_of(synthetic_lists, train_lists, heldout_lists):
    vocabulary = Vocabulary()
    (_, real), (_, synthetic), (_, heldout) = (facts_of(lists, vocabulary)
                                               for lists in (train_lists, synthetic_lists, heldout_lists))
    return dimension_wise_prediction(real, np.arange(real.count), synthetic, heldout, np.arange(heldout.count),
                                     len(vocabulary), vocabulary.tokens, {})


def test_dimension_wise_prediction_keeps_relations_of_copies_and_loses_them_when_shuffled():
    train, heldout = grouped_patients(400, seed=1), grouped_patients(200, seed=2)
    copies = utility_of(train, train, heldout)
    assert len(copies["concepts"]) == 20
    assert copies["auroc_real"] > 0.85
    assert copies["auroc_synthetic"] == pytest.approx(copies["auroc_real"]) and copies["ratio"] == pytest.approx(1.0)
    independent = utility_of(shuffled(train, seed=3), train, heldout)
    assert independent["auroc_real"] == pytest.approx(copies["auroc_real"])
    assert independent["auroc_synthetic"] < 0.65 and independent["ratio"] < 0.75


def test_a_synthetic_set_without_a_concept_scores_it_as_chance():
    train, heldout = grouped_patients(200, seed=1), grouped_patients(100, seed=2)
    without = [[token for token in tokens if token != "1001"] for tokens in train]
    result = utility_of(without, train, heldout)
    row = next(row for row in result["concepts"] if row["concept_id"] == "1001")
    assert row["auroc_synthetic"] == 0.5 and not row["synthetic_trainable"]


def test_censoring_drops_late_sequences_even_when_no_sequence_closes_a_visit(tmp_path):
    folder = tmp_path / "generated_sequences"
    folder.mkdir()
    unclosed = [LATE[:-1], PROMPT + ["[VS]", "9202", "1001", "D400", "[VS]", "9202"]]  # no [VE] anywhere
    pq.write_table(pa.table({"concept_ids": pa.array(unclosed, pa.list_(pa.string()))}), folder / "part-0.parquet")
    totals = censor_folder(folder, tmp_path / "censored", datetime.date(2010, 6, 30))
    # The first starts in 2030; the second's 2010 visit is kept but never closed, so nothing is left of it.
    assert totals == {"sequences": 2, "cut": 0, "dropped": 2, "visits_removed": 3}
    assert pq.read_table(tmp_path / "censored").num_rows == 0


def test_censoring_without_a_source_visit_table_fails_with_one_line(tmp_path, pipeline_env):
    folder = tmp_path / "generated_sequences"
    folder.mkdir()
    pq.write_table(pa.table({"concept_ids": pa.array([LATE], pa.list_(pa.string()))}), folder / "part-0.parquet")
    result = run_script(["-m", "cehrgpt_tutorials.report.timeline", "censor", str(folder), str(tmp_path / "out"),
                         "--source-visits", str(tmp_path / "nowhere")], pipeline_env, timeout=60)
    assert error_line(result, alone=True).startswith(f"error: no visit_occurrence Parquet files in {tmp_path / 'nowhere'}")
    assert not (tmp_path / "out").exists()
