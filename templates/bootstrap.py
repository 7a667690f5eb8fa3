"""Everything one environment needs in an empty Google Cloud project, created where missing.

    python -m templates.deploy bootstrap --env dev [--dry-run]     # or: make bootstrap ENV=dev

Names come from ``templates/env/<env>.json`` (and the secrets from its syncs file), so the
resources bootstrap creates are exactly the ones ``make template`` and ``make launch`` use.
Each step is a gcloud command that creates one thing, guarded by one that looks it up: a
step whose resource exists is skipped, so running it again changes nothing. IAM bindings and
``services enable`` are idempotent in gcloud itself and always run.

What bootstrap never does: write a key. The Braze key goes into the secret it creates by a
person (``gcloud secrets versions add``), and the key that Amplitude uses to publish is
created by a person too; the closing notes print both commands.
"""
from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
from typing import Callable, Dict, List, Optional, Sequence, Tuple

APIS = (
    "dataflow.googleapis.com", "compute.googleapis.com", "logging.googleapis.com", "monitoring.googleapis.com",
    "storage.googleapis.com", "pubsub.googleapis.com", "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com", "secretmanager.googleapis.com", "iam.googleapis.com",
)
# Amplitude's event stream and Dataflow retry for hours; 7 days of retention leaves time to
# fix a stopped job before Pub/Sub drops anything.
RETENTION = "7d"
ACK_DEADLINE_SECONDS = "60"

_RESOURCE_RE = re.compile(r"^projects/(?P<project>[^/]+)/(?P<kind>topics|subscriptions|secrets)/(?P<name>[^/]+)")
_REGISTRY_RE = re.compile(r"^(?P<location>[a-z0-9-]+)-docker\.pkg\.dev/(?P<project>[^/]+)/(?P<repository>[^/]+)/")
_SERVICE_ACCOUNT_RE = re.compile(r"^(?P<name>[a-z][a-z0-9-]{4,28}[a-z0-9])@(?P<project>[^.]+)\.iam\.gserviceaccount\.com$")


@dataclasses.dataclass(frozen=True)
class Step:
    """One resource: ``create`` runs unless ``exists`` (a lookup) succeeds."""

    what: str
    create: Tuple[str, ...]
    exists: Optional[Tuple[str, ...]] = None

    def shell(self) -> str:
        """The step as one idempotent shell line, for --dry-run and for copying by hand."""
        create = shlex.join(self.create)
        if self.exists is None:
            return create
        return f"{shlex.join(self.exists)} >/dev/null 2>&1 || {create}"


def split_resource(path: str) -> Tuple[str, str]:
    """``projects/P/topics/T`` → ``(P, T)`` (also subscriptions and secrets)."""
    match = _RESOURCE_RE.match(path)
    if not match:
        raise ValueError(f"{path!r} is not projects/P/topics|subscriptions|secrets/NAME")
    return match["project"], match["name"]


def bucket_of(uri: str) -> str:
    """``gs://bucket/any/path`` → ``gs://bucket``."""
    if not uri.startswith("gs://") or len(uri) <= 5:
        raise ValueError(f"{uri!r} is not a gs:// path")
    return "gs://" + uri[5:].split("/", 1)[0]


def problems(document: dict) -> List[str]:
    """What bootstrap needs from an env file beyond what ``deploy.validate`` checks."""
    found = []
    g = document.get("gcloud", {})
    if not _REGISTRY_RE.match(str(g.get("image", ""))):
        found.append("gcloud.image: bootstrap creates an Artifact Registry repository, so the image must be "
                     "LOCATION-docker.pkg.dev/PROJECT/REPOSITORY/NAME:TAG")
    if not _SERVICE_ACCOUNT_RE.match(str(g.get("service_account_email", ""))):
        found.append("gcloud.service_account_email: bootstrap creates the job's service account, so it must be "
                     "set to NAME@PROJECT.iam.gserviceaccount.com")
    resources = document.get("resources")
    if not isinstance(resources, dict):
        return found + ["resources: required, an object with input_topic, dead_letter_subscription and "
                        "amplitude_publisher"]
    for key, kind in (("input_topic", "topics"), ("dead_letter_subscription", "subscriptions")):
        value = resources.get(key)
        if not (isinstance(value, str) and _RESOURCE_RE.match(value) and f"/{kind}/" in value):
            found.append(f"resources.{key}: required, projects/P/{kind}/NAME")
    if not _SERVICE_ACCOUNT_RE.match(str(resources.get("amplitude_publisher", ""))):
        found.append("resources.amplitude_publisher: required, the service account Amplitude publishes as, "
                     "NAME@PROJECT.iam.gserviceaccount.com")
    for key in resources:
        if key not in ("input_topic", "dead_letter_subscription", "amplitude_publisher"):
            found.append(f"resources.{key}: unknown setting")
    return found


def _service_account(email: str, display_name: str) -> Step:
    match = _SERVICE_ACCOUNT_RE.match(email)
    project = match["project"]
    return Step(f"service account {email}",
                ("gcloud", "iam", "service-accounts", "create", match["name"], f"--project={project}",
                 f"--display-name={display_name}"),
                ("gcloud", "iam", "service-accounts", "describe", email, f"--project={project}"))


def _topic(path: str) -> Step:
    project, name = split_resource(path)
    return Step(f"topic {path}", ("gcloud", "pubsub", "topics", "create", name, f"--project={project}"),
                ("gcloud", "pubsub", "topics", "describe", name, f"--project={project}"))


def _subscription(path: str, topic: str) -> Step:
    project, name = split_resource(path)
    return Step(f"subscription {path} (of {topic})",
                ("gcloud", "pubsub", "subscriptions", "create", name, f"--project={project}", f"--topic={topic}",
                 f"--ack-deadline={ACK_DEADLINE_SECONDS}", f"--message-retention-duration={RETENTION}",
                 "--expiration-period=never"),
                ("gcloud", "pubsub", "subscriptions", "describe", name, f"--project={project}"))


def _binding(kind: Sequence[str], resource: str, project: Optional[str], member: str, role: str) -> Step:
    command = ("gcloud", *kind, "add-iam-policy-binding", resource)
    if project:
        command += (f"--project={project}",)
    return Step(f"{role} for {member} on {resource}", command + (f"--member={member}", f"--role={role}"))


def bootstrap_steps(document: dict, secret_references: Sequence[str]) -> List[Step]:
    """Every step, in an order that works in an empty project: APIs, accounts, storage, the
    image repository, topics before their subscriptions, secrets, then the grants on them."""
    g, p, r = document["gcloud"], document["parameters"], document["resources"]
    project, region = g["project"], g["region"]
    job_account = "serviceAccount:" + g["service_account_email"]
    publisher = "serviceAccount:" + r["amplitude_publisher"]
    registry = _REGISTRY_RE.match(g["image"])
    buckets = sorted({bucket_of(u) for u in (g["template_file"], g.get("temp_location"), g.get("staging_location"),
                                              p["sync_config"]) if u})
    secrets = sorted({split_resource(ref) for ref in secret_references})
    topics = [r["input_topic"], p["dead_letter_topic"]] + ([p["outcome_topic"]] if p.get("outcome_topic") else [])

    steps = [Step("APIs", ("gcloud", "services", "enable", *APIS, f"--project={project}"))]
    steps.append(_service_account(g["service_account_email"], "amplitude-braze Dataflow job"))
    steps.append(_service_account(r["amplitude_publisher"], "Amplitude event stream publisher"))
    for bucket in buckets:
        steps.append(Step(f"bucket {bucket}",
                          ("gcloud", "storage", "buckets", "create", bucket, f"--project={project}",
                           f"--location={region}", "--uniform-bucket-level-access"),
                          ("gcloud", "storage", "buckets", "describe", bucket, f"--project={project}")))
    steps.append(Step(f"Artifact Registry repository {registry['repository']} ({registry['location']})",
                      ("gcloud", "artifacts", "repositories", "create", registry["repository"],
                       "--repository-format=docker", f"--location={registry['location']}",
                       f"--project={registry['project']}"),
                      ("gcloud", "artifacts", "repositories", "describe", registry["repository"],
                       f"--location={registry['location']}", f"--project={registry['project']}")))
    steps += [_topic(t) for t in topics]
    steps.append(_subscription(p["input_subscription"], r["input_topic"]))
    steps.append(_subscription(r["dead_letter_subscription"], p["dead_letter_topic"]))
    for secret_project, secret in secrets:
        steps.append(Step(f"secret projects/{secret_project}/secrets/{secret} (no version: add the key by hand)",
                          ("gcloud", "secrets", "create", secret, f"--project={secret_project}",
                           "--replication-policy=automatic"),
                          ("gcloud", "secrets", "describe", secret, f"--project={secret_project}")))

    # Grants. The job's account: run as a Dataflow worker, read its subscription, publish
    # dead letters (and outcomes), read its keys, use the bucket, pull the image.
    steps.append(Step(f"roles/dataflow.worker for {job_account} on project {project}",
                      ("gcloud", "projects", "add-iam-policy-binding", project, f"--member={job_account}",
                       "--role=roles/dataflow.worker", "--condition=None")))
    sub_project, sub = split_resource(p["input_subscription"])
    for role in ("roles/pubsub.subscriber", "roles/pubsub.viewer"):
        steps.append(_binding(("pubsub", "subscriptions"), sub, sub_project, job_account, role))
    for topic in topics[1:]:
        topic_project, name = split_resource(topic)
        steps.append(_binding(("pubsub", "topics"), name, topic_project, job_account, "roles/pubsub.publisher"))
    for secret_project, secret in secrets:
        steps.append(_binding(("secrets",), secret, secret_project, job_account, "roles/secretmanager.secretAccessor"))
    for bucket in buckets:
        steps.append(_binding(("storage", "buckets"), bucket, None, job_account, "roles/storage.objectAdmin"))
    steps.append(Step(f"roles/artifactregistry.reader for {job_account} on {registry['repository']}",
                      ("gcloud", "artifacts", "repositories", "add-iam-policy-binding", registry["repository"],
                       f"--location={registry['location']}", f"--project={registry['project']}",
                       f"--member={job_account}", "--role=roles/artifactregistry.reader")))
    # Amplitude's Pub/Sub destination publishes as this account (its key is pasted into Amplitude).
    topic_project, name = split_resource(r["input_topic"])
    steps.append(_binding(("pubsub", "topics"), name, topic_project, publisher, "roles/pubsub.publisher"))
    return steps


def closing_notes(document: dict, secret_references: Sequence[str]) -> List[str]:
    """The two things bootstrap leaves to a person, as commands to copy."""
    r = document["resources"]
    publisher_project = _SERVICE_ACCOUNT_RE.match(r["amplitude_publisher"])["project"]
    notes = []
    for secret_project, secret in sorted({split_resource(ref) for ref in secret_references}):
        notes.append(f"add the Braze REST API key (users.track permission only) to {secret}:\n"
                     f"    read -rs BRAZE_KEY && printf '%s' \"$BRAZE_KEY\" | gcloud secrets versions add {secret} "
                     f"--project={secret_project} --data-file=-")
    notes.append("create the key Amplitude publishes with, then paste it base64-encoded into Amplitude's "
                 f"Google Pub/Sub destination (topic {split_resource(r['input_topic'])[1]}):\n"
                 f"    gcloud iam service-accounts keys create amplitude-publisher.json "
                 f"--iam-account={r['amplitude_publisher']} --project={publisher_project}\n"
                 "    base64 -w0 amplitude-publisher.json; then delete the file")
    return notes


Runner = Callable[[Sequence[str]], int]


def _run(command: Sequence[str], quiet: bool = False) -> int:
    kwargs: Dict = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL} if quiet else {}
    return subprocess.run(list(command), **kwargs).returncode


def run_steps(steps: Sequence[Step], *, dry_run: bool, out=print, run=_run) -> int:
    """Dry run: print each step's shell line. Otherwise look each resource up, create what is
    missing, and stop at the first command that fails (its exit status is returned)."""
    for step in steps:
        if dry_run:
            out("+ " + step.shell())
            continue
        if step.exists is not None and run(step.exists, True) == 0:
            out(f"= exists: {step.what}")
            continue
        out("+ " + shlex.join(step.create))
        status = run(step.create)
        if status != 0:
            out(f"bootstrap: failed ({status}) creating {step.what}; fix the cause and run it again "
                "(what exists is skipped)")
            return status
    return 0
