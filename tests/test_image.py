"""The one image (templates/Dockerfile) and the lock it shares with ``make install``.

No Docker engine here, so the image is not built. What is checked instead: the Dockerfile's
rules (Beam's boot and Google's launcher in one image, the same Beam everywhere, no setup or
requirements file for the launcher, hash-checked installs then ``pip check``), the lock
(fully pinned, hashed, the exact closure of setup.py, the versions this venv runs), and, in
the slow test, the Dockerfile's own install steps run into a fresh virtualenv outside the
repository, which then builds the streaming job's graph and runs it over a few events into
the Braze simulator.
"""
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from typing import Dict, List, NamedTuple, Tuple

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRYPOINTS = {"stream": "/template/entrypoints/stream.py", "cohorts": "/template/entrypoints/cohorts.py"}


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


# --- the Dockerfile, parsed


class Instruction(NamedTuple):
    stage: str  # "" before the first FROM
    keyword: str
    args: str


def dockerfile() -> List[Instruction]:
    """Instructions with continuation lines joined and comments dropped, each with its stage."""
    text = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", read("templates/Dockerfile"))
    instructions, stage = [], ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        args = " ".join(args.split())
        if keyword == "FROM":
            stage = args.split(" AS ")[-1] if " AS " in args else args
        instructions.append(Instruction(stage, keyword, args))
    return instructions


def args_of(keyword, stage=None) -> List[str]:
    return [i.args for i in dockerfile() if i.keyword == keyword and (stage is None or i.stage == stage)]


def global_args() -> Dict[str, str]:
    return dict(a.split("=", 1) for a in args_of("ARG", ""))


def stage_env(stage) -> Dict[str, str]:
    return dict(a.split("=", 1) for a in args_of("ENV", stage))


def test_one_image_holds_beam_boot_and_the_template_launcher():
    froms = args_of("FROM")
    assert froms[:3] == ["${BEAM_SDK_IMAGE} AS beam_sdk", "${LAUNCHER_IMAGE} AS launcher",
                         "python:${PYTHON_VERSION}-slim AS job"]
    copies = args_of("COPY", "job")
    assert "--from=beam_sdk /opt/apache/beam /opt/apache/beam" in copies
    assert ("--from=launcher /opt/google/dataflow/python_template_launcher "
            "/opt/google/dataflow/python_template_launcher") in copies
    assert global_args()["BEAM_SDK_IMAGE"] == "apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION}"
    assert global_args()["LAUNCHER_IMAGE"].startswith(
        "gcr.io/dataflow-templates-base/python311-template-launcher-base:")
    # Beam's boot starts the workers' SDK harness; it is the image's entry point.
    assert args_of("ENTRYPOINT", "job") == ['["/opt/apache/beam/boot"]']


def test_each_job_has_a_target_on_the_same_layers_and_stream_is_the_default():
    froms = args_of("FROM")
    assert froms[3:] == ["job AS cohorts", "job AS stream"], "the last stage is what a plain docker build makes"
    for job, path in ENTRYPOINTS.items():
        assert stage_env(job) == {"FLEX_TEMPLATE_PYTHON_PY_FILE": path}
        assert [i.keyword for i in dockerfile() if i.stage == job] == ["FROM", "ENV"], \
            f"the {job} target adds nothing but its entry point"


def test_the_launcher_gets_no_setup_or_requirements_file():
    # The launcher would turn them into --setup_file / --requirements_file: every worker would
    # then pip-install at start-up.
    instructions = " ".join(f"{i.keyword} {i.args}" for i in dockerfile())  # comments left out
    used = set(re.findall(r"FLEX_TEMPLATE_PYTHON_\w+", instructions))
    assert used == {"FLEX_TEMPLATE_PYTHON_PY_FILE"}, used
    assert not re.search(r"--(setup_file|requirements_file|extra_packages?)\b", instructions)


def test_the_image_installs_the_lock_with_hashes_then_the_package_then_checks():
    runs = args_of("RUN", "job")
    assert len(runs) == 2
    lock, package = runs
    assert "--require-hashes" in lock and "--only-binary :all:" in lock and lock.endswith("-r requirements.txt")
    assert "--no-deps" in package and "--no-build-isolation ." in package
    assert "&& pip check" in package
    copies = args_of("COPY", "job")
    assert copies.index("requirements.txt /template/requirements.txt") < copies.index("setup.py /template/setup.py"), \
        "the lock's layer comes first, so a code change does not reinstall every package"


def test_every_path_the_dockerfile_copies_exists_and_the_entry_points_are_copied():
    copied = {}
    for args in args_of("COPY", "job"):
        if args.startswith("--from="):
            continue
        source, target = args.split()
        assert os.path.exists(os.path.join(ROOT, source)), f"COPY {source}: not in the repository"
        copied[target.rstrip("/")] = source
    for path in ENTRYPOINTS.values():
        (target,) = [t for t in copied if path.startswith(t + "/")]
        assert os.path.isfile(os.path.join(ROOT, copied[target] + path[len(target):])), path
    for package in ("pipeline", "transforms"):
        assert copied[f"/template/{package}"] == package


def _lock(path) -> Dict[str, Tuple[str, List[str]]]:
    """name → (version, hashes) of a uv/pip-compile lock file."""
    text = read(path).replace("\\\n", " ")
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = line.split()
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", requirement)
        assert match, f"{path}: {requirement!r} is not pinned with =="
        hashes = [o[len("--hash="):] for o in options if o.startswith("--hash=sha256:")]
        assert hashes and len(hashes) == len(options), f"{path}: {requirement} needs --hash=sha256:... only"
        pins[canonicalize_name(match[1])] = (match[2], hashes)
    return pins


def test_beam_is_the_same_in_setup_py_the_lock_the_venv_and_the_image():
    import apache_beam

    image = global_args()["BEAM_VERSION"]
    setup_beam = Requirement(re.search(r'^BEAM = "([^"]+)"', read("setup.py"), re.M)[1])
    assert setup_beam.specifier.contains(image), f"Dockerfile Beam {image} is outside setup.py's {setup_beam}"
    assert _lock("requirements.txt")["apache-beam"][0] == image
    assert apache_beam.__version__ == image, "the venv runs another Beam than the image: make install"
    assert global_args()["PYTHON_VERSION"] == "3.11" and "--python-version 3.11" in read("Makefile")


# --- the lock


def test_the_lock_pins_every_package_with_hashes():
    runtime, dev = _lock("requirements.txt"), _lock("requirements-dev.txt")
    assert "setuptools" in runtime, "the image builds the package with the lock's setuptools"
    for name, (version, _) in runtime.items():
        assert dev.get(name, (None,))[0] == version, f"{name}: requirements-dev.txt must pin what requirements.txt pins"


def _closure(roots: List[Requirement]) -> Dict[str, str]:
    """name → installed version of every distribution ``roots`` need on this machine, transitively
    (markers evaluated here: the lock is resolved for the same Python 3.11 on Linux x86_64)."""
    environment = default_environment()
    needed, visited, todo = {}, set(), list(roots)
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if (name, frozenset(requirement.extras)) in visited:
            continue
        visited.add((name, frozenset(requirement.extras)))
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{requirement} is needed but not installed: run make lock, then make install")
        assert requirement.specifier.contains(version, prereleases=True), f"{name} {version} breaks {requirement}"
        needed[name] = version
        for text in importlib.metadata.requires(name) or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate(dict(environment, extra=e))
                                         for e in ("", *requirement.extras)):
                todo.append(sub)
    return needed


def _setup_requirements(*extras):
    return [Requirement(f"amplitude-braze[{','.join(extras)}]" if extras else "amplitude-braze"),
            Requirement("setuptools")]


@pytest.mark.parametrize("path, extras", [("requirements.txt", ()), ("requirements-dev.txt", ("test", "bench"))])
def test_the_lock_is_exactly_what_setup_py_needs_and_what_this_venv_runs(path, extras):
    pins = {n: v for n, (v, _) in _lock(path).items()}
    needed = _closure(_setup_requirements(*extras))
    needed.pop("amplitude-braze")
    missing, extra = set(needed) - set(pins), set(pins) - set(needed)
    assert not missing and not extra, (
        f"{path} is stale: missing {sorted(missing)}, not needed {sorted(extra)}: run make lock")
    drift = {n: (pins[n], v) for n, v in needed.items() if pins[n] != v}
    assert not drift, f"this venv runs other versions than {path} (lock, installed): {drift}: run make install"


# --- the entry points, and the slow install from the lock


@pytest.mark.parametrize("job", sorted(ENTRYPOINTS))
def test_entry_points_run_as_scripts_from_anywhere(job):
    # The launcher runs FLEX_TEMPLATE_PYTHON_PY_FILE as `python FILE --name=value ...`, from
    # another directory, with the package installed.
    done = subprocess.run([sys.executable, os.path.join(ROOT, "templates", "entrypoints", f"{job}.py"), "--help"],
                          capture_output=True, text=True, timeout=120, cwd="/")
    assert done.returncode == 0, done.stderr
    assert f"python -m pipeline.{job}" in done.stdout


def test_the_stream_entry_point_asks_for_dataflow_unless_a_runner_is_given():
    import runpy

    entry = runpy.run_path(os.path.join(ROOT, "templates", "entrypoints", "stream.py"), run_name="entrypoint")
    assert entry["launcher_argv"](["--sync_config=gs://b/s.yaml"]) == ["--sync_config=gs://b/s.yaml",
                                                                      "--runner=DataflowRunner"]
    assert entry["launcher_argv"](["--runner=DirectRunner"]) == ["--runner=DirectRunner"]
    assert entry["launcher_argv"](["--runner", "DataflowRunner"]) == ["--runner", "DataflowRunner"]


RUN_IN_FRESH_VENV = textwrap.dedent("""
    import json, os, sys
    import apache_beam as beam
    import orjson
    from apache_beam.options.pipeline_options import PipelineOptions
    import pipeline, transforms
    from pipeline.config import load_syncs
    from pipeline.graph import EventsToBraze
    from pipeline.local_runner import without_fnapi_state_cache
    from pipeline.stream import build_pipeline

    syncs_path, events_path = sys.argv[1:3]
    # The streaming job's whole graph, as the launcher builds it (not run: it reads Pub/Sub).
    graph = build_pipeline(PipelineOptions([
        "--input_subscription=projects/local-project/subscriptions/events",
        "--dead_letter_topic=projects/local-project/topics/dead-letters",
        f"--sync_config={syncs_path}", "--allow_insecure_endpoints"]))
    steps = sorted(t.unique_name for t in graph.to_runner_api().components.transforms.values())
    # Its stages over a few events on the FnApiRunner, into the Braze simulator.
    without_fnapi_state_cache()
    with open(events_path, "rb") as f:
        messages = [line.rstrip(b"\\n") for line in f]
    with beam.Pipeline(options=PipelineOptions([], runner="FnApiRunner")) as p:
        out = p | beam.Create(messages) | EventsToBraze(load_syncs(syncs_path, allow_insecure_endpoints=True),
                                                        max_batch_wait_seconds=0.5)
    print(json.dumps({"modules": [pipeline.__file__, transforms.__file__, beam.__file__], "steps": steps}))
""")


def _graph_steps(syncs_path):
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.stream import build_pipeline

    graph = build_pipeline(PipelineOptions([
        "--input_subscription=projects/local-project/subscriptions/events",
        "--dead_letter_topic=projects/local-project/topics/dead-letters",
        f"--sync_config={syncs_path}", "--allow_insecure_endpoints"]))
    return sorted(t.unique_name for t in graph.to_runner_api().components.transforms.values())


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(900)
def test_the_lock_installs_into_a_fresh_venv_that_runs_the_job(tmp_path, braze_sim):
    # What the image's build does, outside the repository: copy what the Dockerfile copies,
    # run its RUN steps (minus --no-cache-dir, which only keeps the image small) with a fresh
    # venv's pip and python first on PATH, in its WORKDIR.
    template = tmp_path / "template"
    template.mkdir()
    for args in args_of("COPY", "job"):
        if args.startswith("--from="):
            continue
        source, target = args.split()
        destination = template / os.path.relpath(target, "/template")
        if os.path.isdir(os.path.join(ROOT, source)):
            shutil.copytree(os.path.join(ROOT, source), destination,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(os.path.join(ROOT, source), destination)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    for run in args_of("RUN", "job"):
        done = subprocess.run(["bash", "-c", run.replace("--no-cache-dir ", "")], cwd=template, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"RUN {run}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "No broken requirements found" in done.stdout  # pip check, the last step

    syncs = tmp_path / "syncs.yaml"
    syncs.write_text(json.dumps({"syncs": [{
        "name": "fresh", "endpoint": braze_sim.url, "api_key": "env:FRESH_VENV_BRAZE_KEY",
        "users": {"properties": ["plan"]}, "events": {"select": [{"event_type": "Order Completed"}]}}]}))
    users = [f"user-{n:05d}" for n in range(5)]
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(json.dumps({
        "event_type": "Order Completed", "user_id": user, "time": 1_700_000_000_000 + i,
        "insert_id": f"ins-{i}", "user_properties": {"plan": "pro"}}).encode() + b"\n"
        for i, user in enumerate(users * 2)))
    script = tmp_path / "run_job.py"
    script.write_text(RUN_IN_FRESH_VENV)
    done = subprocess.run([str(venv / "bin" / "python"), str(script), str(syncs), str(events)], cwd=tmp_path,
                          env=dict(env, FRESH_VENV_BRAZE_KEY=braze_sim.api_key), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-5000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    site_packages = str(venv / "lib")
    assert all(m.startswith(site_packages) for m in report["modules"]), report["modules"]
    assert report["steps"] == _graph_steps(str(syncs)), "the installed package builds another graph than the repository"

    from local.braze_sim import SimClient

    held = {u["external_id"]: u for u in SimClient(braze_sim.url).users()}
    assert sorted(held) == users
    for user in users:
        assert held[user]["attributes"] == {"plan": "pro"}
        assert [e["name"] for e in held[user]["events"]] == ["Order Completed", "Order Completed"]
