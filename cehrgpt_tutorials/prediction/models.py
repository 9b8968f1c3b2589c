"""The four predictors of step 7, on the same examples and the same patient split.

- cehrgpt features + linear probe: cehrgpt.tools.linear_prob.compute_cehrgpt_features (the last
  hidden state at an appended [LINEAR_PROB] token) and ...train_with_cehrgpt_features
  (LogisticRegressionCV scored by ROC-AUC), run as the commands a learner can copy;
- fine-tuning: cehrgpt.runners.hf_cehrgpt_finetune_runner trains the whole pretrained model with a
  classification head on the train examples (early stopping on a part of them) and predicts the test ones;
- zero-shot: cehrgpt.time_to_event.time_to_event_prediction samples future trajectories after
  each history; the probability is the share that contain an outcome token inside the window;
- baseline: a logistic regression on bag-of-concepts counts of the same histories (and age), so
  the model's numbers have something to be compared with.

Every prediction file has cehrgpt's columns: subject_id, prediction_time, boolean_value,
predicted_boolean_probability (what cehrgpt.tools.bootstrap_ci reads).
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np
import pandas as pd

from cehrgpt_tutorials.errors import PipelineError
from cehrgpt_tutorials.prediction import few_shot

LOG_TAIL_LINES = 20
CV_FOLDS = 5  # LogisticRegressionCV's default: each fold needs positives and negatives
FINE_TUNE_VALIDATION = 0.15  # the share of the train examples' patients that early stopping watches
# Higher than the runner's 5e-5: a model as small as the demo's must reach its best validation loss
# within the few epochs of --fine-tune-epochs (bench/RESULTS.md, "fine-tuning in `make predict`").
FINE_TUNE_LEARNING_RATE = 3e-4
FINE_TUNE_BATCH_SIZE = 8
FEATURE_BATCH_SIZE = 16  # examples per forward pass without gradients (features, evaluation)
ZERO_SHOT_TASK = "outcome_in_window"
# The folder name cehrgpt's time_to_event script derives from --sampling_strategy TopPStrategy --top_p 1.0.
ZERO_SHOT_SAMPLING_FOLDER = "top_p10000"


def subprocess_environment() -> dict[str, str]:
    """The environment for cehrgpt's commands: one math thread unless you set OMP_NUM_THREADS.

    These models are small, so a forward pass gains little from a second thread, and on a busy
    machine (cores shared with other jobs) the threads' spin-waiting costs far more: sampling is
    many times slower with 2 threads than with 1 (bench/RESULTS.md, step 7's "Threads").
    """
    environment = dict(os.environ)
    environment.setdefault("OMP_NUM_THREADS", str(few_shot.math_threads()))
    return environment


def print_command(command: list) -> None:
    print(f"$ {shlex.join(str(word) for word in command)}", flush=True)


def run_logged(command: list, log_path: Path, what: str, progress=None) -> float:
    """Run a command with its output in log_path; print it first. progress(): called every second
    while it runs (a progress bar update). Raises PipelineError with the end of the log on failure."""
    return run_together([command], [log_path], what, progress)


def run_together(commands: list[list], log_paths: list[Path], what: str, progress=None) -> float:
    """Run commands side by side (each printed first, its output in its log) and wait for all.

    The first failure stops the others and raises PipelineError with the end of its log."""
    for command, log_path in zip(commands, log_paths, strict=True):
        print_command(command)
        print(f"  (its output: {log_path})", flush=True)
        log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    logs = [open(log_path, "w", encoding="utf-8") for log_path in log_paths]
    processes = [subprocess.Popen([str(word) for word in command], stdout=log, stderr=subprocess.STDOUT,
                                  env=subprocess_environment()) for command, log in zip(commands, logs, strict=True)]
    failed = None
    try:
        while failed is None and any(process.poll() is None for process in processes):
            failed = next((i for i, p in enumerate(processes) if p.poll() not in (None, 0)), None)
            if progress is not None:
                progress()
            time.sleep(1.0)
        failed = next((i for i, p in enumerate(processes) if p.poll() not in (None, 0)), failed)
    finally:  # Ctrl-C or a failure: stop the rest
        for process in processes:
            if process.poll() is None:
                process.terminate()
            process.wait()
        for log in logs:
            log.close()
    if progress is not None:
        progress()
    seconds = time.monotonic() - started
    if failed is not None:
        log_path = log_paths[failed]
        tail = deque(log_path.read_text(encoding="utf-8", errors="replace").splitlines(), maxlen=LOG_TAIL_LINES)
        for line in tail:
            print(f"    {line}", file=sys.stderr)
        raise PipelineError(f"{what} failed (exit {processes[failed].returncode}) after {seconds:.0f}s; "
                            f"full log: {log_path}")
    return seconds


class TooFewExamples(PipelineError):
    """A task's examples cannot train or test the methods (too few positives or negatives)."""


def check_trainable(labels, split: str) -> None:
    """LogisticRegressionCV's stratified folds need positives and negatives in each of the 5 folds."""
    positives = int(np.sum(labels))
    negatives = int(len(labels) - positives)
    if min(positives, negatives) < CV_FOLDS:
        raise TooFewExamples(f"the {split} split has {positives} positive and {negatives} negative examples; the "
                            f"logistic regressions need at least {CV_FOLDS} of each ({CV_FOLDS}-fold cross-validation)")


def check_evaluable(labels, split: str) -> None:
    positives = int(np.sum(labels))
    if positives == 0 or positives == len(labels):
        raise TooFewExamples(f"the {split} split has {positives} positives among {len(labels)} examples: "
                            "ROC-AUC needs both classes")


def count_rows(folder: Path) -> int:
    import pyarrow.dataset as ds

    files = sorted(str(path) for path in Path(folder).rglob("*.parquet"))
    return ds.dataset(files, format="parquet").count_rows() if files else 0


# ---------------------------------------------------------------------------------------------
# cehrgpt features + linear probe
# ---------------------------------------------------------------------------------------------


def linear_probe(train_dir: Path, test_dir: Path, model_dir: Path, work_dir: Path, context: int,
                 expected: dict[str, int], same_examples: Path | None = None,
                 batch_size: int = FEATURE_BATCH_SIZE) -> Path:
    """Features of every example, then a logistic regression on the train examples' features.

    Returns the folder of the test predictions. The work folder is new for every run: the feature
    script appends to its output folder and reuses any tokenized dataset it finds at the same path
    (so a re-run into the same folder would duplicate features or read stale examples).
    same_examples: the work folder of an earlier task with these very examples (other labels): its
    features are reused, relabelled, instead of computed again.
    """
    features_dir = work_dir / "cehrgpt_features"
    if same_examples is not None:
        relabelled_features(same_examples / "cehrgpt_features", features_dir, train_dir, test_dir)
        print(f"  the same examples as {same_examples.name}: its cehrgpt features, with this task's labels", flush=True)
    else:
        compute_features(train_dir, test_dir, model_dir, work_dir, context, batch_size)
    for split in ("train", "test"):
        rows = count_rows(features_dir / "features_with_label" / f"{split}_features")
        if rows != expected[split]:
            raise PipelineError(f"cehrgpt's feature extraction wrote {rows} {split} feature rows for "
                                f"{expected[split]} examples; see {work_dir / 'logs' / 'compute_cehrgpt_features.log'}")
    probe_dir = work_dir / "linear_probe"
    run_logged([
        sys.executable, "-m", "cehrgpt.tools.linear_prob.train_with_cehrgpt_features",
        "--features_data_dir", features_dir, "--output_dir", probe_dir,
    ], work_dir / "logs" / "train_with_cehrgpt_features.log", "the linear probe")
    return probe_dir / "logistic" / "test_predictions"


def example_key(person, day) -> tuple[int, datetime.date]:
    """An example's identity: its person and index date, as the example files and cehrgpt's feature
    files (subject_id, prediction_time) each spell them."""
    return int(person), pd.Timestamp(day).date()


def relabelled_features(source: Path, target: Path, train_dir: Path, test_dir: Path) -> None:
    """An earlier task's features of the same examples, with the labels of this task's example files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for split, examples in (("train", train_dir), ("test", test_dir)):
        table = pq.read_table(examples, columns=["person_id", "index_date", "label"]).to_pydict()
        labels = {example_key(person, day): bool(label)
                  for person, day, label in zip(table["person_id"], table["index_date"], table["label"], strict=True)}
        folder = target / "features_with_label" / f"{split}_features"
        folder.mkdir(parents=True)
        features = pq.read_table(source / "features_with_label" / f"{split}_features")
        relabelled = [labels[example_key(subject, time)] for subject, time in
                      zip(features["subject_id"].to_pylist(), features["prediction_time"].to_pylist(), strict=True)]
        column = features.schema.get_field_index("boolean_value")
        pq.write_table(features.set_column(column, "boolean_value", pa.array(relabelled, features.schema.field(column).type)),
                       folder / "part-00000.parquet")


def compute_features(train_dir: Path, test_dir: Path, model_dir: Path, work_dir: Path, context: int,
                     batch_size: int = FEATURE_BATCH_SIZE) -> None:
    features_dir = work_dir / "cehrgpt_features"
    run_logged([
        sys.executable, "-m", "cehrgpt.tools.linear_prob.compute_cehrgpt_features",
        "--data_folder", train_dir, "--test_data_folder", test_dir,
        "--dataset_prepared_path", features_dir / "dataset_prepared",
        "--model_name_or_path", model_dir, "--tokenizer_name_or_path", model_dir,
        "--output_dir", features_dir, "--max_position_embeddings", context,
        "--per_device_eval_batch_size", batch_size, "--preprocessing_num_workers", 1,
        "--dataloader_num_workers", 0, "--report_to", "none",
    ], work_dir / "logs" / "compute_cehrgpt_features.log", "cehrgpt feature extraction")


# ---------------------------------------------------------------------------------------------
# Fine-tuning: the pretrained model + a classification head, trained on the task
# ---------------------------------------------------------------------------------------------


def fine_tune(train_dir: Path, test_dir: Path, model_dir: Path, work_dir: Path, context: int, epochs: int,
              expected: dict[str, int], batch_size: int = FINE_TUNE_BATCH_SIZE,
              eval_batch_size: int = FEATURE_BATCH_SIZE) -> Path:
    """cehrgpt's fine-tuning runner on the train examples, then its predictions of the test ones.

    Returns the folder of the test predictions. The runner's pitfalls in cehrgpt 0.1.9:
    - it splits its validation part off --data_folder (by patient, --validation_split_percentage), and
      without --test_data_folder it takes the test part from that validation part, which leaves the
      test part empty: it trains, then fails in --do_predict ('DataFrame' object has no attribute
      'boolean_value'). We pass the held-out examples as --test_data_folder.
    - its early stopping (EarlyStoppingCallback, always on) asserts load_best_model_at_end, which needs
      evaluation and saving at the same interval: --eval_strategy epoch --save_strategy epoch
      --load_best_model_at_end true. The best epoch is then what it saves and predicts with. It stops
      after one epoch whose validation loss is not lower (--early_stopping_patience 1; cehrgpt's
      --early_stopping_threshold is not passed on to the callback).
    - it resumes from the last checkpoint in --output_dir (a re-run silently trains only the epochs
      left) and reuses the tokenized dataset it finds under --dataset_prepared_path (named by the
      input folders' paths, not their contents): both are new folders in every run.
    - test predictions are written only with --do_predict, one file per batch into
      OUTPUT_DIR/test_predictions, from the model saved in OUTPUT_DIR (so --do_train too).
    """
    out = work_dir / "fine_tune"
    model_out = out / "model"
    log = work_dir / "logs" / "hf_cehrgpt_finetune_runner.log"
    run_logged([
        sys.executable, "-m", "cehrgpt.runners.hf_cehrgpt_finetune_runner",
        "--model_name_or_path", model_dir, "--tokenizer_name_or_path", model_dir,
        "--data_folder", train_dir, "--test_data_folder", test_dir,
        "--dataset_prepared_path", out / "dataset_prepared", "--output_dir", model_out,
        "--validation_split_percentage", FINE_TUNE_VALIDATION, "--do_train", "true", "--do_predict", "true",
        "--num_train_epochs", epochs, "--learning_rate", FINE_TUNE_LEARNING_RATE,
        "--per_device_train_batch_size", batch_size, "--per_device_eval_batch_size", eval_batch_size,
        "--eval_strategy", "epoch", "--save_strategy", "epoch", "--load_best_model_at_end", "true",
        "--save_total_limit", 1, "--max_position_embeddings", context,
        "--preprocessing_num_workers", 1, "--dataloader_num_workers", 0, "--report_to", "none",
    ], log, "cehrgpt fine-tuning")
    predictions = model_out / "test_predictions"
    rows = count_rows(predictions)
    if rows != expected["test"]:
        raise PipelineError(f"cehrgpt's fine-tuning runner wrote {rows} test predictions for {expected['test']} "
                            f"test examples; see {log}")
    summary = fine_tune_epochs(model_out)
    losses = ", ".join(f"{loss:.3f}" for loss in summary["validation_loss"])
    print(f"  {summary['epochs_trained']} of {epochs} epochs (best: {summary['best_epoch']}); validation loss "
          f"by epoch: {losses}", flush=True)
    return predictions


def fine_tune_epochs(model_out: Path) -> dict:
    """The epochs the runner trained, its best one and the validation loss of each (trainer_state.json)."""
    state = json.loads((Path(model_out) / "trainer_state.json").read_text())
    evaluations = [entry for entry in state.get("log_history", []) if "eval_loss" in entry]
    losses = [round(float(entry["eval_loss"]), 4) for entry in evaluations]
    best = int(round(evaluations[int(np.argmin(losses))]["epoch"])) if evaluations else 0
    return {"epochs_trained": int(round(state.get("epoch") or 0)), "best_epoch": best, "validation_loss": losses}


# ---------------------------------------------------------------------------------------------
# Bag-of-concepts baseline
# ---------------------------------------------------------------------------------------------


def bag_of_concepts(tables, vocabulary: dict[str, int] | None = None):
    """log(1 + count) of each vocabulary concept per example, plus age; vocabulary from the first call.

    A history's concepts (conditions, drugs, procedures, visit types, gender, race) are its numeric
    tokens; time tokens, [VS]/[VE], year:/age: tokens are structure, not concepts. Counted column-wise
    on the flattened token lists, into a sparse matrix."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from scipy import sparse

    tokens = tables.column("concept_ids").combine_chunks()
    flat = pc.list_flatten(tokens)
    rows = pc.list_parent_indices(tokens).to_numpy(zero_copy_only=False)
    concept = pc.match_substring_regex(flat, r"^[0-9]+$").to_numpy(zero_copy_only=False)
    flat, rows = flat.filter(pa.array(concept)), rows[concept]
    if vocabulary is None:
        vocabulary = {token: i for i, token in enumerate(sorted(pc.unique(flat).to_pylist()))}
    columns = pc.index_in(flat, value_set=pa.array(sorted(vocabulary, key=vocabulary.get), pa.string()))
    known = columns.is_valid().to_numpy(zero_copy_only=False)
    columns = columns.filter(pa.array(known)).to_numpy(zero_copy_only=False)
    counts = sparse.csr_matrix((np.ones(len(columns)), (rows[known], columns)),
                               shape=(tables.num_rows, len(vocabulary)))  # duplicates summed: counts
    counts.data = np.log1p(counts.data)
    return counts, vocabulary


def baseline_design(train, test):
    """The baseline's inputs: bag-of-concepts counts (vocabulary from the train examples) plus age
    (standardised on them), for the train and the test examples; and the vocabulary."""
    from scipy import sparse

    train_counts, vocabulary = bag_of_concepts(train)
    test_counts, _ = bag_of_concepts(test, vocabulary)
    ages = np.asarray(train.column("age").to_pylist(), float)
    mean, std = ages.mean(), ages.std() or 1.0

    def design(counts, table):
        age = (np.asarray(table.column("age").to_pylist(), float) - mean) / std
        return sparse.hstack([counts, sparse.csr_matrix(age[:, None])]).tocsr()

    return design(train_counts, train), design(test_counts, test), vocabulary


def baseline(train, test, work_dir: Path) -> Path:
    """Fit on the train examples, predict the test ones; returns the predictions folder."""
    from sklearn.linear_model import LogisticRegressionCV

    train_x, test_x, vocabulary = baseline_design(train, test)
    labels = np.asarray(train.column("label").to_pylist())
    # The same model and selection as cehrgpt's linear probe, so the two differ only in their features.
    model = LogisticRegressionCV(scoring="roc_auc", random_state=42, max_iter=1000)
    model.fit(train_x, labels)
    probability = model.predict_proba(test_x)[:, 1]
    out = work_dir / "baseline"
    predictions = out / "test_predictions"
    predictions.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({
        "subject_id": test.column("person_id").to_pylist(),
        "prediction_time": test.column("index_date").to_pylist(),
        "predicted_boolean_probability": probability,
        "boolean_value": np.asarray(test.column("label").to_pylist()).astype(bool),
    }).to_parquet(predictions / "predictions.parquet")
    # The model's inputs, for a reader (and the leakage test): which concepts it could use.
    (out / "features.json").write_text(json.dumps({"concepts": sorted(vocabulary), "plus": ["age"]}, indent=1))
    print(f"  {len(vocabulary)} concepts + age, {train.num_rows} train / {test.num_rows} test examples", flush=True)
    return predictions


def few_shot_features(train, test, work_dir: Path) -> tuple[dict[str, tuple], np.ndarray, np.ndarray]:
    """What the probe and the baseline were trained on, for few_shot.curve: per method (train matrix,
    test matrix, max_iter, fit order), rows in the examples' order, with the train and test labels.

    Each method keeps its full-data fit's settings: the probe cehrgpt's features, fitted in the order
    train_with_cehrgpt_features uses (sorted by patient and date, then shuffled with seed 42) with its
    default max_iter; the baseline the bag of concepts in the examples' order, max_iter 1000."""
    import pyarrow.parquet as pq

    def keyed(table) -> list[tuple]:
        return [example_key(person, day) for person, day in
                zip(table.column("person_id").to_pylist(), table.column("index_date").to_pylist(), strict=True)]

    def probe_features(split: str, keys: list[tuple]) -> tuple[np.ndarray, pd.DataFrame]:
        frame = pq.read_table(work_dir / "cehrgpt_features" / "features_with_label" / f"{split}_features",
                              columns=["subject_id", "prediction_time", "features"]).to_pandas()
        vectors = {example_key(subject, time): np.asarray(vector, float).ravel()
                   for subject, time, vector in zip(frame["subject_id"], frame["prediction_time"], frame["features"],
                                                    strict=True)}
        return np.stack([vectors[key] for key in keys]), frame

    train_keys = keyed(train)
    probe_train, frame = probe_features("train", train_keys)
    probe_test, _ = probe_features("test", keyed(test))
    shuffled = frame.sort_values(["subject_id", "prediction_time"]).sample(frac=1.0, random_state=42)
    row_of = {key: row for row, key in enumerate(train_keys)}
    probe_order = np.array([row_of[example_key(subject, time)] for subject, time in
                            zip(shuffled["subject_id"], shuffled["prediction_time"], strict=True)])
    train_x, test_x, _ = baseline_design(train, test)
    methods = {"probe": (probe_train, probe_test, 100, probe_order),
               "baseline": (train_x, test_x, 1000, np.arange(train.num_rows))}
    return methods, np.asarray(train.column("label").to_pylist()), np.asarray(test.column("label").to_pylist())


# ---------------------------------------------------------------------------------------------
# Zero-shot: sampled futures
# ---------------------------------------------------------------------------------------------


def zero_shot_task_yaml(path: Path, outcome_tokens: list[str], window_days: int, max_new_tokens: int) -> None:
    """cehrgpt's task config: an outcome token in the first window_days days after the history.

    The clock starts at the history's last visit (the generated time tokens count from there):
    day 0 is that visit's day, before the index date, so the window starts at day 1.
    """
    import yaml

    path.write_text(yaml.safe_dump({
        "task_name": ZERO_SHOT_TASK,
        "outcome_events": [str(token) for token in outcome_tokens],
        "prediction_window_start": 1,
        "prediction_window_end": int(window_days),
        "max_new_tokens": int(max_new_tokens),
    }, sort_keys=False))


def zero_shot(test, model_dir: Path, work_dir: Path, outcome_tokens: list[str], window_days: int,
              trajectories: int, max_new_tokens: int, context: int, workers: int) -> Path:
    """cehrgpt's time_to_event prediction on the test examples (a pyarrow table); returns the folder
    that holds every prediction file.

    cehrgpt samples one patient at a time, so the test examples are cut into `workers` shards, each
    predicted by its own process (one core each), side by side.
    """
    import pyarrow.parquet as pq
    from tqdm import tqdm

    out = work_dir / "zero_shot"
    out.mkdir(parents=True, exist_ok=True)
    task_yaml = out / "task.yaml"
    zero_shot_task_yaml(task_yaml, outcome_tokens, window_days, max_new_tokens)
    shards = [rows for rows in np.array_split(np.arange(test.num_rows), max(1, min(workers, test.num_rows)))]
    commands, logs, prediction_dirs = [], [], []
    for number, rows in enumerate(shards):
        shard_input = work_dir / "zero_shot_inputs" / f"shard_{number}"
        shard_input.mkdir(parents=True)
        pq.write_table(test.take(rows), shard_input / "part-00000.parquet")
        shard_output = out / f"shard_{number}"
        prediction_dirs.append(shard_output / ZERO_SHOT_SAMPLING_FOLDER / ZERO_SHOT_TASK)
        logs.append(work_dir / "logs" / f"time_to_event_prediction_{number}.log")
        # --buffer_size 1: cehrgpt 0.1.9 writes a file only when its buffer is full, also at the end,
        # so the last (count mod buffer_size) predictions would be lost; with 1 every one is written.
        # A fresh --output_folder per run: a crash leaves .lock files there that make a later run into
        # the same folder skip those patients (and finished ones are skipped too).
        commands.append([
            sys.executable, "-m", "cehrgpt.time_to_event.time_to_event_prediction",
            "--dataset_folder", shard_input, "--model_folder", model_dir, "--tokenizer_folder", model_dir,
            "--output_folder", shard_output, "--task_config", task_yaml,
            "--num_return_sequences", trajectories, "--batch_size", trajectories, "--buffer_size", 1,
            "--context_window", context, "--sampling_strategy", "TopPStrategy", "--top_p", 1.0,
        ])
    bar = None

    def progress():  # one file per patient (--buffer_size 1), so counting files counts patients
        nonlocal bar
        if bar is None:  # created after the commands are printed
            bar = tqdm(total=test.num_rows, desc="zero-shot patients", unit="patient", file=sys.stdout)
        done = sum(len(list(folder.glob("*.parquet"))) for folder in prediction_dirs if folder.is_dir())
        bar.update(done - bar.n)

    try:
        run_together(commands, logs, "zero-shot prediction", progress=progress)
    finally:
        if bar is not None:
            bar.close()
    written = count_rows(out)
    if written != test.num_rows:
        raise PipelineError(f"zero-shot prediction wrote {written} predictions for {test.num_rows} test examples; "
                            f"see {work_dir / 'logs'}/time_to_event_prediction_*.log")
    return out


def zero_shot_decided_fraction(predictions: Path, trajectories: int) -> float:
    """The share of sampled trajectories that reached a decision (an outcome, or the window's end)
    within max_new_tokens; the others are dropped by cehrgpt, and a patient with none gets 0."""
    import pyarrow.dataset as ds

    files = sorted(str(path) for path in Path(predictions).rglob("*.parquet"))
    trials = ds.dataset(files, format="parquet").to_table(columns=["trials"]).column("trials").to_pylist()
    decided = [len(trial["outcome_events"]) if trial else 0 for trial in trials]
    return float(np.sum(decided) / (trajectories * len(trials))) if trials else 0.0
