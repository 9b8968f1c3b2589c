"""Diagnostic for steps 4-5: why synthetic patients come out shorter than real ones.

A synthetic patient's length is its number of visits times the tokens of each visit. This script splits
the gap between the real training sequences and a generated sample into those two factors (and the
clinical concepts per visit, the days between visits, the calendar year reached), without a model.
Then, with the model and without sampling, it asks where the model ends things too early: on the
held-out real sequences (teacher forcing), at every [VE] it takes the probability the constrained
sampler gives [END] there (the model's [END] probability renormalised over what the grammar allows
after [VE]: a time token, [VS] or [END]), and at every event inside a visit the probability of [VE]
next (renormalised the same way over what may follow an event). Their means, against how often the
real sequences end (or close the visit) at those points, say which hazard the model overstates; the
expected visits of a patient following real contexts under the model's own end hazard is the product
ratio of the two end hazards is about the inverse ratio of the number of visits (a geometric length).
Both the sequences and the model's [END] probability are also split by the calendar year of the visit
that just closed (dated as cehrgpt's converter dates it: the year token plus every time token so far):
real patients end when the data does, so their end hazard is low for decades and high near the
source's last date; a model without a clock ends patients at the same rate in every year.

Deterministic for a model and a set of sequences, so it compares trainings on identical contexts.
A measurement for bench/RESULTS.md, not a goal.

Reads:  --model-dir (default $CEHR_GPT_MODEL_DIR), --real-dir (default $CEHR_GPT_DATA_DIR/patient_sequence:
        train/ for the decomposition, test/ for the teacher forcing), --synthetic-dir (a generated_sequences folder)
Writes: the numbers on stdout; --json FILE too.

Example:
    python bench/sequence_length.py --synthetic-dir omop_synthea/synthetic_data/top_p10000_constrained/generated_sequences
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
from cehrgpt_tutorials.sequences.codes import read_sequences  # noqa: E402
from cehrgpt_tutorials.sequences.facts import sequence_facts  # noqa: E402
from cehrgpt_tutorials.sequences.vocabulary import (  # noqa: E402
    INPATIENT_TIME,
    TIME,
    VISIT_START,
    YEAR,
    Vocabulary,
)

GAP_BUCKETS = np.array([7, 30, 90, 365, 100_000])  # upper bounds, days (LT: 1,095)
GAP_LABELS = ["0-7 days", "8-30", "31-90", "91-365", "over a year"]
YEAR_EDGES = np.array([2005, 2009, 2013, 2017, 2018, 2019])  # calendar years of the visit that closed
YEAR_LABELS = ["before 2005", "2005-2008", "2009-2012", "2013-2016", "2017", "2018", "2019 on"]


def end_by_year(visit_years: np.ndarray, ended: np.ndarray, model: np.ndarray | None = None) -> dict:
    """Per calendar bucket: visits that closed, the share after which the patient ended, the model's mean."""
    bucket = np.searchsorted(YEAR_EDGES, visit_years, side="right")
    rows = {}
    for index, label in enumerate(YEAR_LABELS):
        inside = bucket == index
        if inside.any():
            rows[label] = {"visits": int(inside.sum()), "data": float(ended[inside].mean()),
                           **({"model": float(model[inside].mean())} if model is not None else {})}
    return rows


def shape(folder: Path, vocabulary: Vocabulary) -> dict:
    """Length, visits, tokens and clinical concepts per visit, days between visits, last year reached."""
    sequences = read_sequences(parquet_files(folder), vocabulary, f"reading {folder.name}")
    facts = sequence_facts(sequences, vocabulary)
    visits = np.maximum(facts.visits, 1)
    last_day = np.zeros(facts.count)
    np.maximum.at(last_day, facts.visit_sequence, facts.visit_days)
    last_visit = np.r_[facts.visit_sequence[1:] != facts.visit_sequence[:-1], True]
    visit_years = facts.start_year[facts.visit_sequence] + facts.visit_days / 365.25
    return {
        "end_by_year": end_by_year(visit_years, last_visit),
        "sequences": facts.count,
        "tokens": float(facts.lengths.mean()),
        "visits": float(facts.visits.mean()),
        "tokens_per_visit": float((facts.lengths / visits).mean()),
        "clinical_concepts_per_visit": float((facts.clinical_lengths / visits).mean()),
        "days_between_visits_median": float(np.median(facts.days_between_visits)) if len(facts.days_between_visits) else None,
        "days_between_visits_mean": float(np.mean(facts.days_between_visits)) if len(facts.days_between_visits) else None,
        "years_covered": float(np.nanmean(last_day / 365.25)),
        "last_year_reached": float(np.nanmean(facts.start_year + last_day / 365.25)),
        "ending_with_death": float(np.mean([tokens.count("[DEATH]") > 0 for tokens in
                                            (sequences.tokens(i, vocabulary) for i in range(facts.count))])),
        **{f"gap {label}": float(share) for label, share in zip(GAP_LABELS, np.bincount(
            np.searchsorted(GAP_BUCKETS, facts.days_between_visits, side="left"), minlength=len(GAP_BUCKETS))
            / max(len(facts.days_between_visits), 1), strict=True)},
    }


def hazards(model_dir: Path, folder: Path, count: int, seed: int) -> dict:
    """The model's [END]-after-[VE] and [VE]-after-event probabilities on real contexts, against the data's."""
    import pyarrow.parquet as pq
    import torch
    from cehrgpt.gpt_utils import construct_age_sequence
    from cehrgpt.models.hf_cehrgpt import CEHRGPT2LMHeadModel
    from cehrgpt.models.special_tokens import END_TOKEN
    from cehrgpt.models.tokenization_hf_cehrgpt import CehrGptTokenizer

    tokenizer = CehrGptTokenizer.from_pretrained(str(model_dir))
    model = CEHRGPT2LMHeadModel.from_pretrained(str(model_dir)).eval()
    by_id = [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])]
    classified = Vocabulary()
    codes = classified.codes(by_id)  # classifies each token, so before fact()
    kinds = classified.fact("kind")[codes]
    end_id, visit_end_id = by_id.index(END_TOKEN), by_id.index("[VE]")
    after_visit_end = np.isin(kinds, [TIME, VISIT_START]) | (np.arange(len(by_id)) == end_id)
    # After an event inside a visit: another event (concept, inpatient time) or [VE].
    after_event = ~np.isin(kinds, [TIME, VISIT_START]) & (np.arange(len(by_id)) != end_id)
    vocabulary = set(by_id)
    sequences = [tokens for path in parquet_files(folder)
                 for tokens in pq.read_table(path, columns=["concept_ids"]).column(0).to_pylist()]
    chosen = np.random.default_rng(seed).permutation(len(sequences))[:count]
    context = model.config.n_positions
    end, ended, close, closed = [], [], [], []
    numbers = classified.fact("number")[codes]
    is_time = kinds == TIME
    gap_model, gap_data = np.zeros(len(GAP_BUCKETS)), np.zeros(len(GAP_BUCKETS))
    bucket_of_token = np.searchsorted(GAP_BUCKETS, np.nan_to_num(numbers, nan=0.0), side="left")
    year_of = {token: numbers[index] for index, token in enumerate(by_id) if kinds[index] == YEAR}
    days_of = {token: numbers[index] for index, token in enumerate(by_id) if kinds[index] in (TIME, INPATIENT_TIME)}
    end_years = []  # calendar year of each [VE] (as the converter dates it)
    by_events = {}  # events so far in the visit -> ([VE] probability sum, [VE] count, contexts)
    with torch.no_grad():
        for index in sorted(chosen):
            tokens = [token for token in sequences[index] if token in vocabulary][:context]
            outputs = model(input_ids=torch.tensor([tokenizer.encode(tokens)]),
                            ages=torch.tensor([construct_age_sequence(tokens)]))
            probabilities = torch.softmax(outputs.logits[0].float(), dim=-1).numpy()
            in_visit, events, days = False, 0, 0.0
            year = next((year_of[token] for token in tokens if token in year_of), np.nan)
            for position, token in enumerate(tokens):
                days += days_of.get(token, 0.0)
                following = tokens[position + 1] if position + 1 < len(tokens) else END_TOKEN
                row = probabilities[position]
                if token == "[VE]":
                    in_visit = False
                    hazard = row[end_id] / row[after_visit_end].sum()
                    end.append(hazard)
                    ended.append(following == END_TOKEN)
                    end_years.append(year + days / 365.25)
                    if following in vocabulary and is_time[by_id.index(following)]:  # the gap to the next visit
                        gap_model += np.bincount(bucket_of_token[is_time], weights=row[is_time] / row[is_time].sum(),
                                                 minlength=len(GAP_BUCKETS))[: len(GAP_BUCKETS)]
                        gap_data[min(bucket_of_token[by_id.index(following)], len(GAP_BUCKETS) - 1)] += 1
                elif token == "[VS]":
                    in_visit, events = True, 0
                elif in_visit and tokens[position - 1] != "[VS]":  # an event of an open visit
                    events += 1
                    hazard = row[visit_end_id] / row[after_event].sum()
                    close.append(hazard)
                    closed.append(following == "[VE]")
                    totals = by_events.setdefault(min(events, 6), [0.0, 0, 0])
                    totals[0] += hazard
                    totals[1] += following == "[VE]"
                    totals[2] += 1
    return {
        "sequences": len(chosen),
        "end_after_visit_end_model": float(np.mean(end)),
        "end_after_visit_end_data": float(np.mean(ended)),
        "end_hazard_ratio": float(np.mean(end) / max(np.mean(ended), 1e-9)),
        "end_by_year": end_by_year(np.array(end_years), np.array(ended), np.array(end)),
        "visit_end_after_event_model": float(np.mean(close)),
        "visit_end_after_event_data": float(np.mean(closed)),
        "visit_end_hazard_ratio": float(np.mean(close) / max(np.mean(closed), 1e-9)),
        "visit_end_by_events_so_far": {f"{events}{'+' if events == 6 else ''}": {
            "model": totals[0] / totals[2], "data": totals[1] / totals[2], "contexts": totals[2]}
            for events, totals in sorted(by_events.items())},
        "gap_after_visit": {label: {"model": float(model / max(gap_model.sum(), 1e-9)),
                                    "data": float(data / max(gap_data.sum(), 1e-9))}
                            for label, model, data in zip(GAP_LABELS, gap_model, gap_data, strict=True)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=cehr_gpt_model_dir(), help="default: %(default)s")
    parser.add_argument("--real-dir", type=Path, default=cehr_gpt_data_dir() / "patient_sequence",
                        help="patient_sequence with train/ and test/ (default: %(default)s)")
    parser.add_argument("--synthetic-dir", type=Path, required=True, help="a generated_sequences folder")
    parser.add_argument("--num-sequences", type=int, default=200, help="real sequences teacher-forced")
    parser.add_argument("--split", choices=("test", "train"), default="test",
                        help="teacher-force held-out (default) or training sequences")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    arguments = parser.parse_args()
    try:
        vocabulary = Vocabulary()
        result = {"real": shape(arguments.real_dir / "train", vocabulary),
                  "synthetic": shape(arguments.synthetic_dir, vocabulary),
                  "model": hazards(arguments.model_dir, arguments.real_dir / arguments.split, arguments.num_sequences,
                                   arguments.seed)}
    except PipelineError as error:
        fail(str(error))
    print("patients ending after a visit, by the visit's calendar year (real train / synthetic; visits)")
    for label in YEAR_LABELS:
        real, synthetic = (result[side]["end_by_year"].get(label) for side in ("real", "synthetic"))
        print(f"  {label:<12} real {real['data'] if real else float('nan'):.3f} ({real['visits'] if real else 0:>5})  "
              f"synthetic {synthetic['data'] if synthetic else float('nan'):.3f} ({synthetic['visits'] if synthetic else 0:>5})")
    for key in (key for key in result["real"] if key != "end_by_year"):
        real, synthetic = result["real"][key], result["synthetic"][key]
        ratio = f"{synthetic / real:.2f}x" if real and synthetic is not None else ""
        print(f"{key:<28} real {real:>10.3f}  synthetic {synthetic:>10.3f}  {ratio}")
    for key, value in result["model"].items():
        if isinstance(value, dict):
            for label, numbers in value.items():
                print(f"{key} {label:<12} " + "  ".join(f"{name} {number:.3f}" for name, number in numbers.items()
                                                      if name != "visits"))
        else:
            print(f"{key:<40} {value:.4f}")
    if arguments.json:
        arguments.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
