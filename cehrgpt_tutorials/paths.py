"""Where each step reads and writes by default: setup_env.sh's variables, with the seed's fallbacks,
so a bare `python cleanup_tokens.py` works without sourcing anything."""

from __future__ import annotations

import os
from pathlib import Path


def omop_dir() -> Path:
    """Where step 1 writes the exported OMOP tables (and where the embedded database lives)."""
    return Path(os.environ.get("OMOP_DIR") or "omop_synthea")


def cehr_gpt_data_dir() -> Path:
    """Where step 2 writes patient_sequence/ (the official tutorial uses the OMOP folder itself)."""
    return Path(os.environ.get("CEHR_GPT_DATA_DIR") or "omop_synthea")


def cehr_gpt_model_dir() -> Path:
    return Path(os.environ.get("CEHR_GPT_MODEL_DIR") or "omop_synthea/cehrgpt_model")


def synthetic_data_output_dir() -> Path:
    return Path(os.environ.get("SYNTHETIC_DATA_OUTPUT_DIR") or "omop_synthea/synthetic_data")
