"""Step 5 benchmark: the samplers side by side on one trained model, several samples each.

For every repeat and every setting (sampler:top_p[:temperature], e.g. raw:0.95, raw:1.0,
constrained:1.0) it runs generate_synthetic.sh (printing its command), times it, scores the sample
with inspect_synthetic.py and adds the share of frequent real concepts (in >= 5% of real patients)
whose synthetic prevalence is within +-25% of the real one. Repeats go round the settings (repeat 1
of each, then repeat 2, ...), so an interrupted run still compares like with like. Prints one row
per setting (mean and range over the repeats) and the generation time of each setting against the
raw sampler at the same top-p and temperature, measured in the same run (the baseline). Last, the
ceiling of the +-25% share: what a perfect sampler (training patients resampled) scores by chance.

Reads:  --model-dir (default $CEHR_GPT_MODEL_DIR), the real sequences (default
        $CEHR_GPT_DATA_DIR/patient_sequence), --concept-dir (default $OMOP_DIR/concept)
Writes: --output-dir (default bench/out/sampler): rep<N>/<run folder>/generated_sequences and report/,
        results.json (every sample's numbers, rewritten after each sample), ceiling.json

Example:
    nice -n 10 python bench/sampler_bench.py --settings raw:0.95 raw:1.0 constrained:1.0 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from cehrgpt_tutorials.errors import PipelineError, fail  # noqa: E402
from cehrgpt_tutorials.files import parquet_files  # noqa: E402
from cehrgpt_tutorials.paths import cehr_gpt_data_dir, cehr_gpt_model_dir, omop_dir  # noqa: E402

FREQUENT = 0.05  # concepts in at least 5% of real patients
TOLERANCE = 0.25  # synthetic prevalence within +-25% of the real one
COLUMNS = [
    ("valid_fraction", "valid", "{:.1%}"),
    ("frequent_within_25", "frequent +-25%", "{:.0%}"),
    ("prevalence_pearson_r", "prevalence r", "{:.3f}"),
    ("cooccurrence_pearson_r", "co-occurrence r", "{:.3f}"),
    ("length_ks", "length KS", "{:.3f}"),
    ("nn_distance_ratio", "NN ratio", "{:.2f}"),
    ("exact_copy_fraction", "exact copies", "{:.1%}"),
    ("convertible_fraction", "converter would convert", "{:.1%}"),
    ("seconds", "generation s", "{:.0f}"),
    ("processor_share", "grammar share of generate()", "{:.1%}"),
]


def parse_setting(text: str) -> dict:
    parts = text.split(":")
    if len(parts) not in (2, 3) or parts[0] not in ("raw", "constrained"):
        raise PipelineError(f"a setting is sampler:top_p[:temperature] with sampler raw or constrained, got '{text}'")
    try:
        top_p, temperature = float(parts[1]), float(parts[2]) if len(parts) == 3 else 1.0
    except ValueError:
        raise PipelineError(f"top_p and temperature must be numbers in '{text}'") from None
    return {"name": text, "sampler": parts[0], "top_p": top_p, "temperature": temperature}


def read_facts(folder: Path, vocabulary):
    """The report's facts of one folder of sequences, coded with `vocabulary` (share it between the
    sets compared: a code means the same token only within one vocabulary)."""
    from cehrgpt_tutorials.sequences.codes import read_sequences
    from cehrgpt_tutorials.sequences.facts import sequence_facts

    return sequence_facts(read_sequences(parquet_files(folder), vocabulary, folder.name), vocabulary)


def training_folder(real_dir: Path) -> Path:
    return real_dir / "train" if (real_dir / "train").is_dir() else real_dir


def share_within(real_share: np.ndarray, synthetic_share: np.ndarray) -> float:
    frequent = real_share >= FREQUENT
    return float((np.abs(synthetic_share[frequent] - real_share[frequent]) <= TOLERANCE * real_share[frequent]).mean())


def frequent_concepts_within(synthetic_dirs: list[Path], real_dir: Path) -> tuple[float, int]:
    """Share of concepts in >= 5% of real training patients whose synthetic prevalence (over all the
    given samples pooled) is within +-25% of the real one, and how many such concepts there are."""
    from cehrgpt_tutorials.sequences.vocabulary import Vocabulary

    vocabulary = Vocabulary()
    real = read_facts(training_folder(real_dir), vocabulary)
    synthetic = [read_facts(folder, vocabulary) for folder in synthetic_dirs]
    size = len(vocabulary)  # after reading every set: codes of tokens only the synthetic sets have
    counts = sum(np.bincount(facts.concept_codes, minlength=size) for facts in synthetic)
    patients = sum(facts.count for facts in synthetic)
    real_share = np.bincount(real.concept_codes, minlength=size) / max(real.count, 1)
    return share_within(real_share, counts / max(patients, 1)), int((real_share >= FREQUENT).sum())


def convertible_fraction(synthetic_dir: Path, concept_dir: Path | None) -> float | None:
    """Share of the sample that cehrgpt's OMOP converter would convert (omop_restore.skip_reason is None:
    the converter's own rules, in its order), without running the converter and a database per sample."""
    from cehrgpt_tutorials.omop.restore import load_domain_map, read_sequences, skip_reason

    if concept_dir is None:
        return None
    domain_map = load_domain_map(concept_dir)
    sequences = read_sequences(synthetic_dir).column("concept_ids").to_pylist()
    return sum(skip_reason(ids, domain_map) is None for ids in sequences) / max(len(sequences), 1)


def resampling_ceiling(real_dir: Path, num_patients: int, draws: int = 200, seed: int = 0) -> dict:
    """What a perfect sampler would score on 'frequent concepts within +-25%': `num_patients` training
    patients drawn with replacement from the training sequences themselves (the distribution the model
    was fitted to), `draws` times. At 500 patients a concept in 5% of patients is ~25 patients, whose
    count varies by ~20% from sample to sample, so even a perfect sampler misses some by chance."""
    from cehrgpt_tutorials.report.fidelity import concept_matrix, prevalence
    from cehrgpt_tutorials.sequences.vocabulary import Vocabulary

    vocabulary = Vocabulary()
    real = read_facts(training_folder(real_dir), vocabulary)
    size = len(vocabulary)
    real_share = prevalence(real, size)
    matrix = concept_matrix(real, size)
    generator = np.random.default_rng(seed)
    shares = [share_within(real_share, np.asarray(matrix[generator.integers(0, real.count, num_patients)]
                                                  .mean(axis=0)).ravel()) for _ in range(draws)]
    return {"mean": float(np.mean(shares)), "p5": float(np.percentile(shares, 5)),
            "p95": float(np.percentile(shares, 95)), "draws": draws, "num_patients": num_patients,
            "training_patients": int(real.count)}


def run_sample(setting: dict, repeat: int, arguments) -> dict:
    output = arguments.output_dir / f"rep{repeat}"
    command = ["sh", str(REPO_ROOT / "cehrgpt_tutorials" / "scripts" / "generate_synthetic.sh"),
               "--sampler", setting["sampler"], "--top-p", str(setting["top_p"]),
               "--num-patients", str(arguments.num_patients), "--model-dir", str(arguments.model_dir),
               "--output-dir", str(output), "--seed", str(repeat)]  # fmt: skip
    command += ["--prompt-data", str(arguments.prompt_data or arguments.real_dir)]
    if arguments.concept_dir:
        command += ["--concept-dir", str(arguments.concept_dir)]  # visit and discharge concepts, as the report
    if setting["temperature"] != 1.0:
        command += ["--temperature", str(setting["temperature"])]
    print("$ " + " ".join(command), flush=True)
    started = time.perf_counter()
    generated = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if generated.returncode != 0:
        raise PipelineError(f"generation failed for {setting['name']}: {generated.stderr.strip()[-500:]}")
    folder = Path(re.search(r"^sequences: (.+)$", generated.stdout, flags=re.M).group(1))
    timing = re.search(r"model\.generate took ([\d.]+)s(?:, of which the grammar processor ([\d.]+)s)?", generated.stdout)
    inspect = [sys.executable, str(REPO_ROOT / "inspect_synthetic.py"), "--synthetic-dir", str(folder.parent),
               "--real-dir", str(arguments.real_dir)] + (["--concept-dir", str(arguments.concept_dir)]
                                                         if arguments.concept_dir else [])
    print("$ " + " ".join(inspect), flush=True)
    scored = subprocess.run(inspect, capture_output=True, text=True)
    # Exit status 1 with a report written: no valid sequence in the sample, still a result.
    if scored.returncode != 0 and not (folder.parent / "report" / "report.json").exists():
        raise PipelineError(f"inspect_synthetic.py failed for {setting['name']}: {scored.stderr.strip()[-500:]}")
    report = json.loads((folder.parent / "report" / "report.json").read_text())
    share, frequent = frequent_concepts_within([folder], arguments.real_dir)
    convertible = convertible_fraction(folder, arguments.concept_dir)
    result = {key: report.get(key) for key, _, _ in COLUMNS if key in report}
    result.update(setting=setting["name"], repeat=repeat, folder=str(folder.parent), sequences=str(folder), seconds=seconds,
                  generate_seconds=float(timing.group(1)) if timing else None,
                  processor_seconds=float(timing.group(2)) if timing and timing.group(2) else None,
                  frequent_within_25=share, frequent_concepts=frequent, convertible_fraction=convertible,
                  invalid_reasons=report["invalid_reasons"],
                  num_sequences=report["num_sequences"])
    if result["processor_seconds"] is not None and result["generate_seconds"]:
        result["processor_share"] = result["processor_seconds"] / result["generate_seconds"]
    print(f"  {setting['name']} rep {repeat}: valid {result['valid_fraction']:.1%}, frequent +-25% {share:.0%} "
          f"of {frequent}, {seconds:.0f} s", flush=True)
    return result


def summary(results: list[dict], settings: list[dict]) -> str:
    """One row per setting: mean (min-max) over its samples; time against raw at the same top-p/temperature."""
    header = "| setting | samples | " + " | ".join(label for _, label, _ in COLUMNS) + " | time vs raw |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 3)]

    def mean_seconds(name: str) -> float | None:
        rows = [r["seconds"] for r in results if r["setting"] == name]
        return float(np.mean(rows)) if rows else None

    for setting in settings:
        rows = [r for r in results if r["setting"] == setting["name"]]
        if not rows:
            continue
        cells = []
        for key, _, fmt in COLUMNS:
            values = [r[key] for r in rows if r.get(key) is not None]
            if not values:
                cells.append("-")
                continue
            mean = fmt.format(float(np.mean(values)))
            cells.append(mean if len(values) == 1 else f"{mean} ({fmt.format(min(values))}-{fmt.format(max(values))})")
        raw = next((other["name"] for other in settings if other["sampler"] == "raw"
                    and (other["top_p"], other["temperature"]) == (setting["top_p"], setting["temperature"])), None)
        baseline = mean_seconds(raw) if raw else None
        ratio = f"{mean_seconds(setting['name']) / baseline:.2f}x" if baseline else "-"
        lines.append(f"| {setting['name']} | {len(rows)} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--settings", nargs="+", default=["raw:0.95", "raw:1.0", "constrained:1.0"],
                        help="sampler:top_p[:temperature] (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="samples per setting (default: %(default)s)")
    parser.add_argument("--first-repeat", type=int, default=1,
                        help="number (and generation seed) of the first repeat, to add samples later (default: 1)")
    parser.add_argument("--num-patients", type=int, default=500, help="patients per sample (default: %(default)s)")
    parser.add_argument("--model-dir", type=Path, default=cehr_gpt_model_dir(), help="default: %(default)s")
    parser.add_argument("--real-dir", type=Path, default=cehr_gpt_data_dir() / "patient_sequence",
                        help="real sequences, for the report (default: %(default)s)")
    parser.add_argument("--prompt-data", type=Path, help="prompts (default: --real-dir; its train/ split when present)")
    parser.add_argument("--concept-dir", type=Path, default=omop_dir() / "concept", help="default: %(default)s")
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "bench" / "out" / "sampler",
                        help="default: %(default)s")
    parser.add_argument("--rescore", action="store_true",
                        help="generate nothing: score the samples listed in --output-dir's results.json again")
    arguments = parser.parse_args()
    try:
        settings = [parse_setting(text) for text in arguments.settings]
        if not (arguments.model_dir / "config.json").exists():
            raise PipelineError(f"no trained model in '{arguments.model_dir}' (no config.json)")
        if not arguments.concept_dir.is_dir():
            arguments.concept_dir = None
        arguments.output_dir.mkdir(parents=True, exist_ok=True)
        results_file = arguments.output_dir / "results.json"
        results = json.loads(results_file.read_text()) if arguments.first_repeat > 1 and results_file.exists() else []
        if arguments.rescore:
            if not results_file.exists():
                raise PipelineError(f"--rescore: no {results_file}")
            results = json.loads(results_file.read_text())
            for result in results:
                result["frequent_within_25"], result["frequent_concepts"] = frequent_concepts_within(
                    [Path(result["sequences"])], arguments.real_dir)
                result["convertible_fraction"] = convertible_fraction(Path(result["sequences"]), arguments.concept_dir)
            results_file.write_text(json.dumps(results, indent=2) + "\n")
            settings = [parse_setting(name) for name in dict.fromkeys(r["setting"] for r in results)]
        for repeat in range(arguments.first_repeat, arguments.first_repeat + (0 if arguments.rescore else arguments.repeats)):
            for setting in settings:
                results.append(run_sample(setting, repeat, arguments))
                results_file.write_text(json.dumps(results, indent=2) + "\n")
    except PipelineError as error:
        fail(str(error))
    print(summary(results, settings))
    for setting in settings:  # all of a setting's samples together: chance matters less
        folders = [Path(r["sequences"]) for r in results if r["setting"] == setting["name"]]
        if len(folders) > 1:
            share, _ = frequent_concepts_within(folders, arguments.real_dir)
            print(f"{setting['name']}, its {len(folders)} samples pooled: frequent concepts within +-25% {share:.0%}")
    ceiling = resampling_ceiling(arguments.real_dir, arguments.num_patients)
    (arguments.output_dir / "ceiling.json").write_text(json.dumps(ceiling, indent=2) + "\n")
    print(f"A perfect sampler ({ceiling['num_patients']} of the {ceiling['training_patients']} training patients "
          f"drawn with replacement, {ceiling['draws']} times) has frequent concepts within +-25% "
          f"{ceiling['mean']:.0%} on average ({ceiling['p5']:.0%}-{ceiling['p95']:.0%}, 5th-95th percentile).")


if __name__ == "__main__":
    main()
