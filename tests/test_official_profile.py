"""train_cehrgpt.sh --profile official: the official CEHR-GPT tutorial's recipe, for a GPU and a large CDM.

Its words are the recipe's; on CPU the tests train it shrunk (the user's runner arguments win over the
profile's) through the same sample-packing path, interrupted and resumed.
"""

from __future__ import annotations

import json
import re
import signal

import pytest
from conftest import SCRIPTS, output_of, run_sh
from helpers import signal_when, start_in_own_group

from cehrgpt_tutorials.pipeline.profiles import PROFILES, runner_arguments


def test_the_official_profile_is_the_official_recipe_with_sample_packing():
    assert " ".join(runner_arguments(PROFILES["official"])) == (
        "--hidden_size 768 --num_hidden_layers 12 --n_head 12 --max_position_embeddings 1024 "
        "--per_device_train_batch_size 1 --per_device_eval_batch_size 1 --learning_rate 1e-4 --warmup_ratio 0.05 "
        "--num_train_epochs 10 --sample_packing true --max_tokens_per_batch 8192")


@pytest.mark.slow
def test_the_official_profile_trains_packed_batches_and_resumes_after_an_interruption(demo_patient_sequence,
                                                                                      pipeline_env, tmp_path):
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    sequences = tmp_path / "sequences"
    sequences.mkdir()
    pq.write_table(ds.dataset(demo_patient_sequence / "train", format="parquet").head(80),
                   sequences / "part-0.parquet")
    model_dir = tmp_path / "model"
    # Shrunk to train in seconds on CPU: only the width, depth and the tokens per packed batch change.
    arguments = ["--profile", "official", "--data-folder", sequences, "--model-dir", model_dir,
                 "--hidden_size", "48", "--num_hidden_layers", "1", "--n_head", "2", "--max_tokens_per_batch", "2048",
                 "--max_steps", "4", "--eval_strategy", "steps", "--save_strategy", "steps", "--eval_steps", "1",
                 "--save_steps", "1", "--early_stopping_patience", "10"]  # every step runs: 4 of them
    environment = dict(pipeline_env, TRANSFORMERS_VERBOSITY="info")
    process = start_in_own_group(["sh", SCRIPTS / "train_cehrgpt.sh", *arguments], environment,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def mid_run() -> bool:  # a checkpoint to resume from, and the last step not yet saved
        return (any(model_dir.glob("checkpoint-*/trainer_state.json"))
                and not any(model_dir.glob("*checkpoint-4")))

    signal_when(process, mid_run, signal.SIGINT, "a checkpoint before the last step", timeout=600)  # Ctrl-C
    first_output, _ = process.communicate(timeout=120)
    assert process.returncode != 0, first_output[-3000:]
    saved = sorted(int(path.name.split("-")[1]) for path in model_dir.glob("checkpoint-*")
                   if (path / "trainer_state.json").exists())
    assert saved, first_output[-3000:]

    resumed = run_sh("train_cehrgpt.sh", arguments, environment)
    assert resumed.returncode == 0, output_of(resumed)
    assert "resuming: same data and arguments" in resumed.stdout
    assert re.search(rf"Continuing training from global step {saved[-1]}\b", resumed.stdout + resumed.stderr)
    config = json.loads((model_dir / "config.json").read_text())
    # The packed model: its attention covers a whole packed batch, and the profile's context is kept.
    assert (config["n_embd"], config["n_layer"], config["n_positions"]) == (48, 1, 1024)
    assert config["sample_packing_max_positions"] == 2048
    state = json.loads((model_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 4
