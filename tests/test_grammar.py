"""Issue 19: the sequence grammar (cehrgpt_tutorials/grammar.py) and the constrained sampler.

The report's rules and the sampler's mask are one table: these tests check that the table says what
the report's rules say, that the logits processor never lets a token through that the table forbids
(random logits, planted logits that push hard toward breaking the grammar), and that
`generate.py --sampler raw` is cehrgpt's own generator, token for token, for the same seed.
"""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch
from conftest import output_of, run_sh
from test_inspect_synthetic import BASE, BROKEN, WITH_DEATH

from cehrgpt_tutorials.generate import GrammarLogitsProcessor, create_arg_parser, grammar_for_tokens, run
from cehrgpt_tutorials.grammar import RULES, check_sequences
from cehrgpt_tutorials.inspect.sequences import sequences_from_lists
from cehrgpt_tutorials.inspect.validity import analyse
from cehrgpt_tutorials.inspect.vocabulary import Vocabulary

# A small vocabulary with every kind of token the rules tell apart, [END] and [PAD] as the generator has.
TOKENS = sorted(
    {token for tokens in [BASE, WITH_DEATH, *BROKEN.values()] for token in tokens}
    | {"[END]", "[PAD]", "[START]", "8536", "Visit/0", "Gender/0", "Race/0", "i-H3", "LT", "W2", "262",
       "year:1990", "age:5", "Discharge/0", "4216643"}
)  # fmt: skip
END_ID, START_ID = TOKENS.index("[END]"), TOKENS.index("[START]")
PROMPT_IDS = [TOKENS.index(token) for token in BASE[:4]]


def report_problems(token_lists: list[list[str]]) -> dict[str, np.ndarray]:
    vocabulary = Vocabulary()
    return analyse(sequences_from_lists(token_lists, vocabulary), vocabulary).problems


def constrained_walks(logits_of, batch: int, steps: int, max_length: int | None, seed: int):
    """Sample `batch` sequences from the PROMPT through the processor, with logits_of(rng, ids) as the model."""
    grammar, class_of_token = grammar_for_tokens(TOKENS)
    processor = GrammarLogitsProcessor(grammar, class_of_token, START_ID, max_length)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    ids = torch.tensor([PROMPT_IDS] * batch)
    finished = torch.zeros(batch, dtype=torch.bool)
    for _ in range(steps):
        if max_length is not None and ids.shape[1] >= max_length:
            break
        scores = processor(ids, torch.from_numpy(logits_of(rng, ids)))
        # Every token the processor leaves finite is one the table allows in that state.
        allowed = grammar.allowed[processor.state][:, class_of_token]
        assert not (torch.isfinite(scores).numpy() & ~allowed).any()
        drawn = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator)[:, 0]
        drawn = torch.where(finished, torch.tensor(TOKENS.index("[PAD]")), drawn)
        finished |= drawn == END_ID
        ids = torch.cat([ids, drawn[:, None]], dim=1)
    rows = [row[: row.index(END_ID)] if END_ID in row else row for row in ids.tolist()]
    return [[TOKENS[i] for i in row] for row in rows]


def test_the_table_flags_each_broken_case_with_its_rule_and_nothing_in_valid_ones():
    vocabulary = Vocabulary()
    cases = [BASE, WITH_DEATH, *BROKEN.values()]
    sequences = sequences_from_lists(cases, vocabulary)
    masks, grammar = check_sequences(sequences.codes, sequences.offsets, vocabulary)
    flags = grammar.rule_flags(masks)
    assert [rule for rule in RULES if flags[rule][0] or flags[rule][1]] == []
    for index, rule in enumerate(BROKEN, start=2):
        assert [name for name in RULES if flags[name][index]] == [rule]


def test_processor_never_lets_a_forbidden_token_through_random_logits():
    sequences = constrained_walks(lambda rng, ids: rng.normal(0, 3, (ids.shape[0], len(TOKENS))).astype(np.float32),
                                  batch=64, steps=60, max_length=None, seed=0)
    # The report agrees: whatever was drawn breaks no rule so far (ended sequences: none at all).
    ended = [tokens for tokens in sequences if tokens[-1] == "[VE]"]
    assert len(ended) > 10
    problems = report_problems(ended)
    assert not np.logical_or.reduce(list(problems.values())).any()


def test_a_model_that_wants_to_break_the_grammar_yields_only_valid_sequences():
    # Planted logits: +8 on every token the grammar forbids right now, so an unconstrained sampler
    # would break a rule almost every step; a short window forces the processor to close in time.
    grammar, class_of_token = grammar_for_tokens(TOKENS)
    probe = GrammarLogitsProcessor(grammar, class_of_token, START_ID, None)

    def breaking_logits(rng, ids):
        states = probe.states_of(ids.numpy())
        forbidden = ~grammar.allowed[states][:, class_of_token]
        return (8.0 * forbidden + rng.normal(0, 1, forbidden.shape)).astype(np.float32)

    sequences = constrained_walks(breaking_logits, batch=64, steps=200, max_length=24, seed=1)
    problems = report_problems(sequences)
    assert not np.logical_or.reduce(list(problems.values())).any(), {
        rule: int(flags.sum()) for rule, flags in problems.items() if flags.any()
    }
    assert max(len(tokens) for tokens in sequences) <= 24


def test_whatever_the_processor_lets_through_cehrgpts_converter_can_convert():
    # The converter's own rules, mirrored step by step in omop_restore.skip_reason; a patient it
    # cannot read is skipped, so "valid" must imply "converts".
    from cehrgpt_tutorials.omop_restore import skip_reason

    visits = {"9201", "9202", "9203", "262", "8536"}
    domains = {int(token): "Visit" if token in visits else "Condition" for token in TOKENS if token.isdigit()}
    domains[0] = "Metadata"  # the concept table's "No matching concept", which Visit/0 names
    sequences = constrained_walks(lambda rng, ids: rng.normal(0, 3, (ids.shape[0], len(TOKENS))).astype(np.float32),
                                  batch=256, steps=80, max_length=80, seed=2)
    ended = [tokens for tokens in sequences if tokens[-1] == "[VE]"]
    assert len(ended) > 100
    reasons = [skip_reason(tokens, domains) for tokens in ended]
    assert sorted({reason for reason in reasons if reason is not None}) == []
    assert skip_reason(BROKEN["demographic_token_after_prompt"], domains) is not None


def generator_args(model_dir, prompts, output, sampler: str) -> object:
    prompts = prompts / "train" if (prompts / "train").is_dir() else prompts
    return create_arg_parser().parse_args([
        "--model_folder", str(model_dir), "--tokenizer_folder", str(model_dir), "--output_folder", str(output),
        "--num_of_patients", "3", "--batch_size", "4", "--buffer_size", "4", "--context_window", "30",
        "--sampling_strategy", "TopPStrategy", "--top_p", "1.0", "--demographic_data_path", str(prompts),
        "--sampler", sampler, "--seed", "7",
    ])  # fmt: skip


def sequences_in(folder) -> list[list[str]]:
    table = ds.dataset(folder, format="parquet").to_table().sort_by("person_id")
    return table.column("concept_ids").to_pylist()


@pytest.mark.slow
def test_raw_sampler_reproduces_cehrgpts_generator_for_the_same_seed(tiny_model, demo_patient_sequence, tmp_path):
    import random

    from cehrgpt.generation.generate_batch_hf_gpt_sequence import main as cehrgpt_main

    assert tiny_model["result"].returncode == 0, output_of(tiny_model["result"])
    model_dir = tiny_model["model_dir"]
    ours = run(generator_args(model_dir, demo_patient_sequence, tmp_path / "ours", "raw"))
    theirs_args = generator_args(model_dir, demo_patient_sequence, tmp_path / "theirs", "raw")
    random.seed(7), np.random.seed(7), torch.manual_seed(7)  # what --seed 7 does before the loop
    cehrgpt_main(theirs_args)
    assert ours == tmp_path / "ours" / "top_p10000" / "generated_sequences"
    expected = sequences_in(tmp_path / "theirs" / "top_p10000" / "generated_sequences")
    assert len(expected) == 4 and sequences_in(ours) == expected


@pytest.mark.slow
def test_constrained_samples_of_an_undertrained_model_are_all_valid(tiny_model, demo_patient_sequence, tmp_path):
    assert tiny_model["result"].returncode == 0, output_of(tiny_model["result"])
    folder = run(generator_args(tiny_model["model_dir"], demo_patient_sequence, tmp_path, "constrained"))
    assert folder.parent.name == "top_p10000_constrained"
    sequences = sequences_in(folder)
    problems = report_problems(sequences)
    assert not np.logical_or.reduce(list(problems.values())).any(), {
        rule: int(flags.sum()) for rule, flags in problems.items() if flags.any()
    }


def test_an_unknown_sampler_is_refused_in_one_line(pipeline_env, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    result = run_sh("generate_synthetic.sh", ["--sampler", "greedy", "--model-dir", tmp_path / "model"], pipeline_env)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: --sampler must be constrained or raw, got 'greedy'"
