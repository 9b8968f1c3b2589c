"""Show one patient: a real training patient's token sequence beside the OMOP rows it came from, or
(--synthetic) a synthetic patient's tokens beside the OMOP rows cehrgpt's converter restored from them.

Each visit of the sequence is listed token by token, each concept token beside the OMOP row it stands
for (same person, concept and date); the rows the sequence left out are listed where they happened,
with the reason. Reads step 2's patient_sequence and step 1's tables in $OMOP_DIR (real), or the
newest run in $SYNTHETIC_DATA_OUTPUT_DIR and its restored_omop/ (synthetic); names from $OMOP_DIR/concept.

Examples:
    python -m cehrgpt_tutorials.show_patient                 # the first training patient with 3+ visits
    python -m cehrgpt_tutorials.show_patient --person-id 1 --all
    python -m cehrgpt_tutorials.show_patient --random --seed 7
    python -m cehrgpt_tutorials.show_patient --synthetic
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cehrgpt_tutorials.errors import PipelineError, fail
from cehrgpt_tutorials.paths import cehr_gpt_data_dir, omop_dir, synthetic_data_output_dir
from cehrgpt_tutorials.show_patient.patients import concept_names, load_real, load_synthetic
from cehrgpt_tutorials.show_patient.render import SHOWN_VISITS, render


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cehrgpt_tutorials.show_patient", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic", action="store_true", help="a synthetic patient and its restored OMOP rows")
    parser.add_argument("--person-id", type=int, help="whom to show (default: the first with 3+ visits)")
    parser.add_argument("--random", action="store_true", help="a random patient with 3+ visits")
    parser.add_argument("--seed", type=int, help="seed of --random (default: a new choice each time)")
    parser.add_argument("--all", action="store_true", help=f"every visit and row (default: {SHOWN_VISITS} visits)")
    parser.add_argument("--sequence-dir", type=Path, help="step 2's patient_sequence "
                        "(default: $CEHR_GPT_DATA_DIR/patient_sequence)")
    parser.add_argument("--omop-dir", type=Path, help="step 1's OMOP tables, with concept/ (default: $OMOP_DIR)")
    parser.add_argument("--synthetic-dir", type=Path, help="a generated run, or the folder of runs "
                        "(default: $SYNTHETIC_DATA_OUTPUT_DIR, newest run)")
    options = parser.parse_args(argv)
    if options.random and options.person_id is not None:
        parser.error("--random and --person-id choose differently: pass one")
    options.sequence_dir = options.sequence_dir or cehr_gpt_data_dir() / "patient_sequence"
    options.omop_dir = options.omop_dir or omop_dir()
    options.synthetic_dir = options.synthetic_dir or synthetic_data_output_dir()
    if options.random and options.seed is None:
        options.seed = int(np.random.SeedSequence().entropy % 2**31)
    return options


def main(argv=None) -> int:
    options = parse_arguments(argv)
    try:
        patient = load_synthetic(options) if options.synthetic else load_real(options)
        names = concept_names(patient, [options.omop_dir / "concept", patient.omop / "concept"])
        lines = render(patient, names, options.all)
    except PipelineError as error:
        fail(str(error))
    if options.random:
        lines.append(f"(--random --seed {options.seed} chose person {patient.person_id}: "
                     f"--person-id {patient.person_id} shows it again)")
    print("\n".join(lines))
    return 0
