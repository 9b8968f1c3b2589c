"""The report's plots: one function per figure, each drawing from the same FigureData (matplotlib, no
display), so a figure can be changed, added or left out without touching the others."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cehrgpt_tutorials.report.fidelity import ConceptPrevalence, numeric_distributions
from cehrgpt_tutorials.report.inputs import Comparison
from cehrgpt_tutorials.report.metrics import number, percent, token_label
from cehrgpt_tutorials.report.timeline import visit_dates
from cehrgpt_tutorials.sequences.codes import Sequences
from cehrgpt_tutorials.sequences.facts import SequenceFacts
from cehrgpt_tutorials.sequences.grammar import VALIDITY_RULES
from cehrgpt_tutorials.sequences.vocabulary import CONCEPT, DEATH, VISIT_END, Vocabulary

REAL_COLOUR, SYNTHETIC_COLOUR = "#1f77b4", "#ff7f0e"
# timelines.png: visit types by colour (the rest is "other"), patients per panel and which of them.
VISIT_COLOURS = {"inpatient": "#d62728", "outpatient": "#2ca02c", "ER": "#9467bd", "other": "#7f7f7f"}
EMERGENCY_VISIT_CONCEPT_IDS = frozenset({"9203"})  # 262 (ER and inpatient) counts as inpatient
OUTPATIENT_VISIT_CONCEPT_IDS = frozenset({"9202"})
TIMELINE_PATIENTS = 6
TIMELINE_VISITS = (3, 30)  # patients with this many visits: enough to compare, few enough to read


@dataclass(frozen=True)
class FigureData:
    """What the figures show: the run beside the real data, report.json's content and the arrays behind it."""

    compared: Comparison
    report: dict
    prevalence: ConceptPrevalence
    distributions: dict[str, dict]  # distribution_metrics: distances and, for categories, their shares


def write_plots(folder: Path, data: FigureData) -> dict[str, str]:
    """Every figure but the timelines, as PNG files in folder: report.md's key -> file name."""
    plots = {}
    for key, file_name, draw in FIGURES:
        figure = draw(data)
        if figure is not None:  # a figure with nothing to show is left out
            plots[key] = _save(figure, folder, file_name)
    return plots


def _pyplot():
    """matplotlib without a display, imported when the first figure is drawn (it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def prevalence_figure(data: FigureData):
    """Concept prevalence, real vs synthetic, the concepts most off the diagonal named."""
    prevalence, tokens, names = data.prevalence, data.compared.vocabulary.tokens, data.compared.names
    figure, axis = _pyplot().subplots(figsize=(6, 6))
    seen = prevalence.seen
    x, y = prevalence.real[seen], prevalence.synthetic[seen]
    axis.scatter(x, y, s=16, alpha=0.6, color=SYNTHETIC_COLOUR, edgecolors="none")
    limit = max(float(x.max(initial=0)), float(y.max(initial=0)), 0.01) * 1.05
    axis.plot([0, limit], [0, limit], color="grey", linewidth=1, linestyle="--", label="same prevalence")
    codes = np.flatnonzero(seen)
    # Name the concepts the model gets most wrong (when anything is visibly off the diagonal).
    for index in np.argsort(-np.abs(x - y))[:5]:
        if abs(x[index] - y[index]) > 0.02:
            axis.annotate(
                token_label(tokens[codes[index]], names, 28),
                (x[index], y[index]),
                fontsize=7,
                alpha=0.8,
                xytext=(4, 3),
                textcoords="offset points",
            )
    axis.set(
        xlim=(0, limit),
        ylim=(0, limit),
        xlabel="real: share of patients",
        ylabel="synthetic: share of patients",
    )
    axis.set_title(f"Concept prevalence, {seen.sum():,} concepts (Pearson r = {number(prevalence.pearson_r)})")
    axis.legend(loc="upper left")
    return figure


def distributions_figure(data: FigureData):
    """Overlaid histograms of the per-patient numbers, real filled, synthetic outlined."""
    distributions = data.distributions
    numeric = [name for name, metric in distributions.items() if metric["test"] == "KS"]
    values = numeric_distributions(data.compared.real.train_facts, data.compared.synthetic_facts)
    figure, axes = _pyplot().subplots(2, 3, figsize=(13, 7))
    for axis, name in zip(axes.ravel(), numeric, strict=False):
        real_values, synthetic_values = (np.asarray(v, dtype=np.float64) for v in values[name])
        _histograms(axis, real_values[np.isfinite(real_values)], synthetic_values[np.isfinite(synthetic_values)])
        axis.set_title(
            f"{name.replace('_', ' ')} (KS {number(distributions[name]['distance'], 2)})", fontsize=10
        )
        axis.set_ylabel("density", fontsize=8)
        axis.tick_params(labelsize=8)
    axes.ravel()[0].legend(fontsize=8)
    figure.suptitle("Real vs synthetic distributions (0.5-99.5 percentile range)")
    return figure


def _histograms(axis, real_values: np.ndarray, synthetic_values: np.ndarray) -> None:
    """Both densities over the 0.5-99.5 percentile range of the two together."""
    both = np.concatenate((real_values, synthetic_values))
    if not len(both):
        return
    low, high = np.percentile(both, [0.5, 99.5])
    high = max(high, low + 1)
    if np.all(both == np.round(both)):  # whole numbers: bins of whole widths, centred on them
        width = max(1, math.ceil((high - low) / 40))
        bins = np.arange(math.floor(low), math.ceil(high) + width + 1, width) - 0.5
    else:
        bins = np.linspace(low, high, 41)
    # Real filled, synthetic as an outline on top: both stay visible where they agree.
    # (np.histogram + stairs: one artist per histogram instead of one per bar.)
    for values, style in (
        (real_values, dict(fill=True, alpha=0.5, color=REAL_COLOUR, label="real")),
        (synthetic_values, dict(linewidth=1.6, color=SYNTHETIC_COLOUR, label="synthetic")),
    ):
        if len(values):
            density, _ = np.histogram(np.clip(values, bins[0], bins[-1]), bins=bins, density=True)
            axis.stairs(density, bins, **style)


def _category_bars(axis, metric: dict, title: str, data: FigureData, limit: int = 12) -> None:
    """Real and synthetic shares of the most common categories, side by side."""
    tokens, names = data.compared.vocabulary.tokens, data.compared.names
    categories = metric["categories"][:limit]
    labels = [token_label(tokens[code], names, 30) for code in categories]
    positions = np.arange(len(categories))
    axis.barh(positions - 0.2, metric["real_shares"][:limit], height=0.4, color=REAL_COLOUR, label="real")
    axis.barh(
        positions + 0.2,
        metric["synthetic_shares"][:limit],
        height=0.4,
        color=SYNTHETIC_COLOUR,
        label="synthetic",
    )
    axis.set_yticks(positions, labels, fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("share")
    axis.set_title(f"{title} (JS {number(metric['distance'], 2)})", fontsize=10)
    axis.legend(fontsize=8)


def visit_types_figure(data: FigureData):
    figure, axis = _pyplot().subplots(figsize=(8, 4.5))
    _category_bars(axis, data.distributions["visit_types"], "Token after [VS]: visit types", data)
    return figure


def demographics_figure(data: FigureData):
    figure, (left, right) = _pyplot().subplots(1, 2, figsize=(12, 4.5))
    _category_bars(left, data.distributions["gender"], "Gender (3rd token)", data)
    _category_bars(right, data.distributions["race"], "Race (4th token)", data)
    return figure


def validity_figure(data: FigureData):
    """Share of sequences failing each rule, synthetic vs real."""
    report = data.report
    figure, axis = _pyplot().subplots(figsize=(9, 5))
    rules = list(VALIDITY_RULES)
    positions = np.arange(len(rules))
    synthetic_share = [report["invalid_reasons"][rule] / report["num_sequences"] for rule in rules]
    real_share = [report["real"]["invalid_reasons"][rule] / report["real"]["num_sequences"] for rule in rules]
    axis.barh(positions - 0.2, real_share, height=0.4, color=REAL_COLOUR, label="real")
    axis.barh(positions + 0.2, synthetic_share, height=0.4, color=SYNTHETIC_COLOUR, label="synthetic")
    for position, rule in zip(positions, rules, strict=True):
        failing = report["invalid_reasons"][rule]
        if failing:
            axis.annotate(
                f" {failing:,}", (synthetic_share[position], position + 0.2), va="center", fontsize=7
            )
    axis.set_yticks(positions, [rule.replace("_", " ") for rule in rules], fontsize=8)
    axis.invert_yaxis()
    axis.set_xlim(0, max(max(synthetic_share + real_share), 0.01) * 1.1)
    axis.set_xlabel("share of sequences failing the rule")
    axis.set_title(
        f"Structural validity: {percent(report['valid_fraction'])} of synthetic sequences pass every rule",
        fontsize=10,
    )
    axis.legend(fontsize=8)
    return figure


def prevalence_errors_figure(data: FigureData):
    """The worst per-concept relative prevalence errors (concepts in >= 5% of real patients); None: none."""
    errors_section = data.report["prevalence_errors"]
    worst = errors_section["worst"]
    if not worst:
        return None
    figure, axis = _pyplot().subplots(figsize=(9, 0.35 * len(worst) + 1.5))
    errors = [100 * row["relative_error"] for row in worst]
    labels = [token_label(row["concept_id"], data.compared.names, 38) for row in worst]
    positions = np.arange(len(worst))
    axis.barh(positions, errors, color=[REAL_COLOUR if e < 0 else SYNTHETIC_COLOUR for e in errors])
    axis.axvspan(-25, 25, color="grey", alpha=0.15, label="within +-25%")
    axis.axvline(0, color="grey", linewidth=1)
    axis.set_yticks(positions, labels, fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("relative prevalence error, % ((synthetic - real) / real)")
    axis.set_title(
        f"Worst {len(worst)} of {errors_section['concepts']} frequent concepts; "
        f"{percent(errors_section['within_25pct'])} within +-25%",
        fontsize=10,
    )
    axis.legend(fontsize=8)
    return figure


def calendar_figure(data: FigureData):
    """Visits per calendar year, real vs synthetic, with the source's last date and today; None: no visit."""
    calendar = data.report["calendar"]
    per_year = calendar.get("visits_per_year")
    if not per_year:
        return None
    figure, axis = _pyplot().subplots(figsize=(10, 4.5))
    years = np.asarray(per_year["years"])
    for side, colour in (("real", REAL_COLOUR), ("synthetic", SYNTHETIC_COLOUR)):
        counts = np.asarray(per_year[side], dtype=np.float64)
        if counts.sum():
            axis.plot(years, counts / counts.sum(), color=colour, label=f"{side} ({int(counts.sum()):,} visits)")
    for date, style, label in ((calendar["source_end_date"], "--", "source's last visit"),
                               (calendar["run_date"], ":", "report date")):
        year = int(date[:4]) + (int(date[5:7]) - 1) / 12
        axis.axvline(year, color="grey", linestyle=style, label=f"{label} {date}")
    axis.set_xlabel("calendar year of the visit start (as cehrgpt's converter dates it)")
    axis.set_ylabel("share of visits")
    axis.set_title(
        f"Visits per calendar year: {percent(calendar['visits_after_source_end_fraction'])} of synthetic visits "
        "after the source's last date",
        fontsize=10,
    )
    axis.legend(fontsize=8)
    return figure


# report.md's key, the file, and the function drawing it, in the order they are drawn.
FIGURES = (
    ("prevalence", "prevalence_scatter.png", prevalence_figure),
    ("distributions", "distributions.png", distributions_figure),
    ("visit_types", "visit_types.png", visit_types_figure),
    ("demographics", "demographics.png", demographics_figure),
    ("validity", "validity.png", validity_figure),
    ("prevalence_errors", "prevalence_errors.png", prevalence_errors_figure),
    ("calendar", "visits_per_year.png", calendar_figure),
)


def _save(figure, folder: Path, name: str) -> str:
    figure.tight_layout()
    figure.savefig(folder / name, dpi=110)
    _pyplot().close(figure)
    return name


def write_timelines(folder: Path, compared: Comparison, seed: int) -> dict[str, str]:
    """timelines.png: a few real patients the model never saw above a few synthetic ones, one row per
    patient, each visit a mark at its date as cehrgpt's converter dates it, coloured by visit type and
    named by its first concepts."""
    from matplotlib.lines import Line2D

    real, synthetic = compared.real, compared.synthetic
    panels = [("Real patients the model never saw", real.heldout, real.heldout_facts, real.heldout_candidates),
              ("Synthetic patients", synthetic, compared.synthetic_facts, np.arange(compared.synthetic_facts.count))]
    chosen = [_timeline_rows(facts, rows, seed) for _, _, facts, rows in panels]
    heights = [max(len(rows), 1) for rows in chosen]
    figure, axes = _pyplot().subplots(2, 1, figsize=(14, 0.6 * sum(heights) + 2.0), sharex=True,
                                      gridspec_kw={"height_ratios": heights})
    for axis, (title, sequences, facts, _), rows in zip(axes, panels, chosen, strict=True):
        _draw_timelines(axis, sequences, facts, rows, compared.vocabulary, compared.names)
        axis.set_title(f"{title}: {len(rows)} of those with {TIMELINE_VISITS[0]}-{TIMELINE_VISITS[1]} visits, "
                       f"at random (seed {seed})", fontsize=10, loc="left")
    handles = [Line2D([], [], marker="o", linestyle="", color=colour, label=kind)
               for kind, colour in VISIT_COLOURS.items()]
    handles.append(Line2D([], [], marker="x", linestyle="", color="black", label="death"))
    axes[0].legend(handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=len(handles), fontsize=8,
                   frameon=False)
    axes[-1].set_xlabel("calendar year of the visit (as cehrgpt's converter dates it)")
    return {"timelines": _save(figure, folder, "timelines.png")}


def _timeline_rows(facts: SequenceFacts, candidates: np.ndarray, seed: int) -> np.ndarray:
    """A seeded choice of TIMELINE_PATIENTS candidates with enough visits (with more, when too few have)."""
    dated = np.bincount(facts.visit_sequence[~np.isnat(visit_dates(facts))], minlength=facts.count)
    low, high = TIMELINE_VISITS
    candidates = np.asarray(candidates, dtype=np.int64)
    eligible = candidates[(dated[candidates] >= low) & (dated[candidates] <= high)]
    if len(eligible) < TIMELINE_PATIENTS:
        eligible = candidates[dated[candidates] >= low]
    size = min(TIMELINE_PATIENTS, len(eligible))
    return np.sort(np.random.default_rng(seed).choice(eligible, size, replace=False)) if size else eligible


def _visit_kind(code: int | None, facts: dict[str, np.ndarray], token: str) -> str:
    if code is not None and facts["kind"][code] == DEATH:
        return "death"
    if code is not None and facts["inpatient_visit"][code]:
        return "inpatient"
    if token in EMERGENCY_VISIT_CONCEPT_IDS:
        return "ER"
    return "outpatient" if token in OUTPATIENT_VISIT_CONCEPT_IDS else "other"


def _visit_concepts(codes: np.ndarray, position: int, end: int, facts: dict[str, np.ndarray], limit: int = 3) -> list[int]:
    """The first distinct clinical concepts (codes) of the visit whose [VS] is at `position`, after its type."""
    kinds, discharge = facts["kind"], facts["discharge"]
    found: list[int] = []
    for index in range(position + 2, end):
        code = int(codes[index])
        if kinds[code] == VISIT_END or len(found) == limit:
            break
        is_discharge = discharge[code] and index + 1 < end and kinds[codes[index + 1]] == VISIT_END
        if kinds[code] == CONCEPT and not is_discharge and code not in found:
            found.append(code)
    return found


def _clipped(text: str, width: int = 22) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _calendar_years(dates: np.ndarray) -> np.ndarray:
    """datetime64[D] as decimal calendar years (NaT: nan)."""
    known = ~np.isnat(dates)
    years = np.full(len(dates), np.nan)
    starts = dates[known].astype("datetime64[Y]")
    years[known] = starts.astype(np.int64) + 1970 + (dates[known] - starts.astype("datetime64[D]")).astype(np.int64) / 365.25
    return years


def _draw_timelines(axis, sequences: Sequences, facts: SequenceFacts, rows: np.ndarray, vocabulary: Vocabulary, names):
    token_facts = {name: vocabulary.fact(name) for name in ("kind", "inpatient_visit", "discharge")}
    years = _calendar_years(visit_dates(facts))
    span = float(np.nanmax(years) - np.nanmin(years)) if np.isfinite(years).any() else 1.0
    labels = []
    for line, row in enumerate(rows):
        y, end, last_label = len(rows) - 1 - line, sequences.offsets[row + 1], -np.inf
        for visit in np.flatnonzero((facts.visit_sequence == row) & np.isfinite(years)):
            position, x = int(facts.visit_positions[visit]), float(years[visit])
            code = int(sequences.codes[position + 1]) if position + 1 < end else None
            kind = _visit_kind(code, token_facts, "" if code is None else vocabulary.tokens[code])
            if kind == "death":
                axis.plot(x, y, marker="x", color="black", markersize=7)
                continue
            axis.plot(x, y, marker="o", color=VISIT_COLOURS[kind], markersize=5, alpha=0.85)
            if x - last_label >= span / 12:  # name only the visits with room for their text
                concepts = [vocabulary.tokens[c] for c in _visit_concepts(sequences.codes, position, end, token_facts)]
                text = "\n".join(_clipped(names.get(token, ("",))[0] or token) for token in concepts)
                axis.annotate(text, (x, y), xytext=(0, 5), textcoords="offset points", fontsize=5, va="bottom")
                last_label = x
        person = sequences.person_ids[row] if sequences.person_ids is not None else row
        labels.append(f"person {person} ({facts.visits[row]} visits)")
    axis.set_yticks(np.arange(len(rows))[::-1], labels, fontsize=7)
    axis.set_ylim(-0.5, max(len(rows), 1) - 0.1)
    axis.grid(axis="x", alpha=0.3)
    if not len(rows):
        axis.text(0.5, 0.5, f"no patient with {TIMELINE_VISITS[0]}+ dated visits", transform=axis.transAxes,
                  ha="center", fontsize=9)
