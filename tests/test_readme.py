"""The README is the tutorial, so what it shows must be what runs."""

from __future__ import annotations

import re
import subprocess

from conftest import REPO_ROOT

from cehrgpt_tutorials.pipeline.steps import demo_steps

README = (REPO_ROOT / "README.md").read_text()


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, flags=re.S | re.M)
    assert match, f"README has no section '## {title}'"
    return match.group(1)


def test_quick_start_is_exactly_make_demo_and_make_test():
    commands = [line for block in bash_blocks(section("Quick start")) for line in block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]


def test_every_demo_step_command_is_in_the_readme_in_order():
    commands = [line.strip() for block in bash_blocks(section("The steps, one by one")) for line in block.splitlines()]
    positions = []
    for step in demo_steps({}):
        assert step.command in commands, f"README does not show the {step.name} step's command: {step.command}"
        positions.append(commands.index(step.command))
    assert positions == sorted(positions), "README shows the steps in another order than make demo runs them"


def test_every_make_target_the_readme_names_exists():
    targets = set(re.findall(r"`make ([a-z-]+)", README))
    assert {"demo", "test", "setup", "stop-db", "clean"} <= targets
    for target in sorted(targets):
        result = subprocess.run(["make", "-n", "-C", str(REPO_ROOT), target], capture_output=True, text=True)
        assert result.returncode == 0, f"make {target}: {result.stderr}"


# The files the README names that a run writes (not files of the repository): the code must name
# them in a string literal (a comment saying the name is not enough).
WRITTEN_BY_A_RUN = {"report.md", "predict_report.md", "training_inputs.txt"}
SOURCE_FOLDERS = [REPO_ROOT / "cehrgpt_tutorials", REPO_ROOT / "bench", REPO_ROOT / "tests"]


def repository_files() -> dict[str, list]:
    """Every file of the repository's own folders (top level, the package, bench/, tests/): name -> paths."""
    paths = [path for path in REPO_ROOT.iterdir() if path.is_file()]
    paths += [path for folder in SOURCE_FOLDERS for path in folder.rglob("*")
              if path.is_file() and "__pycache__" not in path.parts]
    files: dict[str, list] = {}
    for path in paths:
        files.setdefault(path.name, []).append(path)
    return files


def product_source() -> str:
    """The text of the tutorial's code: the top-level scripts and the package."""
    paths = sorted(REPO_ROOT.glob("*.py")) + sorted(REPO_ROOT.glob("*.sh"))
    paths += sorted(path for path in (REPO_ROOT / "cehrgpt_tutorials").rglob("*") if path.suffix in (".py", ".sh"))
    return "\n".join(path.read_text() for path in paths)


def readme_file_names() -> list[str]:
    return sorted(set(re.findall(r"\b((?:cehrgpt_tutorials/|bench/|tests/)?[\w/]+\.(?:py|sh|txt|md))\b", README)))


def test_every_file_the_readme_names_is_in_the_repository_or_written_by_its_code():
    """A path must exist; a bare name must be a file of the repository (a script in
    cehrgpt_tutorials/scripts/, a module, a bench), or one of WRITTEN_BY_A_RUN that the code names."""
    names = readme_file_names()
    assert {"load_omop.py", "train_cehrgpt.sh", "predict.py", "bench/RESULTS.md", "report.md"} <= set(names)
    files, source = repository_files(), product_source()
    missing = []
    for name in names:
        if "/" in name:
            found = (REPO_ROOT / name).is_file()
        elif name in WRITTEN_BY_A_RUN:
            # a string literal that is the name or a path ending in it: "report.md", '/x/report.md'
            found = re.search(rf"([\"'])(?:[^\"'\n]*/)?{re.escape(name)}\1", source) is not None
        else:
            found = name in files
        if not found:
            missing.append(name)
    assert not missing, f"README names files that are neither in the repository nor written by its code: {missing}"
