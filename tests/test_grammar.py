"""The sequence grammar (cehrgpt_tutorials/sequences/grammar.py) and the constrained sampler.

The report's rules and the sampler's mask are one table: these tests check that the table says what
the report's rules say; that whatever the logits processor lets through, for any logits (seeded random
ones, and ones pushing hard toward breaking the grammar), over the demo's vocabulary and over crafted
ones with every kind of token, up to the context limit, breaks no rule and is converted by cehrgpt's own
OMOP converter; and that `generate.py --sampler raw` is cehrgpt's own generator, token for token, for
the same seed.
"""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch
from conftest import output_of, run_sh
from helpers import error_line
from synthetic_data import BASE, BROKEN, WITH_DEATH

from cehrgpt_tutorials.generate import GrammarLogitsProcessor, create_arg_parser, grammar_for_tokens, run
from cehrgpt_tutorials.sequences.codes import sequences_from_lists
from cehrgpt_tutorials.sequences.facts import sequence_facts
from cehrgpt_tutorials.sequences.grammar import RULES, check_sequences
from cehrgpt_tutorials.sequences.vocabulary import Vocabulary

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
    return sequence_facts(sequences_from_lists(token_lists, vocabulary), vocabulary).problems


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


def test_the_probability_of_ending_an_inpatient_visit_without_discharge_goes_to_the_discharge():
    # [VS] 9201 1002: an inpatient visit with one event and no discharge yet; the model wants [VE].
    grammar, class_of_token = grammar_for_tokens(TOKENS)
    processor = GrammarLogitsProcessor(grammar, class_of_token, START_ID, None)
    ids = torch.tensor([PROMPT_IDS + [TOKENS.index(token) for token in ("[VS]", "9201", "1002")]])
    logits = torch.zeros(1, len(TOKENS))
    logits[0, TOKENS.index("[VE]")] = 5.0
    before = torch.softmax(logits, dim=-1)[0]
    after = torch.softmax(processor(ids, logits.clone()), dim=-1)[0]
    discharges = [TOKENS.index(token) for token in ("Discharge/0", "4216643") if token in TOKENS]
    visit_end = TOKENS.index("[VE]")
    assert after[visit_end] == 0
    # The [VE] mass lands on the discharges that may close the visit; every other allowed token keeps
    # its share relative to the rest (not inflated by [VE]'s mass, as spreading it over all would).
    allowed = (after > 0).numpy()
    kept = float(before[allowed].sum() + before[visit_end])
    assert float(after[discharges].sum()) == pytest.approx(float(before[discharges].sum() + before[visit_end]) / kept,
                                                           rel=1e-5)
    others = [index for index in np.flatnonzero(allowed) if index not in discharges]
    assert others and torch.allclose(after[others], before[others] / kept, rtol=1e-5)


def test_constrained_inpatient_visits_of_a_model_eager_to_close_them_stay_short():
    # +4 on [VE] everywhere: the model would end every visit after an event or two. Without a discharge
    # an inpatient visit may not end; its visits must still end after a few events, not run on.
    end_id = TOKENS.index("[VE]")

    def eager_to_close(rng, ids):
        logits = rng.normal(0, 1, (ids.shape[0], len(TOKENS))).astype(np.float32)
        logits[:, end_id] += 4
        return logits

    sequences = constrained_walks(eager_to_close, batch=128, steps=120, max_length=None, seed=4)
    lengths = []
    for tokens in sequences:
        for start, token in enumerate(tokens):
            if token == "[VS]" and start + 1 < len(tokens) and tokens[start + 1] in ("9201", "262") and "[VE]" in tokens[start:]:
                lengths.append(tokens.index("[VE]", start) - start)
    assert len(lengths) > 20 and np.mean(lengths) < 6, (len(lengths), np.mean(lengths))


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
    from cehrgpt_tutorials.omop.restore import skip_reason

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


# ---------------------------------------------------------------------------------------------
# The guarantee: whatever the processor lets through is valid and converts, for any logits.
# ---------------------------------------------------------------------------------------------

# Crafted concept table: every kind of token the rules and cehrgpt's converter tell apart. Visit types
# (four inpatient ones), the converter's discharge concepts, a Visit-domain concept it also takes as a
# discharge (8536 Home), concept 0 (what Visit/0 names), and concepts of the clinical domains.
CRAFTED_DOMAINS = {
    **{visit: "Visit" for visit in ("9201", "262", "8971", "8920", "9202", "9203", "581477", "8536")},
    **{discharge: "Observation" for discharge in ("4216643", "4021968", "4146681", "4161979")},
    "0": "Metadata", "201826": "Condition", "4329847": "Condition", "1125315": "Drug", "4163872": "Procedure",
    "8507": "Gender", "8532": "Gender", "8527": "Race", "8516": "Race",
}  # fmt: skip
# Time tokens the converter dates, and ones cehrgpt parses but its converter cannot date or parse.
CRAFTED_TIME_TOKENS = ["D0", "D1", "D30", "D1999", "W3", "M11", "LT", "i-D0", "i-D2", "i-H3", "i-H20",
                       "D2000", "D007", "W4", "M12", "Y1", "VS-D7-VE", "i-W2", "i-D-3", "i-Hx"]
CRAFTED_SPECIAL_TOKENS = ["[VS]", "[VE]", "[DEATH]", "[START]", "[END]", "[PAD]", "[OOV]", "Visit/0",
                          "Discharge/0", "Gender/0", "Race/0", "year:2000", "age:30", "age:200"]
CRAFTED_TOKENS = CRAFTED_SPECIAL_TOKENS + CRAFTED_TIME_TOKENS + sorted(CRAFTED_DOMAINS)


def sample_through_processor(grammar, class_of_token, tokens: list[str], prompts: list[list[str]],
                             batch: int, max_length: int, seed: int) -> list[list[str]]:
    """`batch` sequences drawn from seeded random logits through the processor, each from a random
    prompt, until [END] or max_length tokens; [END] and the tokens that must end a patient ([DEATH], the
    'Patient died' discharge) are pushed down so most run to the context limit."""
    start_id = tokens.index("[START]") if "[START]" in tokens else None
    end_id, pad_id = tokens.index("[END]"), tokens.index("[PAD]")
    processor = GrammarLogitsProcessor(grammar, class_of_token, start_id, max_length)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    id_of = {token: index for index, token in enumerate(tokens)}
    ending = [id_of[token] for token in ("[END]", "[DEATH]", "4216643") if token in id_of]
    ids = torch.tensor([[id_of[token] for token in prompts[i]] for i in rng.integers(0, len(prompts), batch)])
    finished = torch.zeros(batch, dtype=torch.bool)
    while ids.shape[1] < max_length and not finished.all():
        logits = rng.normal(0, 3, (batch, len(tokens))).astype(np.float32)
        logits[:, ending] -= 6
        scores = processor(ids, torch.from_numpy(logits))
        drawn = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator)[:, 0]
        drawn = torch.where(finished, torch.tensor(pad_id), drawn)
        finished |= drawn == end_id
        ids = torch.cat([ids, drawn[:, None]], dim=1)
    rows = [row[: row.index(end_id)] if end_id in row else row for row in ids.tolist()]
    return [[tokens[i] for i in row] for row in rows]


def converted_persons(sequences: list[list[str]], domains: dict[str, str], folder) -> set[int]:
    """person_ids (1..N, one per sequence) that cehrgpt's own OMOP converter turns into a person."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from cehrgpt.generation.omop_converter_batch import gpt_to_omop_converter_batch

    (folder / "omop").mkdir(parents=True)
    source = folder / "sequences.parquet"
    pq.write_table(pa.table({"concept_ids": pa.array(sequences, pa.list_(pa.string())),
                             "person_id": pa.array(range(1, len(sequences) + 1), pa.int64())}), source)
    gpt_to_omop_converter_batch(0, [str(source)], {int(concept): domain for concept, domain in domains.items()},
                                str(folder / "omop"), len(sequences) + 1, True)
    return set(ds.dataset(folder / "omop" / "person", format="parquet").to_table().column("person_id").to_pylist())


def assert_valid_and_converted(sequences, vocabulary: Vocabulary, domains: dict[str, str], folder) -> None:
    problems = sequence_facts(sequences_from_lists(sequences, vocabulary), vocabulary).problems
    assert not np.logical_or.reduce(list(problems.values())).any(), {
        rule: int(flags.sum()) for rule, flags in problems.items() if flags.any()
    }
    skipped = set(range(1, len(sequences) + 1)) - converted_persons(sequences, domains, folder)
    assert not skipped, [" ".join(sequences[person - 1]) for person in sorted(skipped)[:3]]


@pytest.mark.parametrize("concept_table", [False, True], ids=["known-visit-ids", "visit-domain-from-concept-table"])
def test_every_sequence_the_processor_lets_through_is_valid_and_converts(concept_table, tmp_path):
    # Both sides see the same facts: with a concept table, its Visit-domain concepts (8536 Home too)
    # are visit types and discharges for the sampler, the report and the converter alike.
    visit_concepts = frozenset(c for c, d in CRAFTED_DOMAINS.items() if d == "Visit") if concept_table else frozenset()
    grammar, class_of_token = grammar_for_tokens(CRAFTED_TOKENS, visit_concepts)
    prompts = [["year:2000", "age:30", "8507", "8527"], ["year:2000", "age:30", "Gender/0", "Race/0"]]
    sequences = sample_through_processor(grammar, class_of_token, CRAFTED_TOKENS, prompts,
                                         batch=1500, max_length=200, seed=3 + concept_table)
    lengths = [len(tokens) for tokens in sequences]
    assert sum(length == 200 for length in lengths) > 1000, "the walks did not reach the context limit"
    drawn = {token for tokens in sequences for token in tokens[4:]}
    # The walks went everywhere the grammar allows, and nowhere it does not.
    assert {"9201", "262", "8971", "8920", "4216643", "Discharge/0", "i-D2", "i-H3", "[DEATH]", "LT"} <= drawn
    assert drawn.isdisjoint({"D2000", "D007", "W4", "M12", "Y1", "VS-D7-VE", "i-W2", "i-D-3", "i-Hx", "[OOV]",
                             "year:2000", "age:30", "[START]", "[PAD]"})
    assert_valid_and_converted(sequences, Vocabulary(visit_concepts), CRAFTED_DOMAINS, tmp_path / "converted")


@pytest.mark.slow
def test_over_the_demo_vocabulary_every_sequence_the_processor_lets_through_is_valid_and_converts(
        tiny_model, demo_omop_parquet, demo_patient_sequence, tmp_path):
    """The tokenizer and concept table the generator reads (the demo slice's), prompts from its sequences."""
    from cehrgpt.models.tokenization_hf_cehrgpt import CehrGptTokenizer

    from cehrgpt_tutorials.generate import grammar_for_tokenizer
    from cehrgpt_tutorials.omop.concepts import read_concepts, visit_concept_ids

    assert tiny_model["result"].returncode == 0, output_of(tiny_model["result"])
    tokenizer = CehrGptTokenizer.from_pretrained(tiny_model["model_dir"])
    concept_dir = demo_omop_parquet / "concept"
    visit_concepts = visit_concept_ids(concept_dir)
    grammar, class_of_token = grammar_for_tokenizer(tokenizer, visit_concepts)
    tokens = [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])]
    assert len(tokens) == len(class_of_token)
    prompts = [row[:4] for row in sequences_in(demo_patient_sequence / "train")[:200]]
    sequences = sample_through_processor(grammar, class_of_token, tokens, prompts, batch=1000, max_length=512, seed=5)
    assert sum(len(tokens) == 512 for tokens in sequences) > 500
    domains = {concept: domain for concept, (_, domain) in read_concepts(concept_dir).items()}
    assert_valid_and_converted(sequences, Vocabulary(visit_concepts), domains, tmp_path / "converted")


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
def test_constrained_samples_of_an_undertrained_model_are_all_valid(tiny_model, demo_omop_parquet,
                                                                    demo_patient_sequence, tmp_path):
    from cehrgpt_tutorials.omop.concepts import visit_concept_ids

    assert tiny_model["result"].returncode == 0, output_of(tiny_model["result"])
    concept_dir = demo_omop_parquet / "concept"  # the generator and the report read the same table
    arguments = generator_args(tiny_model["model_dir"], demo_patient_sequence, tmp_path, "constrained")
    arguments.concept_dir = concept_dir
    folder = run(arguments)
    assert folder.parent.name == "top_p10000_constrained"
    sequences = sequences_in(folder)
    vocabulary = Vocabulary(visit_concept_ids(concept_dir))
    problems = sequence_facts(sequences_from_lists(sequences, vocabulary), vocabulary).problems
    assert not np.logical_or.reduce(list(problems.values())).any(), {
        rule: int(flags.sum()) for rule, flags in problems.items() if flags.any()
    }


def test_an_unknown_sampler_is_refused_in_one_line(pipeline_env, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    result = run_sh("generate_synthetic.sh", ["--sampler", "greedy", "--model-dir", tmp_path / "model"], pipeline_env)
    assert error_line(result, alone=True) == "error: --sampler must be constrained or raw, got 'greedy'"
