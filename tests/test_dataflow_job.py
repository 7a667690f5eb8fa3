"""The Dataflow job the streaming template would submit, built offline, read as Dataflow would.

``pipeline.stream.build_pipeline`` runs through the real DataflowRunner with the dev
environment's template parameters (templates/env/dev.json), and the job it would create is
checked: streaming on Runner v2 and Streaming Engine, the workers on our image with nothing to
install, the parameters carried as pipeline options, every stateful step with a deterministic,
non-pickle key coder. Replaced, because they need Google Cloud: the Dataflow API call that
submits the job and the one that finds the running job for ``--update``
(``templates/job_request.py``). Any socket connection during the build fails the test, so the
build can neither reach nor hang on Google's APIs.
"""
import socket
import typing

import apache_beam as beam
import pytest
from apache_beam.coders import RowCoder
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.transforms import userstate
from google.cloud import dataflow

from templates import deploy
from templates.job_request import PICKLED_CODER_URN, RUNNING_JOB_ID, offline_job_request, stateful_steps
from templates.stateful_steps import _stream_build, load_pins, stream_job_argv
from tests.conftest import NetworkUsed

pytestmark = pytest.mark.timeout(180)

# Stateful steps whose state values still travel with Beam's pickle coder: none (state is
# orjson bytes under BytesCoder, transforms/coders.py). List a step here (strict xfail) rather
# than weaken the test.
PICKLED_STATE_CODERS = set()
PICKLED_KEY_CODERS = set()  # none today; list a step here (strict xfail) rather than weaken the test
STREAM_STEPS = sorted(load_pins()["stream"])
# What boot may find staged without installing anything: the pipeline options' main session
# and the launcher's pip freeze (informational: boot compares it with the worker's packages).
INERT_ARTIFACTS = {"pickled_main_session", "submission_environment_dependencies.txt"}


def _build(tmp_path, argv):
    return offline_job_request(_stream_build, argv, str(tmp_path / "staging"))


@pytest.fixture(scope="module")
def dev_env():
    return deploy.load_env("dev")


@pytest.fixture
def request_(tmp_path, no_network):
    return _build(tmp_path, stream_job_argv())


def test_the_guard_refuses_connections(no_network):
    with pytest.raises(NetworkUsed):
        socket.create_connection(("127.0.0.1", 443), timeout=1)


def test_the_job_is_streaming_on_runner_v2_and_streaming_engine(request_):
    assert request_.job.proto.type_ == dataflow.JobType.JOB_TYPE_STREAMING
    assert request_.options["streaming"] is True
    assert {"use_runner_v2", "enable_streaming_engine", "enable_windmill_service", "beam_fn_api"} <= set(
        request_.experiments)
    assert dict(request_.job.proto.environment.version)["job_type"] == "FNAPI_STREAMING"
    pcollections = request_.pipeline.components.pcollections
    (read,) = [t for t in request_.pipeline.components.transforms.values() if t.unique_name == "ReadFromPubSub/Read"]
    assert read.spec.urn == "beam:transform:pubsub_read:v1"
    assert all(pcollections[pc].is_bounded == beam.portability.api.beam_runner_api_pb2.IsBounded.UNBOUNDED
               for pc in read.outputs.values())


def test_workers_run_our_image_and_install_nothing(request_, dev_env):
    image = dev_env["gcloud"]["image"]
    assert request_.sdk_container_images == [image]
    environments = request_.pipeline.components.environments
    assert environments
    for environment in environments.values():
        assert environment.urn == "beam:env:docker:v1"
        assert beam.portability.api.beam_runner_api_pb2.DockerPayload.FromString(
            environment.payload).container_image == image
        staged = {beam.portability.api.beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(
            d.role_payload).staged_name for d in environment.dependencies}
        assert staged <= INERT_ARTIFACTS, f"workers would install {sorted(staged - INERT_ARTIFACTS)} at start-up"
    assert set(request_.staged_files) <= INERT_ARTIFACTS | {"pipeline.pb"}
    for option in ("setup_file", "requirements_file", "extra_packages"):
        assert not request_.options.get(option), option
    assert request_.options.get("sdk_location") in (None, "default", "container")  # no SDK tarball to install


def test_template_parameters_are_carried_as_pipeline_options(request_, dev_env):
    options = request_.options
    for name, value in dev_env["parameters"].items():
        carried = options[name]
        if name == "sync_config":  # read from this repository instead of gs:// (the spec's own value)
            assert carried.endswith(dev_env["syncs_file"])
        elif isinstance(carried, bool):
            assert carried is (value == "true"), name
        elif isinstance(carried, float):  # numbers reach Dataflow as JSON numbers
            assert carried == float(value), name
        else:
            assert carried == value, name
    g = dev_env["gcloud"]
    assert (options["project"], options["region"], options["job_name"]) == (g["project"], g["region"], g["job_name"])
    assert options["sdk_container_image"] == g["image"]


def test_every_pinned_stateful_step_reaches_dataflow_with_its_state_and_timers(request_):
    steps = stateful_steps(request_.pipeline)
    for name, pin in load_pins()["stream"].items():
        assert name in steps, f"{name} is not in the job's graph (tests/test_update_safety.py says what to do)"
        assert dict(steps[name].state).keys() == pin["state"].keys()
        assert list(steps[name].timers) == pin["timers"]


def _xfail_if(names, reason):
    return [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=reason)) if n in names else n
            for n in STREAM_STEPS]


@pytest.mark.parametrize("step", _xfail_if(PICKLED_KEY_CODERS, "key still encoded with the pickle fallback"))
def test_stateful_key_coder_is_deterministic_and_not_pickled(request_, step):
    found = stateful_steps(request_.pipeline)[step]
    assert found.key_coder_deterministic, f"{step}: key coder {found.key_coder} is not deterministic"
    assert found.key_coder_urn != PICKLED_CODER_URN, f"{step}: key encoded with the pickle fallback"


@pytest.mark.parametrize("step", _xfail_if(PICKLED_STATE_CODERS, "state values still use the pickle coder"))
def test_stateful_state_coders_are_not_pickled(request_, step):
    state = dict(stateful_steps(request_.pipeline)[step].state)
    pickled = sorted(sid for sid, coder in state.items() if coder.startswith(PICKLED_CODER_URN))
    assert not pickled, f"{step}: state {pickled} encoded with the pickle coder"


def test_an_update_request_replaces_the_running_job_and_maps_renamed_steps(tmp_path, no_network, dev_env):
    argv = stream_job_argv() + ["--update", "--streaming",
                                '--transform_name_mapping={"EventsToBraze/Identify": "EventsToBraze/IdentifyUsers"}']
    job = _build(tmp_path, argv).job
    assert job.proto.replace_job_id == RUNNING_JOB_ID
    assert dict(job.proto.transform_name_mapping) == {"EventsToBraze/Identify": "EventsToBraze/IdentifyUsers"}
    assert job.proto.name == dev_env["gcloud"]["job_name"]


# --- the helpers on a small graph, so their checks are known to fail on what they look for


class PlainKey(typing.NamedTuple):
    sync: str
    user: str


class RowKey(typing.NamedTuple):
    sync: str
    shard: int


beam.coders.registry.register_coder(RowKey, RowCoder)


class _CountDoFn(beam.DoFn):
    COUNT = userstate.ReadModifyWriteStateSpec("count", beam.coders.VarIntCoder())
    FLUSH = userstate.TimerSpec("flush", userstate.TimeDomain.WATERMARK)

    def process(self, element, count=beam.DoFn.StateParam(COUNT), flush=beam.DoFn.TimerParam(FLUSH)):
        count.write((count.read() or 0) + 1)
        yield element

    @userstate.on_timer(FLUSH)
    def on_flush(self):
        return []


def _small_graph(options):
    options.view_as(StandardOptions).streaming = True
    p = beam.Pipeline(options=options)
    events = p | beam.io.ReadFromPubSub(subscription="projects/test-project/subscriptions/s")
    for label, key_type in (("Pickled", PlainKey), ("Row", RowKey)):
        keyed = events | f"Key{label}" >> beam.Map(
            lambda b, t=key_type: (t("s", "u") if t is PlainKey else t("s", 1), b)).with_output_types(
            typing.Tuple[key_type, bytes])
        keyed | f"Count{label}" >> beam.ParDo(_CountDoFn())
    return p


def test_the_helpers_tell_a_pickled_key_from_a_row_key(tmp_path, no_network):
    request = offline_job_request(_small_graph, ["--project=test-project", "--region=us-central1", "--job_name=small",
                                                 "--sdk_container_image=img:1"], str(tmp_path / "staging"))
    steps = stateful_steps(request.pipeline)
    assert set(steps) == {"CountPickled", "CountRow"}
    pickled, row = steps["CountPickled"], steps["CountRow"]
    assert pickled.key_coder_urn == PICKLED_CODER_URN
    assert row.key_coder == "beam:coder:row:v1{sync:STRING,shard:INT64}" and row.key_coder_deterministic
    assert dict(row.state) == {"count": "beam:coder:varint:v1"} and row.timers == ("ts-flush",)
