"""One run, end to end: read its sequences, compute every metric against the real ones, print them and
write the report folder (report.json, report.md, plots) atomically."""

from __future__ import annotations

import datetime
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from cehrgpt_tutorials.errors import PipelineError
from cehrgpt_tutorials.files import atomic_directory, parquet_files
from cehrgpt_tutorials.omop.concepts import read_concepts
from cehrgpt_tutorials.report.cdm_fidelity import CdmPrevalence, cdm_fidelity, report_keys
from cehrgpt_tutorials.report.fidelity import (
    concept_matrix,
    cooccurrence_r,
    distribution_metrics,
    pearson_r,
    prevalence,
    prevalence_errors,
)
from cehrgpt_tutorials.report.inputs import RealData, Run, converted_share, restored_omop_counts
from cehrgpt_tutorials.report.markdown import markdown_report, print_metrics
from cehrgpt_tutorials.report.metrics import METRICS, json_ready, token_label
from cehrgpt_tutorials.report.plots import write_plots, write_timelines
from cehrgpt_tutorials.report.privacy import (
    NN_SAMPLE_SIZE,
    PRIVACY_SAMPLE_SIZE,
    attribute_config,
    attribute_inference,
    copied_rows,
    membership_inference,
    nearest_neighbour_distances,
    sample_rows,
)
from cehrgpt_tutorials.report.timeline import calendar_time, visit_dates
from cehrgpt_tutorials.report.utility import dimension_wise_prediction
from cehrgpt_tutorials.sequences.codes import read_sequences
from cehrgpt_tutorials.sequences.facts import sequence_facts
from cehrgpt_tutorials.sequences.grammar import VALIDITY_RULES
from cehrgpt_tutorials.sequences.vocabulary import Vocabulary

TOP_TABLE_SIZE = 20


@dataclass(frozen=True)
class ReportOptions:
    """What the command line decides for every run (inspect_synthetic.py fills it from its arguments)."""

    real_dir: Path
    concept_dir: Path | None = None  # None: concepts shown by id only
    nn_sample: int = NN_SAMPLE_SIZE
    privacy_sample: int = PRIVACY_SAMPLE_SIZE
    seed: int = 0
    source_end_date: datetime.date | None = None  # None: estimated from the real sequences
    source_end_note: str = ""
    cdm: CdmPrevalence | None = None  # the source CDM's frequent concepts; None: not compared


def inspect_run(
    run: Run, real: RealData, vocabulary: Vocabulary, options: ReportOptions, report_dir: Path,
    restored_dir: Path | None,
) -> dict:
    """Print the summary and the metrics of one run, write its report; returns report.json's content."""
    files = parquet_files(run.sequence_dir)
    if not files:
        raise PipelineError(f"no Parquet files in {run.sequence_dir}: did generation finish?")
    synthetic = read_sequences(files, vocabulary, f"reading {run.name}")
    if synthetic.count == 0:
        raise PipelineError(f"no sequences in {run.sequence_dir}: its Parquet files have no rows")
    facts = sequence_facts(synthetic, vocabulary)
    tokens = vocabulary.tokens
    size = len(vocabulary)

    # Concept names and domains for every concept id in the vocabulary (one filtered read).
    numeric_ids = [int(token) for token in tokens if token.isdigit() and len(token) < 19]
    names = read_concepts(options.concept_dir, numeric_ids) if options.concept_dir else {}

    # The seed's summary.
    lengths = synthetic.lengths
    print(f"\n== {run.name}: {run.sequence_dir}")
    print(f"Number of sequences: {synthetic.count:,}")
    print(f"Sequence length: min {lengths.min()}, max {lengths.max()}, mean {lengths.mean():.1f}")
    after_start, after_counts = np.unique(facts.visit_types, return_counts=True)
    common = [
        (tokens[code], int(n))
        for code, n in sorted(zip(after_start, after_counts, strict=True), key=lambda item: -item[1])[:5]
    ]
    print(
        "Most common tokens after [VS]: "
        + (", ".join(f"{token_label(t, names)} ({n:,})" for t, n in common) or "none")
    )
    print("First 50 tokens of sequence 0: " + " ".join(synthetic.tokens(0, vocabulary)[:50]))

    # 1. Validity.
    valid_count = int(facts.valid.sum())
    invalid_reasons = {rule: int(flags.sum()) for rule, flags in facts.problems.items()}
    real_invalid = {rule: int(flags.sum()) for rule, flags in real.train_facts.problems.items()}

    # 2. Prevalence.
    real_prevalence, synthetic_prevalence = prevalence(real.train_facts, size), prevalence(facts, size)
    seen = (real_prevalence > 0) | (synthetic_prevalence > 0)
    prevalence_r = pearson_r(real_prevalence[seen], synthetic_prevalence[seen])
    top = [
        code
        for code in np.argsort(-real_prevalence, kind="stable")[:TOP_TABLE_SIZE]
        if real_prevalence[code] > 0
    ]
    top_concepts = [
        {
            "concept_id": tokens[code],
            "name": names.get(tokens[code], ("", ""))[0],
            "real_prevalence": float(real_prevalence[code]),
            "synthetic_prevalence": float(synthetic_prevalence[code]),
        }
        for code in top
    ]

    # 3. Distributions. 4. Co-occurrence.
    distributions = distribution_metrics(real.train_facts, facts)
    pairs_r, pair_count = cooccurrence_r(real.train_facts, facts, size)

    # 5. Memorization: exact copies over everything, nearest neighbours on samples.
    copies = copied_rows(facts.whole_hashes, real.train_facts.whole_hashes)
    has_clinical = facts.clinical_lengths > 0
    clinical_copies = (
        copied_rows(
            facts.clinical_hashes, real.train_facts.clinical_hashes[real.train_facts.clinical_lengths > 0]
        )
        & has_clinical
    )
    reference = concept_matrix(real.train_facts, size, real.reference_rows)
    synthetic_rows = sample_rows(
        synthetic.count, options.nn_sample, options.seed, facts.concepts_per_patient > 0
    )
    synthetic_distances = nearest_neighbour_distances(concept_matrix(facts, size, synthetic_rows), reference)
    heldout_distances = nearest_neighbour_distances(
        concept_matrix(real.heldout_facts, size, real.heldout_rows), reference
    )
    nn_ratio = None
    if len(synthetic_distances) and len(heldout_distances) and heldout_distances.mean() > 0:
        nn_ratio = float(synthetic_distances.mean() / heldout_distances.mean())

    # 5b. The CEHR-GPT authors' attacks, against the real patients the model never saw, each beside the
    # same attack on copies of the training patients (what it would score if the model copied them).
    clock = time.perf_counter()
    train_set = (real.train, real.reference_rows)
    heldout_set = (real.heldout, real.heldout_candidates)
    synthetic_set = (synthetic, np.arange(synthetic.count))
    membership = membership_inference(train_set, heldout_set, synthetic_set, vocabulary, options.privacy_sample,
                                      options.seed)
    attributes_known = attribute_config(real_prevalence, tokens)
    attributes = attribute_inference(train_set, heldout_set, synthetic_set, vocabulary, attributes_known,
                                     options.privacy_sample, options.seed)

    seconds = {"privacy_attacks": time.perf_counter() - clock}
    clock = time.perf_counter()
    # 7. Utility: train on synthetic vs train on real, tested on held-out real patients.
    utility = dimension_wise_prediction(real.train_facts, real.reference_rows, facts, real.heldout_facts,
                                        real.heldout_rows, size, tokens, names, options.seed)

    seconds["utility"] = time.perf_counter() - clock
    clock = time.perf_counter()
    # 8. Calendar time: the converter's visit dates against the source's last date and today.
    source_end, source_note = options.source_end_date, options.source_end_note
    if source_end is None:
        real_dates = visit_dates(real.train_facts)
        real_dates = real_dates[~np.isnat(real_dates)]
        source_end = real_dates.max().item() if len(real_dates) else datetime.date.today()
        source_note = "estimated: the last visit date of the real sequences, dated as the converter does"
    calendar = calendar_time(real.train_facts, facts, source_end, datetime.date.today())
    calendar["source_end_from"] = source_note
    errors = prevalence_errors(real_prevalence, synthetic_prevalence, tokens, names)
    against_cdm = cdm_fidelity(options.cdm, real_prevalence, synthetic_prevalence, vocabulary.code_of)
    seconds["calendar_and_prevalence_errors"] = time.perf_counter() - clock

    # 6. Conversion to OMOP.
    restored = restored_omop_counts(restored_dir) if restored_dir else None
    converted_fraction = None
    if restored is not None:
        converted_fraction = converted_share(
            restored_dir, synthetic.person_ids, synthetic.count, restored["person"] or 0
        )

    report = {
        "run": run.name,
        "synthetic_dir": str(run.sequence_dir),
        "real_dir": str(options.real_dir),
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "num_sequences": synthetic.count,
        "heldout_real_sequences": real.heldout_count,
        "num_valid": valid_count,
        "valid_fraction": valid_count / synthetic.count,
        "invalid_reasons": invalid_reasons,
        "prevalence_pearson_r": prevalence_r,
        "prevalence_within_25pct": errors["within_25pct"],
        "prevalence_errors": errors,
        **report_keys(against_cdm),
        "cdm_fidelity": against_cdm,
        "visits_after_source_end_fraction": calendar["visits_after_source_end_fraction"],
        "calendar": calendar,
        "cooccurrence_pearson_r": pairs_r,
        "cooccurrence_pairs": pair_count,
        "length_ks": distributions["sequence_length"]["distance"],
        "visit_type_js": distributions["visit_types"]["distance"],
        "distributions": {
            name: {
                key: value
                for key, value in metric.items()
                if key in ("test", "distance", "real_mean", "synthetic_mean")
            }
            for name, metric in distributions.items()
        },
        "exact_copy_fraction": float(copies.mean()),
        "exact_copies": int(copies.sum()),
        "clinical_exact_copy_fraction": float(clinical_copies.mean()),
        "nn_distance_ratio": nn_ratio,
        "nn": {
            "metric": "Jaccard distance on binary clinical-concept vectors",
            "synthetic_queries": len(synthetic_distances),
            "heldout_queries": len(heldout_distances),
            "reference_sequences": int(reference.shape[0]),
            "synthetic_mean_distance": float(synthetic_distances.mean())
            if len(synthetic_distances)
            else None,
            "heldout_mean_distance": float(heldout_distances.mean()) if len(heldout_distances) else None,
            "synthetic_median_distance": float(np.median(synthetic_distances))
            if len(synthetic_distances)
            else None,
            "heldout_median_distance": float(np.median(heldout_distances))
            if len(heldout_distances)
            else None,
            "synthetic_zero_distance_fraction": float((synthetic_distances == 0).mean())
            if len(synthetic_distances)
            else None,
            "heldout_zero_distance_fraction": float((heldout_distances == 0).mean())
            if len(heldout_distances)
            else None,
            "split": real.split_note,
        },
        "membership_inference": membership,
        "attribute_inference": attributes,
        "dimension_wise_auroc_synthetic": None if utility is None else utility["auroc_synthetic"],
        "dimension_wise_auroc_real": None if utility is None else utility["auroc_real"],
        "dimension_wise_auroc_ratio": None if utility is None else utility["ratio"],
        "utility": utility,
        "converted_fraction": converted_fraction,
        "restored_omop": None if restored is None else {"dir": str(restored_dir), "rows": restored},
        "top_concepts": top_concepts,
        "real": {
            "num_sequences": real.train.count,
            "valid_fraction": float(real.train_facts.valid.mean()),
            "invalid_reasons": real_invalid,
        },
        "seconds": seconds,  # of the sections added last (bench/inspect_bench.py prints them)
        "metric_explanations": METRICS,
        "validity_rules": VALIDITY_RULES,
    }

    print_metrics(report, distributions)
    with atomic_directory(report_dir) as staging:
        plots = write_plots(
            staging,
            real_prevalence,
            synthetic_prevalence,
            seen,
            prevalence_r,
            real.train_facts,
            facts,
            distributions,
            report,
            tokens,
            names,
        )
        plots.update(write_timelines(staging, (real.heldout, real.heldout_facts, real.heldout_candidates),
                                     (synthetic, facts), vocabulary, names, options.seed))
        (staging / "report.json").write_text(json.dumps(json_ready(report), indent=2) + "\n")
        # The attribute config the attack used, in the format cehrgpt's attribute_inference reads.
        (staging / "attribute_inference_config.yml").write_text(yaml.safe_dump(attributes_known))
        (staging / "report.md").write_text(markdown_report(report, distributions, plots, tokens, names))
    print(f"Report: {report_dir / 'report.md'}")
    return report

