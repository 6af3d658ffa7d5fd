"""The README's Python scripts run as written there (with tiny budgets swapped in)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(section: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {section}")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def _shrink(code: str, swaps: dict[str, str]) -> str:
    for pattern, repl in swaps.items():
        code, n = re.subn(pattern, repl, code)
        assert n, f"the README script no longer has {pattern!r}: update this test"
    return code


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SDL_VIDEODRIVER": "dummy"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_readme_has_the_two_python_scripts():
    blocks = _python_blocks("From Python")
    assert len(blocks) == 2
    assert "run_control" in blocks[0] and "train_dpo" in blocks[1]


@pytest.mark.slow
def test_readme_control_script_runs_as_written(tmp_path):
    code = _shrink(_python_blocks("From Python")[0], {
        r"labels=200": "labels=12", r"timesteps=20_000": "timesteps=1024",
        r"seed=0\)": "seed=0, rounds=2, segment_length=10, eval_episodes=2, "
                     "agent=__import__('rlhf_hgt').AgentConfig(n_envs=2, n_steps=128))"})
    res = _run(code, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "true return" in res.stdout and "from 12 labels" in res.stdout
    metrics = json.loads((tmp_path / "runs/cartpole-py/metrics.json").read_text())
    assert metrics["labels"] == 12 and len(metrics["history"]) == 2


@pytest.mark.slow
def test_readme_language_model_script_runs_as_written(tmp_path):
    rows = [{"prompt": f"Review {i}:", "chosen": f"A fine film, number {i}.",
             "rejected": f"Dull, number {i}."} for i in range(16)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = _shrink(_python_blocks("From Python")[1], {
        r'"smollm2"': '"tiny"', r"max_steps=200": "max_steps=2", r"max_steps=100": "max_steps=2"})
    res = _run(code, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "reward model held-out accuracy" in res.stdout
    assert "DPO held-out implicit-reward accuracy" in res.stdout
    assert (tmp_path / "runs/rm-py/metrics.json").exists() or any(
        (tmp_path / "runs/rm-py").iterdir())
    assert any((tmp_path / "runs/dpo-py").glob("*.safetensors"))


def _readme_commands() -> list[list[str]]:
    """Every `rlhf-hgt ...` command in the README's bash blocks, as argv lists."""
    import shlex

    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            if "rlhf-hgt " in line:
                argv = shlex.split(line[line.index("rlhf-hgt ") + len("rlhf-hgt "):])
                commands.append(argv)
            elif "-m rlhf_hgt.cli " in line:
                commands.append(shlex.split(line.split("-m rlhf_hgt.cli ", 1)[1]))
    return commands


def test_every_readme_command_parses_with_its_flags():
    from rlhf_hgt.cli import build_parser

    commands = _readme_commands()
    assert len(commands) >= 8
    for argv in commands:
        try:
            build_parser(argv).parse_args(argv)
        except SystemExit as exc:  # argparse: unknown flag or bad value
            pytest.fail(f"README command no longer parses: rlhf-hgt {' '.join(argv)} ({exc})")
