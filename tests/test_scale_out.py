"""The scale-out paths on the 300-person demo slice: step 2 on a real Spark standalone cluster, and
training under torchrun with two CPU processes (gloo).

The cluster is the installed pyspark's own master and worker, started with spark-class on 127.0.0.1 at
free ports, exactly as README's "Scaling out" section tells, and stopped in a finally.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO_ROOT, output_of, run_script, run_sh, source_setup_env

CLUSTER_PARTITIONS = 3  # not the local run's 2 x cores: the sequences must not depend on it
# README's "Scaling out" shows these commands with the ports of README_PORTS (and runs them with `&`).
MASTER_COMMAND = ("spark-class org.apache.spark.deploy.master.Master --host 127.0.0.1 --port {master} "
                  "--webui-port {master_ui}")
WORKER_COMMAND = ("spark-class org.apache.spark.deploy.worker.Worker spark://127.0.0.1:{master} --host 127.0.0.1 "
                  "--port {worker} --webui-port {worker_ui} --cores 2 --memory 2g --work-dir {work}")
README_PORTS = {"master": 7077, "master_ui": 8080, "worker": 7078, "worker_ui": 8081, "work": "/tmp/spark-work"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_daemon(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A Spark daemon in a process group of its own (so its executors stop with it)."""
    with open(log, "w") as output:
        return subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)


def stop_daemon(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def wait_for_log_line(log: Path, text: str, process: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        assert process.poll() is None, f"{process.args[1]} exited: {log.read_text()[-3000:]}"
        time.sleep(0.5)
    raise AssertionError(f"no '{text}' in {log} after {timeout} s: {log.read_text()[-3000:]}")


def test_readme_scaling_out_shows_the_commands_the_cluster_test_runs():
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("## Scaling out"):]
    for template in (MASTER_COMMAND, WORKER_COMMAND):
        assert template.format(**README_PORTS) + " &" in section, template
    assert f"export SPARK_MASTER=spark://127.0.0.1:{README_PORTS['master']} " in section


def sequences_by_person(folder: Path) -> list[dict]:
    return pq.read_table(folder).sort_by("person_id").to_pylist()


@pytest.mark.slow
def test_step2_on_a_standalone_cluster_writes_the_same_sequences_as_local_mode(
        demo_omop_parquet, demo_patient_sequence, pipeline_env, tmp_path):
    ports = {"master": free_port(), "master_ui": free_port(), "worker": free_port(), "worker_ui": free_port(),
             "work": tmp_path / "work"}
    master_url = f"spark://127.0.0.1:{ports['master']}"
    # What README's "Scaling out" does: source setup_env.sh with SPARK_MASTER (and executor memory the
    # worker can give), start a master and a worker with spark-class, then run step 2 as usual.
    environment = source_setup_env({**{k: v for k, v in pipeline_env.items() if not k.startswith("SPARK_")},
                                    "SPARK_MASTER": master_url, "SPARK_DRIVER_MEMORY": "1g",
                                    "SPARK_EXECUTOR_MEMORY": "1g"})
    assert f"--master {master_url} " in environment["SPARK_SUBMIT_OPTIONS"]
    master = start_daemon(shlex.split(MASTER_COMMAND.format(**ports)), environment, tmp_path / "master.log")
    worker = None
    try:
        wait_for_log_line(tmp_path / "master.log", "I have been elected leader", master)
        worker = start_daemon(shlex.split(WORKER_COMMAND.format(**ports)), environment, tmp_path / "worker.log")
        wait_for_log_line(tmp_path / "worker.log", "Successfully registered with master", worker)

        output = tmp_path / "data"
        step2 = run_sh("create_cehrgpt_pretraining_data.sh",
                       ["--input_folder", demo_omop_parquet, "--output_folder", output, "--start_date", "1985-01-01",
                        "--min_num_of_patients", "5", "--shuffle_partitions", CLUSTER_PARTITIONS], environment)
        assert step2.returncode == 0, output_of(step2)
        assert f"--master {master_url}" in step2.stdout
        # The apps really ran on the cluster: the worker started their executors.
        assert (tmp_path / "worker.log").read_text().count("Asked to launch executor") >= 2
    finally:
        for daemon in (worker, master):
            if daemon is not None:
                stop_daemon(daemon)
    for split in ("train", "test"):  # step 2's held-out split; Spark drops empty partitions
        assert 1 <= len(list((output / "patient_sequence" / split).glob("part-*.parquet"))) <= CLUSTER_PARTITIONS
    cleanup = run_script(["cleanup_tokens.py", "--patient-sequence-dir", str(output / "patient_sequence")],
                         environment)
    assert cleanup.returncode == 0, output_of(cleanup)
    # demo_patient_sequence is local mode's step 2 + the same cleanup on the same input.
    assert sequences_by_person(output / "patient_sequence") == sequences_by_person(demo_patient_sequence)


@pytest.mark.slow
def test_training_under_torchrun_with_two_cpu_processes_writes_one_model_that_generates(
        demo_patient_sequence, pipeline_env, tmp_path):
    from cehrgpt.models.hf_cehrgpt import CEHRGPT2LMHeadModel

    model_dir = tmp_path / "model"
    train = run_sh("train_cehrgpt.sh", ["--profile", "tiny", "--data-folder", demo_patient_sequence,
                                        "--model-dir", model_dir, "--nproc", 2, "--max_steps", 2],
                   dict(pipeline_env, TRANSFORMERS_VERBOSITY="info"))  # the Trainer's batch and save lines
    assert train.returncode == 0, output_of(train)
    logs = train.stdout + train.stderr
    assert "-m torch.distributed.run --standalone --nproc_per_node 2 -m cehrgpt.runners." in train.stdout
    assert "--ddp_backend gloo" in train.stdout
    # Two processes, each its per-device batch of 8: the Trainer counts 16 per step.
    assert "Total train batch size (w. parallel, distributed & accumulation) = 16" in logs
    # One per core the script may use: what nproc says in its environment (it honours OMP_NUM_THREADS).
    cores = subprocess.run(["nproc"], env=pipeline_env, capture_output=True, text=True, check=True).stdout.strip()
    assert f"--preprocessing_num_workers {cores} " in train.stdout
    # Written once, by the first process only.
    assert logs.count(f"Model weights saved in {model_dir}/model.safetensors") == 1
    assert len(list(model_dir.glob("checkpoint-*"))) == 1
    model = CEHRGPT2LMHeadModel.from_pretrained(model_dir)
    assert model.config.n_embd == 48

    generate = run_sh("generate_synthetic.sh", ["--model-dir", model_dir, "--prompt-data", demo_patient_sequence,
                                                "--output-dir", tmp_path / "synthetic", "--num-patients", 2,
                                                "--batch-size", 2, "--context-window", 20, "--seed", 5], pipeline_env)
    assert generate.returncode == 0, output_of(generate)
    generated = pq.read_table(next((tmp_path / "synthetic").glob("top_*")) / "generated_sequences")
    assert generated.num_rows == 2  # asked for 1 (N - 1), the generator runs 1 // 2 + 1 = 1 whole batch of 2
