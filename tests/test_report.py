"""inspect_synthetic.py: every validity rule, every metric on hand-built sequences with known answers,
the report files, and the exit codes. Fast: tiny Parquet files, the report computed in-process
(plus two real subprocess runs: the one-line error of the command line, and the bare invocation).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import run_script
from helpers import error_line
from synthetic_data import (
    BASE,
    BROKEN,
    PROMPT,
    WITH_DEATH,
    inspect,
    population,
    replaced,
    write_concepts,
    write_sequences,
)

import inspect_synthetic
from cehrgpt_tutorials.sequences import vocabulary as token_kinds
from cehrgpt_tutorials.sequences.codes import sequences_from_lists
from cehrgpt_tutorials.sequences.facts import sequence_facts
from cehrgpt_tutorials.sequences.grammar import VALIDITY_RULES
from cehrgpt_tutorials.sequences.vocabulary import Vocabulary


def problems_of(tokens: list[str], vocabulary: Vocabulary | None = None) -> set[str]:
    vocabulary = Vocabulary() if vocabulary is None else vocabulary
    facts = sequence_facts(sequences_from_lists([tokens], vocabulary), vocabulary)
    return {rule for rule, flags in facts.problems.items() if flags[0]}


# --------------------------------------------------------------------------------------------
# Validity rules, one at a time.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tokens",
    [
        BASE,
        WITH_DEATH,
        ["[START]"] + BASE,  # a leading [START] is dropped, as cehrgpt's converter does
        ["year:2011", "age:3", "Gender/0", "Race/0", "[VS]", "Visit/0", "1001", "[VE]"],  # artificial visit
        replaced(BASE, "i-D2", ["i-H3", "i-D2"]),  # inpatient hour token
        replaced(BASE, "Discharge/0", ["8536"])
        + ["LT", "[VS]", "9202", "1001", "[VE]"],  # discharge concept, LT
    ],
    ids=["base", "death", "start-token", "artificial-visit", "hour-token", "discharge-concept"],
)
def test_valid_sequences_break_no_rule(tokens):
    vocabulary = Vocabulary(frozenset({"8536"}))  # 8536 "Home" is a Visit-domain concept
    assert problems_of(tokens, vocabulary) == set()


def test_every_rule_has_a_case():
    assert set(BROKEN) == set(VALIDITY_RULES)


@pytest.mark.parametrize("rule", sorted(BROKEN))
def test_each_rule_is_caught_with_its_reason(rule):
    assert problems_of(BROKEN[rule]) == {rule}


@pytest.mark.parametrize(
    "sequences",
    [
        [[]],
        [[], ["year:2011"]],
        [["[VS]"]],
        [["[VE]", "[VS]"]],
        [PROMPT],
        [["[DEATH]"]],
        [["i-D3"]],
        [["[VS]", "9201"]],
    ],
)
def test_degenerate_sequences_are_invalid_without_crashing(sequences):
    vocabulary = Vocabulary()
    facts = sequence_facts(sequences_from_lists(sequences, vocabulary), vocabulary)
    assert not facts.valid.any()
    assert facts.problems["not_ending_with_visit_end"].all()


def test_time_token_before_the_first_visit_is_not_between_visits():
    assert problems_of(PROMPT + ["D4"] + BASE[4:]) == {"time_token_not_between_visits"}


def test_fast_time_token_verdicts_agree_with_cehrgpt():
    """The time-token forms classified without importing cehrgpt get the days cehrgpt's parser gives."""
    from cehrgpt.generation.omop_converter_batch import ATT_TIME_TOKENS
    from cehrgpt.gpt_utils import extract_time_interval_in_days, is_att_token

    tokens = ["D0", "D7", "D1079", "D1999", "W3", "M11", "LT", "i-D1", "i-D30"]
    # Parsed by cehrgpt, but not dated by its OMOP converter between visits (it skips the patient).
    undated = ["D2000", "D007", "W4", "M12", "Y2", "VS-D7-VE", "i-W2"]
    vocabulary = Vocabulary()
    codes = vocabulary.codes(tokens + undated)
    kinds, numbers = vocabulary.fact("kind")[codes], vocabulary.fact("number")[codes]
    for token, kind, days in zip(tokens + undated, kinds, numbers, strict=True):
        assert is_att_token(token)
        assert (kind == token_kinds.TIME) == (token in ATT_TIME_TOKENS), token
        if token in tokens:
            assert kind in (token_kinds.TIME, token_kinds.INPATIENT_TIME)
            assert days == extract_time_interval_in_days(token), token
        else:
            assert kind == token_kinds.MALFORMED_TIME, token
    for token in [
        "1001",
        "year:2011",
        "age:37",
        "Discharge/0",
        "Visit/0",
        "Gender/0",
        "Race/0",
        "[VS]",
        "[DEATH]",
    ]:
        assert not is_att_token(token)


# --------------------------------------------------------------------------------------------
# Metrics through the script, on hand-built Parquet files.
# --------------------------------------------------------------------------------------------


def test_identical_sets_give_r_one_and_zero_distances(tmp_path):
    real = population(60, seed=1)
    report = inspect(tmp_path, real, real, real_split=population(20, seed=2))
    assert report["num_sequences"] == 60 and report["valid_fraction"] == 1.0
    assert report["prevalence_pearson_r"] == pytest.approx(1.0)
    assert report["cooccurrence_pearson_r"] == pytest.approx(1.0)
    assert report["length_ks"] == 0 and report["visit_type_js"] == 0
    assert all(metric["distance"] == 0 for metric in report["distributions"].values()), report[
        "distributions"
    ]
    assert report["exact_copy_fraction"] == 1.0 and report["clinical_exact_copy_fraction"] == 1.0
    # Every synthetic patient is in the training split: nearest real neighbour at distance 0.
    assert report["nn"]["synthetic_mean_distance"] == 0 and report["nn_distance_ratio"] == 0
    assert report["nn"]["heldout_mean_distance"] > 0
    assert report["real"]["valid_fraction"] == 1.0
    # The held-out reference is the whole test/ split.
    assert report["heldout_real_sequences"] == 20 and report["nn"]["heldout_queries"] == 20
    # The bands beside within +-25%: 60 synthetic patients resampled, and a perfect model's 60.
    errors = report["prevalence_errors"]
    for band in (errors["synthetic_resamples"], errors["perfect_model"]):
        assert band["sample_size"] == 60 and 0 < band["p5"] <= band["median"] <= band["p95"] <= 1
    assert report["prevalence_within_25pct_perfect_model"] == errors["perfect_model"]["median"]


def test_disjoint_concept_sets(tmp_path):
    real = population(60, seed=1, concepts=range(1001, 1031))
    synthetic = population(40, seed=3, concepts=range(2001, 2031))
    report = inspect(tmp_path, real, synthetic)
    # Each concept is common on one side and absent on the other: prevalences anti-correlate.
    assert report["prevalence_pearson_r"] < 0
    assert report["cooccurrence_pearson_r"] < 0
    assert report["exact_copy_fraction"] == 0 and report["clinical_exact_copy_fraction"] == 0
    # No concept in common with any real patient: Jaccard distance 1 to the nearest one.
    assert report["nn"]["synthetic_mean_distance"] == 1.0
    assert report["nn_distance_ratio"] > 1
    assert report["valid_fraction"] == 1.0
    # No resample of these synthetic patients comes near a real prevalence; a perfect model's 40 patients do,
    # for about half the concepts (they are scored against 60 training patients, themselves a small sample).
    errors = report["prevalence_errors"]
    assert errors["synthetic_resamples"]["p95"] == 0.0 and errors["perfect_model"]["median"] > 0.3
    assert errors["perfect_model"]["sample_size"] == 40 and errors["perfect_model"]["training_set_size"] == 60


def test_planted_copies_are_counted(tmp_path):
    real = population(50, seed=1)
    new = population(10, seed=5, concepts=range(1001, 1041))
    copies = [list(real[index]) for index in (0, 7, 21)]
    # Same clinical concepts in the same order as a real patient, other day tokens: clinical copies only.
    retimed = []
    for index in (3, 9):
        tokens = [
            ("D999" if token.startswith("D") and token[1:].isdigit() else token) for token in real[index]
        ]
        tokens[0] = "year:1985"
        retimed.append(tokens)
    report = inspect(tmp_path, real, new + copies + retimed)
    assert report["num_sequences"] == 15
    assert report["exact_copies"] == 3
    assert report["exact_copy_fraction"] == pytest.approx(3 / 15)
    assert report["clinical_exact_copy_fraction"] == pytest.approx(5 / 15)


def test_counts_per_failure_reason(tmp_path):
    real = population(30, seed=1)
    synthetic = [BASE, WITH_DEATH] + list(BROKEN.values())
    report = inspect(tmp_path, real, synthetic)
    assert report["num_valid"] == 2
    assert report["valid_fraction"] == pytest.approx(2 / len(synthetic))
    assert report["invalid_reasons"] == {rule: 1 for rule in VALIDITY_RULES}


def test_names_and_visit_types_from_the_concept_table(tmp_path, capsys):
    concepts = tmp_path / "concept"
    write_concepts(
        concepts,
        [(1001, "Influenza vaccine", "Drug"), (1002, "Acute bronchitis", "Condition"), (9202, "Outpatient Visit", "Visit"),
         (581458, "Pharmacy visit", "Visit")],
    )  # fmt: skip
    real = [PROMPT + ["[VS]", "9202", "1001", "1002", "[VE]"]] * 5 + [
        PROMPT + ["[VS]", "9202", "1001", "[VE]"]
    ] * 5
    # 581458 is a visit type only because the concept table says its domain is Visit.
    synthetic = [PROMPT + ["[VS]", "581458", "1001", "[VE]"]] * 4
    report = inspect(tmp_path, real, synthetic, "--concept-dir", str(concepts))
    assert report["valid_fraction"] == 1.0
    top = {row["concept_id"]: row for row in report["top_concepts"]}
    assert top["1001"]["name"] == "Influenza vaccine" and top["1001"]["real_prevalence"] == 1.0
    assert top["1002"]["name"] == "Acute bronchitis" and top["1002"]["synthetic_prevalence"] == 0.0
    markdown = (tmp_path / "synthetic" / "top_p9500" / "report" / "report.md").read_text()
    assert "| 1001 | Influenza vaccine | 100.0% | 100.0% |" in markdown
    assert "581458 Pharmacy visit" in capsys.readouterr().out  # the seed's "most common after [VS]" line


REQUIRED_KEYS = {
    "num_sequences", "valid_fraction", "invalid_reasons", "prevalence_pearson_r", "cooccurrence_pearson_r",
    "length_ks", "visit_type_js", "exact_copy_fraction", "nn_distance_ratio", "converted_fraction",
    # what the summary numbers hide
    "heldout_real_sequences", "prevalence_within_25pct", "prevalence_within_25pct_perfect_model",
    "visits_after_source_end_fraction",
    "membership_inference", "attribute_inference", "dimension_wise_auroc_synthetic", "dimension_wise_auroc_real",
}  # fmt: skip


def test_report_json_markdown_and_plots_are_written(tmp_path, capsys):
    report = inspect(tmp_path, population(40, seed=1), population(30, seed=9))
    assert REQUIRED_KEYS <= set(report)
    assert report["converted_fraction"] is None  # no restored OMOP folder given
    # The attacks' values: test_the_privacy_attacks_score_planted_copies_as_known.
    folder = tmp_path / "synthetic" / "top_p9500" / "report"
    config = yaml.safe_load((folder / "attribute_inference_config.yml").read_text())
    assert len(config["common_attributes"]) == report["attribute_inference"]["common_attributes"]
    markdown = (folder / "report.md").read_text()
    images = [
        "prevalence_scatter.png",
        "distributions.png",
        "visit_types.png",
        "demographics.png",
        "validity.png",
        "prevalence_errors.png",
        "visits_per_year.png",
        "timelines.png",  # a few real and synthetic patients, before any number about them
    ]
    for name in images:
        data = (folder / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        width, height = struct.unpack(">II", data[16:24])
        assert width >= 400 and height >= 300, name
        assert f"]({name})" in markdown, name  # embedded with a relative link
    for metric in REQUIRED_KEYS - {"invalid_reasons", "num_sequences"}:
        assert metric in markdown
    output = capsys.readouterr().out
    # The seed's summary.
    assert "Number of sequences: 30" in output
    assert "Sequence length: min" in output and "Most common tokens after [VS]: 9202" in output
    assert "First 50 tokens of sequence 0: year:" in output


def test_the_privacy_attacks_score_planted_copies_as_known(tmp_path):
    """Six training patients, each with its own pair of six shared concepts (each held by two patients, so
    more common than the rest) and one concept of its own; six held-out patients with three concepts nobody
    else holds; the synthetic set is a copy of the training set. One age, gender and race throughout, so a
    squared distance is the number of concepts two patients do not share."""
    pairs = [(0, 1), (2, 3), (4, 5), (1, 2), (3, 4), (5, 0)]

    def holding(concepts: list[int]) -> list[str]:
        return ["year:2010", "age:40", "8507", "8527", "[VS]", "9202", *map(str, concepts), "[VE]"]

    train = [holding([1001 + a, 1001 + b, 2001 + i]) for i, (a, b) in enumerate(pairs)]
    heldout = [holding([3001 + 3 * i, 3002 + 3 * i, 3003 + 3 * i]) for i in range(6)]
    report = inspect(tmp_path, train, train, real_split=heldout)
    # Every held-out patient is 3 + 3 = 6 from every training patient: the threshold is 6. A copy is at 0
    # from its original (a member) and at 6 from the held-out patients (not under the threshold).
    membership = report["membership_inference"]
    assert {key: membership[key] for key in ("accuracy", "precision", "recall", "f1", "threshold",
                                             "heldout_under_threshold", "control_accuracy", "control_recall",
                                             "sample_per_set", "informative")} == {
        "accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "threshold": 6.0,
        "heldout_under_threshold": 0.0, "control_accuracy": 1.0, "control_recall": 1.0, "sample_per_set": 6,
        "informative": True}  # fmt: skip
    # Known to the attacker: the six shared concepts (2 of 6 patients); sensitive: the six own ones (1 of 6).
    # A patient's pair finds its copy, which holds its own concept (F1 1); held-out patients hold no
    # sensitive concept (F1 0); the nearest other training patient holds another own concept (F1 0).
    attributes = report["attribute_inference"]
    assert {key: attributes[key] for key in ("f1_synthetic", "f1_baseline", "f1_control", "f1_train_train",
                                             "informative", "common_attributes", "sensitive_attributes",
                                             "sample_per_set")} == {
        "f1_synthetic": 1.0, "f1_baseline": 0.0, "f1_control": 1.0, "f1_train_train": 0.0, "informative": True,
        "common_attributes": 6, "sensitive_attributes": 6, "sample_per_set": 6}  # fmt: skip
    config = yaml.safe_load((tmp_path / "synthetic" / "top_p9500" / "report" / "attribute_inference_config.yml")
                            .read_text())
    assert sorted(config["common_attributes"]) == [str(1001 + i) for i in range(6)]
    assert sorted(config["sensitive_attributes"]) == [str(2001 + i) for i in range(6)]


def test_the_report_says_when_the_privacy_attacks_cannot_see_copies(tmp_path, capsys):
    # Every patient the same: copies of training patients are as near to held-out ones as to themselves.
    report = inspect(tmp_path, [BASE] * 20, [BASE] * 10, real_split=[BASE] * 10)
    assert report["membership_inference"]["control_accuracy"] == 0.5
    assert not report["membership_inference"]["informative"] and not report["attribute_inference"]["informative"]
    markdown = (tmp_path / "synthetic" / "top_p9500" / "report" / "report.md").read_text()
    output = capsys.readouterr().out
    for text in (markdown, output):
        assert "this attack scores 0.500 on copies of training patients; here it scores 0.500" in text
        assert "Under 0.8 on copies, the attack is too weak on this data to mean anything" in text
        assert "synthetic F1 is not above the held-out baseline" in text
        assert "so the attack is too weak on this data to mean anything" in text


def test_the_report_prints_the_attack_beside_its_control_on_copies(tmp_path, capsys):
    train = population(60, seed=1)
    report = inspect(tmp_path, train, population(30, seed=3), real_split=population(30, seed=2))
    membership = report["membership_inference"]
    assert membership["informative"] and membership["control_accuracy"] >= 0.9
    assert membership["heldout_under_threshold"] <= 0.05
    markdown = (tmp_path / "synthetic" / "top_p9500" / "report" / "report.md").read_text()
    assert (f"this attack scores {membership['control_accuracy']:.3f} on copies of training patients; here it "
            f"scores {membership['accuracy']:.3f}. Member: nearer than {membership['threshold']:.3f}") in markdown
    assert "too weak" not in markdown and "too weak" not in capsys.readouterr().out


def write_restored(folder, person_ids: list[int]) -> None:
    (folder / "person").mkdir(parents=True)
    pq.write_table(pa.table({"person_id": pa.array(person_ids, pa.int64())}), folder / "person" / "a.parquet")
    (folder / "visit_occurrence").mkdir()
    pq.write_table(
        pa.table({"visit_occurrence_id": [1, 2, 3, 4, 5]}), folder / "visit_occurrence" / "a.parquet"
    )
    (folder / "condition_occurrence").mkdir()  # the converter leaves empty folders when nothing converts


def test_converted_fraction_from_the_restored_omop_folder(tmp_path):
    restored = tmp_path / "restored_omop"
    write_restored(restored, [0, 2, 3])
    report = inspect(
        tmp_path, population(20, seed=1), population(4, seed=2), "--restored-omop-dir", str(restored)
    )
    assert report["converted_fraction"] == pytest.approx(3 / 4)
    rows = report["restored_omop"]["rows"]
    assert rows["person"] == 3 and rows["visit_occurrence"] == 5 and rows["condition_occurrence"] == 0
    assert rows["drug_exposure"] is None


def test_run_restored_omop_folder_is_found_and_matched_by_person_id(tmp_path):
    # The synthetic person_ids are 0..3; 99 is no sequence of this run, so 3 of 4 converted (not 4 persons / 4).
    write_restored(tmp_path / "synthetic" / "top_p9500" / "restored_omop", [0, 2, 3, 99])
    report = inspect(tmp_path, population(20, seed=1), population(4, seed=2))
    assert report["converted_fraction"] == pytest.approx(3 / 4)
    assert report["restored_omop"]["rows"]["person"] == 4


def test_several_runs_are_inspected_newest_first(tmp_path, capsys):
    real_dir = tmp_path / "patient_sequence"
    write_sequences(real_dir, population(20, seed=1))
    parent = tmp_path / "synthetic"
    for name, age in (("top_k50", 100), ("top_p9500", 0)):
        write_sequences(parent / name / "generated_sequences", population(5, seed=age + 2), parts=1)
        for path in (parent / name / "generated_sequences").iterdir():
            os.utime(path, (1_700_000_000 - age, 1_700_000_000 - age))
    assert inspect_synthetic.main(["--synthetic-dir", str(parent), "--real-dir", str(real_dir)]) == 0
    output = capsys.readouterr().out
    assert output.index("== top_p9500") < output.index("== top_k50")
    assert (parent / "top_p9500" / "report" / "report.json").exists()
    assert (parent / "top_k50" / "report" / "report.json").exists()


def test_one_named_run_and_a_broken_run(tmp_path, capsys):
    real_dir = tmp_path / "patient_sequence"
    write_sequences(real_dir, population(20, seed=1))
    parent = tmp_path / "synthetic"
    write_sequences(parent / "top_p9500" / "generated_sequences", population(5, seed=2), parts=1)
    broken = parent / "top_k50" / "generated_sequences"
    broken.mkdir(parents=True)
    pq.write_table(pa.table({"person_id": [1, 2]}), broken / "a.parquet")  # not a patient sequence
    assert (
        inspect_synthetic.main(
            ["--synthetic-dir", str(parent), "--run", "top_p9500", "--real-dir", str(real_dir)]
        )
        == 0
    )
    assert "top_k50" not in capsys.readouterr().out
    # Both runs: the broken one is reported, the good one still gives a report and exit status 0.
    assert inspect_synthetic.main(["--synthetic-dir", str(parent), "--real-dir", str(real_dir)]) == 0
    output = capsys.readouterr().out
    assert "top_k50: skipped:" in output and "is not a patient sequence file" in output
    with pytest.raises(SystemExit) as exit_info:
        inspect_synthetic.main(
            ["--synthetic-dir", str(parent), "--run", "top_x", "--real-dir", str(real_dir)]
        )
    captured = capsys.readouterr()
    assert "no run named top_x" in error_line(
        subprocess.CompletedProcess([], exit_info.value.code, captured.out, captured.err), alone=True)


def test_no_valid_sequence_writes_the_report_and_fails(tmp_path, capsys):
    real_dir = tmp_path / "patient_sequence"
    write_sequences(real_dir, population(20, seed=1))
    run = tmp_path / "synthetic" / "top_p9500"
    write_sequences(run / "generated_sequences", [BASE[:-1]] * 3, parts=1)  # all truncated
    with pytest.raises(SystemExit) as exit_info:
        inspect_synthetic.main(["--synthetic-dir", str(run), "--real-dir", str(real_dir)])
    captured = capsys.readouterr()
    error = error_line(subprocess.CompletedProcess([], exit_info.value.code, captured.out, captured.err))
    assert "no structurally valid sequence" in error and "not_ending_with_visit_end" in error
    assert json.loads((run / "report" / "report.json").read_text())["valid_fraction"] == 0


# --------------------------------------------------------------------------------------------
# The command line: exit codes, one-line errors, the bare invocation.
# --------------------------------------------------------------------------------------------


def test_missing_folder_fails_with_one_line_and_no_traceback(tmp_path, pipeline_env):
    completed = run_script(
        ["inspect_synthetic.py", "--synthetic-dir", str(tmp_path / "missing")], pipeline_env, timeout=120
    )
    assert error_line(completed, alone=True) == (
        f"error: synthetic data folder not found: {tmp_path / 'missing'} (generate patients first, or pass --synthetic-dir)"
    )


@pytest.mark.parametrize("case", ["empty synthetic folder", "missing real folder", "empty real folder"])
def test_empty_or_missing_inputs_fail_with_one_line(tmp_path, capsys, case):
    real_dir, empty = tmp_path / "patient_sequence", tmp_path / "empty"
    write_sequences(real_dir, population(5, seed=1))
    empty.mkdir()
    synthetic = tmp_path / "synthetic" / "top_p9500" / "generated_sequences"
    write_sequences(synthetic, population(5, seed=2), parts=1)
    arguments, message = {
        "empty synthetic folder": (["--synthetic-dir", str(empty), "--real-dir", str(real_dir)], "no generated sequences in"),
        "missing real folder": (["--synthetic-dir", str(synthetic), "--real-dir", str(tmp_path / "nope")], "real patient sequences not found"),
        "empty real folder": (["--synthetic-dir", str(synthetic), "--real-dir", str(empty)], "no Parquet files in"),
    }[case]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        inspect_synthetic.main(arguments)
    captured = capsys.readouterr()
    assert message in error_line(subprocess.CompletedProcess(arguments, exit_info.value.code, captured.out,
                                                             captured.err), alone=True)


def test_bare_invocation_uses_the_setup_env_folders(tmp_path, pipeline_env):
    environment = dict(pipeline_env)
    environment.update(
        OMOP_DIR=str(tmp_path / "omop"),
        CEHR_GPT_DATA_DIR=str(tmp_path / "data"),
        SYNTHETIC_DATA_OUTPUT_DIR=str(tmp_path / "synthetic"),
    )
    write_sequences(tmp_path / "data" / "patient_sequence", population(30, seed=1))
    write_sequences(
        tmp_path / "synthetic" / "top_p9500" / "generated_sequences", population(10, seed=2), parts=1
    )
    write_concepts(tmp_path / "omop" / "concept", [(1001, "Influenza vaccine", "Drug")])
    completed = run_script(["inspect_synthetic.py"], environment, timeout=180)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "Number of sequences: 10" in completed.stdout
    report = json.loads((tmp_path / "synthetic" / "top_p9500" / "report" / "report.json").read_text())
    assert report["num_sequences"] == 10 and report["real"]["num_sequences"] == 30
    assert any(row["name"] == "Influenza vaccine" for row in report["top_concepts"])
