"""The command line of a job: refuse options nobody declared, and a ``--help`` made from the options.

Beam's own parser keeps what it knows and drops the rest with a log line ("Discarding
unparseable args"), so ``--braze_max_attemps=3`` used to run the job with the default. Here an
option is known when a Beam ``PipelineOptions`` subclass declares it (``--runner``,
``--project``, ``--region``, ``--temp_location``, ``--sdk_container_image``, ``--streaming``,
``--experiments``, ...) or when one of the job's own option classes does; anything else is
refused with the closest known name.

- ``check_argv(argv, option_sets)``: the problems with a command line (unknown options with a
  suggestion, stray words, values argparse rejects), empty when it is fine.
- ``help_text(prog, description, option_sets, required=...)``: every option of the job with its
  default, or marked required, grouped as its class groups them.
- ``usable_argv(argv, option_sets, prog)``: what an entry point calls before building its job;
  prints the problems and returns False when the job must not start.

An option set is an options class, or ``(options class, names)`` for the part of a class a job
uses (the cohort job shares five options of ``StreamOptions``).

Flex templates pass every parameter as ``--name=value`` text; both that and ``--name value``
are read exactly as Beam reads them, since the same argparse rules apply.
"""
from __future__ import annotations

import argparse
import difflib
import os
import sys
import textwrap
from typing import Iterable, List, Mapping, Optional, Sequence, Tuple, Type, Union

from apache_beam.options import pipeline_options as beam_options

__all__ = ["OptionSet", "UNKNOWN_OPTIONS_ENV", "check_argv", "help_text", "usable_argv"]

OptionSet = Union[Type[beam_options.PipelineOptions], Tuple[Type[beam_options.PipelineOptions], Iterable[str]]]

# Safety valve for a launcher that passes an option Beam does not declare (none is known; the
# flex-template launcher's exact argument list is not documented): with this set to "warn" in
# the job's environment, unknown options are logged to stderr and the job starts anyway.
UNKNOWN_OPTIONS_ENV = "AMPLITUDE_BRAZE_UNKNOWN_OPTIONS"

_WIDTH = 100


class _Refused(Exception):
    """argparse's error, raised instead of exiting so every caller can report it its own way."""


class _CheckingParser(beam_options._BeamArgumentParser):  # noqa: SLF001
    # Beam's parser class (private in 2.77): some Beam options classes call its
    # add_value_provider_argument, and its rules (no abbreviations, "ambiguous option" ignored)
    # are the ones the job's arguments will meet.
    def error(self, message):
        if message.startswith("ambiguous option: "):
            return  # as Beam does: the argument is then simply unknown
        raise _Refused(message)


class _Subset:
    """Stands in for a parser while an options class declares its arguments, keeping only ``names``."""

    def __init__(self, target, names):
        self._target = target
        self._names = names

    def add_argument_group(self, *args, **kwargs):
        return _Subset(self._target.add_argument_group(*args, **kwargs), self._names)

    def add_argument(self, *args, **kwargs):
        if any(a.lstrip("-") in self._names for a in args):
            return self._target.add_argument(*args, **kwargs)
        return None

    def add_value_provider_argument(self, *args, **kwargs):
        if any(a.lstrip("-") in self._names for a in args):
            return self._target.add_value_provider_argument(*args, **kwargs)
        return None


def _declare(parser, option_sets: Sequence[OptionSet]) -> None:
    for entry in option_sets:
        if isinstance(entry, tuple):
            cls, names = entry
            cls._add_argparse_args(_Subset(parser, frozenset(names)))  # noqa: SLF001
        else:
            entry._add_argparse_args(parser)  # noqa: SLF001


def _beam_classes() -> List[type]:
    """Beam's own options classes, found as Beam finds options: the direct subclasses of
    ``PipelineOptions`` (``get_all_options``), here only those Beam defines, so the answer
    does not depend on which of our modules happen to be imported."""
    seen = {}
    for cls in beam_options.PipelineOptions.__subclasses__():
        if cls.__module__.startswith("apache_beam."):
            seen.setdefault(str(cls), cls)
    return list(seen.values())


def _option_names(parser) -> List[str]:
    return [s for action in parser._actions for s in action.option_strings if s.startswith("--")]  # noqa: SLF001


def check_argv(argv: Sequence[str], option_sets: Sequence[OptionSet]) -> List[str]:
    """Problems with ``argv`` for a job whose own options are ``option_sets``; [] when none.

    Each problem says what to change: ``unknown option --braze_max_attemps (did you mean
    --braze_max_attempts?)``, ``unexpected argument 'syncs.yaml' ...``, or argparse's own words
    for a value it rejects (``argument --braze_max_attempts: invalid int value: 'six'``).
    """
    ours = _CheckingParser(allow_abbrev=False, add_help=False)
    _declare(ours, option_sets)
    parser = _CheckingParser(allow_abbrev=False, add_help=False)
    _declare(parser, option_sets)
    for cls in _beam_classes():
        cls._add_argparse_args(parser)  # noqa: SLF001
    try:
        _, unknown = parser.parse_known_args(list(argv))
    except _Refused as e:
        return [str(e)]
    except Exception as e:  # noqa: BLE001 - some of Beam's actions raise their own errors on a bad value
        return [f"the options could not be read ({type(e).__name__}: {e}); check the values given"]
    return _unknown_problems(unknown, _option_names(ours), _option_names(parser))


def _unknown_problems(unknown: List[str], ours: List[str], known: List[str]) -> List[str]:
    problems = []
    i = 0
    while i < len(unknown):
        token = unknown[i]
        if token == "--":
            rest = " ".join(unknown[i + 1:])
            problems.append(f"unexpected arguments after '--': {rest!r}; options are written --name=value")
            break
        if token.startswith("-"):
            name, has_value, _ = token.partition("=")
            problems.append(f"unknown option {name}{_suggestion(name, ours, known)}")
            # "--unknown value": the next word is its value, not a stray argument.
            if not has_value and i + 1 < len(unknown) and not unknown[i + 1].startswith("-"):
                i += 1
        else:
            problems.append(f"unexpected argument {token!r}; options are written --name=value")
        i += 1
    return problems


def _suggestion(name: str, ours: List[str], known: List[str]) -> str:
    spelled = "--" + name.lstrip("-").replace("-", "_")
    if spelled in known:
        return f" (did you mean {spelled}? options are written with '_')"
    # An abbreviation (Beam accepts none), then near misses, the job's own options first: a
    # mistake in one of them is the likelier one.
    longer = [name for name in ours if name.startswith(spelled)] if len(spelled) >= 6 else []
    if len(longer) == 1:
        return f" (did you mean {longer[0]}?)"
    for candidates in (ours, known):
        close = difflib.get_close_matches(spelled, candidates, n=1, cutoff=0.75)
        if close:
            return f" (did you mean {close[0]}?)"
    return ""


def usable_argv(argv: Sequence[str], option_sets: Sequence[OptionSet], prog: str, err=None) -> bool:
    """True when the job may start: no problem with ``argv``, or only unknown options while
    ``AMPLITUDE_BRAZE_UNKNOWN_OPTIONS=warn`` (then they are printed as warnings). Otherwise the
    problems go to ``err`` (stderr) with a pointer to ``--help``, and the caller exits 2."""
    err = err if err is not None else sys.stderr
    problems = check_argv(argv, option_sets)
    if not problems:
        return True
    if os.environ.get(UNKNOWN_OPTIONS_ENV, "").strip().lower() == "warn" and all(
            p.startswith(("unknown option ", "unexpected argument")) for p in problems):
        for p in problems:
            print(f"{prog}: warning: {p}; ignored because {UNKNOWN_OPTIONS_ENV}=warn", file=err)
        return True
    for p in problems:
        print(f"{prog}: {p}", file=err)
    print(f"{prog}: the job was not started; `{prog} --help` lists its options", file=err)
    return False


# --------------------------------------------------------------------------------------------
# --help


def help_text(prog: str, description: str, option_sets: Sequence[OptionSet],
              required: Union[Iterable[str], Mapping[str, str]] = (), usage: Optional[str] = None) -> str:
    """The job's ``--help``: each option as ``--name=VALUE``, then ``required`` or its default,
    then its help text, under its group's title.

    ``required`` names the options the job cannot start without; a mapping gives the words to
    show instead of "required" (``{"snapshot": "required unless --input_subscription"}``).
    """
    marks = dict(required) if isinstance(required, Mapping) else {name: "required" for name in required}
    parser = argparse.ArgumentParser(add_help=False)
    _declare(parser, option_sets)
    if usage is None:
        needed = " ".join(f"--{name}=..." for name in marks if marks[name] == "required")
        usage = f"{prog} {needed} [options] [Beam options]".replace("  ", " ")
    lines = [f"usage: {usage}", ""]
    lines += textwrap.wrap(description, _WIDTH)
    for group in parser._action_groups:  # noqa: SLF001 - argparse keeps groups only here
        actions = [a for a in group._group_actions if a.option_strings]  # noqa: SLF001
        if not actions:
            continue
        lines += ["", f"{group.title}:"]
        for action in actions:
            lines.append(f"  {_invocation(action)}")
            mark = marks.get(action.dest) or f"default: {_default_text(action.default)}"
            lines += textwrap.wrap(f"[{mark}] {action.help or ''}".rstrip(), _WIDTH,
                                   initial_indent=" " * 6, subsequent_indent=" " * 6)
    lines += [""] + textwrap.wrap(
        "Booleans take --name, --name=true or --name=false (flex templates pass text). Beam's own options "
        "(--runner, --project, --region, --temp_location, --sdk_container_image, --streaming, --experiments, "
        "...) are accepted as well; any other option is refused, with the closest known name.", _WIDTH)
    return "\n".join(lines) + "\n"


def _invocation(action: argparse.Action) -> str:
    name = action.option_strings[-1]
    if action.choices:
        return f"{name}={{{'|'.join(str(c) for c in action.choices)}}}"
    if action.nargs == "?" and action.const is True:
        return f"{name}[=true|false]"
    if action.nargs == 0:
        return name
    kind = {int: "INT", float: "NUMBER"}.get(action.type, "TEXT")
    return f"{name}={action.metavar or kind}"


def _default_text(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if value == "":
        return "empty"
    return str(value)
