"""`make demo`: the whole tutorial, step by step, resumable.

Runs the steps a learner types (the same text as the README's step-by-step section), each under
setup_env.sh's environment: it prints the command before running it and its wall time after.
A step that succeeded writes a marker ($OMOP_DIR/.demo/<step>.done); a re-run skips it, so an
interrupted or failed demo resumes at the failed step. Redoing a step invalidates the steps after it.

    python -m cehrgpt_tutorials.pipeline.steps run all          # make demo
    python -m cehrgpt_tutorials.pipeline.steps run train        # make train (runs missing earlier steps first)
    python -m cehrgpt_tutorials.pipeline.steps run all --force  # make demo FORCE=1: start over
    python -m cehrgpt_tutorials.pipeline.steps run predict      # make predict: step 7, after train (not in make demo)
    python -m cehrgpt_tutorials.pipeline.steps summary          # where everything is, headline numbers
    python -m cehrgpt_tutorials.pipeline.steps clean            # make clean: stop the database, delete outputs

Knobs for a smaller run (the end-to-end test uses them): DEMO_MAX_PERSONS (load only the first N
persons), TRAIN_PROFILE (demo | seed | tiny), NUM_PATIENTS (synthetic patients to generate),
GENERATION_SEED (the generator's --seed: the same patients every run) and MIN_NUM_OF_PATIENTS (step 2's
concept threshold; by default step 2 chooses it from the data).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from cehrgpt_tutorials.paths import cehr_gpt_data_dir, cehr_gpt_model_dir, omop_dir, synthetic_data_output_dir

LOG_TAIL_LINES = 25
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]  # the steps' commands (python load_omop.py, ...) run here


@dataclass(frozen=True)
class Step:
    name: str  # the make target
    title: str
    command: str  # exactly what a learner types after `source setup_env.sh`
    explain: str  # one sentence: what it does and what to look at


def demo_steps(environment: dict[str, str] | None = None) -> list[Step]:
    """The tutorial's steps in order. Knobs come from the environment (defaults = the real demo)."""
    environment = os.environ if environment is None else environment
    max_persons = environment.get("DEMO_MAX_PERSONS", "")
    profile = environment.get("TRAIN_PROFILE", "demo")
    num_patients = environment.get("NUM_PATIENTS", "")
    generation_seed = environment.get("GENERATION_SEED", "")
    threshold = environment.get("MIN_NUM_OF_PATIENTS", "")
    load_demo = "python load_omop.py --demo" + (f" --max-persons {max_persons}" if max_persons else "")
    generate = "sh cehrgpt_tutorials/scripts/generate_synthetic.sh" + (
        f" --num-patients {num_patients}" if num_patients else ""
    ) + (f" --seed {generation_seed}" if generation_seed else "")
    return [
        Step("demo-db", "Load the demo OMOP CDM into PostgreSQL", load_demo,
             "starts the embedded PostgreSQL server and loads Synthea's 1,130 patients into schema cdm; "
             "look at the rows per table and the psql URI it prints"),
        Step("export", "Step 1: export OMOP tables to Parquet",
             'python export_omop.py --schema cdm --output-dir "$OMOP_DIR"',
             "streams each table out of PostgreSQL into $OMOP_DIR/<table>/part-*.parquet; look at the "
             "summary table (rows, seconds, MB per table)"),
        Step("sequences", "Step 2: build patient sequences with Spark",
             'sh cehrgpt_tutorials/scripts/create_cehrgpt_pretraining_data.sh --input_folder "$OMOP_DIR" '
             '--output_folder "$CEHR_GPT_DATA_DIR" --start_date 1985-01-01'
             + (f" --min_num_of_patients {threshold}" if threshold else ""),
             "holds 15% of the persons out (patient_splits), then runs cehrbert_data's two Spark apps (concept "
             "list, then one token sequence per patient) into $CEHR_GPT_DATA_DIR/patient_sequence/train and /test; "
             "look at the spark-submit lines it prints"),
        Step("cleanup", "Step 3: repair malformed time tokens", "python cleanup_tokens.py",
             "removes time tokens cehrgpt cannot parse (e.g. negative i-D-) together with their aligned "
             "values; look at the counts by kind"),
        Step("train", "Step 4: pretrain a small CEHR-XGPT",
             f"sh cehrgpt_tutorials/scripts/train_cehrgpt.sh --profile {profile}",
             "trains the GPT on the training patients (patient_sequence/train) into $CEHR_GPT_MODEL_DIR (resumes from the last "
             "checkpoint when re-run); look at the eval loss per epoch"),
        Step("generate", "Step 5a: generate synthetic patients", generate,
             "samples new patient sequences from the model (top-p 1.0, grammar-constrained) into "
             "$SYNTHETIC_DATA_OUTPUT_DIR/top_p10000_constrained/generated_sequences"),
        Step("restore", "Step 5b: convert them back to OMOP and load them into PostgreSQL",
             "sh cehrgpt_tutorials/scripts/restore_synthetic.sh",
             "converts the generated sequences into OMOP tables and loads them into schema synthetic_cdm "
             "beside cdm; look at how many sequences converted and why the others were skipped"),
        Step("inspect", "Step 6: how good and how private are the synthetic patients?",
             "python inspect_synthetic.py",
             "compares synthetic and real sequences (validity, prevalence, distributions, copies) and writes "
             "report.md with plots"),
    ]


# Steps that `make demo` leaves out (it has its own time goal), each with the last demo step it needs:
# `make predict` runs the demo steps up to train, if missing, then predict.
EXTRA_STEPS = {"predict": "train"}


def extra_steps() -> list[Step]:
    return [
        Step("predict", "Step 7: use the model to predict (features, fine-tuning, zero-shot) on a cohort defined in SQL",
             "python predict.py",
             "an ER visit within a year of an outpatient visit: cehrgpt's linear probe, fine-tuning and zero-shot "
             "against a bag-of-concepts baseline on the held-out patients; look at the AUCs and their intervals"),
    ]


def state_dir() -> Path:
    return omop_dir() / ".demo"


def marker(step: Step) -> Path:
    return state_dir() / f"{step.name}.done"


def log_path(step: Step) -> Path:
    return omop_dir() / "logs" / f"{step.name}.log"


def format_seconds(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def run_step(step: Step, root: Path, command: str | None = None) -> float:
    """Run one step (its command, or `command`), echoing its output live and into its log.
    Returns seconds; exits 1 on failure."""
    command = command or step.command
    print(f"\n=== {step.title} (make {step.name})\n    {step.explain}\n$ {command}", flush=True)
    log = log_path(step)
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    with open(log, "w", encoding="utf-8") as log_file:
        log_file.write(f"$ {command}\n")
        process = subprocess.Popen(
            ["bash", "-c", command], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace", bufsize=1,
        )
        assert process.stdout is not None
        try:
            for line in process.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                log_file.write(line)
                tail.append(line.rstrip("\n"))
            return_code = process.wait()
        except KeyboardInterrupt:
            process.terminate()
            process.wait()
            print(f"\ninterrupted during step {step.name}; `make demo` resumes here", file=sys.stderr)
            raise SystemExit(130) from None
    seconds = time.monotonic() - started
    if return_code != 0:
        print(f"\nstep '{step.name}' failed (exit {return_code}) after {format_seconds(seconds)}. "
              f"Last lines of its log:", file=sys.stderr)
        for line in tail:
            print(f"    {line}", file=sys.stderr)
        print(f"full log: {log}\nfix the cause and run `make demo` again: it resumes at this step.",
              file=sys.stderr)
        raise SystemExit(1)
    marker(step).parent.mkdir(parents=True, exist_ok=True)
    marker(step).write_text(f"{command}\nseconds={seconds:.1f}\n")
    print(f"--- {step.name} done in {format_seconds(seconds)}", flush=True)
    return seconds


def command_for(step: Step, redo: bool) -> str:
    """The step's command; the training step's with --fresh when it is redone over an existing model.

    A model trained on outputs this run redid (or that FORCE=1 asked to redo) cannot be resumed, and
    train_cehrgpt.sh refuses to start over on its own. Redoing it was asked for, so the demo says
    --fresh: the old model is moved aside to <model dir>.old-<time> (and the script says so), never deleted.
    """
    if step.name == "train" and redo and cehr_gpt_model_dir().is_dir() and any(cehr_gpt_model_dir().iterdir()):
        return f"{step.command} --fresh"
    return step.command


def steps_for(target: str) -> list[Step]:
    """The steps `make <target>` may run, in order: the demo's, or for an extra step the demo's up to
    the one it needs, then itself."""
    every_step = demo_steps() + extra_steps()
    every_name = [step.name for step in every_step]
    if target != "all" and target not in every_name:
        raise SystemExit(f"error: unknown step {target!r}; steps: {', '.join(every_name)}")
    if target in EXTRA_STEPS:
        return every_step[: every_name.index(EXTRA_STEPS[target]) + 1] + [every_step[every_name.index(target)]]
    return [step for step in every_step if step.name not in EXTRA_STEPS]


def run(target: str, force: bool, root: Path) -> None:
    from cehrgpt_tutorials.errors import PipelineError, fail
    from cehrgpt_tutorials.locks import output_lock

    try:
        # One demo per output folder: `make demo` in a second terminal stops here, naming the first.
        with output_lock(state_dir(), "the demo"):
            run_locked(target, force, root)
    except PipelineError as error:
        fail(str(error))


def run_locked(target: str, force: bool, root: Path) -> None:
    every_step = demo_steps() + extra_steps()
    every_name = [step.name for step in every_step]
    steps = steps_for(target)
    names = [step.name for step in steps]
    last = len(steps) - 1 if target == "all" else names.index(target)
    if force:
        # `make demo FORCE=1` starts over; `make train FORCE=1` redoes train and what follows it.
        # Outputs are overwritten by the steps themselves.
        for step in steps[(0 if target == "all" else last):]:
            marker(step).unlink(missing_ok=True)
    started = time.monotonic()
    ran_any = False
    for step in steps[: last + 1]:
        if marker(step).exists() and not ran_any:
            print(f"=== {step.title}: already done, skipped (marker {marker(step)})", flush=True)
            continue
        run_step(step, root, command_for(step, redo=force or ran_any))
        ran_any = True
        # Later steps were built from this step's old outputs: they must run again.
        position = every_name.index(step.name)
        for later in every_step[position + 1:]:
            if later.name not in EXTRA_STEPS or position <= every_name.index(EXTRA_STEPS[later.name]):
                marker(later).unlink(missing_ok=True)
    if target == "all":
        summary(time.monotonic() - started)
    else:
        print(f"\n{target}: complete in {format_seconds(time.monotonic() - started)}")


def find_report(synthetic_dir: Path | None = None) -> Path | None:
    """The newest run's report.json under synthetic_dir (default $SYNTHETIC_DATA_OUTPUT_DIR)."""
    folder = synthetic_dir or synthetic_data_output_dir()
    reports = sorted(folder.glob("*/report/report.json"), key=lambda p: p.stat().st_mtime)
    return reports[-1] if reports else None


def summary(total_seconds: float | None = None) -> None:
    from cehrgpt_tutorials.db import connect, connection_uri
    from cehrgpt_tutorials.errors import PipelineError

    print("\n=== Summary")
    print(f"  exported OMOP tables     {omop_dir()}")
    print(f"  patient sequences        {cehr_gpt_data_dir() / 'patient_sequence'}")
    print(f"  model                    {cehr_gpt_model_dir()}")
    print(f"  synthetic patients       {synthetic_data_output_dir()}")
    try:
        connection = connect(quiet=True)
        print(f"  PostgreSQL               psql \"{connection_uri(connection)}\"  (schemas cdm and synthetic_cdm)")
        connection.close()
    except PipelineError as error:
        print(f"  PostgreSQL               not reachable: {error}")
    report = find_report()
    if report is not None:
        numbers = json.loads(report.read_text())

        def show(key: str, label: str, value=None) -> None:
            value = numbers.get(key) if value is None else value
            shown = "n/a" if value is None else (f"{value:.1%}" if "fraction" in key or "pct" in key else f"{value:.3f}")
            print(f"  {label:<24} {shown}")

        show("valid_fraction", "valid sequences")
        show("converted_fraction", "converted to OMOP")
        show("prevalence_pearson_r", "prevalence r")
        show("prevalence_within_25pct", "prevalence within 25%")
        show("prevalence_within_25pct_perfect_model", "perfect model within 25%")
        show("cdm_concepts_within_25pct", "CDM concepts within 25%")
        show("visits_after_source_end_fraction", "visits after source end")
        show("exact_copy_fraction", "exact copies")
        membership = numbers.get("membership_inference") or {}
        show("membership_accuracy", "membership inference", membership.get("accuracy"))
        show("membership_control", "membership on copies", membership.get("control_accuracy"))
        show("dimension_wise_auroc_ratio", "utility AUROC ratio")
        print(f"  report                   {report.with_name('report.md')}")
    prediction = cehr_gpt_data_dir() / "prediction" / "predict_report.json"
    if prediction.exists():
        numbers = json.loads(prediction.read_text())
        for key, label in (("linear_probe", "linear probe AUROC"), ("fine_tune", "fine-tuned AUROC"),
                           ("zero_shot", "zero-shot AUROC"), ("baseline", "baseline AUROC")):
            if key in numbers:
                low, high = numbers[key]["roc_auc_ci"]
                print(f"  {label:<24} {numbers[key]['roc_auc']:.3f} (95% CI {low:.3f}-{high:.3f})")
        print(f"  prediction report        {prediction.with_suffix('.md')}")
    else:
        print("  prediction (step 7)      not run yet: make predict (features, fine-tuning and zero-shot on a SQL cohort)")
    if total_seconds is not None:
        print(f"  total wall time          {format_seconds(total_seconds)}")


def clean() -> None:
    """Stop the embedded database and delete the demo's outputs, never anything else."""
    from cehrgpt_tutorials.db import stop_embedded_server

    stop_embedded_server()
    output = omop_dir()
    if not output.exists():
        print(f"nothing to clean: {output} does not exist")
        return
    if not state_dir().exists() and not (output / "pgdata").exists():
        raise SystemExit(f"error: {output} was not made by the demo (no .demo/ or pgdata/ inside); not deleting it")
    # Model and synthetic folders set outside the output folder are left alone on purpose.
    shutil.rmtree(output)
    print(f"deleted {output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="action", required=True)
    run_parser = commands.add_parser("run", help="run a step (and any missing earlier steps), or all")
    run_parser.add_argument("target", help="all, or one of: " + ", ".join(s.name for s in demo_steps() + extra_steps()))
    run_parser.add_argument("--force", action="store_true", help="forget completed steps and start over")
    commands.add_parser("summary", help="print where the outputs are and the report's headline numbers")
    commands.add_parser("clean", help="stop the embedded database and delete the demo's outputs")
    commands.add_parser("commands", help="print each step's command (what the README shows)")
    arguments = parser.parse_args()
    if arguments.action == "run":
        run(arguments.target, arguments.force, REPOSITORY_ROOT)
    elif arguments.action == "summary":
        summary()
    elif arguments.action == "clean":
        clean()
    else:
        for step in demo_steps() + extra_steps():
            print(f"{step.name}: {step.command}")


if __name__ == "__main__":
    main()
