"""Step 5a driver: cehrgpt's generator loop, optionally sampling only what the sequence grammar allows.

Takes `python -m cehrgpt.generation.generate_batch_hf_gpt_sequence`'s arguments (cehrgpt 0.1.9), plus
--sampler, --seed and --concept-dir. `--sampler constrained` (the default) sets to -inf the logits of
tokens that would break a rule of sequences/grammar.py before temperature and top-p, and, near the
context window's end, of those that leave no room to close the sequence; `--sampler raw` is cehrgpt's
sampler untouched. The run folder is cehrgpt's name for the settings, + "_constrained" for the
constrained sampler. generate_synthetic.sh (step 5a) runs it and prints the command.
"""

from __future__ import annotations

import datetime
import os
import random
import time
import uuid
from pathlib import Path

import numpy as np

from cehrgpt_tutorials.faults import crash_point
from cehrgpt_tutorials.sequences.vocabulary import VISIT_END

SAMPLERS = ("constrained", "raw")
OUTPUT_COLUMNS = [
    "concept_ids", "person_id", "is_numeric_types", "number_as_values",
    "concept_as_values", "concept_value_masks", "units",
]  # fmt: skip


class GrammarLogitsProcessor:
    """A transformers LogitsProcessor: -inf for every token the grammar forbids after each sequence.

    Keeps one grammar state per sequence and advances it by the token drawn at the previous step (one
    table lookup for the whole batch); recomputes from input_ids whenever they are not one token longer
    than last time (the first call, a new batch). With max_length, a token is allowed only if the
    sequence can still end validly within the tokens left (so the context window cannot cut a visit).
    """

    def __init__(self, grammar, class_of_token: np.ndarray, start_token_id: int | None, max_length: int | None):
        import torch

        self.torch = torch
        states = len(grammar.states)
        never = np.zeros((states, 1), dtype=bool)  # the column of ids outside the tokenizer's vocabulary
        never[[state.ended for state in grammar.states]] = True
        allowed = np.concatenate((grammar.allowed, never), axis=1)
        # A state where nothing is allowed (a prompt that already breaks a rule): leave its logits alone.
        allowed[~allowed.any(axis=1)] = True
        self.allowed = allowed
        self.class_of_token = class_of_token.astype(np.int64)
        # 0 / -inf per (state, token id), added to the logits: one row gather and one add per step.
        # The state bookkeeping is numpy: torch's small-tensor indexing and masked_fill cost
        # milliseconds per call on a busy 2-core CPU (thread hand-offs), numpy's take microseconds.
        self.penalty = np.where(allowed[:, self.class_of_token], 0.0, -np.inf).astype(np.float32)
        # Where [VE] is forbidden for want of a discharge: which token ids take its probability.
        closing = np.concatenate((grammar.closing_discharge, np.zeros((states, 2), dtype=bool)), axis=1)
        self.closing = closing[:, self.class_of_token]
        self.needs_closing = self.closing.any(axis=1)
        self.visit_end_ids = np.flatnonzero([grammar.classes[c].kind == VISIT_END if c < len(grammar.classes) else False
                                             for c in self.class_of_token])
        self.next_state = grammar.next_state.astype(np.int64)
        unreachable = np.iinfo(np.int32).max
        steps = np.minimum(grammar.steps_to_valid_end, unreachable)
        self.steps_after_move = np.concatenate((steps[grammar.next_state], np.full((states, 1), unreachable)), axis=1)
        # Beyond this many tokens left, every allowed move still has room to close the sequence.
        closing = self.steps_after_move[allowed & (self.steps_after_move < unreachable)]
        self.longest_closing = int(closing.max(initial=0))
        self.start_token_id = start_token_id
        self.max_length = max_length
        self.state = None
        self.length = -1
        self.seconds = 0.0
        self.calls = 0

    def states_of(self, input_ids: np.ndarray) -> np.ndarray:
        """Grammar state of every row after all its tokens (a leading [START] is skipped, as the report does)."""
        state = np.zeros(input_ids.shape[0], dtype=np.int64)
        classes = self.class_of_token[input_ids]
        for position in range(input_ids.shape[1]):
            moved = self.next_state[state, classes[:, position]]
            if position == 0 and self.start_token_id is not None:
                moved = np.where(input_ids[:, 0] == self.start_token_id, state, moved)
            state = moved
        return state

    def __call__(self, input_ids, scores):
        started = time.perf_counter()
        length = input_ids.shape[1]
        if self.state is None or length != self.length + 1 or len(self.state) != input_ids.shape[0]:
            self.state = self.states_of(input_ids.cpu().numpy())
        else:
            self.state = self.next_state[self.state, self.class_of_token[input_ids[:, -1].cpu().numpy()]]
        self.length = length
        left = None if self.max_length is None else self.max_length - length - 1  # tokens after this one
        if left is None or left >= self.longest_closing:
            penalty = self.penalty[self.state]
        else:  # near the context window's end: only moves that can still close the sequence in time
            allowed = self.allowed[self.state]
            budgeted = allowed & (self.steps_after_move[self.state] <= left)
            allowed = np.where(budgeted.any(axis=1, keepdims=True), budgeted, allowed)
            penalty = np.where(allowed[:, self.class_of_token], 0.0, -np.inf).astype(np.float32)
        penalty = penalty[:, : scores.shape[1]]
        if scores.device.type == "cpu" and scores.dtype == self.torch.float32:
            result = self.torch.from_numpy(scores.detach().numpy() + penalty)  # numpy: see __init__
        else:
            result = scores + self.torch.from_numpy(penalty).to(scores.device, scores.dtype)
        closing_rows = np.flatnonzero(self.needs_closing[self.state])
        if len(closing_rows):
            result = self.move_visit_end_to_discharge(scores, result, closing_rows, penalty[closing_rows])
        self.seconds += time.perf_counter() - started
        self.calls += 1
        return result


    def move_visit_end_to_discharge(self, scores, result, rows: np.ndarray, penalty: np.ndarray):
        """In `rows` (inpatient visits without a discharge), the probability the model gave [VE] goes to
        the discharge tokens that may close the visit, in proportion to theirs (evenly when all are 0)."""
        torch = self.torch
        index = torch.from_numpy(rows).to(scores.device)
        probabilities = torch.softmax(scores[index].float(), dim=-1)
        closing = torch.from_numpy(self.closing[self.state[rows], : scores.shape[1]]).to(scores.device)
        moved = probabilities[:, self.visit_end_ids].sum(dim=1, keepdim=True)
        weights = probabilities * closing
        share = torch.where(weights.sum(dim=1, keepdim=True) > 0, weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-30),
                            closing / closing.sum(dim=1, keepdim=True).clamp_min(1))
        updated = torch.log(probabilities + moved * share) + torch.from_numpy(penalty).to(scores.device)
        result = result.clone()
        result[index] = updated.to(result.dtype)
        return result


def grammar_for_tokens(tokens: list[str], visit_concept_ids: frozenset[str] = frozenset()):
    """The compiled grammar and the class of every token id (tokens[i] has id i; [END] -> END_OF_SEQUENCE)."""
    from cehrgpt.models.special_tokens import END_TOKEN

    from cehrgpt_tutorials.sequences.grammar import compile_grammar, token_classes
    from cehrgpt_tutorials.sequences.vocabulary import Vocabulary

    vocabulary = Vocabulary(visit_concept_ids)
    codes = vocabulary.codes(tokens)
    classes, class_of_code = token_classes(vocabulary)
    grammar = compile_grammar(classes)
    class_of_token = class_of_code[codes]
    class_of_token[[index for index, token in enumerate(tokens) if token == END_TOKEN]] = grammar.end_of_sequence
    return grammar, class_of_token


def grammar_for_tokenizer(tokenizer, visit_concept_ids: frozenset[str]):
    """grammar_for_tokens over a cehrgpt tokenizer's vocabulary (ids without a token are never allowed)."""
    by_id = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    tokens = [""] * (by_id[-1][1] + 1)
    known = np.zeros(len(tokens), dtype=bool)
    for token, token_id in by_id:
        tokens[token_id], known[token_id] = token, True
    grammar, class_of_token = grammar_for_tokens(tokens, visit_concept_ids)
    class_of_token[~known] = len(grammar.classes) + 1  # the processor's "never" column
    return grammar, class_of_token


class ModelWithLogitsProcessor:
    """The model as cehrgpt's generate_single_batch sees it, with a fresh grammar processor per batch."""

    def __init__(self, model, make_processor):
        self.model = model
        self.make_processor = make_processor
        self.processors = []

    def generate(self, **kwargs):
        from transformers import LogitsProcessorList

        processor = self.make_processor(kwargs["generation_config"].max_length)
        self.processors.append(processor)
        return self.model.generate(**kwargs, logits_processor=LogitsProcessorList([processor]))


def create_arg_parser():
    from cehrgpt.generation.generate_batch_hf_gpt_sequence import create_arg_parser as cehrgpt_parser

    from cehrgpt_tutorials.paths import omop_dir

    parser = cehrgpt_parser()
    parser.description = __doc__.split("\n", 1)[0]
    parser.add_argument("--sampler", choices=SAMPLERS, default="constrained",
                        help="constrained (default): only tokens the grammar allows; raw: cehrgpt's sampler")
    parser.add_argument("--seed", type=int, default=None, help="seed Python, numpy and torch first")
    default_concepts = omop_dir() / "concept"
    parser.add_argument("--concept-dir", type=Path,
                        default=default_concepts if default_concepts.exists() else None,
                        help="OMOP concept table, for the visit concepts (default: $OMOP_DIR/concept if present)")
    return parser


def run(args) -> Path:
    """cehrgpt's generate_batch_hf_gpt_sequence.main(args), with args.sampler; returns the output folder.

    Its steps keep cehrgpt's order (seed, load, prompts, generate, write), so --sampler raw with the same
    seed draws the same random numbers and writes the same sequences as cehrgpt's script."""
    import torch
    from cehrbert.runners.runner_util import load_parquet_as_dataset
    from cehrgpt.gpt_utils import get_cehrgpt_output_folder

    if args.seed is not None:
        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer, model = load_model(args, device)
    folder_name = get_cehrgpt_output_folder(args, tokenizer)  # also sets top_k, as cehrgpt's main does
    generator = model
    if args.sampler == "constrained":
        folder_name += "_constrained"
        generator = constrained_generator(model, tokenizer, args.concept_dir)
    output_folder = os.path.join(args.output_folder, folder_name, "generated_sequences")
    os.makedirs(output_folder, exist_ok=True)
    max_seq_allowed = model.config.n_positions if args.drop_long_sequences else np.iinfo(np.int32).max
    dataset = load_parquet_as_dataset(args.demographic_data_path)
    generation_seconds = generate_sequences(args, generator, tokenizer, dataset, max_seq_allowed, output_folder, device)
    print(timing_line(args.sampler, generator, generation_seconds), flush=True)
    return Path(output_folder)


def load_model(args, device):
    """cehrgpt's tokenizer and model from the step-4 folders, set up for generation as cehrgpt's main does."""
    from cehrgpt.models.hf_cehrgpt import CEHRGPT2LMHeadModel
    from cehrgpt.models.tokenization_hf_cehrgpt import CehrGptTokenizer
    from cehrgpt.runners.gpt_runner_util import read_backbone, resolve_attn_implementation

    tokenizer = CehrGptTokenizer.from_pretrained(args.tokenizer_folder)
    model = CEHRGPT2LMHeadModel.from_pretrained(
        args.model_folder, attn_implementation=resolve_attn_implementation(backbone=read_backbone(args.model_folder))
    ).eval().to(device)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.end_token_id
    model.generation_config.bos_token_id = tokenizer.end_token_id
    return tokenizer, model


def constrained_generator(model, tokenizer, concept_dir: Path | None) -> ModelWithLogitsProcessor:
    """The model with a grammar processor on every generate() call (visit concepts from concept_dir)."""
    from cehrgpt.models.special_tokens import START_TOKEN

    from cehrgpt_tutorials.omop.concepts import visit_concept_ids

    grammar, class_of_token = grammar_for_tokenizer(tokenizer, visit_concept_ids(concept_dir))
    start_id = tokenizer.get_vocab().get(START_TOKEN)
    return ModelWithLogitsProcessor(
        model, lambda max_length: GrammarLogitsProcessor(grammar, class_of_token, start_id, max_length)
    )


def generate_sequences(args, generator, tokenizer, dataset, max_seq_allowed: int, output_folder: str, device) -> float:
    """cehrgpt's batch loop: random real prompts, generate_single_batch, normalize_value, a Parquet file
    per buffer_size rows (the rest in a "-last" file); returns the seconds spent in generate()."""
    import pandas as pd
    import torch
    from cehrgpt.generation.generate_batch_hf_gpt_sequence import generate_single_batch, normalize_value

    num_of_batches = args.num_of_patients // args.batch_size + 1
    rows, person_id, generation_seconds = [], 1, 0.0

    def flush(suffix: str = "") -> None:
        pd.DataFrame(rows, columns=OUTPUT_COLUMNS).to_parquet(os.path.join(output_folder, f"{uuid.uuid4()}{suffix}.parquet"))
        rows.clear()
        crash_point("generate:batch-written")

    for batch in range(num_of_batches):
        print(f"{datetime.datetime.now()}: batch {batch + 1} of {num_of_batches}", flush=True)
        prompts, prompt_ages = random_prompts(args, tokenizer, dataset, max_seq_allowed)
        started = time.perf_counter()
        result = generate_single_batch(
            generator, tokenizer, torch.tensor(prompts[: args.batch_size]),
            ages=torch.tensor(prompt_ages[: args.batch_size]), max_length=args.context_window,
            mini_num_of_concepts=args.min_num_of_concepts, top_p=args.top_p, top_k=args.top_k,
            temperature=args.temperature, repetition_penalty=args.repetition_penalty, num_beams=args.num_beams,
            num_beam_groups=args.num_beam_groups, epsilon_cutoff=args.epsilon_cutoff, device=device,
        )
        generation_seconds += time.perf_counter() - started
        for concept_ids, value_indicators, values in zip(
            result["sequences"], result["value_indicators"], result["values"], strict=True
        ):
            concept_ids, numeric_types, numbers, concept_values, units = normalize_value(concept_ids, values, tokenizer)
            rows.append({"concept_ids": concept_ids, "person_id": person_id, "is_numeric_types": numeric_types,
                         "number_as_values": numbers, "concept_as_values": concept_values,
                         "concept_value_masks": value_indicators, "units": units})
            person_id += 1
        if len(rows) >= args.buffer_size:
            flush()
    if rows:
        flush("-last")
    return generation_seconds


def random_prompts(args, tokenizer, dataset, max_seq_allowed: int) -> tuple[list, list]:
    """At least batch_size prompts (token ids) and their ages: the opening tokens of random real sequences
    whose length is allowed (min_num_of_concepts to max_seq_allowed tokens), drawn batch_size at a time as cehrgpt does."""
    from cehrgpt.generation.omop_converter_batch import START_TOKEN_SIZE
    from cehrgpt.gpt_utils import construct_age_sequence

    prompt_size = 2 if args.meds_format else START_TOKEN_SIZE
    total_rows = len(dataset)
    prompts, prompt_ages, tries = [], [], 0
    while len(prompts) < args.batch_size:
        for row in dataset.select(random.sample(range(total_rows), k=args.batch_size)):
            if args.min_num_of_concepts <= len(row["concept_ids"]) <= max_seq_allowed:
                prompt = row["concept_ids"][:prompt_size]
                prompts.append(tokenizer.encode(prompt))
                prompt_ages.append(construct_age_sequence(prompt))
            tries += 1
            if not prompts and tries > 10:
                raise RuntimeError(f"The length of concept_ids in {args.demographic_data_path} does not qualify!")
    return prompts, prompt_ages


def timing_line(sampler: str, generator, generation_seconds: float) -> str:
    """The time model.generate took and, for the constrained sampler, the grammar processor's share of it."""
    line = f"sampler {sampler}: model.generate took {generation_seconds:.1f}s"
    if sampler == "constrained":
        processors = generator.processors
        seconds, calls = sum(p.seconds for p in processors), sum(p.calls for p in processors)
        line += (f", of which the grammar processor {seconds:.2f}s over {calls} steps "
                 f"({seconds / max(generation_seconds, 1e-9):.1%}; {1000 * seconds / max(calls, 1):.2f} ms per step)")
    return line


def main(argv=None) -> int:
    from cehrgpt_tutorials.errors import describe_os_error, fail

    args = create_arg_parser().parse_args(argv)
    if args.concept_dir is not None and not args.concept_dir.is_dir():
        fail(f"--concept-dir {args.concept_dir} is not a folder")
    try:
        run(args)
    except OSError as error:  # e.g. a full disk while the sequences are written
        fail(f"generation stopped: {describe_os_error(error)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
