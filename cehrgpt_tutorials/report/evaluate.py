"""One run, end to end: its sequences read beside the real ones, every section of report.md computed
in the report's order (1 validity to 8 calendar time), printed, and the report folder (report.json,
report.md, plots) written atomically, so a report on disk is always a whole one."""

from __future__ import annotations

import contextlib
import datetime
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from cehrgpt_tutorials.files import atomic_directory
from cehrgpt_tutorials.report.cdm_fidelity import CdmPrevalence, cdm_fidelity, report_keys
from cehrgpt_tutorials.report.fidelity import (
    ConceptPrevalence,
    concept_matrix,
    concept_prevalence,
    cooccurrence_r,
    distribution_metrics,
    prevalence_errors,
    within_25pct_of_a_perfect_model,
    within_25pct_of_samples,
)
from cehrgpt_tutorials.report.inputs import (
    Comparison,
    RealData,
    Run,
    converted_share,
    read_run,
    restored_omop_counts,
)
from cehrgpt_tutorials.report.markdown import markdown_report, print_metrics
from cehrgpt_tutorials.report.metrics import METRICS, json_ready, token_label
from cehrgpt_tutorials.report.plots import FigureData, write_plots, write_timelines
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
from cehrgpt_tutorials.sequences.grammar import VALIDITY_RULES
from cehrgpt_tutorials.sequences.vocabulary import Vocabulary

TOP_TABLE_SIZE = 20
# report.json's "seconds", in this order: the slowest sections, which bench/inspect_bench.py prints.
TIMED_SECTIONS = ("privacy_attacks", "utility", "calendar_and_prevalence_errors")


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


class SectionClock:
    """Seconds per timed section, summed over every block timed under its name."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(TIMED_SECTIONS, 0.0)

    @contextlib.contextmanager
    def __call__(self, section: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.seconds[section] += time.perf_counter() - started


def inspect_run(
    run: Run, real: RealData, vocabulary: Vocabulary, options: ReportOptions, report_dir: Path,
    restored_dir: Path | None,
) -> dict:
    """Print the summary and the metrics of one run, write its report; returns report.json's content.

    The seed's summary, then report.md's sections 1 to 8 in order, one call each, then report.json in
    its key order: the function reads as the report's table of contents.
    """
    compared = read_run(run, real, vocabulary, options.concept_dir)
    print_seed_summary(run, compared)
    clock = SectionClock()
    validity = validity_keys(compared)  # 1
    prevalence = concept_prevalence(real.train_facts, compared.synthetic_facts, len(vocabulary))  # 2
    with clock("calendar_and_prevalence_errors"):
        prevalence_section = prevalence_keys(compared, prevalence, options.cdm)
    distributions = distribution_metrics(real.train_facts, compared.synthetic_facts)  # 3
    pairs_r, pair_count = cooccurrence_r(real.train_facts, compared.synthetic_facts, len(vocabulary))  # 4
    memorization = memorization_keys(compared, options)  # 5
    with clock("privacy_attacks"):
        attacks, attributes_known = privacy_attack_keys(compared, prevalence, options)
    conversion = conversion_keys(restored_dir, compared)  # 6
    with clock("utility"):
        utility = utility_keys(compared, options.seed)  # 7
    with clock("calendar_and_prevalence_errors"):
        calendar = calendar_keys(compared, options)  # 8

    report = {
        "run": run.name,
        "synthetic_dir": str(run.sequence_dir),
        "real_dir": str(options.real_dir),
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "num_sequences": compared.synthetic.count,
        "heldout_real_sequences": real.heldout_count,
        **validity,
        **prevalence_section,
        **calendar,
        "cooccurrence_pearson_r": pairs_r,
        "cooccurrence_pairs": pair_count,
        **distribution_keys(distributions),
        **memorization,
        **attacks,
        **utility,
        **conversion,
        "top_concepts": top_concepts(compared, prevalence),
        "real": {
            "num_sequences": real.train.count,
            "valid_fraction": float(real.train_facts.valid.mean()),
            "invalid_reasons": {rule: int(flags.sum()) for rule, flags in real.train_facts.problems.items()},
        },
        "seconds": clock.seconds,
        "metric_explanations": METRICS,
        "validity_rules": VALIDITY_RULES,
    }
    print_metrics(report, distributions)
    write_report_folder(report_dir, FigureData(compared, report, prevalence, distributions), attributes_known,
                        options.seed)
    print(f"Report: {report_dir / 'report.md'}")
    return report


def print_seed_summary(run: Run, compared: Comparison) -> None:
    """What the seed's inspection script printed: count, lengths, visit types, the first tokens."""
    synthetic, tokens = compared.synthetic, compared.vocabulary.tokens
    lengths = synthetic.lengths
    print(f"\n== {run.name}: {run.sequence_dir}")
    print(f"Number of sequences: {synthetic.count:,}")
    print(f"Sequence length: min {lengths.min()}, max {lengths.max()}, mean {lengths.mean():.1f}")
    after_start, after_counts = np.unique(compared.synthetic_facts.visit_types, return_counts=True)
    common = [
        (tokens[code], int(n))
        for code, n in sorted(zip(after_start, after_counts, strict=True), key=lambda item: -item[1])[:5]
    ]
    print(
        "Most common tokens after [VS]: "
        + (", ".join(f"{token_label(t, compared.names)} ({n:,})" for t, n in common) or "none")
    )
    print("First 50 tokens of sequence 0: " + " ".join(synthetic.tokens(0, compared.vocabulary)[:50]))


def validity_keys(compared: Comparison) -> dict:
    """1. How many synthetic sequences break no structural rule, and how many break each."""
    facts = compared.synthetic_facts
    valid_count = int(facts.valid.sum())
    return {
        "num_valid": valid_count,
        "valid_fraction": valid_count / compared.synthetic.count,
        "invalid_reasons": {rule: int(flags.sum()) for rule, flags in facts.problems.items()},
    }


def prevalence_keys(compared: Comparison, prevalence: ConceptPrevalence, cdm: CdmPrevalence | None) -> dict:
    """2. Concept prevalence: its correlation, the per-concept errors, and the source CDM's concepts."""
    errors = prevalence_errors(prevalence.real, prevalence.synthetic, compared.vocabulary.tokens, compared.names)
    errors["synthetic_resamples"] = within_25pct_of_samples(compared.synthetic_facts, prevalence.real,
                                                            compared.synthetic.count)
    errors["perfect_model"] = within_25pct_of_a_perfect_model(compared.real.train_facts, len(prevalence.real),
                                                             compared.synthetic.count)
    against_cdm = cdm_fidelity(cdm, prevalence.real, prevalence.synthetic, compared.vocabulary.code_of)
    return {
        "prevalence_pearson_r": prevalence.pearson_r,
        "prevalence_within_25pct": errors["within_25pct"],
        "prevalence_within_25pct_perfect_model": errors["perfect_model"]["median"] if errors["perfect_model"] else None,
        "prevalence_errors": errors,
        **report_keys(against_cdm),
        "cdm_fidelity": against_cdm,
    }


def top_concepts(compared: Comparison, prevalence: ConceptPrevalence) -> list[dict]:
    """2. The most common concepts of the real data, with both prevalences (report.md's table)."""
    tokens = compared.vocabulary.tokens
    top = [
        code
        for code in np.argsort(-prevalence.real, kind="stable")[:TOP_TABLE_SIZE]
        if prevalence.real[code] > 0
    ]
    return [
        {
            "concept_id": tokens[code],
            "name": compared.names.get(tokens[code], ("", ""))[0],
            "real_prevalence": float(prevalence.real[code]),
            "synthetic_prevalence": float(prevalence.synthetic[code]),
        }
        for code in top
    ]


def distribution_keys(distributions: dict[str, dict]) -> dict:
    """3. The distances of the distributions (the category shares stay out of report.json)."""
    return {
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
    }


def memorization_keys(compared: Comparison, options: ReportOptions) -> dict:
    """5. Memorization: exact copies over every sequence, nearest-neighbour distances on samples."""
    facts, real = compared.synthetic_facts, compared.real
    size = len(compared.vocabulary)
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
        compared.synthetic.count, options.nn_sample, options.seed, facts.concepts_per_patient > 0
    )
    synthetic = nearest_neighbour_distances(concept_matrix(facts, size, synthetic_rows), reference)
    heldout = nearest_neighbour_distances(concept_matrix(real.heldout_facts, size, real.heldout_rows), reference)
    nn_ratio = None
    if len(synthetic) and len(heldout) and heldout.mean() > 0:
        nn_ratio = float(synthetic.mean() / heldout.mean())

    def summary(distances: np.ndarray, statistic) -> float | None:
        return float(statistic(distances)) if len(distances) else None

    def zero_share(distances: np.ndarray) -> float:
        return (distances == 0).mean()

    return {
        "exact_copy_fraction": float(copies.mean()),
        "exact_copies": int(copies.sum()),
        "clinical_exact_copy_fraction": float(clinical_copies.mean()),
        "nn_distance_ratio": nn_ratio,
        "nn": {
            "metric": "Jaccard distance on binary clinical-concept vectors",
            "synthetic_queries": len(synthetic),
            "heldout_queries": len(heldout),
            "reference_sequences": int(reference.shape[0]),
            "synthetic_mean_distance": summary(synthetic, np.mean),
            "heldout_mean_distance": summary(heldout, np.mean),
            "synthetic_median_distance": summary(synthetic, np.median),
            "heldout_median_distance": summary(heldout, np.median),
            "synthetic_zero_distance_fraction": summary(synthetic, zero_share),
            "heldout_zero_distance_fraction": summary(heldout, zero_share),
            "split": real.split_note,
        },
    }


def privacy_attack_keys(
    compared: Comparison, prevalence: ConceptPrevalence, options: ReportOptions
) -> tuple[dict, dict]:
    """5. The CEHR-GPT authors' attacks, against the real patients the model never saw, each beside the
    same attack on copies of the training patients (what it would score if the model copied them).
    Returns their report keys and the attribute config the attack used."""
    real, vocabulary = compared.real, compared.vocabulary
    train_set = (real.train, real.reference_rows)
    heldout_set = (real.heldout, real.heldout_candidates)
    synthetic_set = (compared.synthetic, np.arange(compared.synthetic.count))
    membership = membership_inference(train_set, heldout_set, synthetic_set, vocabulary, options.privacy_sample,
                                      options.seed)
    attributes_known = attribute_config(prevalence.real, vocabulary.tokens)
    attributes = attribute_inference(train_set, heldout_set, synthetic_set, vocabulary, attributes_known,
                                     options.privacy_sample, options.seed)
    return {"membership_inference": membership, "attribute_inference": attributes}, attributes_known


def conversion_keys(restored_dir: Path | None, compared: Comparison) -> dict:
    """6. Conversion to OMOP: the share of sequences cehrgpt's converter made persons of, rows per table."""
    restored = restored_omop_counts(restored_dir) if restored_dir else None
    converted_fraction = None
    if restored is not None:
        synthetic = compared.synthetic
        converted_fraction = converted_share(restored_dir, synthetic.person_ids, synthetic.count,
                                             restored["person"] or 0)
    return {
        "converted_fraction": converted_fraction,
        "restored_omop": None if restored is None else {"dir": str(restored_dir), "rows": restored},
    }


def utility_keys(compared: Comparison, seed: int) -> dict:
    """7. Utility: train on synthetic vs train on real, tested on held-out real patients."""
    real, vocabulary = compared.real, compared.vocabulary
    utility = dimension_wise_prediction(real.train_facts, real.reference_rows, compared.synthetic_facts,
                                        real.heldout_facts, real.heldout_rows, len(vocabulary), vocabulary.tokens,
                                        compared.names, seed)
    return {
        "dimension_wise_auroc_synthetic": None if utility is None else utility["auroc_synthetic"],
        "dimension_wise_auroc_real": None if utility is None else utility["auroc_real"],
        "dimension_wise_auroc_ratio": None if utility is None else utility["ratio"],
        "utility": utility,
    }


def calendar_keys(compared: Comparison, options: ReportOptions) -> dict:
    """8. Calendar time: the converter's visit dates against the source's last date and today."""
    train_facts = compared.real.train_facts
    source_end, source_note = options.source_end_date, options.source_end_note
    if source_end is None:
        real_dates = visit_dates(train_facts)
        real_dates = real_dates[~np.isnat(real_dates)]
        source_end = real_dates.max().item() if len(real_dates) else datetime.date.today()
        source_note = "estimated: the last visit date of the real sequences, dated as the converter does"
    calendar = calendar_time(train_facts, compared.synthetic_facts, source_end, datetime.date.today())
    calendar["source_end_from"] = source_note
    return {"visits_after_source_end_fraction": calendar["visits_after_source_end_fraction"], "calendar": calendar}


def write_report_folder(report_dir: Path, figures: FigureData, attributes_known: dict, seed: int) -> None:
    """report.json, report.md, the plots and the attack's config, replacing the folder whole."""
    with atomic_directory(report_dir) as staging:
        plots = write_plots(staging, figures)
        plots.update(write_timelines(staging, figures.compared, seed))
        (staging / "report.json").write_text(json.dumps(json_ready(figures.report), indent=2) + "\n")
        # The attribute config the attack used, in the format cehrgpt's attribute_inference reads.
        (staging / "attribute_inference_config.yml").write_text(yaml.safe_dump(attributes_known))
        (staging / "report.md").write_text(markdown_report(figures.report, figures.distributions, plots))
