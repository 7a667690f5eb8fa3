"""The Dataflow job request a pipeline would submit, built offline, and what to read in it.

``offline_job_request(build, argv, staging_dir)`` runs ``build(PipelineOptions(argv))`` through
the real ``DataflowRunner`` and keeps the job instead of sending it. Two things are replaced,
both because they need Google Cloud: the Dataflow API call that submits the job
(``DataflowApplicationClient.submit_job_description``) and, with ``--update``, the call that
looks up the running job's id (``apiclient.Job.job_id_for_name``). Storage is not replaced but
kept local: ``--dataflow_endpoint=http://localhost:1`` makes Beam skip its Cloud option checks,
which would otherwise look up (and create) a staging bucket on storage.googleapis.com for a
non-gs temp location, and lets a local directory serve as the staging location; the runner
writes the staged files there with plain ``open()``. This is how Beam's own DataflowRunner and
apiclient tests build jobs.

What comes back is what Dataflow would receive: the job (environment, experiments, worker
pools with the SDK container image, the pipeline options) and the graph, read back from the
staged ``pipeline.pb`` (in 2.77 the graph ships as that file, not as ``job.steps``).

``stateful_steps(pipeline)`` lists the steps that keep state per key (a ParDo with state or
timers), with their key coder and state coders: the names and coders a Dataflow ``--update``
must find unchanged. It works on any job's graph, the cohort job's included.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple
from unittest import mock

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2, schema_pb2
from apache_beam.runners.dataflow.internal import apiclient
from apache_beam.runners.pipeline_context import PipelineContext

__all__ = ["JobRequest", "StatefulStep", "offline_job_request", "offline_argv", "kept_submissions",
           "read_job_request", "stateful_steps", "coder_signature", "OFFLINE_FLAGS", "RUNNING_JOB_ID"]

# The flags that keep DataflowRunner off the network (see the module docstring).
OFFLINE_FLAGS = ("--runner=DataflowRunner", "--dataflow_endpoint=http://localhost:1", "--no_auth")
RUNNING_JOB_ID = "2026-01-01_00_00_00-1234567890"  # what --update "finds" running
PICKLED_CODER_URN = "beam:coder:pickled_python:v1"
KV_CODER_URN = common_urns.coders.KV.urn


@dataclasses.dataclass
class JobRequest:
    job: Any  # apiclient.Job: .proto is the google.cloud.dataflow.Job that would be created
    pipeline: beam_runner_api_pb2.Pipeline  # the staged graph (pipeline.pb)
    staged_files: List[str]  # names written to the staging location

    @property
    def options(self) -> Dict[str, Any]:
        """The pipeline options the job carries (``sdkPipelineOptions.options``) as plain values."""
        options = self.job.proto.environment.sdk_pipeline_options["options"]
        return {k: _plain(v) for k, v in dict(options).items()}

    @property
    def experiments(self) -> List[str]:
        return list(self.job.proto.environment.experiments)

    @property
    def sdk_container_images(self) -> List[str]:
        return [c.container_image for pool in self.job.proto.environment.worker_pools
                for c in pool.sdk_harness_container_images]


def _plain(value):
    """proto-plus map/list values → dict/list (numbers arrive as floats, as in the JSON Dataflow gets)."""
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (str, bytes, int, float, bool)) or value is None:
        return value
    try:
        return [_plain(v) for v in value]
    except TypeError:
        return value


def offline_job_request(build: Callable[[PipelineOptions], beam.Pipeline], argv: Sequence[str],
                        staging_dir: str) -> JobRequest:
    """The job ``build`` would submit to Dataflow with ``argv``, without any network call.

    ``argv`` holds the job's own options and the Dataflow ones (``--project``, ``--region``,
    ``--job_name``, ``--sdk_container_image``, ``--update`` ...); ``staging_dir`` is an empty
    local directory that serves as temp and staging location.
    """
    os.makedirs(staging_dir, exist_ok=True)
    with kept_submissions() as submitted:
        pipeline = build(PipelineOptions(offline_argv(argv, staging_dir)))
        pipeline.run()  # not wait_until_finish(): that would poll the API, as a `with` block does
    return read_job_request(submitted, staging_dir)


def offline_argv(argv: Sequence[str], staging_dir: str) -> List[str]:
    """``argv`` with the flags that keep DataflowRunner offline and ``staging_dir`` as temp location."""
    return [*argv, *OFFLINE_FLAGS, f"--temp_location={staging_dir}"]


@contextlib.contextmanager
def kept_submissions() -> Iterator[list]:
    """Within it, a job DataflowRunner submits is appended to the yielded list instead of sent
    (and ``--update`` finds ``RUNNING_JOB_ID`` running): for a program that builds and runs its
    own pipeline, such as a template's launcher, run with ``offline_argv``."""
    submitted: list = []

    def keep(client, job):
        from google.cloud import dataflow

        submitted.append(job)
        return dataflow.Job(id="offline-job-id", name=job.proto.name)

    with mock.patch.object(apiclient.DataflowApplicationClient, "submit_job_description", keep), \
            mock.patch.object(apiclient.Job, "job_id_for_name", lambda self, name: RUNNING_JOB_ID):
        yield submitted


def read_job_request(submitted: list, staging_dir: str) -> JobRequest:
    """The one job in ``submitted``, with the graph staged in ``staging_dir``."""
    if len(submitted) != 1:
        raise RuntimeError(f"expected one submitted job, got {len(submitted)}")
    with open(os.path.join(staging_dir, "pipeline.pb"), "rb") as f:
        graph = beam_runner_api_pb2.Pipeline.FromString(f.read())
    return JobRequest(job=submitted[0], pipeline=graph, staged_files=sorted(os.listdir(staging_dir)))


@dataclasses.dataclass(frozen=True)
class StatefulStep:
    name: str  # the full unique name, which --update matches
    key_coder: str  # coder_signature of the key
    key_coder_deterministic: bool  # the rebuilt coder's is_deterministic()
    state: Tuple[Tuple[str, str], ...]  # (state id, coder_signature of its values)
    timers: Tuple[str, ...]

    @property
    def key_coder_urn(self) -> str:
        return self.key_coder.split("(", 1)[0].split("{", 1)[0]

    def pin(self) -> dict:
        """What a running job's update depends on, as stored in templates/stateful_steps.json."""
        return {"key_coder": self.key_coder, "state": dict(self.state), "timers": list(self.timers)}


def coder_signature(components: beam_runner_api_pb2.Components, coder_id: str) -> str:
    """The coder's URN with its components (and a row coder's schema fields), stable across
    builds (coder ids are not: they depend on construction order)."""
    coder = components.coders[coder_id]
    urn = coder.spec.urn
    if urn == common_urns.coders.ROW.urn:
        schema = schema_pb2.Schema.FromString(coder.spec.payload)
        return urn + "{" + ",".join(f"{f.name}:{_field_type(f.type)}" for f in schema.fields) + "}"
    parts = [coder_signature(components, c) for c in coder.component_coder_ids]
    return urn + (f"({','.join(parts)})" if parts else "")


def _field_type(field_type) -> str:
    kind = field_type.WhichOneof("type_info")
    if kind == "atomic_type":
        return schema_pb2.AtomicType.Name(field_type.atomic_type)
    if kind in ("array_type", "iterable_type"):
        return f"{kind.split('_')[0]}<{_field_type(getattr(field_type, kind).element_type)}>"
    if kind == "map_type":
        return f"map<{_field_type(field_type.map_type.key_type)},{_field_type(field_type.map_type.value_type)}>"
    if kind == "logical_type":
        return f"logical<{field_type.logical_type.urn}>"
    return kind or "?"


def _state_coder_id(spec) -> str:
    which = spec.WhichOneof("spec")
    inner = getattr(spec, which)
    for field in ("coder_id", "element_coder_id", "accumulator_coder_id"):
        if getattr(inner, field, ""):
            return getattr(inner, field)
    if which in ("map_spec", "multimap_spec"):
        return inner.value_coder_id
    if which == "ordered_list_spec":
        return inner.element_coder_id
    raise ValueError(f"state spec without a coder: {which}")


def stateful_steps(pipeline: beam_runner_api_pb2.Pipeline) -> Dict[str, StatefulStep]:
    """Every ParDo with state or timers, by unique name, with its key and state coders."""
    components = pipeline.components
    context = PipelineContext(components)
    found = {}
    for transform in components.transforms.values():
        if transform.spec.urn != common_urns.primitives.PAR_DO.urn:
            continue
        payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
        if not (payload.state_specs or payload.timer_family_specs):
            continue
        (main_input,) = [pc for tag, pc in transform.inputs.items() if tag not in payload.side_inputs]
        kv_coder = components.coders[components.pcollections[main_input].coder_id]
        if kv_coder.spec.urn != KV_CODER_URN:
            raise ValueError(f"{transform.unique_name}: stateful step whose input is not keyed ({kv_coder.spec.urn})")
        key_id = kv_coder.component_coder_ids[0]
        found[transform.unique_name] = StatefulStep(
            name=transform.unique_name,
            key_coder=coder_signature(components, key_id),
            key_coder_deterministic=context.coders.get_by_id(key_id).is_deterministic(),
            state=tuple(sorted((sid, coder_signature(components, _state_coder_id(spec)))
                               for sid, spec in payload.state_specs.items())),
            timers=tuple(sorted(payload.timer_family_specs)),
        )
    return dict(sorted(found.items()))
