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


def test_every_file_the_readme_names_exists():
    for path in sorted(set(re.findall(r"\b((?:cehrgpt_tutorials/|bench/)?[\w/]+\.(?:py|sh|txt|md))\b", README))):
        if "/" in path or path in {"load_omop.py", "export_omop.py", "cleanup_tokens.py", "inspect_synthetic.py",
                                   "setup_env.sh"}:
            candidates = [REPO_ROOT / path, REPO_ROOT / "cehrgpt_tutorials" / "scripts" / path]
            assert any(candidate.exists() for candidate in candidates), f"README names {path}, which does not exist"
