"""predict.py's steps, per task: cohort -> histories -> baseline -> linear probe -> fine-tuning -> zero-shot
-> few-shot curves -> report; then one report over every task.

Everything is built in a temporary folder beside --output-dir and swapped into place at the end, so
a failed or interrupted run leaves the previous report as it was (and cehrgpt's tools, which append
to or resume from their output folders, always start from empty ones).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cehrgpt_tutorials.db import connect
from cehrgpt_tutorials.errors import PipelineError
from cehrgpt_tutorials.files import atomic_directory
from cehrgpt_tutorials.locks import application_name, output_lock, schema_lock
from cehrgpt_tutorials.pipeline.training import training_not_finished, unfinished_model_problem
from cehrgpt_tutorials.prediction import cohort as cohorts
from cehrgpt_tutorials.prediction import few_shot, histories, models, report
from cehrgpt_tutorials.prediction.models import TooFewExamples

REPORT_NAME = "predict_report.json"
HEADER_NAMES = ("outcome_concepts", "zero_shot")  # what a cohort SQL's comments may say about its task


def model_context(model_dir: Path) -> int:
    """The model's context length (tokens), from its config.json."""
    problem = unfinished_model_problem(model_dir)
    if problem is not None:
        raise PipelineError(problem)
    config_path = Path(model_dir) / "config.json"
    config = json.loads(config_path.read_text())
    context = config.get("n_positions") or config.get("max_position_embeddings")
    if not context:
        raise PipelineError(f"{config_path} names no context length (n_positions / max_position_embeddings)")
    return int(context)


def model_vocabulary(model_dir: Path) -> set[str]:
    """The tokens of the model's tokenizer (cehrgpt_tokenizer.json is a Hugging Face WordLevel tokenizer)."""
    path = Path(model_dir) / "cehrgpt_tokenizer.json"
    if not path.is_file():
        raise PipelineError(f"no cehrgpt tokenizer in {model_dir} (cehrgpt_tokenizer.json)")
    return set(json.loads(path.read_text())["model"]["vocab"])


def checked_outcome_tokens(task: Task, zero_shot: bool, vocabulary: set[str]) -> list[str]:
    """The outcome concepts zero-shot looks for, those the model knows (none needed without zero-shot)."""
    outcome_tokens = [str(token) for token in task.outcome_concepts]
    if not zero_shot:
        return outcome_tokens
    if not outcome_tokens:
        raise PipelineError(f"zero-shot needs the outcome's concept ids of {task.sql.name}: pass --outcome-concepts, "
                            "write a '-- outcome_concepts: ...' line in the SQL, or pass --no-zero-shot")
    known = [token for token in outcome_tokens if token in vocabulary]
    if not known:
        raise PipelineError(f"none of the outcome concepts {', '.join(outcome_tokens)} of {task.name} is in the "
                            "model's vocabulary, so no sampled future can contain one; pass others or --no-zero-shot")
    return known


def check_output_dir(output_dir: Path) -> None:
    """Replace only a folder this script made (it holds predict_report.json) or an empty one."""
    if output_dir.exists() and any(output_dir.iterdir()) and not (output_dir / REPORT_NAME).exists():
        raise PipelineError(f"{output_dir} is not empty and holds no {REPORT_NAME}: not replacing it; "
                            "choose another --output-dir")


def stage(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.monotonic()


@dataclass(frozen=True)
class Task:
    """One prediction task: a cohort SQL and what zero-shot looks for."""

    name: str
    sql: Path
    outcome_concepts: list[str]
    cohort_id: int  # the target cohort's id in the cohort table; the outcome's is the next one
    zero_shot_off: str = ""  # why zero-shot is skipped for this task (its SQL says), or empty


def sql_header(sql_path: Path) -> dict[str, str]:
    """The `-- name: value` lines of a cohort SQL's comments (outcome_concepts, zero_shot)."""
    header = {}
    for line in Path(sql_path).read_text().splitlines():
        text = line.strip()
        if text.startswith("--") and ":" in text:
            name, value = text.lstrip("-").strip().split(":", 1)
            if name.strip() in HEADER_NAMES:
                header[name.strip()] = value.strip()
    return header


def task_of(sql_path: Path, name: str, outcome_concepts: list[str] | None, cohort_id: int) -> Task:
    if not Path(sql_path).is_file():
        raise PipelineError(f"cohort SQL file {sql_path} does not exist")
    header = sql_header(sql_path)
    concepts = outcome_concepts or header.get("outcome_concepts", "").split()
    zero_shot = header.get("zero_shot", "")
    off = zero_shot.split(",", 1)[1].strip() if zero_shot.startswith("off") and "," in zero_shot else \
        ("its SQL says so" if zero_shot.startswith("off") else "")
    return Task(name, Path(sql_path), concepts, cohort_id, off)


def tasks_to_run(arguments) -> list[Task]:
    """--sql: that task; else every cohort SQL in --cohort-dir (default COHORT_SQL_DIR), the default one
    first, each with its own pair of cohort ids."""
    if arguments.sql is not None:
        return [task_of(arguments.sql, arguments.task_name or Path(arguments.sql).stem, arguments.outcome_concepts,
                        arguments.cohort_id)]
    folder = Path(getattr(arguments, "cohort_dir", None) or cohorts.COHORT_SQL_DIR)
    files = sorted(folder.glob("*.sql"), key=lambda path: (path != cohorts.DEFAULT_COHORT_SQL, path.name))
    if not files:
        raise PipelineError(f"no cohort SQL files (*.sql) in {folder}")
    return [task_of(path, path.stem, None, arguments.cohort_id + 2 * number) for number, path in enumerate(files)]


def run(arguments) -> dict:
    """All of step 7; returns the report (also written to output_dir/predict_report.json)."""
    output_dir = Path(arguments.output_dir)
    # One run per output folder: a second one stops here, naming the first.
    with output_lock(output_dir, "the prediction folder"):
        return run_locked(arguments, output_dir)


def run_locked(arguments, output_dir: Path) -> dict:
    started = time.monotonic()
    check_output_dir(output_dir)
    tasks = tasks_to_run(arguments)
    unfinished = training_not_finished(arguments.model_dir)
    if unfinished is not None:  # a missing model is found after the cohort (its SQL is checked first)
        raise PipelineError(unfinished)
    with atomic_directory(output_dir) as work:
        results, skipped = [], {}
        examples_seen: dict[str, Path] = {}  # fingerprint of a task's examples -> the folder of the first task with them
        for number, task in enumerate(tasks, start=1):
            if len(tasks) == 1:
                results.append(run_task(arguments, task, work, examples_seen))
                continue
            print(f"\n#### task {number} of {len(tasks)}: {task.name}", flush=True)
            try:
                results.append(run_task(arguments, task, work / task.name, examples_seen))
            except TooFewExamples as error:  # one task too small for this CDM: the others still run
                skipped[task.name] = str(error)
                print(f"  skipped: {error}", flush=True)
        if not results:
            raise PipelineError("no task could be trained and tested: " + "; ".join(f"{name}: {why}" for name, why in skipped.items()))
        # The first task's keys stay at the top, so readers of a one-task report keep working.
        combined = {**results[0], "tasks": results, "skipped_tasks": skipped,
                    "seconds_total": round(time.monotonic() - started, 1)}
        report.write_report(work, combined, several=len(tasks) > 1)
    print()
    for result in results:
        print(f"{result['task']}: test patients {result['test_patients']} ({result['test_positives']} positives)")
        for key, name in report.METHODS.items():
            if key in result:
                low, high = result[key]["roc_auc_ci"]
                print(f"  {name:<38} ROC-AUC {result[key]['roc_auc']:.3f} ({low:.3f}-{high:.3f})  "
                      f"PR-AUC {result[key]['pr_auc']:.3f}")
    print(f"report: {output_dir / 'predict_report.md'} (and .json, plots); {combined['seconds_total']:.0f} s")
    return combined


def run_task(arguments, task: Task, work: Path, examples_seen: dict[str, Path]) -> dict:
    """One task, from its SQL to its report folder `work`; returns its numbers. The eight stages run in
    order, each reading what the one before wrote; `seconds` collects each stage's wall time."""
    started = time.monotonic()
    seconds: dict[str, float] = {}
    with timed_stage(seconds, "cohort", f"1/8 cohort: {task.sql} against schema {arguments.cdm_schema}"):
        cohort = write_cohort(arguments, task)
    context = model_context(arguments.model_dir)
    zero_shot = not arguments.no_zero_shot and not task.zero_shot_off
    outcome_tokens = checked_outcome_tokens(task, zero_shot, model_vocabulary(arguments.model_dir))
    work.mkdir(parents=True, exist_ok=True)
    with timed_stage(seconds, "histories", "2/8 histories: each patient's sequence before the index date, "
                                           f"from {arguments.patient_sequence_dir}"):
        examples, paths = split_histories(arguments, cohort, work)
    plan = ZeroShotPlan(zero_shot, outcome_tokens, time_at_risk(cohort), arguments.max_new_tokens)
    predictions = run_predictors(arguments, examples, paths, work, context, plan, examples_seen, seconds)
    with timed_stage(seconds, "few_shot", "7/8 few-shot: the linear probe and the baseline on 10%, 25%, 50% and "
                                          "100% of the train examples"):
        shots = few_shot_curves(task, examples, work)
    with timed_stage(seconds, "report", "8/8 bootstrap intervals and report"):
        summaries = method_summaries(arguments, predictions, work, plan)
        all_positives, visible = histories.outcome_seen_in_future(
            cohort.iloc[examples.considered_rows], arguments.patient_sequence_dir, outcome_tokens or ["-"],
            arguments.test_fraction)
    train_labels = examples.train.column("label").to_pylist()
    test_labels = examples.test.column("label").to_pylist()
    result = {
        "task": task.name,
        "task_description": first_comment_line(task.sql),
        "cohort_sql": str(task.sql),
        "cohort_table": f"{arguments.cohort_schema}.cohort",
        "cohort_ids": [task.cohort_id, task.cohort_id + 1],
        "cohort_rows": len(cohort),
        "positives": int(cohort["label"].sum()),
        "dropped_no_sequence": examples.no_sequence,
        "dropped_no_history": examples.no_history,
        "split_source": examples.split_source,
        "capped": examples.capped,
        "train_patients": len(train_labels),
        "train_positives": int(sum(train_labels)),
        "test_patients": len(test_labels),
        "test_positives": int(sum(test_labels)),
        "test_prevalence": round(sum(test_labels) / len(test_labels), 4),
        "outcome_tokens": outcome_tokens,
        "outcome_visible_fraction": round(visible / all_positives, 4) if all_positives else 0.0,
        "zero_shot_skipped": "" if zero_shot else (task.zero_shot_off or "--no-zero-shot"),
        "model_dir": str(arguments.model_dir),
        "context": context,
        "device": compute_device(),
        **summaries,
        "few_shot": shots,
        "seconds": {key: round(value, 1) for key, value in seconds.items()},
        "seconds_total": round(time.monotonic() - started, 1),
    }
    result["reading"] = report.reading(result)
    report.write_task_report(work, result)
    return result


@contextmanager
def timed_stage(seconds: dict[str, float], key: str, title: str):
    """Print the stage's title; when it succeeds, record its wall time as seconds[key]."""
    started = stage(title)
    yield
    seconds[key] = time.monotonic() - started


@dataclass(frozen=True)
class ZeroShotPlan:
    """What zero-shot samples and looks for: one window for every patient, and futures long enough to reach its end."""

    enabled: bool
    outcome_tokens: list[str]
    window_days: int
    default_new_tokens: int  # --max-new-tokens: the futures' length for a one-year window

    @property
    def max_new_tokens(self) -> int:
        # The futures must reach the end of the time at risk: about the default's tokens per year.
        return max(self.default_new_tokens, round(self.default_new_tokens * self.window_days / 365))


def write_cohort(arguments, task: Task):
    """Stage 1: the cohort, from the task's SQL, written into the OHDSI cohort table; returns its rows."""
    connection = connect(arguments.dsn, application_name=application_name("predict.py"))
    try:
        cohort = cohorts.query_cohort(connection, task.sql.read_text(), arguments.cdm_schema, str(task.sql))
        schema_lock(connection, arguments.cohort_schema, "the cohort schema")
        cohorts.write_cohort_table(connection, cohort, arguments.cohort_schema, task.cohort_id)
    finally:
        connection.close()
    print(f"  {len(cohort):,} persons/index dates, {int(cohort['label'].sum()):,} with the outcome; written to "
          f"{arguments.cohort_schema}.cohort as cohort {task.cohort_id} (target) and {task.cohort_id + 1} (outcome)")
    return cohort


def time_at_risk(cohort) -> int:
    """Zero-shot has one window for all: the time at risk most rows have (the default SQL: 365 days each)."""
    lengths = Counter((end - start).days + 1
                      for start, end in zip(cohort["cohort_start_date"], cohort["cohort_end_date"], strict=True))
    return lengths.most_common(1)[0][0]


def compute_device() -> str:
    """Where cehrgpt's commands run their models: the GPU torch sees, else the CPU."""
    import torch

    return f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"


def split_histories(arguments, cohort, work: Path):
    """Stage 2: each cohort row's history strictly before its index date, split by person, capped at
    --max-train-examples / --max-test-examples, and written as the examples cehrgpt's tools read;
    returns the examples and the train/test folders."""
    caps = {"train": arguments.max_train_examples, "test": arguments.max_test_examples}
    examples = histories.build_histories(cohort, arguments.patient_sequence_dir, arguments.test_fraction, caps)
    paths = histories.write_histories(examples, work / "cohort_sequences")
    train_labels = examples.train.column("label").to_pylist()
    test_labels = examples.test.column("label").to_pylist()
    for split, cap in examples.capped.items():
        print(f"  {split}: {cap['cap']:,} of its {cap['cohort_rows']:,} cohort rows drawn (--max-{split}-examples; "
              "seeded, stratified by outcome)")
    print(f"  train {len(train_labels):,} ({sum(train_labels)} positives), test {len(test_labels):,} "
          f"({sum(test_labels)} positives); split: {examples.split_source}")
    print(f"  left out: {examples.no_sequence} without a patient sequence, {examples.no_history} without a "
          f"visit before the index date; examples: {work.name}/cohort_sequences/{{train,test}}")
    models.check_trainable(train_labels, "train")
    models.check_evaluable(test_labels, "test")
    return examples, paths


def run_predictors(arguments, examples, paths: dict, work: Path, context: int, plan: ZeroShotPlan,
                   examples_seen: dict[str, Path], seconds: dict[str, float]) -> dict[str, Path]:
    """Stages 3-6, the four predictors on the same examples; returns each one's predictions folder."""
    expected = {"train": examples.train.num_rows, "test": examples.test.num_rows}
    with timed_stage(seconds, "baseline", "3/8 baseline: logistic regression on bag-of-concepts counts before the "
                                          "index date (+ age)"):
        predictions = {"baseline": models.baseline(examples.train, examples.test, work)}
    with timed_stage(seconds, "linear_probe", "4/8 cehrgpt features + linear probe"):
        # Tasks with the same index dates have the same examples (only the labels differ): features once.
        fingerprint = histories.examples_fingerprint(examples)
        predictions["linear_probe"] = models.linear_probe(paths["train"], paths["test"], arguments.model_dir, work,
                                                          context, expected, examples_seen.get(fingerprint),
                                                          arguments.feature_batch_size)
        examples_seen.setdefault(fingerprint, work)
    if not arguments.no_fine_tune:
        with timed_stage(seconds, "fine_tune", "5/8 fine-tuning: the pretrained model + a classification head, up "
                                               f"to {arguments.fine_tune_epochs} epochs on the train examples"):
            predictions["fine_tune"] = models.fine_tune(paths["train"], paths["test"], arguments.model_dir, work,
                                                        context, arguments.fine_tune_epochs, expected,
                                                        arguments.fine_tune_batch_size, arguments.feature_batch_size)
    if plan.enabled:
        with timed_stage(seconds, "zero_shot", f"6/8 zero-shot: {arguments.trajectories} sampled futures of up to "
                                               f"{plan.max_new_tokens} tokens per test patient"):
            predictions["zero_shot"] = models.zero_shot(
                examples.test, arguments.model_dir, work, plan.outcome_tokens, plan.window_days,
                arguments.trajectories, plan.max_new_tokens, context, arguments.workers)
    return predictions


def few_shot_curves(task: Task, examples, work: Path) -> list[dict]:
    """Stage 7: the probe and the baseline on fewer training examples, same test examples; plotted."""
    shots = few_shot.curve(*models.few_shot_features(examples.train, examples.test, work))
    test_labels = examples.test.column("label").to_pylist()
    few_shot.plot(shots, {"probe": report.METHODS["linear_probe"], "baseline": report.METHODS["baseline"]},
                  work / "few_shot.png", f"{task.name}: {sum(test_labels)} positives among {len(test_labels)} test examples")
    return shots


def method_summaries(arguments, predictions: dict[str, Path], work: Path, plan: ZeroShotPlan) -> dict[str, dict]:
    """Stage 8: each method's bootstrap intervals, calibration and settings; the ROC and calibration plots."""
    intervals = report.bootstrap(predictions, work / "ci", work / "logs", arguments.n_boot)
    summaries = {key: report.method_summary(ci) for key, ci in intervals.items()}
    frames = {key: report.read_predictions(folder) for key, folder in predictions.items()}
    calibration = {key: report.calibration_table(frame) for key, frame in frames.items()}
    report.plot_roc(frames, summaries, work / "roc_curves.png")
    report.plot_calibration(calibration, work / "calibration.png")
    for key in summaries:
        summaries[key]["calibration"] = calibration[key]
    if "zero_shot" in summaries:
        summaries["zero_shot"].update({
            "trajectories": arguments.trajectories, "max_new_tokens": plan.max_new_tokens,
            "outcome_tokens": plan.outcome_tokens, "window_days": plan.window_days,
            "decided_fraction": round(models.zero_shot_decided_fraction(predictions["zero_shot"],
                                                                        arguments.trajectories), 4),
        })
    if "fine_tune" in summaries:
        summaries["fine_tune"].update({
            "epochs": arguments.fine_tune_epochs, "learning_rate": models.FINE_TUNE_LEARNING_RATE,
            "validation_fraction": models.FINE_TUNE_VALIDATION,
            **models.fine_tune_epochs(predictions["fine_tune"].parent),
        })
    return summaries


def first_comment_line(sql_path: Path) -> str:
    """The cohort SQL's first comment line: its one-line description."""
    for line in Path(sql_path).read_text().splitlines():
        if line.strip().startswith("--"):
            return line.strip().lstrip("-").strip()
    return f"the cohort of {Path(sql_path).name}"
