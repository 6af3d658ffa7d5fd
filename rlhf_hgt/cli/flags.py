"""Command-line flags built from the config dataclasses, so that a setting's name, type,
default and help text live in one place: the dataclass field.

A command lists its :class:`Section` s: the root config and the nested configs inside it,
each with a flag prefix (``--rm-`` for the reward model refit inside ``lm online``, say).
Every field becomes ``--{prefix}{field-name}``; its help is the field's ``help`` metadata
plus the real default. Old flag names stay as aliases: the names a config records as
renamed (:func:`rlhf_hgt.configs.renamed`) and the ones a command lists. Unset flags keep
the dataclass defaults, because every flag defaults to ``argparse.SUPPRESS``.

A bad value becomes a :class:`UserInputError` that names the flag, so the user sees one
line and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rlhf_hgt.configs import renamed_fields
from rlhf_hgt.feedback.errors import UserInputError

NONE_WORDS = ("none", "off")


@dataclass(frozen=True)
class Section:
    """One config dataclass of a command and where its flags go."""

    cls: type
    path: tuple[str, ...] = ()  # field names leading from the root config to this one
    prefix: str = ""  # flag prefix, e.g. "rm-" gives --rm-learning-rate
    title: str | None = None  # argparse group title (default: the class name)
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # field -> old flags
    skip: Mapping[str, str] = field(default_factory=dict)  # field -> why it has no flag
    base: Mapping[str, Any] = field(default_factory=dict)  # the parent's own defaults

    def dest(self, name: str) -> str:
        return "cfg:" + ".".join((*self.path, name))

    def flag(self, name: str) -> str:
        return "--" + self.prefix + name.replace("_", "-")

    def fields(self) -> list[dataclasses.Field]:
        """The setting fields that get a flag."""
        return [f for f in config_fields(self.cls) if f.name not in self.skip]


def sections(root: type, *, prefixes: Mapping[str, str] | None = None,
             aliases: Mapping[str, Mapping[str, tuple[str, ...]]] | None = None,
             skip: Mapping[str, Mapping[str, str]] | None = None,
             titles: Mapping[str, str] | None = None) -> list[Section]:
    """The root config and every config nested in it, as sections; keys of the mappings are
    dotted paths ("" = the root, "ppo" = its field ppo, ...). A nested config's flags get
    the prefix ``prefixes[path]`` (default: its field name and a dash)."""
    prefixes, aliases, skip, titles = (prefixes or {}, aliases or {}, skip or {}, titles or {})
    found: list[Section] = []

    def visit(cls: type, path: tuple[str, ...], base: Mapping[str, Any]) -> None:
        key = ".".join(path)
        renames = renamed_fields(cls)
        wanted = {renames.get(k, k): v for k, v in aliases.get(key, {}).items()}
        found.append(Section(cls, path, prefixes.get(key, f"{key.replace('.', '-')}-"
                                                     if key else ""),
                             titles.get(key), wanted, skip.get(key, {}), base))
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init and _is_dataclass_type(hints[f.name]):
                visit(hints[f.name], (*path, f.name), _own_defaults(f, hints[f.name]))

    visit(root, (), {})
    return found


def _own_defaults(f: dataclasses.Field, cls: type) -> dict[str, Any]:
    """The settings a parent's default for a nested config sets apart from that config's own
    defaults (``ppo = LMPPOConfig(steps=20)`` gives {"steps": 20})."""
    if f.default_factory is dataclasses.MISSING:
        return {}
    mine, plain = f.default_factory(), cls()
    return {g.name: getattr(mine, g.name) for g in dataclasses.fields(cls)
            if g.init and getattr(mine, g.name) != getattr(plain, g.name)}


def config_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of a config class that hold a setting (nested configs excluded)."""
    hints = typing.get_type_hints(cls)
    return [f for f in dataclasses.fields(cls)
            if f.init and not _is_dataclass_type(hints[f.name])
            and typing.get_origin(hints[f.name]) is not dict and hints[f.name] is not dict]


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _members(tp: Any) -> list[Any]:
    """The types a field may hold: X | None -> [X, NoneType]."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return list(typing.get_args(tp))
    return [tp]


def _parser_for(tp: Any, name: str) -> tuple[Callable[[str], Any] | None, str, tuple | None]:
    """(converter, metavar, choices) for a field type; converter None means a bool switch."""
    members = _members(tp)
    optional = type(None) in members
    members = [m for m in members if m is not type(None)]
    if members == [bool]:
        return None, "", None
    literal = [m for m in members if typing.get_origin(m) is typing.Literal]
    choices = tuple(a for m in literal for a in typing.get_args(m)) or None
    seq = [m for m in members if typing.get_origin(m) in (tuple, list)]
    scalar = next((m for m in members if m in (int, float, str)), str)
    # "none"/"off" unset a number or a list; a text may be any word (a path named "none")
    none_words = optional and str not in members

    def convert(text: str) -> Any:
        if none_words and text.strip().lower() in NONE_WORDS:
            return None
        if seq and ("," in text or str not in members):
            items = tuple(t.strip() for t in text.split(",") if t.strip())
            inner = typing.get_args(seq[0])[:1] or (str,)
            kind = inner[0] if inner[0] in (int, float) else str
            return tuple(kind(t) for t in items)
        return scalar(text)

    convert.__name__ = scalar.__name__ if not seq else "list"  # argparse names it in errors
    metavar = {int: "N", float: "X"}.get(scalar, "TEXT")
    if seq:
        metavar = "A,B,..."
    if choices:
        metavar = None
    return convert, metavar, choices


def _help(f: dataclasses.Field, default: Any, choices: tuple | None) -> str:
    text = f.metadata.get("help", "").rstrip()
    if "default_text" in f.metadata:  # a default that depends on the machine or the run
        shown = f"default: {f.metadata['default_text']}"
    elif default is dataclasses.MISSING:
        shown = "required"
    elif default is None:
        shown = "default: unset" if "default" not in text else ""
    elif isinstance(default, bool):
        shown = f"default: {'on' if default else 'off'}"
    elif isinstance(default, tuple | list):
        shown = f"default: {','.join(map(str, default)) or 'none'}"
    else:
        shown = f"default: {default}"
    if shown:
        text += f" ({shown})"
    return text.replace("%", "%%")


def add_sections(parser: argparse.ArgumentParser, secs: Iterable[Section]) -> None:
    """A group of flags for each section."""
    for section in secs:
        add_section(parser, section)


def add_section(parser: argparse.ArgumentParser, section: Section) -> None:
    """Add a flag for every setting field of ``section.cls``."""
    hints = typing.get_type_hints(section.cls)
    old_names: dict[str, list[str]] = {}
    for old, new in renamed_fields(section.cls).items():
        old_names.setdefault(new, []).append(section.flag(old))
    target = parser.add_argument_group(section.title or section.cls.__name__)
    for f in section.fields():
        flags = [section.flag(f.name), *section.aliases.get(f.name, ()),
                 *old_names.get(f.name, ())]
        flags = list(dict.fromkeys(flags))
        default = section.base.get(f.name, _default(f))
        convert, metavar, choices = _parser_for(hints[f.name], f.name)
        choices = tuple(f.metadata.get("choices", ())) or choices
        metavar = None if choices else metavar
        kw: dict[str, Any] = {"dest": section.dest(f.name), "help": _help(f, default, choices),
                              "default": argparse.SUPPRESS}
        if convert is None:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw.update(type=convert, metavar=f.metadata.get("metavar", metavar), choices=choices)
        if default is dataclasses.MISSING:
            kw["required"] = True
        target.add_argument(*flags, **kw)


def add_switch(parser: Any, flag: str, section: Section, name: str, value: Any,
               help: str) -> None:
    """An extra flag that sets one field to a fixed value (e.g. --quiet sets progress off)."""
    parser.add_argument(flag, dest=section.dest(name), action="store_const", const=value,
                        default=argparse.SUPPRESS, help=help)


def given(args: argparse.Namespace, section: Section) -> dict[str, Any]:
    """The fields of ``section`` whose flags were given: {field name: value}."""
    prefix = section.dest("")
    return {k[len(prefix):]: v for k, v in vars(args).items()
            if k.startswith(prefix) and "." not in k[len(prefix):]}


def build(args: argparse.Namespace, sections: Iterable[Section],
          extra: Mapping[str, Any] | None = None) -> Any:
    """Build the root config (the first section) with its nested ones from the given flags.

    ``extra`` holds root fields set by the command itself (a positional argument, say).
    A ValueError of a config becomes a UserInputError naming the flag."""
    sections = list(sections)
    root = sections[0]
    nested = sorted((s for s in sections if s.path), key=lambda s: -len(s.path))
    built = {s.path: {**s.base, **given(args, s)} for s in sections}
    built[()].update(extra or {})
    for s in nested:  # deepest first, so a parent receives built children
        parent = built.setdefault(s.path[:-1], {})
        parent[s.path[-1]] = _construct(s, built[s.path])
    return _construct(root, built[()])


def _construct(section: Section, values: dict[str, Any]) -> Any:
    try:
        return section.cls(**values)
    except ValueError as exc:
        raise UserInputError(name_the_flag(str(exc), section)) from None


def name_the_flag(message: str, section: Section) -> str:
    """Put the flag in front of a config's message that names a field in its first words
    ("lr must be > 0", "unknown loss_type 'x'")."""
    if message.startswith("--"):
        return message
    names = {f.name for f in dataclasses.fields(section.cls)}
    for word in message.split()[:3]:
        word = word.strip(":,;'\"()")
        if word in names:
            return f"{section.flag(word)}: {message}"
    if not section.prefix:
        return message
    return f"bad {section.prefix.rstrip('-')} setting: {message}"
