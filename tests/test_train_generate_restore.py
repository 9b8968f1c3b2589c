"""Train (step 4), generate and restore as an OMOP CDM in PostgreSQL (step 5).

A tiny real run on the 300-person demo slice: the cehrgpt runner trains a very small model for a few
steps on CPU, the generator writes a handful of patients, omop_pipeline.sh converts them (with real
sequences mixed in, since a few-step model writes none the converter accepts), and load_omop.py puts
them into schema synthetic_cdm of a real PostgreSQL beside an untouched cdm.
Fast tests check the scripts' command lines and the conversion bookkeeping on crafted sequences.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import psycopg2
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import REPO_ROOT, TINY_STEPS, cdm_fingerprint, output_of, run_script, run_sh
from helpers import query

from cehrgpt_tutorials.omop.plausibility import CHECKS as PLAUSIBILITY_CHECKS
from cehrgpt_tutorials.omop.restore import (
    add_observation_period_ids,
    entity_schemas,
    fill_empty_tables,
    load_domain_map,
    skip_reason,
)

SCRIPTS = REPO_ROOT / "cehrgpt_tutorials" / "scripts"
PATIENTS_ASKED = 5
BATCH_SIZE = 4
CONTEXT_WINDOW = 40  # an untrained model never stops by itself: keep its sequences short
REAL_SEQUENCES = 30
NOTHING_CONVERTED = 3
GENERATION_SEED = 1  # generate_synthetic.sh passes --seed to the generator: the same sample every run


def load_bench_module(name: str):
    specification = importlib.util.spec_from_file_location(name, REPO_ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(specification)
    specification.loader.exec_module(module)
    return module


def summary_counts(stdout: str) -> dict:
    """omop_pipeline.sh's summary lines: generated / converted / skipped and the reason counts."""
    def number(label):
        match = re.search(rf"^{label}\s+(\d+)", stdout, flags=re.M)
        assert match, f"no '{label}' line in:\n{stdout[-3000:]}"
        return int(match.group(1))

    reasons = [int(count) for count in re.findall(r"^\s+(\d+)  (?!e\.g\.)\S", stdout, flags=re.M)]
    return {"generated": number("generated sequences"), "converted": number("converted to persons"),
            "skipped": number("skipped"), "reasons": reasons}


# ---------------------------------------------------------------------------------------------
# The real chain on a small slice (slow)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def generated(trained, demo_patient_sequence, pipeline_env, tmp_path_factory):
    assert trained["result"].returncode == 0, output_of(trained["result"])
    output_dir = tmp_path_factory.mktemp("synthetic")
    arguments = ["--model-dir", trained["model_dir"], "--prompt-data", demo_patient_sequence,
                 "--output-dir", output_dir, "--num-patients", PATIENTS_ASKED, "--batch-size", BATCH_SIZE,
                 "--context-window", CONTEXT_WINDOW, "--sampler", "raw", "--seed", GENERATION_SEED]
    # cehrgpt's own sampler: the untrained model's sequences then break the grammar and fail conversion,
    # which the pipeline test below needs (the constrained default is tested in test_grammar.py).
    result = run_sh("generate_synthetic.sh", arguments, pipeline_env)
    return {"folder": output_dir / "top_p10000" / "generated_sequences", "arguments": arguments, "result": result}


@pytest.mark.slow
def test_training_prints_the_runner_command_and_writes_a_model_that_reloads(trained):
    from cehrgpt.models.hf_cehrgpt import CEHRGPT2LMHeadModel
    from cehrgpt.models.tokenization_hf_cehrgpt import CehrGptTokenizer

    result = trained["result"]
    assert result.returncode == 0, output_of(result)
    command = next(line for line in result.stdout.splitlines() if line.startswith("$ "))
    for expected in ("-m cehrgpt.runners.hf_cehrgpt_pretrain_runner", "--report_to none",
                     "--load_best_model_at_end true", f"--max_steps {TINY_STEPS}"):
        assert expected in command
    model_dir = trained["model_dir"]
    for name in ("config.json", "model.safetensors", "cehrgpt_tokenizer.json"):
        assert (model_dir / name).is_file(), name
    model = CEHRGPT2LMHeadModel.from_pretrained(model_dir)
    tokenizer = CehrGptTokenizer.from_pretrained(model_dir)
    assert model.config.n_embd == 48 and model.config.n_layer == 2
    assert model.config.vocab_size == tokenizer.vocab_size


@pytest.mark.slow
def test_a_rerun_resumes_from_the_last_checkpoint(trained, pipeline_env, tmp_path):
    # The rerun must use the very arguments of the session's run (its stamp records the model folder,
    # so a copy elsewhere would not be "the same run"): it runs in that folder, and the folder as it was
    # is put back afterwards from a copy, for the tests that read it after this one.
    model_dir = trained["model_dir"]
    kept = tmp_path / "model_as_trained"
    shutil.copytree(model_dir, kept, symlinks=True)
    try:
        # At info verbosity the Trainer says where it continues from.
        rerun = run_sh("train_cehrgpt.sh", trained["arguments"], dict(pipeline_env, TRANSFORMERS_VERBOSITY="info"))
    finally:
        shutil.rmtree(model_dir)
        kept.rename(model_dir)
    assert rerun.returncode == 0, output_of(rerun)
    assert "resuming: same data and arguments" in rerun.stdout
    assert "will skip to saved global_step" in rerun.stdout + rerun.stderr
    assert re.search(rf"Continuing training from global step {TINY_STEPS}\b", rerun.stdout + rerun.stderr)


@pytest.mark.slow
def test_generation_writes_whole_batches_reaching_the_patients_asked_and_replaces_a_previous_sample(
        generated, pipeline_env):
    result = generated["result"]
    assert result.returncode == 0, output_of(result)
    folder = generated["folder"]
    assert f"sequences: {folder}" in result.stdout
    table = ds.dataset(folder, format="parquet").to_table()
    assert table.num_rows == BATCH_SIZE * -(-PATIENTS_ASKED // BATCH_SIZE)  # the fewest whole batches: 2 of 4
    assert f"generated {table.num_rows} sequences (asked {PATIENTS_ASKED})" in result.stdout
    assert {"concept_ids", "person_id", "is_numeric_types", "number_as_values", "concept_as_values",
            "concept_value_masks", "units"} <= set(table.column_names)
    assert all(len(ids) <= CONTEXT_WINDOW for ids in table.column("concept_ids").to_pylist())
    assert not list(folder.parent.parent.glob(".generate.*")), "staging folder left behind"
    # Prompts come from the training split only: the held-out test/ patients stay unseen.
    assert f"--demographic_data_path {generated['arguments'][3]}/train" in result.stdout

    # A second run replaces the sample instead of adding files to it; with the same seed, by the same
    # sequences.
    first_files = set(folder.iterdir())
    again = run_sh("generate_synthetic.sh", generated["arguments"], pipeline_env)
    assert again.returncode == 0, output_of(again)
    assert ds.dataset(folder, format="parquet").count_rows() == table.num_rows
    assert not first_files & set(folder.iterdir())
    sequences = sorted(ds.dataset(folder, format="parquet").to_table().column("concept_ids").to_pylist())
    assert sequences == sorted(table.column("concept_ids").to_pylist())


@pytest.mark.slow
def test_a_sample_where_nothing_converts_stops_the_pipeline_before_spark_with_the_reasons(
        generated, demo_omop_parquet, pipeline_env, tmp_path):
    assert generated["result"].returncode == 0, output_of(generated["result"])
    # The generated sequences, each with a visit opened after its end: whatever the model sampled,
    # none ends with [VE] now, so the converter takes none of them.
    table = ds.dataset(generated["folder"], format="parquet").to_table(columns=["person_id", "concept_ids"])
    cut = [tokens + ["[VS]"] for tokens in table.column("concept_ids").to_pylist()]
    sequences = tmp_path / "sequences"
    sequences.mkdir()
    pq.write_table(table.set_column(1, "concept_ids", pa.array(cut, pa.list_(pa.string()))), sequences / "cut.parquet")
    omop_folder = tmp_path / "restored"
    result = run_sh("omop_pipeline.sh", ["-p", sequences, "-o", omop_folder, "-s", demo_omop_parquet], pipeline_env)
    assert result.returncode == NOTHING_CONVERTED, output_of(result)
    counts = summary_counts(result.stdout)
    rows = table.num_rows
    assert counts["generated"] == rows and counts["converted"] == 0 and counts["skipped"] == rows
    assert sum(counts["reasons"]) == rows
    assert re.search(rf"^\s+{rows}  does not end with \[VE\]", result.stdout, flags=re.M), result.stdout
    assert "no generated sequence could be converted" in result.stderr
    assert "Train longer" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (omop_folder / "observation_period").exists(), "Spark ran although nothing converted"


@pytest.mark.slow
def test_visit_end_leak_measures_every_visit_end_of_the_sequences_given(trained, demo_patient_sequence,
                                                                       pipeline_env, tmp_path):
    from cehrgpt.models.tokenization_hf_cehrgpt import CehrGptTokenizer

    assert trained["result"].returncode == 0, output_of(trained["result"])
    # What the generator can see: tokens of the vocabulary, up to the context window (this slice has
    # sequences longer than it).
    vocabulary = CehrGptTokenizer.from_pretrained(trained["model_dir"]).get_vocab()
    context = json.loads((trained["model_dir"] / "config.json").read_text())["n_positions"]
    sequences = [[token for token in tokens if token in vocabulary][:context]
                 for tokens in ds.dataset(demo_patient_sequence, format="parquet")
                 .to_table(columns=["concept_ids"]).column(0).to_pylist()]
    sequences = [tokens for tokens in sequences if "[VE]" in tokens]
    checkpoints = sorted(trained["model_dir"].glob("checkpoint-*"))
    assert checkpoints, "the tiny training saved no checkpoint"
    # A model folder and one of its checkpoints (whose tokenizer lives in the folder above).
    for model_dir in (trained["model_dir"], checkpoints[-1]):
        report = tmp_path / f"{model_dir.name}.json"
        result = run_script([str(REPO_ROOT / "bench" / "visit_end_leak.py"), "--model-dir", str(model_dir),
                             "--sequences", str(demo_patient_sequence), "--num-sequences", "100000",
                             "--json", str(report)], pipeline_env)
        assert result.returncode == 0, output_of(result)
        numbers = json.loads(report.read_text())
        # Asked for more than there are: every sequence and every [VE] it can see is measured once.
        assert numbers["sequences"] == len(sequences)
        assert numbers["visit_ends"] == sum(tokens.count("[VE]") for tokens in sequences)
        for share in ("mean_leak", "median_leak", "p90_leak", "share_of_visit_ends_with_leak",
                      "expected_spoiled_share"):
            assert 0.0 <= numbers[share] <= 1.0, (share, numbers[share])
        assert numbers["median_leak"] <= numbers["p90_leak"]


def test_visit_end_leak_keeps_the_same_nucleus_as_transformers():
    import torch
    from transformers import TopPLogitsWarper

    visit_end_leak = load_bench_module("visit_end_leak")
    generator = np.random.default_rng(0)
    for _ in range(50):
        probabilities = generator.dirichlet(np.full(40, 0.3))
        allowed = generator.random(40) < 0.5
        scores = TopPLogitsWarper(top_p=0.95)(None, torch.log(torch.tensor(probabilities[None, :])))
        kept = torch.isfinite(scores[0]).numpy()
        expected = probabilities[kept & ~allowed].sum() / probabilities[kept].sum()
        assert visit_end_leak.nucleus_leak(probabilities, allowed, 0.95) == pytest.approx(expected)


def test_sequence_length_splits_patient_ends_by_the_calendar_year_of_their_last_visit(tmp_path):
    """A patient ends after its last visit; that visit's year is the year token plus the time tokens."""
    sequence_length = load_bench_module("sequence_length")
    prompt = ["age:30", "8507", "8527"]
    visit = ["[VS]", "9202", "320128", "[VE]"]
    pq.write_table(pa.table({"concept_ids": [
        ["year:2000", *prompt, *visit, "LT", *visit],  # visits in 2000 and 2003 (LT: 1,095 days), ends in 2003
        ["year:2018", *prompt, *visit, "D30", *visit, "D400", *visit],  # 2018, 2018, then 2019: ends in 2019
    ]}), tmp_path / "planted.parquet")
    shape = sequence_length.shape(tmp_path, sequence_length.Vocabulary())
    assert shape["end_by_year"] == {"before 2005": {"visits": 2, "data": 0.5}, "2018": {"visits": 2, "data": 0.0},
                                    "2019 on": {"visits": 1, "data": 1.0}}


def test_continuation_compares_a_cut_patients_rest_with_the_visit_before_the_cut():
    continuation = load_bench_module("continuation")
    tokens = ["year:2000", "age:30", "8507", "8527", "[VS]", "9202", "320128", "[VE]", "D14",
              "[VS]", "9202", "320128", "[VE]", "W3", "[VS]", "9202", "4329847", "[VE]"]
    assert continuation.cut_after_visit(tokens, 0) == continuation.PROMPT_TOKENS
    cut = continuation.cut_after_visit(tokens, 1)
    assert tokens[cut - 1] == "[VE]" and tokens[:cut].count("[VS]") == 1
    before = continuation.visits_of(tokens[:cut])[-1]
    rest = continuation.remainder_facts(continuation.visits_of(tokens[cut:]),
                                        continuation.gaps_of(tokens[cut - 1:], {"D14": 14.0, "W3": 21.0}), before)
    # Visit 2 repeats visit 1's concept (a series goes on), visit 3 does not; the gaps are 14 and 21 days.
    assert rest == {"visits": 2, "repeats": [True, False], "gaps": [14.0, 21.0]}
    assert continuation.remainder_facts([], [], before) == {"visits": 0, "repeats": [], "gaps": []}


@pytest.mark.slow
def test_continuation_counts_a_series_left_after_each_cut_of_a_real_patient(trained, pipeline_env, tmp_path):
    from cehrgpt.models.tokenization_hf_cehrgpt import CehrGptTokenizer

    assert trained["result"].returncode == 0, output_of(trained["result"])
    vocabulary = CehrGptTokenizer.from_pretrained(trained["model_dir"]).get_vocab()
    concept = next(token for token in sorted(vocabulary) if token.isdigit() and token not in ("9201", "9202", "9203"))
    visit = ["[VS]", "9202", concept, "[VE]", "D14"]
    prompt = next(token for token in sorted(vocabulary) if token.startswith("year:"))
    age = next(token for token in sorted(vocabulary) if token.startswith("age:"))
    pq.write_table(pa.table({"concept_ids": [[prompt, age, "8507", "8527", *(visit * 6)][:-1]]}), tmp_path / "one.parquet")
    report = tmp_path / "series.json"
    result = run_script([str(REPO_ROOT / "bench" / "continuation.py"), "--model-dir", str(trained["model_dir"]),
                         "--real-dir", str(tmp_path), "--series", concept, "--futures", "1", "--json", str(report)],
                        pipeline_env)
    assert result.returncode == 0, output_of(result)
    series = json.loads(report.read_text())[concept]
    # Six visits with the concept: 4 left after the 2nd, 3 after the 3rd (half).
    assert series["patients"] == 1 and series["real_visits_with_it"] == 6
    assert series["after_2nd"]["real"] == 4 and series["after_half"]["real"] == 3
    # The model's: the visits holding the concept in what the same seeded sampler writes after each cut
    # (the prompt and 2, then 3, whole visits), sampled and counted here.
    tokens = pq.read_table(tmp_path / "one.parquet").column("concept_ids").to_pylist()[0]
    ends = [index + 1 for index, token in enumerate(tokens) if token == "[VE]"]
    after_2nd, after_half = written_visits_with(trained["model_dir"], concept, [tokens[:ends[1]], tokens[:ends[2]]],
                                                pipeline_env)
    assert (series["after_2nd"]["model"], series["after_half"]["model"]) == (after_2nd, after_half)


# bench/continuation.py's sampler (seed 0, its default), continuing each prefix once in turn, as the
# bench does; the part after the prefix is cut off and its visits holding the concept counted here.
CONTINUE = """
import json, sys
import torch
sys.path.insert(0, sys.argv[1] + "/bench")
from continuation import Sampler
from cehrgpt.generation.generate_batch_hf_gpt_sequence import generate_single_batch
from cehrgpt_tutorials.paths import omop_dir
concepts = omop_dir() / "concept"
sampler = Sampler(sys.argv[2], concepts if concepts.exists() else None, 0)
concept, counts = sys.argv[3], []
for prefix in json.loads(sys.argv[4]):
    output = generate_single_batch(sampler.generator, sampler.tokenizer, torch.tensor([sampler.tokenizer.encode(prefix)]),
                                   max_length=sampler.context, top_p=1.0, top_k=sampler.tokenizer.vocab_size)
    written = [token for token in output["sequences"][0] if token not in ("[END]", "[PAD]")][len(prefix):]
    visits, visit = 0, None
    for token in written:
        if token == "[VS]":
            visit = []
        elif token == "[VE]" and visit is not None:
            visits += concept in visit
            visit = None
        elif visit is not None:
            visit.append(token)
    counts.append(visits)
print(json.dumps(counts))
"""


def written_visits_with(model_dir: Path, concept: str, prefixes: list[list[str]], environment) -> list[float]:
    result = run_script(["-c", CONTINUE, str(REPO_ROOT), str(model_dir), concept, json.dumps(prefixes)], environment)
    assert result.returncode == 0, output_of(result)
    return [float(count) for count in json.loads(result.stdout.splitlines()[-1])]


def test_learning_curve_subsets_are_nested_and_the_same_for_the_same_seed():
    learning_curve = load_bench_module("learning_curve")
    persons = np.arange(1000, 1200)
    quarter, half = (set(learning_curve.nested_subset(persons, share, seed=3)) for share in (0.25, 0.5))
    assert len(quarter) == 50 and len(half) == 100 and quarter < half
    assert set(learning_curve.nested_subset(persons, 0.5, seed=3)) == half
    assert set(learning_curve.nested_subset(persons, 0.5, seed=4)) != half
    assert len(learning_curve.nested_subset(persons, 1.0, seed=3)) == 200


@pytest.mark.slow
def test_learning_curve_samples_the_given_full_model_and_reads_a_finished_fraction_again(
        trained, demo_patient_sequence, demo_omop_parquet, pipeline_env, tmp_path):
    assert trained["result"].returncode == 0, output_of(trained["result"])
    arguments = [str(REPO_ROOT / "bench" / "learning_curve.py"), "--fractions", "1", "--full-model",
                 str(trained["model_dir"]), "--real-dir", str(demo_patient_sequence / "train"), "--omop-dir",
                 str(demo_omop_parquet), "--num-patients", "4", "--output", str(tmp_path / "curve")]
    first = run_script(arguments, pipeline_env)
    assert first.returncode == 0, output_of(first)
    fraction = tmp_path / "curve" / "f100"
    result = json.loads((fraction / "result.json").read_text())
    training_patients = ds.dataset(demo_patient_sequence / "train", format="parquet").count_rows()
    assert result["training_patients"] == training_patients and result["train_seconds"] is None
    assert result["model_dir"] == str(trained["model_dir"]) and not (fraction / "cehrgpt_model").exists()
    assert result["synthetic_patients"] >= 4
    sampled_at = (fraction / "generate.log").stat().st_mtime_ns
    again = run_script(arguments, pipeline_env)
    assert again.returncode == 0, output_of(again)
    assert (fraction / "generate.log").stat().st_mtime_ns == sampled_at  # read again, not sampled again
    assert again.stdout.splitlines()[-1] == first.stdout.splitlines()[-1]


def test_learning_curve_refuses_a_fraction_outside_zero_to_one(pipeline_env, tmp_path):
    result = run_script([str(REPO_ROOT / "bench" / "learning_curve.py"), "--fractions", "0.5", "1.5",
                         "--output", str(tmp_path / "curve")], pipeline_env, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith("--fractions must lie in (0, 1]: [1.5]")
    assert not (tmp_path / "curve").exists()


def test_visit_end_leak_names_a_missing_model(pipeline_env, tmp_path):
    result = run_script([str(REPO_ROOT / "bench" / "visit_end_leak.py"), "--model-dir", str(tmp_path / "none")],
                        pipeline_env, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: no trained model in '{tmp_path / 'none'}' (no config.json)"]


@pytest.fixture(scope="module")
def restored(generated, demo_patient_sequence, demo_omop_parquet, demo_cdm, pipeline_env, tmp_path_factory):
    """The tiny model's sequences (some may convert, most do not) and real ones (which all do) in one
    sample, restored. The sample's folder name has a space: paths must survive the whole chain."""
    assert generated["result"].returncode == 0, output_of(generated["result"])
    sample = tmp_path_factory.mktemp("sample dir")
    sequences = sample / "generated_sequences"
    shutil.copytree(generated["folder"], sequences)
    real = ds.dataset(demo_patient_sequence, format="parquet").to_table(columns=["concept_ids"]).slice(0, REAL_SEQUENCES)
    real = real.append_column("person_id", pa.array(range(100_001, 100_001 + real.num_rows), pa.int64()))
    pq.write_table(real, sequences / "real.parquet")
    total = ds.dataset(sequences, format="parquet").count_rows()

    cdm_before = cdm_fingerprint(demo_cdm["uri"])
    result = run_sh("restore_synthetic.sh", ["--sample-folder", sample, "--source-omop-folder", demo_omop_parquet,
                                             "--dsn", demo_cdm["uri"], "--cpu-cores", 2], pipeline_env)
    return {"result": result, "total": total, "sample": sample, "cdm_before": cdm_before, "uri": demo_cdm["uri"],
            "generated": ds.dataset(generated["folder"], format="parquet").to_table(columns=["person_id", "concept_ids"]),
            "domains": load_domain_map(demo_omop_parquet / "concept")}


@pytest.mark.slow
def test_restore_counts_the_generated_sequences_it_converts_and_leaves_cdm_untouched(restored):
    result = restored["result"]
    assert result.returncode == 0, output_of(result)
    counts = summary_counts(result.stdout)
    # Censored at the source's last visit date first: sequences whose first visit is later are left out.
    censored = re.search(r"Censored at (\S+): [\d,]+ of ([\d,]+) sequences cut .*?, ([\d,]+) left out", result.stdout)
    assert censored, output_of(result)
    assert int(censored.group(2).replace(",", "")) == restored["total"]
    assert counts["generated"] == restored["total"] - int(censored.group(3).replace(",", ""))
    assert counts["converted"] + counts["skipped"] == counts["generated"]
    assert sum(counts["reasons"]) == counts["skipped"]
    # Whatever the model sampled: of the censored sequences (what the converter reads: a sequence the
    # censoring left out is neither converted nor skipped), those the converter's rules accept
    # (skip_reason, checked against the converter itself below) are exactly the persons in
    # synthetic_cdm, the generated ones counted apart from the real ones mixed in (person_id from
    # 100,001), which make sure the chain has something to load.
    sequences = ds.dataset(restored["sample"] / "censored_sequences", format="parquet").to_table(
        columns=["person_id", "concept_ids"])
    assert sequences.num_rows == counts["generated"]
    accepted = {person_id for person_id, tokens in zip(sequences.column("person_id").to_pylist(),
                                                       sequences.column("concept_ids").to_pylist(), strict=True)
                if skip_reason(tokens, restored["domains"]) is None}
    generated_ids = set(restored["generated"].column("person_id").to_pylist())
    person_ids = {row[0] for row in query(restored["uri"], "SELECT person_id FROM synthetic_cdm.person")}
    assert person_ids & generated_ids == accepted & generated_ids, "generated sequences converted or not as counted"
    assert person_ids - generated_ids == accepted - generated_ids
    assert person_ids - generated_ids, "no real sequence converted: the chain loaded nothing"
    assert counts["converted"] == len(accepted)
    assert counts["skipped"] == sequences.num_rows - len(accepted)

    [(persons, distinct)] = query(restored["uri"], "SELECT count(*), count(DISTINCT person_id) FROM synthetic_cdm.person")
    [(periods, period_ids, period_persons)] = query(
        restored["uri"], "SELECT count(*), count(observation_period_id), count(DISTINCT person_id) "
                         "FROM synthetic_cdm.observation_period")
    [(orphan_visits,)] = query(restored["uri"], "SELECT count(*) FROM synthetic_cdm.visit_occurrence v "
                                                "LEFT JOIN synthetic_cdm.person p USING (person_id) "
                                                "WHERE p.person_id IS NULL")
    assert persons == distinct == counts["converted"]
    assert periods == period_ids >= 1 and period_persons <= persons
    assert orphan_visits == 0
    assert cdm_fingerprint(restored["uri"]) == restored["cdm_before"], "restoring changed schema cdm"

    # Every command it printed can be pasted: the sample's path (with its space) is one word.
    converter = next(line for line in result.stdout.splitlines() if "omop_converter_batch" in line and line.startswith("$ "))
    words = shlex.split(converter[2:])
    assert words[words.index("--patient_sequence_path") + 1] == str((restored["sample"] / "censored_sequences").resolve())  # censored by default
    assert re.search(r'psql "postgresql://[^"]+"', result.stdout)
    assert "FROM cdm.person" in result.stdout and "FROM synthetic_cdm.person" in result.stdout
    assert "synthetic_pct" in result.stdout

    # The plausibility checks ran on both schemas; after censoring no synthetic visit is after the
    # source's last date (the date censoring used), and the real CDM has none by definition.
    lines = result.stdout.splitlines()
    first = [index for index, line in enumerate(lines) if line.startswith("Plausibility")][0] + 2
    table = lines[first:first + len(PLAUSIBILITY_CHECKS)]
    checks = {line.split()[0]: line.split()[1:] for line in table if line.startswith("  ") and len(line.split()) == 3}
    assert set(checks) == set(PLAUSIBILITY_CHECKS), result.stdout
    assert checks["visits_after_source_end"] == ["0", "0"]
    assert f"source's last visit {censored.group(1)}" in result.stdout


# The clinical tables cehrgpt's converter fills, as the OHDSI CDM v5.4 PostgreSQL DDL defines them
# (OMOPCDM_postgresql_5.4_ddl.sql and _primary_keys.sql, https://github.com/OHDSI/CommonDataModel):
# types, NOT NULLs and primary keys, written out here rather than taken from cdm_schema.py, which
# leaves NOT NULLs out on purpose.
CDM54_DDL = """
CREATE TABLE {s}.person (person_id integer NOT NULL, gender_concept_id integer NOT NULL,
  year_of_birth integer NOT NULL, month_of_birth integer NULL, day_of_birth integer NULL,
  birth_datetime TIMESTAMP NULL, race_concept_id integer NOT NULL, ethnicity_concept_id integer NOT NULL,
  location_id integer NULL, provider_id integer NULL, care_site_id integer NULL,
  person_source_value varchar(50) NULL, gender_source_value varchar(50) NULL, gender_source_concept_id integer NULL,
  race_source_value varchar(50) NULL, race_source_concept_id integer NULL, ethnicity_source_value varchar(50) NULL,
  ethnicity_source_concept_id integer NULL);
CREATE TABLE {s}.observation_period (observation_period_id integer NOT NULL, person_id integer NOT NULL,
  observation_period_start_date date NOT NULL, observation_period_end_date date NOT NULL,
  period_type_concept_id integer NOT NULL);
CREATE TABLE {s}.visit_occurrence (visit_occurrence_id integer NOT NULL, person_id integer NOT NULL,
  visit_concept_id integer NOT NULL, visit_start_date date NOT NULL, visit_start_datetime TIMESTAMP NULL,
  visit_end_date date NOT NULL, visit_end_datetime TIMESTAMP NULL, visit_type_concept_id Integer NOT NULL,
  provider_id integer NULL, care_site_id integer NULL, visit_source_value varchar(50) NULL,
  visit_source_concept_id integer NULL, admitted_from_concept_id integer NULL,
  admitted_from_source_value varchar(50) NULL, discharged_to_concept_id integer NULL,
  discharged_to_source_value varchar(50) NULL, preceding_visit_occurrence_id integer NULL);
CREATE TABLE {s}.condition_occurrence (condition_occurrence_id integer NOT NULL, person_id integer NOT NULL,
  condition_concept_id integer NOT NULL, condition_start_date date NOT NULL, condition_start_datetime TIMESTAMP NULL,
  condition_end_date date NULL, condition_end_datetime TIMESTAMP NULL, condition_type_concept_id integer NOT NULL,
  condition_status_concept_id integer NULL, stop_reason varchar(20) NULL, provider_id integer NULL,
  visit_occurrence_id integer NULL, visit_detail_id integer NULL, condition_source_value varchar(50) NULL,
  condition_source_concept_id integer NULL, condition_status_source_value varchar(50) NULL);
CREATE TABLE {s}.drug_exposure (drug_exposure_id integer NOT NULL, person_id integer NOT NULL,
  drug_concept_id integer NOT NULL, drug_exposure_start_date date NOT NULL, drug_exposure_start_datetime TIMESTAMP NULL,
  drug_exposure_end_date date NOT NULL, drug_exposure_end_datetime TIMESTAMP NULL, verbatim_end_date date NULL,
  drug_type_concept_id integer NOT NULL, stop_reason varchar(20) NULL, refills integer NULL, quantity NUMERIC NULL,
  days_supply integer NULL, sig TEXT NULL, route_concept_id integer NULL, lot_number varchar(50) NULL,
  provider_id integer NULL, visit_occurrence_id integer NULL, visit_detail_id integer NULL,
  drug_source_value varchar(50) NULL, drug_source_concept_id integer NULL, route_source_value varchar(50) NULL,
  dose_unit_source_value varchar(50) NULL);
CREATE TABLE {s}.procedure_occurrence (procedure_occurrence_id integer NOT NULL, person_id integer NOT NULL,
  procedure_concept_id integer NOT NULL, procedure_date date NOT NULL, procedure_datetime TIMESTAMP NULL,
  procedure_end_date date NULL, procedure_end_datetime TIMESTAMP NULL, procedure_type_concept_id integer NOT NULL,
  modifier_concept_id integer NULL, quantity integer NULL, provider_id integer NULL, visit_occurrence_id integer NULL,
  visit_detail_id integer NULL, procedure_source_value varchar(50) NULL, procedure_source_concept_id integer NULL,
  modifier_source_value varchar(50) NULL);
CREATE TABLE {s}.measurement (measurement_id integer NOT NULL, person_id integer NOT NULL,
  measurement_concept_id integer NOT NULL, measurement_date date NOT NULL, measurement_datetime TIMESTAMP NULL,
  measurement_time varchar(10) NULL, measurement_type_concept_id integer NOT NULL, operator_concept_id integer NULL,
  value_as_number NUMERIC NULL, value_as_concept_id integer NULL, unit_concept_id integer NULL, range_low NUMERIC NULL,
  range_high NUMERIC NULL, provider_id integer NULL, visit_occurrence_id integer NULL, visit_detail_id integer NULL,
  measurement_source_value varchar(50) NULL, measurement_source_concept_id integer NULL,
  unit_source_value varchar(50) NULL, unit_source_concept_id integer NULL, value_source_value varchar(50) NULL,
  measurement_event_id bigint NULL, meas_event_field_concept_id integer NULL);
CREATE TABLE {s}.death (person_id integer NOT NULL, death_date date NOT NULL, death_datetime TIMESTAMP NULL,
  death_type_concept_id integer NULL, cause_concept_id integer NULL, cause_source_value varchar(50) NULL,
  cause_source_concept_id integer NULL);
CREATE TABLE {s}.condition_era (condition_era_id integer NOT NULL, person_id integer NOT NULL,
  condition_concept_id integer NOT NULL, condition_era_start_date date NOT NULL, condition_era_end_date date NOT NULL,
  condition_occurrence_count integer NULL);
ALTER TABLE {s}.person ADD CONSTRAINT xpk_person PRIMARY KEY (person_id);
ALTER TABLE {s}.observation_period ADD CONSTRAINT xpk_observation_period PRIMARY KEY (observation_period_id);
ALTER TABLE {s}.visit_occurrence ADD CONSTRAINT xpk_visit_occurrence PRIMARY KEY (visit_occurrence_id);
ALTER TABLE {s}.condition_occurrence ADD CONSTRAINT xpk_condition_occurrence PRIMARY KEY (condition_occurrence_id);
ALTER TABLE {s}.drug_exposure ADD CONSTRAINT xpk_drug_exposure PRIMARY KEY (drug_exposure_id);
ALTER TABLE {s}.procedure_occurrence ADD CONSTRAINT xpk_procedure_occurrence PRIMARY KEY (procedure_occurrence_id);
ALTER TABLE {s}.measurement ADD CONSTRAINT xpk_measurement PRIMARY KEY (measurement_id);
ALTER TABLE {s}.condition_era ADD CONSTRAINT xpk_condition_era PRIMARY KEY (condition_era_id);
"""


@pytest.mark.slow
def test_the_synthetic_cdm_loads_into_the_ohdsi_cdm54_ddl(restored):
    assert restored["result"].returncode == 0, output_of(restored["result"])
    with psycopg2.connect(restored["uri"]) as connection, connection.cursor() as cursor:
        cursor.execute("DROP SCHEMA IF EXISTS cdm54_ddl CASCADE; CREATE SCHEMA cdm54_ddl")
        cursor.execute(CDM54_DDL.format(s="cdm54_ddl"))
        cursor.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'cdm54_ddl'")
        tables = sorted(row[0] for row in cursor.fetchall())
        loaded = {}
        for table in tables:
            cursor.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = 'synthetic_cdm' "
                           "AND table_name = %s", (table,))
            columns = [row[0] for row in cursor.fetchall()]
            assert columns, f"synthetic_cdm has no {table}"
            column_list = ", ".join(columns)
            # Types, NOT NULLs and primary keys are checked by PostgreSQL on the way in.
            cursor.execute(f"INSERT INTO cdm54_ddl.{table} ({column_list}) SELECT {column_list} FROM synthetic_cdm.{table}")
            loaded[table] = cursor.rowcount
        cursor.execute("DROP SCHEMA cdm54_ddl CASCADE")
    assert loaded["person"] >= 1 and loaded["visit_occurrence"] >= 1, loaded


# ---------------------------------------------------------------------------------------------
# Command lines and bookkeeping (fast)
# ---------------------------------------------------------------------------------------------


def fake_sequence_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "patient_sequence"
    folder.mkdir()
    pq.write_table(pa.table({"concept_ids": [["year:2000", "age:30", "8507", "8527", "[VS]", "9202", "[VE]"]],
                             "person_id": [1]}), folder / "part-0.parquet")
    return folder


@pytest.mark.slow  # starts the cehrgpt runner
@pytest.mark.parametrize("profile", ["demo", "seed", "tiny", "official"])
def test_every_profile_is_a_valid_runner_configuration(profile, pipeline_env, tmp_path):
    result = run_sh("train_cehrgpt.sh", ["--profile", profile, "--data-folder", fake_sequence_folder(tmp_path),
                                         "--model-dir", tmp_path / "model", "--print-args"], pipeline_env, timeout=120)
    assert result.returncode == 0, output_of(result)
    words = result.stdout.splitlines()

    def value(name):
        return words[len(words) - 1 - words[::-1].index(name) + 1]

    hidden, heads = int(value("--hidden_size")), int(value("--n_head"))
    assert hidden % 3 == 0, "the time-token head splits the hidden state in three"
    assert hidden % heads == 0
    assert value("--eval_strategy") == "epoch" and value("--save_strategy") == "epoch"
    assert value("--load_best_model_at_end") == "true"  # the runner's early stopping asserts it
    assert value("--report_to") == "none"
    assert value("--model_name_or_path") == value("--output_dir") == str((tmp_path / "model").resolve())
    # The runner's own parser takes every word (it fails on an unknown or misspelt argument).
    runner_words = words[words.index("cehrgpt.runners.hf_cehrgpt_pretrain_runner") + 1:]
    parse = ("import sys; from cehrgpt.runners.gpt_runner_util import parse_runner_args; "
             "sys.argv[1:] = sys.stdin.read().splitlines(); cehrgpt, data, model, training = parse_runner_args(); "
             "print(cehrgpt.early_stopping_threshold, training.load_best_model_at_end, model.hidden_size)")
    parsed = subprocess.run([words[0], "-c", parse], input="\n".join(runner_words), env=pipeline_env,
                            capture_output=True, text=True, timeout=300)
    assert parsed.returncode == 0, output_of(parsed)
    threshold, load_best, parsed_hidden = parsed.stdout.split()[-3:]
    assert (load_best, int(parsed_hidden)) == ("True", hidden)
    # tiny runs a fixed number of steps and official keeps the official recipe's early stopping (the
    # runner's default applies to both); the others run their whole schedule
    assert float(threshold) == (0.01 if profile in ("tiny", "official") else 0.0)


def test_training_reads_only_the_train_split_of_a_split_folder(pipeline_env, tmp_path):
    split = tmp_path / "split"
    split.mkdir()
    train = fake_sequence_folder(tmp_path).rename(split / "train")
    shutil.copytree(train, split / "test")
    result = run_sh("train_cehrgpt.sh", ["--profile", "tiny", "--data-folder", split, "--model-dir", tmp_path / "model",
                                         "--print-args"], pipeline_env, timeout=120)
    assert result.returncode == 0, output_of(result)
    words = result.stdout.splitlines()
    assert words[words.index("--data_folder") + 1] == str(train.resolve())


@pytest.mark.parametrize(
    ("script", "arguments", "message"),
    [
        ("train_cehrgpt.sh", ["--profile", "huge"], "unknown profile 'huge'"),
        ("train_cehrgpt.sh", ["--data-folder", "/nonexistent/sequences"], "no patient sequences at '/nonexistent/sequences'"),
        ("generate_synthetic.sh", ["--model-dir", "/nonexistent/model"], "no trained model in '/nonexistent/model'"),
        ("generate_synthetic.sh", ["--num-patients", "0"], "--num-patients must be a positive whole number"),
        ("omop_pipeline.sh", ["-o", "/tmp/x", "-s", "/tmp/y"], "--patient-sequence-folder is required"),
        ("omop_pipeline.sh", ["--patient-sequence-folder=/nonexistent", "-o", "/tmp/x", "-s", "/tmp/y"],
         "patient sequence folder '/nonexistent' does not exist"),
        ("restore_synthetic.sh", ["--schema", "cdm"], "--schema cdm is the real CDM's schema"),
        ("restore_synthetic.sh", ["--censor-date", "2019"], "--censor-date must look like YYYY-MM-DD, got '2019'"),
        ("restore_synthetic.sh", ["--censor-date", "2019-01-09", "--no-censor"],
         "--censor-date and --no-censor contradict each other"),
    ],
)
def test_bad_command_lines_get_one_clear_line(script, arguments, message, pipeline_env):
    result = run_sh(script, arguments, pipeline_env, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert message in result.stderr


def test_omop_pipeline_names_a_source_without_concept(pipeline_env, tmp_path):
    (tmp_path / "source").mkdir()
    result = run_sh("omop_pipeline.sh", ["-p", fake_sequence_folder(tmp_path), "-o", tmp_path / "out",
                                         "-s", tmp_path / "source"], pipeline_env, timeout=60)
    assert result.returncode == 1
    assert "has no concept/ table" in result.stderr
    assert not (tmp_path / "out").exists()


DOMAINS = {9202: "Visit", 9201: "Visit", 28060: "Condition", 4216643: "Observation"}
DEMOGRAPHICS = ["year:2010", "age:40", "8507", "8527"]


SKIP_CASES = [
        (DEMOGRAPHICS + ["[VS]", "9202", "28060", "[VE]"], None),
        (DEMOGRAPHICS + ["[VS]", "9202", "28060", "[VE]", "28060", "[VE]"], None),  # tolerated by the converter
        (DEMOGRAPHICS, "no events after the 4 demographic tokens"),
        (DEMOGRAPHICS + ["[VS]", "9202", "28060"], "does not end with [VE]"),
        (["age:40", "year:2010", "8507", "8527", "[VS]", "9202", "[VE]"], "does not start with a year token"),
        (["year:1910", "age:40", "8507", "8527", "[VS]", "9202", "[VE]"], "birth year before 1900"),
        (DEMOGRAPHICS + ["[VE]"], "[VE] before any [VS]"),
        (DEMOGRAPHICS + ["[VS]", "28060", "[VE]"], "visit type is not a Visit concept"),
        (DEMOGRAPHICS + ["[VS]", "9202", "123456", "[VE]"], "concept id not in the vocabulary"),
        (DEMOGRAPHICS + ["[VS]", "9202", "i-D3", "[VE]"], "inpatient time token outside an inpatient visit"),
        (DEMOGRAPHICS + ["[VS]", "9201", "i-D3", "28060", "[VE]"], None),
        (DEMOGRAPHICS + ["[VS]", "[DEATH]", "[VE]", "D1", "[VS]", "9202", "[VE]"], "[DEATH] not at the end"),
        (DEMOGRAPHICS + ["[VS]", "9202", "4216643", "[VE]"], "'Patient died' discharge outside an inpatient visit"),
]


@pytest.mark.parametrize(("tokens", "reason"), SKIP_CASES)
def test_skip_reasons_follow_the_converter_rules(tokens, reason):
    found = skip_reason(tokens, DOMAINS)
    if reason is None:
        assert found is None
    else:
        assert found is not None and reason in found


def test_empty_tables_get_the_converter_columns_and_observation_periods_get_ids(tmp_path):
    (tmp_path / "person").mkdir()
    pq.write_table(entity_schemas()["person"].empty_table(), tmp_path / "person" / "x.parquet")
    filled = fill_empty_tables(tmp_path)
    assert "person" not in filled and {"procedure_occurrence", "death", "measurement"} <= set(filled)
    schema = pq.read_schema(tmp_path / "procedure_occurrence" / "empty.parquet")
    assert schema.field("procedure_date").type == pa.date32()
    assert schema.field("person_id").type == pa.int64()

    periods = tmp_path / "observation_period"
    periods.mkdir()
    pq.write_table(pa.table({"person_id": [3, 1], "observation_period_start_date": pa.array([0, 0], pa.date32()),
                             "observation_period_end_date": pa.array([5, 5], pa.date32()),
                             "period_type_concept_id": [44814725, 44814725]}), periods / "part-00000.parquet")
    assert add_observation_period_ids(tmp_path) == 2
    table = ds.dataset(periods, format="parquet").to_table()
    assert table.column("observation_period_id").to_pylist() == [1, 2]
    assert table.column("person_id").to_pylist() == [1, 3]
    assert add_observation_period_ids(tmp_path) == 2  # a second run changes nothing


def test_skip_reasons_agree_with_what_cehrgpts_converter_does(tmp_path):
    # cehrgpt's converter itself (one worker, in this process) on every case above: a sequence is
    # skipped exactly when skip_reason gives it a reason.
    from cehrgpt.generation.omop_converter_batch import gpt_to_omop_converter_batch

    sequences = tmp_path / "sequences.parquet"
    pq.write_table(pa.table({"person_id": pa.array(range(1, len(SKIP_CASES) + 1), pa.int64()),
                             "concept_ids": [tokens for tokens, _ in SKIP_CASES]}), sequences)
    (tmp_path / "omop").mkdir()
    gpt_to_omop_converter_batch(0, [str(sequences)], DOMAINS, str(tmp_path / "omop"), 1000, True)
    converted = set(ds.dataset(tmp_path / "omop" / "person", format="parquet").to_table().column("person_id").to_pylist())
    verdicts = {person_id: skip_reason(tokens, DOMAINS) for person_id, (tokens, _) in enumerate(SKIP_CASES, start=1)}
    assert converted == {person_id for person_id, reason in verdicts.items() if reason is None}, verdicts
