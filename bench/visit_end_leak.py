"""Diagnostic for steps 4-5: how much probability a trained model puts on impossible tokens after [VE].

Most structurally invalid synthetic patients (inspect_synthetic.py's event_outside_visit,
unmatched_visit_end, time_token_not_between_visits) start the same way: right after a visit's [VE]
the sampler picks a concept instead of the time token that always follows [VE] in the training data.
This script measures that directly, without sampling: it feeds a fixed set of sequences to the model
(teacher forcing), and at every [VE] takes the next-token distribution the generator would sample
from (temperature, then the top-p nucleus, renormalised) and adds up the probability of every token
that would break the structure there (anything but a day/week/month/LT time token, [VS] or [END]).

Why: the valid share of 500 sampled patients has a sampling error of about +-1.3 points on its own,
so two trainings cannot be compared by sampling once each. This number is deterministic for a given
model and set of sequences, so it compares trainings (and temperatures) on identical contexts.
"expected spoiled" is the mean over sequences of 1 - prod(1 - leak at each [VE]): the share of
patients the sampler would spoil at a visit end if it followed these same contexts. It is not a
goal: a measurement, recorded in bench/RESULTS.md.

Reads:  MODEL_DIR (default $CEHR_GPT_MODEL_DIR): a trained model or one of its checkpoint-* folders
        (the tokenizer is read from the model folder above a checkpoint)
        sequences: cehrbert_data's patient_sequence or cehrgpt's generated_sequences (Parquet)
Writes: the numbers on stdout; --json FILE writes them too.

Examples:
    python bench/visit_end_leak.py
    python bench/visit_end_leak.py --model-dir omop_synthea/cehrgpt_model --temperature 0.9
    python bench/visit_end_leak.py --model-dir omop_synthea/cehrgpt_model/checkpoint-786 --json leak.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from cehrgpt_tutorials.errors import PipelineError, fail  # noqa: E402
from cehrgpt_tutorials.files import parquet_files  # noqa: E402
from cehrgpt_tutorials.paths import cehr_gpt_data_dir, cehr_gpt_model_dir  # noqa: E402
from cehrgpt_tutorials.sequences.tokens import SEQUENCE_TOKEN_COLUMN, VISIT_END_TOKEN  # noqa: E402


def tokenizer_folder(model_dir: Path) -> Path:
    """The runner saves the tokenizer in the model folder, not in its checkpoint-* folders."""
    for folder in (model_dir, model_dir.parent):
        if (folder / "cehrgpt_tokenizer.json").exists():
            return folder
    raise PipelineError(f"no cehrgpt_tokenizer.json in '{model_dir}' or its parent: not a trained model")


def allowed_after_visit_end(vocabulary: dict[str, int]) -> np.ndarray:
    """True for the token ids the report's validity rules (inspect_synthetic.py) accept right after a [VE].

    Its own token classifier decides: a between-visit time token (an i-D/i-H token outside an
    inpatient visit, or a malformed one, breaks a rule too), a [VS], or the generator's [END].
    """
    from cehrgpt.models.special_tokens import END_TOKEN

    from cehrgpt_tutorials.sequences.vocabulary import TIME, VISIT_START, Vocabulary

    tokens = list(vocabulary)
    classified = Vocabulary()
    codes = classified.codes(tokens)  # classifies each token, so before fact()
    kinds = classified.fact("kind")[codes]
    allowed = np.zeros(len(vocabulary), dtype=bool)
    allowed[[vocabulary[token] for token in tokens]] = np.isin(kinds, [TIME, VISIT_START]) | (
        np.asarray(tokens) == END_TOKEN
    )
    return allowed


def nucleus_leak(probabilities: np.ndarray, allowed: np.ndarray, top_p: float) -> float:
    """Probability of a disallowed token after transformers' top-p filter and renormalisation."""
    order = np.argsort(-probabilities, kind="stable")
    cumulative = np.cumsum(probabilities[order])
    # transformers keeps the smallest prefix whose mass reaches top_p (at least one token).
    kept = order[: int(np.searchsorted(cumulative, top_p)) + 1]
    kept_mass = probabilities[kept]
    return float(kept_mass[~allowed[kept]].sum() / kept_mass.sum())


def read_sequences(folder: Path, count: int, seed: int) -> list[list[str]]:
    import pyarrow.parquet as pq

    files = parquet_files(folder)
    if not files:
        raise PipelineError(f"no Parquet files in '{folder}' (--sequences)")
    sequences = [
        sequence
        for path in files
        for sequence in pq.read_table(path, columns=[SEQUENCE_TOKEN_COLUMN]).column(0).to_pylist()
    ]
    chosen = np.random.default_rng(seed).permutation(len(sequences))[:count]
    return [sequences[index] for index in sorted(chosen)]


def measure(model_dir: Path, sequences: list[list[str]], top_p: float, temperature: float) -> dict:
    import torch
    from cehrgpt.gpt_utils import construct_age_sequence
    from cehrgpt.models.hf_cehrgpt import CEHRGPT2LMHeadModel
    from cehrgpt.models.tokenization_hf_cehrgpt import CehrGptTokenizer
    from tqdm import tqdm

    tokenizer = CehrGptTokenizer.from_pretrained(str(tokenizer_folder(model_dir)))
    model = CEHRGPT2LMHeadModel.from_pretrained(str(model_dir)).eval()
    vocabulary = tokenizer.get_vocab()
    allowed = allowed_after_visit_end(vocabulary)
    context = model.config.n_positions

    leaks: list[float] = []
    spoiled: list[float] = []
    with torch.no_grad():
        for sequence in tqdm(sequences, desc="sequences", unit="seq"):
            # The generator never sees a token outside the vocabulary or past its context window.
            tokens = [token for token in sequence if token in vocabulary][:context]
            if VISIT_END_TOKEN not in tokens:
                continue
            # The generator passes ages as the model's positions; it builds them the same way.
            outputs = model(
                input_ids=torch.tensor([tokenizer.encode(tokens)]),
                ages=torch.tensor([construct_age_sequence(tokens)]),
            )
            probabilities = torch.softmax(outputs.logits[0].float() / temperature, dim=-1).numpy()
            at_visit_ends = [
                nucleus_leak(probabilities[index], allowed, top_p)
                for index, token in enumerate(tokens)
                if token == VISIT_END_TOKEN
            ]
            leaks.extend(at_visit_ends)
            spoiled.append(1.0 - float(np.prod(1.0 - np.asarray(at_visit_ends))))
    if not leaks:
        raise PipelineError("no [VE] token in the sequences given: nothing to measure")
    leak_array = np.asarray(leaks)
    return {
        "model_dir": str(model_dir),
        "top_p": top_p,
        "temperature": temperature,
        "sequences": len(spoiled),
        "visit_ends": len(leaks),
        "mean_leak": float(leak_array.mean()),
        "median_leak": float(np.median(leak_array)),
        "p90_leak": float(np.percentile(leak_array, 90)),
        "share_of_visit_ends_with_leak": float(np.mean(leak_array > 0)),
        "expected_spoiled_share": float(np.mean(spoiled)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Probability a trained model gives to structure-breaking tokens right after [VE] "
        "(teacher-forced, after the generator's temperature and top-p), and the share of patients "
        "that would spoil."
    )
    parser.add_argument(
        "--model-dir", type=Path, default=cehr_gpt_model_dir(),
        help="trained model or a checkpoint-* folder (default: $CEHR_GPT_MODEL_DIR = %(default)s)",
    )
    parser.add_argument(
        "--sequences", type=Path, default=cehr_gpt_data_dir() / "patient_sequence",
        help="Parquet folder of token sequences (default: %(default)s)",
    )
    parser.add_argument(
        "--num-sequences", type=int, default=100, help="sequences drawn from it (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw (default: %(default)s)")
    parser.add_argument(
        "--top-p", type=float, default=0.95, help="the generator's top-p (default: %(default)s)"
    )
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="the generator's temperature (default: %(default)s)"
    )
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    arguments = parser.parse_args()

    try:
        if not 0 < arguments.top_p <= 1:
            raise PipelineError(f"--top-p must be in (0, 1], got {arguments.top_p}")
        if arguments.temperature <= 0:
            raise PipelineError(f"--temperature must be positive, got {arguments.temperature}")
        if arguments.num_sequences < 1:
            raise PipelineError(f"--num-sequences must be at least 1, got {arguments.num_sequences}")
        if not (arguments.model_dir / "config.json").exists():
            raise PipelineError(f"no trained model in '{arguments.model_dir}' (no config.json)")
        sequences = read_sequences(arguments.sequences, arguments.num_sequences, arguments.seed)
        result = measure(arguments.model_dir, sequences, arguments.top_p, arguments.temperature)
    except PipelineError as error:
        fail(str(error))

    print(
        f"{result['model_dir']}: {result['visit_ends']:,} [VE] in {result['sequences']} sequences, "
        f"top-p {result['top_p']}, temperature {result['temperature']}: leak mean "
        f"{result['mean_leak']:.4f}, median {result['median_leak']:.4f}, p90 {result['p90_leak']:.4f}, "
        f"nonzero at {result['share_of_visit_ends_with_leak']:.0%} of [VE]; "
        f"expected spoiled patients {result['expected_spoiled_share']:.1%}"
    )
    if arguments.json:
        arguments.json.parent.mkdir(parents=True, exist_ok=True)
        arguments.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
