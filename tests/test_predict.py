"""Step 7, predict.py: a cohort in SQL, histories before the index date, four predictors, a report.

The end-to-end test runs the real script (SQL against the real PostgreSQL, cehrgpt's feature,
probe, fine-tuning, zero-shot and bootstrap commands) with the session's tiny model on the 300-person demo slice,
whose sequences carry planted marker concepts around each index date, so it also proves that
nothing dated on or after an index date reaches any model input.
"""

from __future__ import annotations

import datetime
import json
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO_ROOT, output_of, run_script
from helpers import error_line, query

from cehrgpt_tutorials.files import parquet_files
from cehrgpt_tutorials.pipeline.steps import steps_for
from cehrgpt_tutorials.prediction import cohort as cohorts
from cehrgpt_tutorials.prediction import histories

MARKER_ON_INDEX_DATE = "999999001"  # numeric, so the bag-of-concepts baseline would count it too
MARKER_BEFORE_INDEX_DATE = "999999002"
SLICE_SCHEMA = "demo_small"  # the 300 persons of the demo_omop_parquet fixture


def test_a_stratified_draw_takes_each_label_at_the_fraction_and_depends_only_on_its_seed():
    from cehrgpt_tutorials.prediction import few_shot

    labels = np.zeros(400, int)
    labels[np.random.default_rng(5).permutation(400)[:40]] = 1  # 40 positives, 360 negatives, scattered
    rows = few_shot.stratified_draw(labels, 0.25, seed=3)
    assert len(set(rows.tolist())) == len(rows) == 100 and rows.tolist() == sorted(rows.tolist())
    assert int(labels[rows].sum()) == 10  # a quarter of each label: 10 positives, 90 negatives
    assert few_shot.stratified_draw(labels, 0.25, seed=3).tolist() == rows.tolist()
    assert few_shot.stratified_draw(labels, 0.25, seed=4).tolist() != rows.tolist()
    assert few_shot.stratified_draw(labels, 1.0, seed=3).tolist() == list(range(400))
    assert int(labels[few_shot.stratified_draw(labels, 0.01, seed=3)].sum()) == 1  # at least one of each label


def test_few_shot_curves_score_both_methods_on_the_same_drawn_rows_and_leave_out_draws_without_enough_positives():
    from cehrgpt_tutorials.prediction import few_shot

    rng = np.random.default_rng(0)
    train_y, test_y = np.zeros(400, int), np.zeros(200, int)
    train_y[rng.permutation(400)[:40]], test_y[rng.permutation(200)[:20]] = 1, 1  # 10% positives
    informative = lambda labels: labels[:, None] * 1.5 + rng.normal(0, 1, (len(labels), 3))  # noqa: E731
    noise = lambda labels: rng.normal(0, 1, (len(labels), 3))  # noqa: E731
    reversed_order = np.arange(len(train_y))[::-1]
    methods = {"good": (informative(train_y), informative(test_y), 100, reversed_order),
               "noise": (noise(train_y), noise(test_y), 1000, np.arange(len(train_y)))}
    points = few_shot.curve(methods, train_y, test_y)
    assert [point["fraction"] for point in points] == [0.1, 0.25, 0.5, 1.0]
    # 10% is 4 positives: too few to cross-validate, so said and not scored.
    smallest = points[0]
    assert (smallest["train_examples"], smallest["train_positives"]) == (40, 4)
    assert (smallest["draws"], smallest["draws_left_out"], smallest["good_roc_auc"]) == (0, 3, None)
    assert points[-1]["draws"] == 1 and points[-1]["good_roc_auc"] > 0.8 and 0.3 < points[-1]["noise_roc_auc"] < 0.7
    # Each method's score at a fraction is its fit on the rows the seeded draws give, in its own fit
    # order: the same rows for both methods.
    for point in points[1:]:
        draws = [few_shot.stratified_draw(train_y, point["fraction"], seed) for seed in range(point["draws"])]
        for name, (train_x, test_x, max_iter, order) in methods.items():
            scores = [few_shot.fit_and_score(train_x[order[np.isin(order, rows)]], train_y[order[np.isin(order, rows)]],
                                             test_x, test_y, max_iter) for rows in draws]
            assert point[f"{name}_roc_auc"] == round(float(np.mean(scores)), 4), (point["fraction"], name)
            assert point[f"{name}_roc_auc_range"] == [round(min(scores), 4), round(max(scores), 4)]


def test_the_reading_of_a_task_is_generated_from_its_numbers():
    from cehrgpt_tutorials.prediction.report import reading

    task = {"test_positives": 19, "test_patients": 150, "outcome_visible_fraction": 0.35, "zero_shot_skipped": "",
            "baseline": {"roc_auc": 0.8, "roc_auc_ci": [0.7, 0.9]},
            "linear_probe": {"roc_auc": 0.45, "roc_auc_ci": [0.3, 0.6]},
            "zero_shot": {"roc_auc": 0.3, "roc_auc_ci": [0.2, 0.4]},
            "few_shot": [{"train_examples": 86, "draws": 3, "probe_roc_auc": 0.64, "baseline_roc_auc": 0.62}]}
    sentences = reading(task)
    assert sentences[0] == ("19 positives among 150 test examples: a ROC-AUC interval here is about 0.23 wide, so "
                            "only differences larger than that are evidence.")
    assert any(sentence.startswith("Warning: the model never sees most of these outcomes (only 35%") for sentence in sentences)
    assert "bag-of-concepts logistic regression: better than chance (its interval is above 0.5)." in sentences
    assert "cehrgpt zero-shot (sampled futures): worse than chance (its interval is below 0.5)." in sentences
    assert "cehrgpt features + linear probe: not distinguishable from chance (its interval spans 0.5)." in sentences
    assert any("bag-of-concepts logistic regression is above cehrgpt zero-shot" in sentence for sentence in sentences)
    assert sentences[-1].startswith("With the fewest labels (86 train examples) the probe scores 0.640 against the "
                                    "baseline's 0.620")


def test_history_ends_with_the_last_whole_visit_before_the_index_date():
    day = 86_400
    tokens = ["year:2010", "age:30", "8507", "8527", "[VS]", "9202", "1", "[VE]", "D5", "[VS]", "9201", "2", "[VE]"]
    times = [0, 0, 0, 0, 0, 0, 0, 0, 5 * day, 5 * day, 5 * day, 9 * day, 9 * day]  # the 2nd visit spans days 5-9
    assert histories.history_end(tokens, times, 1 * day) == 8  # first visit only, no trailing time token
    assert histories.history_end(tokens, times, 6 * day) == 8  # the visit under way on the index date is left out
    assert histories.history_end(tokens, times, 10 * day) == len(tokens)
    assert histories.history_end(tokens, times, 0) == 0  # nothing before: no history


def test_make_predict_runs_the_demo_up_to_training_then_predict_and_make_demo_leaves_it_out():
    assert [step.name for step in steps_for("predict")] == ["demo-db", "export", "sequences", "cleanup", "train",
                                                            "predict"]
    assert "predict" not in [step.name for step in steps_for("all")]


def test_fine_tuning_is_on_by_default_bounded_in_epochs_and_can_be_left_out():
    from predict import parse_arguments

    assert parse_arguments([]).fine_tune_epochs == 5 and not parse_arguments([]).no_fine_tune
    assert parse_arguments(["--no-fine-tune"]).no_fine_tune
    with pytest.raises(SystemExit):
        parse_arguments(["--fine-tune-epochs", "0"])


def plant_markers(source, target, cohort) -> dict[int, datetime.date]:
    """Copy a patient_sequence folder, adding to each cohort person's sequence a marker token dated on
    the index date (where the first later token is) and one inside the last visit before it."""
    index_dates = dict(zip(cohort["subject_id"].astype(int), cohort["cohort_start_date"], strict=True))
    for path in parquet_files(source):
        table = pq.read_table(path)
        parallel = [f.name for f in table.schema if pa.types.is_list(f.type)]
        rows = table.to_pylist()
        for row in rows:
            start = index_dates.get(int(row["person_id"]))
            if start is None:
                continue
            tokens, times = row["concept_ids"], row["epoch_times"]
            index_seconds = histories.index_seconds(start)
            later = [i for i, t in enumerate(times) if t >= index_seconds]
            on_index = later[0] if later else len(tokens)
            end = histories.history_end(tokens, times, index_seconds)
            inserts = [(on_index, MARKER_ON_INDEX_DATE, int(index_seconds))]
            if end:  # inside the last whole visit before the index date, just before its [VE]
                inserts.append((end - 1, MARKER_BEFORE_INDEX_DATE, times[end - 1]))
            for position, marker, when in sorted(inserts, reverse=True):
                for name in parallel:
                    values = row[name]
                    if values is not None and len(values) == len(tokens) and name not in ("concept_ids", "epoch_times"):
                        values.insert(position, values[min(position, len(values) - 1)])
                tokens.insert(position, marker)
                times.insert(position, when)
            row["num_of_concepts"] = len(tokens)
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), destination)
    return index_dates


def tokens_in(folder) -> list[list[str]]:
    return [tokens for path in parquet_files(folder)
            for tokens in pq.read_table(path, columns=["concept_ids"]).column("concept_ids").to_pylist()]


@pytest.fixture(scope="module")
def prediction_run(tiny_model, demo_patient_sequence, demo_omop_parquet, pg_server, pipeline_env, tmp_path_factory):
    """predict.py end to end on the demo slice with planted markers (about a minute; 2 epochs of fine-tuning)."""
    import psycopg2

    assert tiny_model["result"].returncode == 0, output_of(tiny_model["result"])
    folder = tmp_path_factory.mktemp("predict")
    connection = psycopg2.connect(pg_server)
    try:
        cohort = cohorts.query_cohort(connection, cohorts.DEFAULT_COHORT_SQL.read_text(), SLICE_SCHEMA, "default")
    finally:
        connection.close()
    planted = folder / "patient_sequence"
    plant_markers(demo_patient_sequence, planted, cohort)
    output = folder / "prediction"
    result = run_script(
        ["predict.py", "--dsn", pg_server, "--cdm-schema", SLICE_SCHEMA, "--cohort-schema", "predict_test",
         "--sql", cohorts.DEFAULT_COHORT_SQL, "--patient-sequence-dir", planted, "--model-dir", tiny_model["model_dir"],
         "--output-dir", output, "--max-new-tokens", "16", "--n-boot", "200", "--fine-tune-epochs", "2"],
        env=pipeline_env, timeout=900)
    return {"result": result, "output": output, "planted": planted, "cohort": cohort, "uri": pg_server}


@pytest.mark.slow
def test_predict_writes_the_report_with_intervals_for_the_four_methods(prediction_run):
    result, output = prediction_run["result"], prediction_run["output"]
    assert result.returncode == 0, output_of(result)
    report = json.loads((output / "predict_report.json").read_text())
    cohort = prediction_run["cohort"]
    assert report["task"] == "er_visit_within_365_days"
    assert report["positives"] == int(cohort["label"].sum())
    assert report["test_patients"] + report["train_patients"] + report["dropped_no_history"] + \
        report["dropped_no_sequence"] == len(cohort)
    for key in ("linear_probe", "fine_tune", "zero_shot", "baseline"):
        low, high = report[key]["roc_auc_ci"]
        assert 0 <= low <= report[key]["roc_auc"] <= high <= 1, (key, report[key])
        assert 0 <= report[key]["pr_auc"] <= 1
    for name in ("predict_report.md", "roc_curves.png", "calibration.png", "few_shot.png"):
        assert (output / name).stat().st_size > 0
    # One task: its numbers at the top and as the only entry of `tasks`; zero-shot's outcome from the
    # SQL's own header line.
    assert [task["task"] for task in report["tasks"]] == ["er_visit_within_365_days"]
    assert report["outcome_tokens"] == ["9203"] and 0 <= report["outcome_visible_fraction"] <= 1
    # The few-shot curve: the probe and the baseline at each size, on the same test examples.
    assert [point["fraction"] for point in report["few_shot"]] == [0.1, 0.25, 0.5, 1.0]
    full = report["few_shot"][-1]
    assert full["train_examples"] == report["train_patients"] and full["draws"] == 1
    # All the examples: the very fits of the probe and the baseline above, so the same ROC-AUC.
    for name, method in (("probe", "linear_probe"), ("baseline", "baseline")):
        assert full[f"{name}_roc_auc"] == pytest.approx(report[method]["roc_auc"], abs=1e-3), name
    # The reading is generated from the numbers: the interval width and each method's verdict.
    assert report["reading"][0].startswith(f"{report['test_positives']} positives among {report['test_patients']}")
    assert sum("chance" in sentence for sentence in report["reading"]) == 4
    # Every cehrgpt command is printed as it runs.
    for module in ("compute_cehrgpt_features", "train_with_cehrgpt_features", "hf_cehrgpt_finetune_runner",
                   "time_to_event_prediction", "bootstrap_ci"):
        assert "-m cehrgpt." in result.stdout and module in result.stdout, module


@pytest.mark.slow
def test_without_sql_every_task_of_the_cohort_folder_runs_into_one_report(tiny_model, demo_patient_sequence,
                                                                         pg_server, pipeline_env, tmp_path):
    # Three tasks on the ER cohort's index dates: the ER one; an outpatient visit in the year (the same
    # examples, other labels: its cehrgpt features are reused, relabelled); and an outcome no one has
    # (no positives: skipped with its reason, while the others run).
    folder = tmp_path / "cohorts"
    folder.mkdir()
    sql = cohorts.DEFAULT_COHORT_SQL.read_text()
    (folder / "er_a.sql").write_text(sql)
    (folder / "outpatient.sql").write_text(sql.replace("er.visit_concept_id = 9203", "er.visit_concept_id = 9202"))
    (folder / "never.sql").write_text(sql.replace("er.visit_concept_id = 9203", "er.visit_concept_id = -1"))
    output = tmp_path / "prediction"
    result = run_script(
        ["predict.py", "--dsn", pg_server, "--cdm-schema", SLICE_SCHEMA, "--cohort-schema", "predict_tasks",
         "--cohort-dir", folder, "--patient-sequence-dir", demo_patient_sequence, "--model-dir",
         tiny_model["model_dir"], "--output-dir", output, "--no-zero-shot", "--no-fine-tune", "--n-boot", "50"],
        env=pipeline_env, timeout=900)
    assert result.returncode == 0, output_of(result)
    report = json.loads((output / "predict_report.json").read_text())
    assert [task["task"] for task in report["tasks"]] == ["er_a", "outpatient"] and report["task"] == "er_a"
    assert list(report["skipped_tasks"]) == ["never"] and "0 positive" in report["skipped_tasks"]["never"]
    assert (output / "er_a" / "predict_report.md").is_file() and (output / "er_a" / "few_shot.png").is_file()
    text = (output / "predict_report.md").read_text()
    assert "| er_a |" in text and "| outpatient |" in text and "never: not run" in text
    assert "(er_a/roc_curves.png)" in text and "(outpatient/few_shot.png)" in text
    # The features were computed once (one printed command) and reused with the second task's labels.
    assert result.stdout.count("-m cehrgpt.tools.linear_prob.compute_cehrgpt_features") == 1
    assert "the same examples as er_a: its cehrgpt features, with this task's labels" in result.stdout
    for task in ("er_a", "outpatient"):
        features = pq.read_table(output / task / "cehrgpt_features" / "features_with_label" / "test_features").to_pandas()
        examples = pq.read_table(output / task / "cohort_sequences" / "test").to_pandas()
        labels = dict(zip(zip(examples["person_id"], examples["index_date"].dt.date, strict=True), examples["label"],
                          strict=True))
        assert all(labels[(person, time.date())] == value for person, time, value in
                   zip(features["subject_id"], features["prediction_time"], features["boolean_value"], strict=True))
    cohort_ids = {row[0] for row in query(pg_server, "SELECT DISTINCT cohort_definition_id FROM predict_tasks.cohort")}
    assert {1, 2, 5, 6} <= cohort_ids <= {1, 2, 3, 4, 5, 6}  # each task its own pair of ids (never: 3, 4)


def printed_command(stdout: str, module: str) -> list[str]:
    """The one command line predict.py printed ("$ ...") that runs module."""
    lines = [line[2:] for line in stdout.splitlines() if line.startswith("$ ") and f"-m {module} " in line]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])


def argument(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def in_output(path: str, output: Path) -> Path:
    """Where a path inside the run's temporary folder (.NAME.tmp-XXXX/...) is once swapped into output."""
    parts = Path(path).parts
    start = next(i for i, part in enumerate(parts) if part.startswith(f".{output.name}.tmp-"))
    return output.joinpath(*parts[start + 1:])


@pytest.mark.slow
def test_fine_tuning_predicts_every_test_patient_with_the_runner_command_it_printed(prediction_run):
    result, output = prediction_run["result"], prediction_run["output"]
    assert result.returncode == 0, output_of(result)
    command = printed_command(result.stdout, "cehrgpt.runners.hf_cehrgpt_finetune_runner")
    # The workarounds are in the command a learner copies: the held-out examples as the test data,
    # early stopping's per-epoch evaluation and saving, and new folders inside this run's folder.
    assert in_output(argument(command, "--data_folder"), output) == output / "cohort_sequences" / "train"
    assert in_output(argument(command, "--test_data_folder"), output) == output / "cohort_sequences" / "test"
    assert (argument(command, "--eval_strategy"), argument(command, "--save_strategy"),
            argument(command, "--load_best_model_at_end"), argument(command, "--num_train_epochs")) == \
        ("epoch", "epoch", "true", "2")
    model_out = in_output(argument(command, "--output_dir"), output)
    assert model_out == output / "fine_tune" / "model"
    assert in_output(argument(command, "--dataset_prepared_path"), output) == output / "fine_tune" / "dataset_prepared"
    assert (model_out / "model.safetensors").is_file() and (output / "logs" / "hf_cehrgpt_finetune_runner.log").is_file()
    # A prediction for every test example, and for nothing else, in the format the bootstrap reads.
    test = pq.read_table(output / "cohort_sequences" / "test").to_pandas()
    predictions = pd.read_parquet(model_out / "test_predictions")
    assert sorted(predictions["subject_id"]) == sorted(test["person_id"])
    by_person = test.set_index("person_id")
    assert all(by_person.loc[person, "index_date"] == when
               for person, when in zip(predictions["subject_id"], predictions["prediction_time"], strict=True))
    assert list(predictions["boolean_value"].astype(int)) == [int(by_person.loc[p, "label"]) for p in predictions["subject_id"]]
    assert predictions["predicted_boolean_probability"].between(0, 1).all()
    report = json.loads((output / "predict_report.json").read_text())
    tuned = report["fine_tune"]
    assert 1 <= tuned["epochs_trained"] <= tuned["epochs"] == 2
    assert 1 <= tuned["best_epoch"] <= tuned["epochs_trained"] == len(tuned["validation_loss"])
    assert "## Fine-tuning" in (output / "predict_report.md").read_text()


@pytest.mark.slow
def test_the_probe_gap_bench_refits_step_7s_own_baseline_on_its_examples(prediction_run, pipeline_env, tmp_path):
    # bench/probe_gap.py explains the probe's gap to the baseline by refitting on other inputs; its
    # comparisons mean something only if its baseline is step 7's own (same examples, same fit).
    output = prediction_run["output"]
    report = json.loads((output / "predict_report.json").read_text())
    result = run_script([str(REPO_ROOT / "bench" / "probe_gap.py"), "--prediction-dir", output,
                         "--json", tmp_path / "gap.json"], env=pipeline_env, timeout=300)
    assert result.returncode == 0, output_of(result)
    [task] = json.loads((tmp_path / "gap.json").read_text())
    assert task["task"] == report["task"] and task["test_positives"] == report["test_positives"]
    assert task["auroc_baseline"] == pytest.approx(report["baseline"]["roc_auc"], abs=1e-3)
    # Its probe and decoding figures, computed here with sklearn from step 7's inputs: the probe is
    # LogisticRegressionCV (ROC-AUC, seed 42, max_iter 1000) on the standardised cehrgpt features; the
    # decoding is a logistic regression from them to each of the baseline's 10 heaviest concepts.
    expected = probe_and_decoding_auroc(output)
    assert task["auroc_probe"] == pytest.approx(expected["auroc_probe"], abs=1e-4)
    assert task["features_decode_top10_concepts_auroc"] == pytest.approx(expected["decoding"], abs=1e-4)


def probe_and_decoding_auroc(task_dir: Path) -> dict:
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    from cehrgpt_tutorials.prediction import few_shot, models

    train = pq.read_table(task_dir / "cohort_sequences" / "train")
    test = pq.read_table(task_dir / "cohort_sequences" / "test")
    methods, train_y, test_y = models.few_shot_features(train, test, task_dir)  # step 7's rows, in its order
    scaler = StandardScaler().fit(methods["probe"][0])
    probe_train, probe_test = scaler.transform(methods["probe"][0]), scaler.transform(methods["probe"][1])
    with threadpool_limits(few_shot.math_threads()):
        probe = LogisticRegressionCV(scoring="roc_auc", random_state=42, max_iter=1000).fit(probe_train, train_y)
        baseline = LogisticRegressionCV(scoring="roc_auc", random_state=42, max_iter=1000).fit(methods["baseline"][0],
                                                                                             train_y)
    top = np.argsort(-np.abs(baseline.coef_[0][:-1]))[:10]  # the last column is age
    present = [np.asarray(matrix[:, top].todense()) > 0 for matrix in (methods["baseline"][0], methods["baseline"][1])]
    scores = []
    for column in range(10):
        counts = (present[0][:, column].sum(), present[1][:, column].sum())
        if min(*counts, len(present[0]) - counts[0], len(present[1]) - counts[1]) >= 3:
            model = LogisticRegression(max_iter=1000).fit(probe_train, present[0][:, column])
            scores.append(roc_auc_score(present[1][:, column], model.predict_proba(probe_test)[:, 1]))
    return {"auroc_probe": roc_auc_score(test_y, probe.predict_proba(probe_test)[:, 1]),
            "decoding": float(np.mean(scores)) if scores else None}


@pytest.mark.slow
def test_predict_writes_the_target_and_outcome_cohorts_into_the_cohort_table(prediction_run):
    assert prediction_run["result"].returncode == 0, output_of(prediction_run["result"])
    cohort = prediction_run["cohort"]
    assert query(prediction_run["uri"], "SELECT cohort_definition_id, count(*) FROM predict_test.cohort "
                                        "GROUP BY 1 ORDER BY 1") == [(1, len(cohort)), (2, int(cohort["label"].sum()))]


@pytest.mark.slow
def test_no_event_on_or_after_the_index_date_reaches_any_model_input(prediction_run):
    assert prediction_run["result"].returncode == 0, output_of(prediction_run["result"])
    planted = [tokens for tokens in tokens_in(prediction_run["planted"]) if MARKER_ON_INDEX_DATE in tokens]
    assert len(planted) >= len(prediction_run["cohort"]) - 10  # the markers are there to be leaked
    output = prediction_run["output"]
    # What cehrgpt's feature extraction and zero-shot (its shards) read, and what the baseline counted.
    examples = tokens_in(output / "cohort_sequences")
    zero_shot_prompts = tokens_in(output / "zero_shot_inputs")
    assert examples and len(zero_shot_prompts) == json.loads((output / "predict_report.json").read_text())["test_patients"]
    assert not [tokens for tokens in examples + zero_shot_prompts if MARKER_ON_INDEX_DATE in tokens]
    baseline_features = json.loads((output / "baseline" / "features.json").read_text())["concepts"]
    assert MARKER_ON_INDEX_DATE not in baseline_features
    # The check can fail: the marker planted the day before the index date is in every history.
    assert all(MARKER_BEFORE_INDEX_DATE in tokens for tokens in examples)
    assert MARKER_BEFORE_INDEX_DATE in baseline_features
    # What cehrgpt's fine-tuning runner read: the folders its printed command names.
    command = printed_command(prediction_run["result"].stdout, "cehrgpt.runners.hf_cehrgpt_finetune_runner")
    fine_tuning = {flag: tokens_in(in_output(argument(command, flag), output))
                   for flag in ("--data_folder", "--test_data_folder")}
    assert fine_tuning["--data_folder"] and fine_tuning["--test_data_folder"]
    assert len(fine_tuning["--data_folder"]) + len(fine_tuning["--test_data_folder"]) == len(examples)
    for tokens in fine_tuning.values():
        assert not [row for row in tokens if MARKER_ON_INDEX_DATE in row]
        assert all(MARKER_BEFORE_INDEX_DATE in row for row in tokens)
    # What it trained and predicted on: its tokenized dataset, where the tokenizer has already dropped
    # unknown tokens like the markers, so the check is on time: every token dated before the index date
    # (the runner's index_date: POSIX seconds of its midnight UTC), and no patient in two of its parts.
    from datasets import load_from_disk

    prepared = [path for path in (output / "fine_tune" / "dataset_prepared").iterdir() if path.is_dir()]
    assert len(prepared) == 1, prepared
    splits = load_from_disk(str(prepared[0]))
    assert sorted(splits) == ["test", "train", "validation"]
    assert len(splits["train"]) + len(splits["validation"]) == len(fine_tuning["--data_folder"])
    assert len(splits["test"]) == len(fine_tuning["--test_data_folder"])
    for name in splits:
        late = [(person, max(times), index) for person, times, index in
                zip(splits[name]["person_id"], splits[name]["epoch_times"], splits[name]["index_date"], strict=True)
                if max(times) >= index]
        assert not late, (name, late[:3])
    patients = {name: set(splits[name]["person_id"]) for name in splits}
    assert not (patients["train"] & patients["validation"] or patients["test"] & (patients["train"] | patients["validation"]))


@pytest.mark.parametrize("sql, message", [
    ("SELECT person_id AS subject_id, DATE '2010-01-01' AS cohort_start_date, DATE '2010-12-31' AS cohort_end_date, "
     "NULL::date AS outcome_date FROM @cdm_schema.person WHERE false", "returned no rows"),
    ("SELECT person_id AS subject_id FROM @cdm_schema.person", "lacks the column(s) cohort_start_date"),
    ("SELEC 1", "failed: syntax error at or near"),
])
def test_a_bad_cohort_sql_is_a_one_line_error(sql, message, demo_cdm, pipeline_env, tmp_path):
    sql_file = tmp_path / "cohort.sql"
    sql_file.write_text(sql + ";\n")
    # The cohort is read before the model is needed: no model here.
    result = run_script(["predict.py", "--dsn", demo_cdm["uri"], "--sql", sql_file, "--outcome-concepts", "9203",
                         "--model-dir", tmp_path / "no_model", "--output-dir", tmp_path / "out"],
                        env=pipeline_env, timeout=120)
    assert message in error_line(result, alone=True)
    assert not (tmp_path / "out").exists()


def test_in_process_fits_use_the_math_threads_cehrgpts_commands_get(monkeypatch):
    """An unconverged LogisticRegressionCV's result depends on the BLAS thread count, so the few-shot
    curve's 100% point equals cehrgpt's probe only when both fit with the same number of threads."""
    import sklearn.linear_model
    from threadpoolctl import threadpool_info

    from cehrgpt_tutorials.prediction import few_shot, models

    seen = []

    class RecordingFit(sklearn.linear_model.LogisticRegressionCV):
        def fit(self, x, y, **kwargs):
            seen.extend(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas")
            return super().fit(x, y, **kwargs)

    monkeypatch.setattr(sklearn.linear_model, "LogisticRegressionCV", RecordingFit)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    rng = np.random.default_rng(0)
    few_shot.fit(rng.normal(size=(40, 3)), np.arange(40) % 2, max_iter=50)
    assert seen and set(seen) == {1}
    assert models.subprocess_environment()["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert few_shot.math_threads() == 2 and models.subprocess_environment()["OMP_NUM_THREADS"] == "2"
