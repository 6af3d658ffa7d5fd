"""The command-line package: flags generated from the configs, aliases, help with the real
defaults, the exit code of bad input, light start-up, and no library module importing it."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_hgt import cli
from rlhf_hgt.cli import flags
from rlhf_hgt.cli.flags import Section, sections

ROOT = Path(__file__).resolve().parents[1]


def _command_sections() -> dict[str, list[Section]]:
    from rlhf_hgt.cli import attention, control, label, lm, lm_policy

    return {"label": [label.SECTION], "control": control.command_sections(),
            "attention train": attention.train_sections(),
            "attention mark": attention.mark_sections(),
            "lm reward": lm.pair_sections("reward"), "lm dpo": lm.pair_sections("dpo"),
            "lm ppo": lm_policy.ppo_sections(), "lm online": lm_policy.online_sections()}


def _subparser(parser: argparse.ArgumentParser, words: list[str]) -> argparse.ArgumentParser:
    for word in words:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[word]
    return parser


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return cli.full_parser()


# ----------------------------------------------------------------------------- flags


@pytest.mark.parametrize("command", ["label", "control", "lm reward", "lm dpo", "lm ppo",
                                     "lm online", "attention train", "attention mark"])
def test_every_config_field_has_a_flag_and_every_flag_a_field(parser, command):
    secs = _command_sections()[command]
    p = _subparser(parser, command.split())
    generated = [a for a in p._actions if a.dest.startswith("cfg:")]
    dests = {a.dest for a in generated if not isinstance(a, argparse._StoreConstAction)}
    switches = {a.dest for a in generated if isinstance(a, argparse._StoreConstAction)}
    every = {s.dest(f.name) for s in secs for f in flags.config_fields(s.cls)}
    assert switches <= every  # --quiet, --no-chat-template, ... set real fields
    wanted = set()
    for s in secs:
        for f in flags.config_fields(s.cls):
            if f.name in s.skip:
                continue
            wanted.add(s.dest(f.name))
    assert wanted, "a command without settings"
    assert dests == wanted
    # what is skipped says why, and names only real fields
    for s in secs:
        names = {f.name for f in dataclasses.fields(s.cls)}
        assert set(s.skip) <= names, (s.cls, set(s.skip) - names)


@pytest.mark.parametrize("command", ["label", "control", "lm reward", "lm dpo", "lm ppo",
                                     "lm online", "attention train", "attention mark"])
def test_help_shows_the_dataclass_defaults(parser, command):
    p = _subparser(parser, command.split())
    by_dest = {a.dest: a for a in p._actions if not isinstance(a, argparse._StoreConstAction)}
    checked = 0
    for s in _command_sections()[command]:
        for f in s.fields():
            default = s.base.get(f.name, f.default)
            if (default is dataclasses.MISSING or default is None
                    or "default_text" in f.metadata):
                continue
            text = by_dest[s.dest(f.name)].help
            shown = ("on" if default else "off") if isinstance(default, bool) else (
                ",".join(map(str, default)) if isinstance(default, tuple) else str(default))
            assert f"(default: {shown})" in text.replace("%%", "%"), (f.name, text)
            checked += 1
    assert checked >= {"label": 1, "attention mark": 0}.get(command, 5)  # mark: all unset


def test_help_of_a_command_prints_real_defaults():
    from rlhf_hgt.control.config import ControlConfig

    labels = next(f for f in dataclasses.fields(ControlConfig) if f.name == "labels")
    timesteps = next(f for f in dataclasses.fields(ControlConfig) if f.name == "timesteps")
    res = subprocess.run([sys.executable, "-m", "rlhf_hgt.cli", "control", "--help"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())
    assert re.search(rf"--labels N {re.escape(labels.metadata['help'])} "
                     rf"\(default: {labels.default}\)", text), text
    assert f"(default: {timesteps.default})" in text


def _parse(words: list[str]) -> argparse.Namespace:
    return cli.build_parser(words).parse_args(words)


def test_old_and_new_flag_names_build_the_same_config(tmp_path):
    from rlhf_hgt.cli import control

    out = str(tmp_path / "run")
    old = _parse(["control", "CartPole-v1", "--out", out, "--n-envs", "2", "--pessimism", "0.5",
                  "--subprocess-envs"])
    new = _parse(["control", "CartPole-v1", "--out", out, "--agent-n-envs", "2",
                  "--reward-pessimism", "0.5", "--agent-subprocess"])
    build = [flags.build(a, control.command_sections(), {"env_id": "CartPole-v1"})
             for a in (old, new)]
    assert build[0] == build[1]
    assert build[0].agent.n_envs == 2 and build[0].agent.subprocess is True
    assert build[0].reward.pessimism == 0.5
    assert build[0].labels == 500  # unset flags keep the dataclass default


def test_renamed_config_fields_keep_their_old_flag(tmp_path):
    from rlhf_hgt.cli import lm
    from rlhf_hgt.configs import renamed_fields

    secs = lm.pair_sections("dpo")
    renames = renamed_fields(secs[0].cls)
    args = _parse(["lm", "dpo", "--data", "x.jsonl", "--out", str(tmp_path), "--lr", "1e-4"])
    cfg = flags.build(args, secs)
    assert cfg.learning_rate == 1e-4
    for old, new in renames.items():  # every renamed field parses under its old flag
        flag = "--" + old.replace("_", "-")
        action = next(a for a in _subparser(cli.full_parser(), ["lm", "dpo"])._actions
                      if flag in a.option_strings)
        assert action.dest == secs[0].dest(new)


def test_online_nested_flags_and_their_old_names(tmp_path):
    from rlhf_hgt.cli import lm_policy

    words = ["lm", "online", "--prompt", "hi", "--out", str(tmp_path / "o"), "--lr", "1e-4",
             "--rm-lr", "3e-4", "--dpo-beta", "0.2", "--ppo-steps", "3", "--lora-r", "4",
             "--model", "tiny"]
    args = _parse(words)
    cfg = flags.build(args, lm_policy.online_sections(), {"prompts": args.prompt_texts})
    assert cfg.ppo.learning_rate == 1e-4 and cfg.reward.learning_rate == 3e-4
    assert cfg.dpo.beta == 0.2 and cfg.ppo.steps == 3 and cfg.ppo.lora_r == 4
    assert cfg.ppo.lora_alpha == 8.0  # derived from the given rank, not the default's
    assert cfg.ppo.seed == cfg.seed


def test_online_keeps_its_own_default_for_nested_settings(tmp_path):
    from rlhf_hgt.cli import lm_policy
    from rlhf_hgt.lm.online import OnlineConfig

    args = _parse(["lm", "online", "--prompt", "hi", "--out", str(tmp_path / "o")])
    cfg = flags.build(args, lm_policy.online_sections(), {"prompts": args.prompt_texts})
    assert cfg.ppo.steps == OnlineConfig(out="x", prompts=["p"]).ppo.steps


@pytest.mark.parametrize("words,flag", [
    (["control", "CartPole-v1", "--labels", "0"], "--labels"),
    (["control", "CartPole-v1", "--agent-batch-size", "1"], "--agent-batch-size"),
    (["lm", "dpo", "--data", "x.jsonl", "--beta", "-1"], "--beta"),
    (["lm", "ppo", "--prompt", "hi", "--reward", "length", "--mini-batch-size", "5"],
     "--mini-batch-size"),
    (["label", "store.db", "--limit", "0"], "--limit"),
])
def test_a_bad_value_exits_2_naming_its_flag(tmp_path, capsys, words, flag):
    words = [*words, *(["--out", str(tmp_path / "run")] if words[0] in ("control", "lm")
                       else [])]
    assert cli.main(words) == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_an_unparsable_value_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["control", "CartPole-v1", "--out", "x", "--labels", "many"])
    assert exc.value.code == 2
    assert "--labels" in capsys.readouterr().err


def test_version(capsys):
    import rlhf_hgt

    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"rlhf-hgt {rlhf_hgt.__version__}"
    assert rlhf_hgt.__version__[0].isdigit()


def test_sections_name_nested_configs_with_their_prefix():
    from rlhf_hgt.lm.online import OnlineConfig

    secs = sections(OnlineConfig, prefixes={"reward": "rm-"})
    prefixes = {s.path: s.prefix for s in secs}
    assert prefixes == {(): "", ("reward",): "rm-", ("ppo",): "ppo-", ("dpo",): "dpo-"}


# ----------------------------------------------------------------------------- import rules


def _library_modules() -> list[Path]:
    roots = [ROOT / "rlhf_hgt", ROOT / "envs", ROOT / "feedback"]
    return [p for r in roots for p in r.rglob("*.py") if "cli" not in p.relative_to(r).parts[:1]]


def _is_main_block(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def test_no_library_module_imports_the_cli():
    """Old entry modules (rlhf_hgt.lm.cli, ...) call the CLI under ``__main__`` only."""
    offenders = []
    for path in _library_modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        entry = {id(n) for top in tree.body if _is_main_block(top) for n in ast.walk(top)}
        for node in ast.walk(tree):
            if id(node) in entry:  # `if __name__ == "__main__":` runs a command, may wire
                continue
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(n == "rlhf_hgt.cli" or n.startswith("rlhf_hgt.cli.") for n in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert len(_library_modules()) > 30
    assert not offenders, offenders


@pytest.mark.slow
def test_importing_every_library_module_loads_no_cli_module():
    import pkgutil

    import rlhf_hgt

    names = [m.name for m in pkgutil.walk_packages(rlhf_hgt.__path__, "rlhf_hgt.")
             if not m.name.startswith("rlhf_hgt.cli")]
    code = ("import importlib, sys\n"
            f"for n in {names!r}:\n"
            "    importlib.import_module(n)\n"
            "bad = [m for m in sys.modules if m == 'rlhf_hgt.cli' or "
            "m.startswith('rlhf_hgt.cli.')]\n"
            "print(len(sys.modules)); assert not bad, bad\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(names) > 20


@pytest.mark.parametrize("code", [
    "import rlhf_hgt",
    "from rlhf_hgt.cli import main; import sys; sys.argv = ['rlhf-hgt', 'label', '--help']\n"
    "try:\n    main()\nexcept SystemExit:\n    pass",
    "from rlhf_hgt.cli import main\n"
    "try:\n    main(['feedback', 'stats', '--help'])\nexcept SystemExit:\n    pass",
    "from rlhf_hgt.cli import main\n"
    "try:\n    main(['attention', 'mark', '--help'])\nexcept SystemExit:\n    pass\n"
    "import rlhf_hgt.attention.data, rlhf_hgt.feedback.mark_terminal",
])
def test_light_start_up_imports_no_heavy_stack(code):
    check = ("\nimport sys\nheavy = [m for m in ('torch', 'transformers', 'trl', 'peft', "
             "'stable_baselines3') if m in sys.modules]\nassert not heavy, heavy\n")
    res = subprocess.run([sys.executable, "-c", code + check], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]


def test_public_api_names_resolve_lazily():
    import rlhf_hgt

    assert "ControlConfig" in dir(rlhf_hgt)
    with pytest.raises(AttributeError):
        rlhf_hgt.NoSuchThing  # noqa: B018
    for name in rlhf_hgt._API:
        assert getattr(rlhf_hgt, name) is not None, name


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """`rlhf-hgt feedback stats STORE --json | head -1` and the like: a command whose reader
    closed the pipe stops with 141 (as cat does), no BrokenPipeError traceback."""
    code = ("import sys\nfrom rlhf_hgt.feedback.errors import exit_code\n"
            "def run():\n    print('x' * 100, flush=True)\n    raise BrokenPipeError\n"
            "sys.exit(exit_code(run))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert res.returncode == 141
    assert "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr


def test_strict_json_writes_null_for_nan(tmp_path):
    import json

    import numpy as np

    from rlhf_hgt.feedback.files import write_json_atomic

    write_json_atomic(tmp_path / "m.json", {"a": float("nan"), "b": [np.float32(1.5),
                                                                     float("inf")], "c": 2})
    text = (tmp_path / "m.json").read_text()
    assert json.loads(text) == {"a": None, "b": [1.5, None], "c": 2} and "NaN" not in text
