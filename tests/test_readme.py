"""The README's quick start and .ci/run stay in step: CI runs exactly the README's test command."""

import re

from sample_data import REPO


def quick_start_commands() -> list:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_quick_start_is_two_commands_and_ci_runs_the_second():
    commands = quick_start_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    assert "fastadapt demo" in commands[0] and "torch" not in commands[0]
    assert "pytest" in commands[1]
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert commands[1] in ci_lines


def test_python_api_example_runs(tmp_path, monkeypatch):
    """The README's Python API example, run from the repository root (needs the shipped default model)."""
    import pytest

    if not (REPO / "fastadapt" / "assets" / "default.fadapt").exists():
        pytest.skip("no default model shipped")
    text = (REPO / "README.md").read_text()
    code = re.findall(r"## Python API.*?```python\n(.*?)```", text, re.S)[0]
    code = code.replace('"shapes.fadapt"', repr(str(tmp_path / "shapes.fadapt")))
    monkeypatch.chdir(REPO)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "shapes.fadapt").exists()
