"""``python -m pipeline.validate FILE``: check a syncs or cohorts file without starting a job.

    python -m pipeline.validate templates/env/syncs.prod.yaml
    python -m pipeline.validate cohorts.yaml --kind cohorts --resolve-keys

It runs the loaders the jobs run (``pipeline.config`` for a syncs file,
``pipeline.cohort_config`` for a cohorts file), so it reports exactly what a launch would
refuse, every problem at once with its path, and it never contacts Braze or Pub/Sub.

- The kind of file is read from its top-level keys (``syncs`` or ``cohort_syncs``/``targets``,
  or the closest misspelling of them), or given with ``--kind``.
- ``--resolve-keys`` reads every key reference (``env:NAME`` from this environment, Secret
  Manager versions with this machine's credentials) and says which cannot be read and why. It
  never prints a key.
- ``--for-dataflow`` warns about each ``env:`` reference: Dataflow's workers have no such
  variable, so every object of that sync would be dead-lettered as ``api_key_unavailable``. It
  is on by itself for a file in ``templates/env/`` or named as ``syncs_file`` by an env file
  there (``--no-for-dataflow`` turns it off). ``env_reference_warnings(config)`` is the same
  check for other tools (``templates.deploy check``).

Exit code: 0 when the file is valid (warnings alone do not fail it, unless ``--strict``), 2
when it has problems, a key cannot be read, or the command line is wrong.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import glob
import json
import os
import sys
from typing import Callable, List, Optional, Sequence, Tuple, Union

from pipeline.cohort_config import CohortConfig, loads_cohorts
from pipeline.config import ConfigError, Sync, loads_syncs, require_enabled_syncs
from pipeline.config_documents import decode_document, format_for_name, read_bytes
from pipeline.config_validation import ROOT as DOCUMENT
from transforms.secrets import ENV_PREFIX, SecretError, resolve_api_key

__all__ = ["KINDS", "KeyReference", "detect_kind", "env_reference_warnings", "is_for_dataflow",
           "key_references", "main", "read_keys"]

PROG = "python -m pipeline.validate"
KINDS = ("syncs", "cohorts")
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV_DIR = os.path.join(REPOSITORY, "templates", "env")

# Top-level keys that say what a document is (the cohorts file's single-key form starts with
# target keys, but it still needs cohort_syncs).
_KIND_KEYS = {"syncs": ("syncs",), "cohorts": ("cohort_syncs", "targets")}

Config = Union[Tuple[Sync, ...], CohortConfig]


@dataclasses.dataclass(frozen=True)
class KeyReference:
    path: str  # where the file holds it, as problems name paths: syncs[0].api_key
    reference: str  # env:NAME or projects/P/secrets/S/versions/V, never a key
    owner: str  # what uses it, for messages: "sync 'us-prod'", "target 'US Production'"


# --------------------------------------------------------------------------------------------
# Pure pieces


def detect_kind(document) -> Optional[str]:
    """``"syncs"`` or ``"cohorts"`` from a document's top-level keys, or None when it cannot tell.

    Exact keys first; then near misses (``sycns:``), so a misspelt key is reported by the right
    loader ("did you mean 'syncs'?") instead of "cannot tell".
    """
    if not isinstance(document, dict):
        return None
    keys = [k for k in document if isinstance(k, str)]
    for cutoff in (1.0, 0.75):
        found = {kind for kind, names in _KIND_KEYS.items()
                 for key in keys if difflib.get_close_matches(key, names, n=1, cutoff=cutoff)}
        if len(found) == 1:
            return found.pop()
        if found:
            return None  # keys of both kinds
    return None


def key_references(config: Config) -> List[KeyReference]:
    """Every key reference in a loaded syncs (tuple of ``Sync``) or cohorts (``CohortConfig``)
    file, in file order, with the path it has in the file."""
    if isinstance(config, CohortConfig):
        found = []
        for i, target in enumerate(config.targets):
            base = "" if config.legacy else f"targets[{i}]."
            owner = f"target {target.name!r}"
            for field in ("api_key", "partner_api_key", "lookup_api_key"):
                reference = getattr(target, field)
                if reference:
                    found.append(KeyReference(f"{base}{field}", reference, owner))
        if config.email is not None and config.email.password:
            found.append(KeyReference("notifications.email.password", config.email.password, "the email notifications"))
        return found
    return [KeyReference(f"syncs[{i}].api_key", sync.api_key, f"sync {sync.name!r}") for i, sync in enumerate(config)]


def env_reference_warnings(config: Config) -> List[str]:
    """One warning per ``env:`` reference in a file meant for Dataflow, saying what would happen.

    ``config`` is what ``load_syncs`` or ``load_cohorts`` returned. Dataflow's workers (and the
    flex-template launcher) run with the image's environment only, so ``env:NAME`` cannot be read
    there: the syncs job dead-letters every object of that sync as ``api_key_unavailable``.
    """
    syncs_file = not isinstance(config, CohortConfig)
    consequence = ("every object of {owner} would be dead-lettered as api_key_unavailable" if syncs_file
                   else "{owner} could not use it")
    return [
        f"{ref.path}: {ref.reference} is read from the environment, and Dataflow's workers do not have "
        f"{ref.reference[len(ENV_PREFIX):]}: " + consequence.format(owner=ref.owner)
        + "; use a Secret Manager reference, projects/P/secrets/S/versions/V"
        for ref in key_references(config) if ref.reference.startswith(ENV_PREFIX)
    ]


def read_keys(references: Sequence[KeyReference],
              resolve: Callable[[str], str] = resolve_api_key) -> List[Tuple[KeyReference, Optional[str]]]:
    """``(reference, None)`` for each key that can be read, ``(reference, why not)`` for the others.

    Each distinct reference is read once. The key itself is dropped at once: it is never
    returned, and no message here can hold it (only failures, before a key exists, are described).
    """
    outcome = {}
    for ref in references:
        if ref.reference in outcome:
            continue
        try:
            resolve(ref.reference)
            outcome[ref.reference] = None
        except SecretError as e:
            outcome[ref.reference] = str(e)
        except Exception as e:  # noqa: BLE001 - e.g. no Google credentials on this machine
            outcome[ref.reference] = f"{type(e).__name__}: {e}"
    return [(ref, outcome[ref.reference]) for ref in references]


def is_for_dataflow(path: str, env_dir: str = ENV_DIR) -> bool:
    """Whether ``path`` is a file deployed to Dataflow: it lies in ``templates/env/``, or an env
    file there names it as its ``syncs_file`` (a path in the repository)."""
    if "://" in path:
        return False
    real = os.path.realpath(path)
    if os.path.dirname(real) == os.path.realpath(env_dir):
        return True
    repository = os.path.dirname(os.path.dirname(os.path.realpath(env_dir)))
    for env_file in glob.glob(os.path.join(env_dir, "*.json")):
        try:
            with open(env_file, encoding="utf-8") as f:
                named = json.load(f).get("syncs_file")
        except (OSError, ValueError, AttributeError):
            continue  # templates.deploy check reports a broken env file
        if isinstance(named, str) and os.path.realpath(os.path.join(repository, named)) == real:
            return True
    return False


# --------------------------------------------------------------------------------------------
# The command


@dataclasses.dataclass
class Result:
    kind: Optional[str] = None
    summary: str = ""
    problems: List[str] = dataclasses.field(default_factory=list)  # "path: what is wrong", as the loaders say
    warnings: List[str] = dataclasses.field(default_factory=list)
    keys: List[Tuple[KeyReference, Optional[str]]] = dataclasses.field(default_factory=list)


def check_file(path: str, kind: Optional[str] = None, *, allow_insecure_endpoints: bool = False,
               for_dataflow: bool = False, resolve_keys: bool = False) -> Result:
    """Everything ``main`` prints, as data."""
    result = Result(kind=kind)
    try:
        data = read_bytes(path)
        if kind is None:
            document, _ = decode_document(data, path, format_for_name(path), "a syncs or cohorts file")
            kind = result.kind = detect_kind(document)
            if kind is None:
                raise ConfigError(path, [
                    f"{DOCUMENT}: cannot tell a syncs file (a 'syncs' list) from a cohorts file "
                    f"('cohort_syncs'); pass --kind syncs or --kind cohorts"])
        config = _load(kind, data, path, allow_insecure_endpoints)
    except ConfigError as e:
        result.problems = list(e.problems)
        return result
    result.summary = _summary(config)
    if for_dataflow:
        result.warnings += env_reference_warnings(config)
    if resolve_keys:
        result.keys = read_keys(key_references(config))
    return result


def _load(kind: str, data: bytes, path: str, allow_insecure: bool) -> Config:
    fmt = format_for_name(path)
    if kind == "cohorts":
        return loads_cohorts(data, source=path, format=fmt, allow_insecure_endpoints=allow_insecure)
    syncs = loads_syncs(data, source=path, format=fmt, allow_insecure_endpoints=allow_insecure)
    require_enabled_syncs(syncs, path)  # the streaming job refuses such a file too (pipeline.stream)
    return syncs


def _summary(config: Config) -> str:
    if isinstance(config, CohortConfig):
        targets = ", ".join(t.name for t in config.targets)
        return (f"a cohorts file: {len(config.targets)} target(s) ({targets}), "
                f"{len(config.syncs)} cohort sync(s) ({', '.join(s.name for s in config.syncs)})")
    names = ", ".join(s.name + ("" if s.enabled else " (disabled)") for s in config)
    return f"a syncs file: {len(config)} sync(s) ({names})"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, allow_abbrev=False, description="Check a syncs or cohorts file as the jobs would, without starting one: every "
        "problem at once, with its path. Exit code 0 when valid, 2 when not.")
    parser.add_argument("file", metavar="FILE", help="the syncs or cohorts file: a local path or gs:// URI")
    parser.add_argument("--kind", choices=KINDS, help="what FILE is (default: read from its top-level keys)")
    parser.add_argument("--resolve-keys", action="store_true",
                        help="also read every key reference (env:NAME here, Secret Manager with your "
                        "credentials) and report those that cannot be read; keys are never printed")
    parser.add_argument("--for-dataflow", action=argparse.BooleanOptionalAction, default=None,
                        help="warn about env: references, which Dataflow workers cannot read (default: on "
                        "for files in templates/env/ or named by an env file there)")
    parser.add_argument("--allow-insecure-endpoints", "--allow_insecure_endpoints", action="store_true",
                        help="accept endpoints that are not Braze REST hosts (the local simulator), as "
                        "the job's option of that name does")
    parser.add_argument("--strict", action="store_true", help="treat warnings as problems (exit 2)")
    return parser


def main(argv: Optional[Sequence[str]] = None, out=None) -> int:
    out = out if out is not None else sys.stdout
    args = _parser().parse_args(argv)  # a usage error exits 2, as argparse does
    for_dataflow = args.for_dataflow if args.for_dataflow is not None else is_for_dataflow(args.file)
    result = check_file(args.file, args.kind, allow_insecure_endpoints=args.allow_insecure_endpoints,
                        for_dataflow=for_dataflow, resolve_keys=args.resolve_keys)
    say = lambda text="": print(text, file=out)  # noqa: E731
    if result.problems:
        kind = f" in this {result.kind} file" if result.kind else ""
        say(f"{args.file}: {len(result.problems)} problem(s){kind}:")
        for problem in result.problems:
            say(f"  {problem}")
        return 2
    say(f"{args.file}: ok, {result.summary}")
    if for_dataflow and not result.warnings:
        say("for Dataflow: no env: reference (every key is read from Secret Manager)")
    for warning in result.warnings:
        say(f"warning: {warning}")
    unreadable = [(ref, why) for ref, why in result.keys if why is not None]
    if args.resolve_keys:
        say(f"keys: {len(result.keys) - len(unreadable)} of {len(result.keys)} readable")
        for ref, why in result.keys:
            say(f"  {ref.path}: {ref.reference}: " + ("readable" if why is None else f"cannot be read: {why}"))
    if unreadable or (args.strict and result.warnings):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
