"""generate_synthetic.sh's and restore_synthetic.sh's decisions (step 5), answered as shell assignments
(see shell_settings.py).

    python -m cehrgpt_tutorials.pipeline.synthetic_options generate SCRIPT [OPTIONS] [GENERATOR_ARGS...]
    python -m cehrgpt_tutorials.pipeline.synthetic_options restore SCRIPT [OPTIONS]
    python -m cehrgpt_tutorials.pipeline.synthetic_options restored-tables OMOP_FOLDER
        the clinical tables the converter wrote, comma-separated, for load_omop.py --tables
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cehrgpt_tutorials.errors import PipelineError
from cehrgpt_tutorials.paths import cehr_gpt_data_dir, cehr_gpt_model_dir, omop_dir, synthetic_data_output_dir
from cehrgpt_tutorials.pipeline.shell_settings import (
    answer_for_script,
    one_of,
    parse_options,
    positive_whole_number,
    require_use_tf_off,
    shell_assignments,
    shell_help,
    shell_words,
    visible_cores,
)
from cehrgpt_tutorials.pipeline.training import unfinished_model_problem

NUM_PATIENTS = 500
BATCH_SIZE = 50  # at most the number of patients asked
CONTEXT_WINDOW = 512
TOP_P = "1.0"  # the model's full distribution
SAMPLERS = ("constrained", "raw")
SAMPLING_STRATEGIES = ("TopPStrategy", "TopKStrategy", "TopMixStrategy")
SAMPLE_FOLDER = "top_p10000_constrained"  # the generator's folder name for the default sampling settings
SOURCE_SCHEMA = "cdm"
SYNTHETIC_SCHEMA = "synthetic_cdm"
CLINICAL_TABLES = ("person", "visit_occurrence", "condition_occurrence", "procedure_occurrence", "drug_exposure",
                   "death", "measurement", "observation_period", "condition_era")
SEE_HELP = " (see --help)"

GENERATE_USAGE = """\
Usage: {script} [--num-patients N] [--batch-size N] [--context-window N] [--top-p P] [--sampler constrained|raw]
          [--sampling-strategy TopPStrategy|TopKStrategy|TopMixStrategy] [--model-dir DIR]
          [--prompt-data DIR] [--output-dir DIR] [GENERATOR_ARGS...]

Samples synthetic patient sequences from a trained CEHR-GPT and prints where they went.

  --num-patients N        patients to generate (default {num_patients}; whole batches, so up to one batch more)
  --batch-size N          sequences generated together (default {batch_size}, at most --num-patients)
  --context-window N      longest sequence in tokens (default {context_window}; at most the model's context)
  --top-p P               nucleus sampling threshold (default {top_p}: the model's full distribution)
  --sampler S             constrained (default): only tokens the sequence grammar allows at each step;
                          raw: cehrgpt's own sampler, unchanged
  --sampling-strategy S   TopPStrategy (default), TopKStrategy or TopMixStrategy
  --model-dir DIR         trained model and tokenizer (default $CEHR_GPT_MODEL_DIR)
  --prompt-data DIR       real sequences whose first 4 tokens prompt each patient
                          (default $CEHR_GPT_DATA_DIR/patient_sequence; its train/ when split)
  --output-dir DIR        default $SYNTHETIC_DATA_OUTPUT_DIR
  GENERATOR_ARGS          anything else goes to the generator, e.g. --temperature 0.9 --seed 1
  -h, --help              show this help
"""

RESTORE_USAGE = """\
Usage: {script} [--sample-folder DIR] [--source-omop-folder DIR] [--schema NAME] [--source-schema NAME]
          [--dsn DSN] [--cpu-cores N] [--censor-date YYYY-MM-DD | --no-censor]

Converts generated patients to OMOP and loads them into PostgreSQL beside the real CDM.

  --sample-folder DIR       folder holding generated_sequences/ (default $SYNTHETIC_DATA_OUTPUT_DIR/{sample})
  --source-omop-folder DIR  exported OMOP tables with the vocabulary (default $OMOP_DIR)
  --schema NAME             schema for the synthetic CDM (default {schema})
  --source-schema NAME      the real CDM's schema: never written, used by the example queries (default {source})
  --dsn DSN                 libpq connection string or URI (default: PG* variables, else the demo server)
  --cpu-cores N             converter processes (default {cores})
  --censor-date DATE        cut each synthetic timeline after its last visit on or before DATE
                            (default: the last visit_start_date in SOURCE_OMOP_FOLDER/visit_occurrence)
  --no-censor               keep cehrgpt's raw timelines, visits after the source's end included
  -h, --help                show this help
"""


def training_split(folder: str) -> str:
    """Step 2's train/ when it split the patients: the held-out test/ patients stay unseen."""
    return f"{folder}/train" if os.path.isdir(f"{folder}/train") else folder


def generation_answer(arguments: list[str]) -> str:
    """generate_synthetic.sh's settings, checked in the order the errors are said."""
    script, *words = arguments
    names = ("--num-patients", "--batch-size", "--context-window", "--top-p", "--sampler", "--sampling-strategy",
             "--model-dir", "--prompt-data", "--output-dir")
    line = parse_options(words, dict.fromkeys(names, SEE_HELP))
    if line.help:
        return shell_help(GENERATE_USAGE.format(script=script, num_patients=NUM_PATIENTS, batch_size=BATCH_SIZE,
                                                context_window=CONTEXT_WINDOW, top_p=TOP_P))
    value = line.values.get
    num_patients = positive_whole_number("--num-patients", value("--num-patients", str(NUM_PATIENTS)))
    batch_size = positive_whole_number("--batch-size", value("--batch-size") or str(min(BATCH_SIZE, num_patients)))
    context_window = positive_whole_number("--context-window", value("--context-window", str(CONTEXT_WINDOW)))
    sampler = one_of("--sampler", value("--sampler", SAMPLERS[0]), SAMPLERS)
    strategy = one_of("--sampling-strategy", value("--sampling-strategy", SAMPLING_STRATEGIES[0]), SAMPLING_STRATEGIES)
    model_dir = value("--model-dir", str(cehr_gpt_model_dir()))
    problem = unfinished_model_problem(Path(model_dir))
    if problem is not None:
        raise PipelineError(problem)
    prompt_data = training_split(value("--prompt-data") or str(cehr_gpt_data_dir() / "patient_sequence"))
    if not os.path.isdir(prompt_data):
        raise PipelineError(f"no real sequences for the prompts at '{prompt_data}' (pass --prompt-data)")
    require_use_tf_off()
    output_dir = value("--output-dir", str(synthetic_data_output_dir()))
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as error:
        raise PipelineError(f"cannot create '{output_dir}' ({error.strerror or error})") from error
    return shell_assignments({
        "NUM_PATIENTS": num_patients, "BATCH_SIZE": batch_size, "CONTEXT_WINDOW": context_window,
        "TOP_P": value("--top-p", TOP_P), "SAMPLER": sampler, "SAMPLING_STRATEGY": strategy, "MODEL_DIR": model_dir,
        "PROMPT_DATA": prompt_data, "OUTPUT_DIR": Path(output_dir).resolve(),
        # The generator runs (num_of_patients // batch_size + 1) batches: a whole batch too many whenever
        # the batch size divides the number (500 with batch 50 -> 550). N - 1 gives the fewest whole
        # batches that reach N.
        "ASKED_OF_GENERATOR": num_patients - 1,
        "GENERATOR_EXTRA": shell_words(line.passed_through)})


def restore_answer(arguments: list[str]) -> str:
    """restore_synthetic.sh's settings, checked before anything runs: the real CDM is never a target."""
    script, *words = arguments
    names = ("--sample-folder", "--source-omop-folder", "--schema", "--source-schema", "--dsn", "--cpu-cores",
             "--censor-date")
    line = parse_options(words, dict.fromkeys(names, SEE_HELP), flags=("--no-censor",), pass_through=False)
    if line.help:
        return shell_help(RESTORE_USAGE.format(script=script, sample=SAMPLE_FOLDER, schema=SYNTHETIC_SCHEMA,
                                               source=SOURCE_SCHEMA, cores=visible_cores()))
    value = line.values.get
    schema, source_schema = value("--schema", SYNTHETIC_SCHEMA), value("--source-schema", SOURCE_SCHEMA)
    if schema == source_schema:
        raise PipelineError(f"--schema {schema} is the real CDM's schema (--source-schema); the synthetic CDM goes "
                            "beside it, e.g. synthetic_cdm")
    source_omop = value("--source-omop-folder", str(omop_dir()))
    censor_date = value("--censor-date", "")
    if censor_date:
        if "--no-censor" in line.flags:
            raise PipelineError("--censor-date and --no-censor contradict each other")
        if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", censor_date):
            raise PipelineError(f"--censor-date must look like YYYY-MM-DD, got '{censor_date}'")
        censor = ["--censor-date", censor_date]
    else:
        # cehrgpt dates a patient from the year the model wrote plus its time tokens, and nothing stops it
        # from writing visits after the real data ends: cut each timeline at the source's last visit date.
        censor = [] if "--no-censor" in line.flags else ["--source-visits", f"{source_omop}/visit_occurrence"]
    sample = value("--sample-folder", str(synthetic_data_output_dir() / SAMPLE_FOLDER))
    if not os.path.isdir(f"{sample}/generated_sequences"):
        raise PipelineError(f"no generated sequences in '{sample}/generated_sequences' (run generate_synthetic.sh, "
                            "or pass --sample-folder)")
    return shell_assignments({
        "SAMPLE_FOLDER": Path(sample).resolve(), "SOURCE_OMOP_FOLDER": source_omop, "SCHEMA": schema,
        "SOURCE_SCHEMA": source_schema, "DSN": value("--dsn", ""), "CPU_CORES": value("--cpu-cores", visible_cores()),
        "CENSOR_ARGS": shell_words(censor)})


def restored_tables(omop_folder: Path) -> list[str]:
    """The clinical tables the converter wrote (the vocabulary stays in the real CDM's schema)."""
    return [table for table in CLINICAL_TABLES if (Path(omop_folder) / table).is_dir()]


if __name__ == "__main__":
    answer_for_script({"generate": generation_answer, "restore": restore_answer,
                       "restored-tables": lambda arguments: ",".join(restored_tables(Path(arguments[0])))})
