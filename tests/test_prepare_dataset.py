"""cehrgpt_tutorials/pipeline/prepare_dataset.py: the runner's tokenization done first, with the same result.

The fast tests compare its column conversion with the `datasets` code it stands in for; the slow one
compares the whole tokenized dataset and tokenizer with what the runner writes when it tokenizes itself.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from conftest import REPO_ROOT, output_of, run_sh

from cehrgpt_tutorials.pipeline.prepare_dataset import (
    RUNNER_MODULE,
    _list_array,
    arrow_columns,
    runner_arguments,
)


def datasets_conversion(values: list, name: str, input_features):
    """What `datasets` writes for one column of a map's first output batch (ArrowWriter.write_batch)."""
    from datasets.arrow_writer import OptimizedTypedSequence

    try_type = input_features[name] if name in input_features else None
    return pa.array(OptimizedTypedSequence(values, try_type=try_type, col=name))


def input_features():
    from datasets import Features, Sequence, Value

    return Features({"concept_ids": Sequence(Value("string")), "ages": Sequence(Value("int32")),
                     "dates": Sequence(Value("int64")), "number_as_values": Sequence(Value("float32"))})


def test_list_of_array_columns_get_the_values_and_types_datasets_gives_them():
    features = input_features()
    batch = {
        "concept_ids": [np.array(["[START]", "8532", "[VS]"], dtype=object), np.array(["[END]"], dtype=object)],
        "ages": [np.array([40, 41, 41], dtype=np.int64), None],  # int64 in, the input's int32 out
        "dates": [np.array([1, 2], dtype=np.int32), np.array([3], dtype=np.int32)],
        "number_as_values": [np.array([0.5, 1.25]), np.array([], dtype=np.float64)],
        "input_ids": [np.array([5, 6, 7], dtype=np.int64), np.array([8], dtype=np.int64)],  # datasets: int32
        "values": [np.array([1.5], dtype=np.float32), np.array([2.5, 3.5], dtype=np.float32)],
        "epoch_times": [np.array([1.0e9, 1.1e9]), np.array([1.2e9])],
        # Python lists, as the tokenizer's encode returns them
        "value_ids": [[3, 4], [5]],
        "token_ids_as_lists": [[1, 2, None], None, []],
        "floats": [[0.5, float("nan")], [2.0]],
        "words": [["a", "b"], ["c"]],
        "flags": [[True], [False, True]],
    }
    converted = arrow_columns(batch, features)
    for name, values in batch.items():
        expected = datasets_conversion(values, name, features)
        assert _list_array(values) is not None, name  # built in one go
        assert converted[name].type == expected.type, name
        assert converted[name].to_string() == expected.to_string(), name  # NaN == NaN here, unlike equals()


def test_columns_it_cannot_build_in_one_go_are_converted_by_datasets_itself():
    features = input_features()
    declined = {
        "mixed_dtypes": [np.array([1, 2], dtype=np.int32), np.array([3], dtype=np.int64)],
        "empty_object_array": [np.array(["a"], dtype=object), np.array([], dtype=object)],
        "strings_with_none": [np.array(["a", None], dtype=object), np.array(["b"], dtype=object)],
        "two_dimensional": [np.zeros((2, 2)), np.ones((1, 2))],
        "scalars": [1, 2],
        "numpy_float32_scalars_in_lists": [[np.float32(0.5)], [np.float32(1.5)]],
        "lists_and_arrays": [[1, 2], np.array([3])],
    }
    assert all(_list_array(values) is None for values in declined.values())
    for name in ("strings_with_none", "two_dimensional", "scalars", "numpy_float32_scalars_in_lists",
                 "lists_and_arrays"):  # those datasets can convert
        converted = arrow_columns({name: declined[name]}, features)[name]
        expected = datasets_conversion(declined[name], name, features)
        assert converted.type == expected.type and converted.to_string() == expected.to_string(), name


def test_a_command_without_the_runner_is_one_error_line():
    result = subprocess.run([sys.executable, "-m", "cehrgpt_tutorials.pipeline.prepare_dataset", "--runner-command",
                             "python", "-m", "something_else", "--data_folder", "x"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip() == f"error: --runner-command must contain '-m {RUNNER_MODULE}' followed by its arguments"


def test_the_runner_words_are_taken_after_its_module_less_the_distributed_options():
    command = ["python", "-u", "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", RUNNER_MODULE,
               "--data_folder", "x", "--ddp_backend", "gloo", "--local_rank=1", "--use_cpu", "true"]
    assert runner_arguments(command) == ["--data_folder", "x", "--use_cpu", "true"]


@pytest.mark.slow  # starts the cehrgpt runner
def test_a_streaming_run_is_left_to_the_runner_and_nothing_is_written(tmp_path):
    (tmp_path / "sequences").mkdir()
    model_dir = tmp_path / "model"
    result = subprocess.run([sys.executable, "-m", "cehrgpt_tutorials.pipeline.prepare_dataset", "--runner-command",
                             "python", "-m", RUNNER_MODULE, "--model_name_or_path", model_dir,
                             "--tokenizer_name_or_path", model_dir, "--output_dir", model_dir,
                             "--data_folder", tmp_path / "sequences", "--dataset_prepared_path",
                             model_dir / "dataset_prepared", "--streaming", "true"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "USE_TF": "0"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "prepare_dataset: the runner tokenizes itself (--streaming is not done here)" in result.stdout
    assert not model_dir.exists() or not any(model_dir.iterdir())


@pytest.mark.slow
def test_the_runner_loads_a_dataset_equal_to_its_own_tokenization(demo_patient_sequence, pipeline_env, tmp_path):
    from datasets import load_from_disk

    runs = {}
    for tokenization in ("prepare", "runner"):
        model_dir = tmp_path / tokenization
        result = run_sh("train_cehrgpt.sh", ["--profile", "tiny", "--data-folder", demo_patient_sequence,
                                             "--model-dir", model_dir, "--max_steps", 1,
                                             "--tokenization", tokenization], pipeline_env)
        assert result.returncode == 0, output_of(result)
        runs[tokenization] = (model_dir, result.stdout)
    (ours_dir, ours_output), (theirs_dir, theirs_output) = runs["prepare"], runs["runner"]
    assert "prepare_dataset: tokenized" in ours_output and "prepare_dataset" not in theirs_output

    # One tokenized dataset in ours: the runner loaded the one prepare_dataset wrote, under the same name.
    ours = list((ours_dir / "dataset_prepared").iterdir())
    theirs = list((theirs_dir / "dataset_prepared").iterdir())
    assert len(ours) == 1 and len(theirs) == 1, (ours, theirs)
    assert str(ours[0].resolve()) in ours_output
    ours, theirs = load_from_disk(str(ours[0])), load_from_disk(str(theirs[0]))
    assert set(ours) == set(theirs) == {"train", "validation"}
    for split in ours:
        assert ours[split].features == theirs[split].features, split
        assert ours[split].num_rows == theirs[split].num_rows > 0, split
        assert ours[split].data.table.equals(theirs[split].data.table), split
    # The tokenizer's files: every .json and .pickle but the model's and the training's.
    not_tokenizer = {"config.json", "generation_config.json", "trainer_state.json", "train_results.json",
                     "all_results.json"}
    tokenizer_files = sorted(path.name for path in ours_dir.iterdir()
                             if path.suffix in (".json", ".pickle") and path.name not in not_tokenizer)
    assert "cehrgpt_tokenizer.json" in tokenizer_files, tokenizer_files
    for name in tokenizer_files:  # as objects: some are dicts written in set order, which varies per process
        load = json.loads if name.endswith(".json") else pickle.loads
        assert load((ours_dir / name).read_bytes()) == load((theirs_dir / name).read_bytes()), name


def sparse_sequence_folder(folder, megabytes: int):
    """A folder with one sparse 'part-0.parquet' of `megabytes` MB: its size is all the choice reads."""
    folder.mkdir(parents=True)
    with open(folder / "part-0.parquet", "wb") as handle:
        handle.truncate(megabytes * 2**20)
    return folder


@pytest.mark.slow  # starts the cehrgpt runner
def test_auto_tokenization_prepares_from_sixteen_megabytes_of_sequences(pipeline_env, tmp_path):
    """The second Python start costs ~3 s: on the demo's 0.6 MB of sequences it was slower, at 10x (7.8 MB)
    even, at 100x (79 MB) 64 s against the runner's 107 s before the first step (2 workers)."""
    for megabytes, chosen in ((12, "tokenizing: the runner's own (12 MB of sequences"),
                              (18, "tokenizing: cehrgpt_tutorials/pipeline/prepare_dataset.py, then the runner loads it (18 MB")):
        sequences = sparse_sequence_folder(tmp_path / f"sequences{megabytes}", megabytes)
        result = run_sh("train_cehrgpt.sh", ["--profile", "tiny", "--data-folder", sequences,
                                             "--model-dir", tmp_path / f"model{megabytes}"], pipeline_env, timeout=300)
        assert result.returncode != 0  # the files are not Parquet: the choice is all this checks
        assert chosen in result.stdout, output_of(result)


def test_an_unknown_tokenization_is_one_error_line(pipeline_env, tmp_path):
    result = run_sh("train_cehrgpt.sh", ["--tokenization", "fast", "--data-folder", tmp_path], pipeline_env, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: --tokenization must be auto, prepare or runner, got 'fast'"
