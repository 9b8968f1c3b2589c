"""Diagnostic for steps 4-5: does the model keep a real patient going, or only fail to start one?

Free generation (step 5) writes patients with fewer visits than the real ones. bench/sequence_length.py
shows that the model's per-step probabilities on real contexts are close to the data's, so the loss
happens under sampling. This script separates two places it can happen: in the history the model
writes for itself, or in how it continues any history. For each real patient (held-out by default)
with at least --min-visits visits and no more tokens than the context, it cuts the sequence after
half of its visits and lets the step-5 sampler (the constrained one, top-p 1) write --futures
continuations of that real prefix. It compares them with the real remainder ("real"): visits, the
share of next visits that repeat a clinical concept of the visit before (a series going on), and the
gaps. With --from-prompt, the same patients are also written from their 4-token prompt alone (free
generation, as step 5 does), beside the real patients whole ("real_whole"). With --series CONCEPT_ID,
it follows one concept instead: for patients with >= 4 visits holding it, cut after the 2nd such visit
and after half of them, it counts the such visits the model writes after the cut against the real ones
(how much of a series the model must see before it keeps it going).

Deterministic for a model, a set of sequences and --seed. A measurement for bench/RESULTS.md.

Reads:  --model-dir (default $CEHR_GPT_MODEL_DIR), --real-dir (default $CEHR_GPT_DATA_DIR/patient_sequence/test)
Writes: the numbers on stdout; --json FILE too.

Examples:
    python bench/continuation.py --futures 5 --json continuation.json
    python bench/continuation.py --real-dir omop_synthea/patient_sequence/train --series 4107731 --num-patients 12
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
from cehrgpt_tutorials.paths import cehr_gpt_data_dir, cehr_gpt_model_dir, omop_dir  # noqa: E402
from cehrgpt_tutorials.sequences.vocabulary import TIME, Vocabulary  # noqa: E402

PROMPT_TOKENS = 4  # year, age, gender, race: what step 5 starts every patient from


def visits_of(tokens: list[str]) -> list[list[str]]:
    """The tokens of each visit, [VS] to [VE]."""
    visits, current = [], None
    for token in tokens:
        if token == "[VS]":
            current = []
        elif token == "[VE]" and current is not None:
            visits.append(current)
            current = None
        elif current is not None:
            current.append(token)
    return visits


def remainder_facts(visits: list[list[str]], gaps: list[float], before: list[str] | None) -> dict:
    """Visits, whether each repeats a clinical concept of the visit before it (`before` for the first), the gaps."""
    chain = ([before] if before is not None else []) + visits
    clinical = [{token for token in visit[1:] if token.isdigit()} for visit in chain]  # [0] is the visit type
    repeats = [bool(previous & visit) for previous, visit in zip(clinical, clinical[1:], strict=False)]
    return {"visits": len(visits), "repeats": repeats, "gaps": gaps}


def gaps_of(tokens: list[str], days: dict[str, float]) -> list[float]:
    """Days of each between-visit time token (the token right after a [VE])."""
    return [days[token] for before, token in zip(tokens, tokens[1:], strict=False) if before == "[VE]" and token in days]


def cut_after_visit(tokens: list[str], visit: int) -> int:
    """Token count up to and including the [VE] of visit number `visit` (1-based); PROMPT_TOKENS for 0."""
    if visit == 0:
        return PROMPT_TOKENS
    seen = 0
    for position, token in enumerate(tokens):
        seen += token == "[VE]"
        if seen == visit:
            return position + 1
    raise ValueError("fewer visits than asked")


class Sampler:
    """The trained model behind step 5's constrained sampler (top-p 1), writing futures of a prefix."""

    def __init__(self, model_dir: Path, concept_dir: Path | None, seed: int):
        import torch

        from cehrgpt_tutorials.generate import constrained_generator, load_model

        torch.manual_seed(seed)
        folders = argparse.Namespace(tokenizer_folder=str(model_dir), model_folder=str(model_dir))
        self.tokenizer, model = load_model(folders, torch.device("cpu"))
        self.generator = constrained_generator(model, self.tokenizer, concept_dir)
        self.context = model.config.n_positions
        self.known = set(self.tokenizer.get_vocab())
        vocabulary = Vocabulary()
        codes = vocabulary.codes(sorted(self.known))
        self.days = {token: number for token, kind, number in zip(sorted(self.known), vocabulary.fact("kind")[codes],
                                                                  vocabulary.fact("number")[codes], strict=True)
                     if kind == TIME}

    def futures(self, prefix: list[str], count: int) -> list[list[str]]:
        """`count` continuations of prefix, each without the prefix and without [END]/[PAD]."""
        import torch
        from cehrgpt.generation.generate_batch_hf_gpt_sequence import generate_single_batch

        output = generate_single_batch(self.generator, self.tokenizer, torch.tensor([self.tokenizer.encode(prefix)] * count),
                                       max_length=self.context, top_p=1.0, top_k=self.tokenizer.vocab_size)
        return [[token for token in future if token not in ("[END]", "[PAD]")][len(prefix):]
                for future in output["sequences"]]


def real_sequences(arguments, sampler: Sampler) -> list[list[str]]:
    """The real sequences the model can read whole (known tokens, no longer than its context)."""
    import pyarrow.parquet as pq

    sequences = [tokens for path in parquet_files(arguments.real_dir)
                 for tokens in pq.read_table(path, columns=["concept_ids"]).column(0).to_pylist()]
    return [tokens for tokens in sequences if len(tokens) <= sampler.context and set(tokens) <= sampler.known]


def continue_patients(arguments, sampler: Sampler, real: list[list[str]]) -> dict:
    chosen = [tokens for tokens in real if tokens.count("[VS]") >= arguments.min_visits]
    chosen = [chosen[i] for i in sorted(np.random.default_rng(arguments.seed).permutation(len(chosen))[:arguments.num_patients])]
    results = {"real": [], "continued": [], "real_whole": [], "from_prompt": []}
    cuts = [("continued", 0.5)] + ([("from_prompt", 0.0)] if arguments.from_prompt else [])
    for number, tokens in enumerate(chosen, 1):
        total = tokens.count("[VS]")
        for name, share in cuts:
            visit = int(total * share)
            cut = cut_after_visit(tokens, visit)
            before = visits_of(tokens[:cut])[-1] if visit else None
            real_name = "real" if name == "continued" else "real_whole"
            results[real_name].append(remainder_facts(visits_of(tokens[cut:]), gaps_of(tokens[cut - 1:], sampler.days), before))
            for written in sampler.futures(tokens[:cut], arguments.futures):
                results[name].append(remainder_facts(visits_of(written), gaps_of([tokens[cut - 1], *written], sampler.days),
                                                     before))
        print(f"patient {number} of {len(chosen)}", end="\r", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return summarise(results)


def visits_with(tokens: list[str], concept: str) -> int:
    return sum(concept in visit for visit in visits_of(tokens))


def continue_series(arguments, sampler: Sampler, real: list[list[str]], concept: str) -> dict:
    """For the patients with >= 4 visits holding `concept`: cut after the 2nd such visit and after half of
    them, and count the such visits the model writes after the cut against the real patient's."""
    holding = {}  # patient index -> running count of visits holding the concept, visit by visit
    for index, tokens in enumerate(real):
        if len(holding) >= arguments.num_patients:
            break
        running = np.cumsum([concept in visit for visit in visits_of(tokens)])
        if len(running) and running[-1] >= 4:
            holding[index] = running
    result = {"concept": concept, "patients": len(holding),
              "real_visits_with_it": float(np.mean([running[-1] for running in holding.values()])) if holding else None}
    for label in ("after_2nd", "after_half"):
        rest, model = [], []
        for index, running in holding.items():
            wanted = 2 if label == "after_2nd" else int(running[-1]) // 2
            visit = int(np.searchsorted(running, wanted)) + 1
            cut = cut_after_visit(real[index], visit)
            rest.append(int(running[-1] - running[visit - 1]))
            model += [visits_with(written, concept) for written in sampler.futures(real[index][:cut], arguments.futures)]
        result[label] = {"real": float(np.mean(rest)) if rest else None, "model": float(np.mean(model)) if model else None}
    return result


def summarise(results: dict) -> dict:
    summary = {}
    for name, rows in results.items():
        if not rows:
            continue
        gaps = np.concatenate([row["gaps"] for row in rows]) if any(row["gaps"] for row in rows) else np.array([])
        repeats = [repeat for row in rows for repeat in row["repeats"]]
        summary[name] = {"patients": len(rows), "visits": float(np.mean([row["visits"] for row in rows])),
                         "repeat_share": float(np.mean(repeats)) if repeats else None,
                         "gap_8_30_share": float(np.mean((gaps > 7) & (gaps <= 30))) if len(gaps) else None,
                         "gap_over_a_year_share": float(np.mean(gaps > 365)) if len(gaps) else None}
    return summary


def shown(value) -> str:
    if isinstance(value, dict):
        return "(" + ", ".join(f"{key} {shown(inner)}" for key, inner in value.items()) + ")"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=cehr_gpt_model_dir(), help="default: %(default)s")
    parser.add_argument("--real-dir", type=Path, default=cehr_gpt_data_dir() / "patient_sequence" / "test",
                        help="real sequences (default: %(default)s)")
    default_concepts = omop_dir() / "concept"
    parser.add_argument("--concept-dir", type=Path, default=default_concepts if default_concepts.exists() else None,
                        help="OMOP concept table, for the sampler's visit concepts (default: %(default)s)")
    parser.add_argument("--num-patients", type=int, default=100, help="real patients continued (default: %(default)s)")
    parser.add_argument("--futures", type=int, default=5, help="continuations per patient (default: %(default)s)")
    parser.add_argument("--min-visits", type=int, default=4, help="patients with fewer are skipped (default: %(default)s)")
    parser.add_argument("--from-prompt", action="store_true", help="also write each patient from its prompt alone")
    parser.add_argument("--series", action="append", default=[], metavar="CONCEPT_ID",
                        help="instead: follow this concept's series (repeatable), e.g. 4107731 (immunotherapy)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    arguments = parser.parse_args()
    try:
        if not (arguments.model_dir / "config.json").exists():
            raise PipelineError(f"no trained model in '{arguments.model_dir}' (no config.json)")
        sampler = Sampler(arguments.model_dir, arguments.concept_dir, arguments.seed)
        real = real_sequences(arguments, sampler)
        if arguments.series:
            summary = {concept: continue_series(arguments, sampler, real, concept) for concept in arguments.series}
        else:
            summary = continue_patients(arguments, sampler, real)
    except PipelineError as error:
        fail(str(error))
    for name, numbers in summary.items():
        print(f"{name:<12} " + "  ".join(f"{key} {shown(value)}" for key, value in numbers.items()))
    if arguments.json:
        arguments.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
