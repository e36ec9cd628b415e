"""``fraudstream setup``: create what the job needs, and the one line a command prints when a
cloud resource is missing or unreachable.

:func:`run_setup` creates, each only if missing (a second run changes nothing and reports every
resource as existing):

* the GCS bucket (``bucket``, else the bucket of a ``gs://`` Feast registry), first: the
  registry may live in it;
* the Pub/Sub topics (transactions, labels, alerts, dead letters, monitoring) and one
  subscription of the same name on each (Pub/Sub keeps a message only for the subscriptions
  that exist when it is published; the job reads the transactions and labels ones);
* the Bigtable table of the Feast project (through our online store's
  :class:`~streaming.store.bigtable.admin.TableAdmin`, which Feast's apply also calls) and the
  applied Feast repository (``feast apply`` through :func:`~streaming.store.feast_store.apply_repo`,
  run only when the registry lacks or differs from a definition).

Profiles: ``emulator`` (the clients use ``PUBSUB_EMULATOR_HOST``, ``BIGTABLE_EMULATOR_HOST``
and ``STORAGE_EMULATOR_HOST``, which ``fraudstream emulators up`` exports) and ``gcp`` (the same
calls on a real project with Application Default Credentials; no emulator variable may be set).

Every RPC is retried on UNAVAILABLE / DEADLINE_EXCEEDED within ``budget_s`` only, so an
unreachable service fails in bounded time; :func:`cloud_error` turns what the client libraries
raise into one line that says what to do.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streaming.store.names import REPO

PROFILES = ("emulator", "gcp")
EMULATOR_ENV = {
    "pubsub": "PUBSUB_EMULATOR_HOST",
    "bigtable": "BIGTABLE_EMULATOR_HOST",
    "gcs": "STORAGE_EMULATOR_HOST",
}
EMULATOR_PROJECT = "demo-project"
"""The project of the emulators (``streaming.local.emulators.DEFAULT_PROJECT``)."""
GCP_PROJECT_ENV = "FRAUDSTREAM_GCP_PROJECT"
"""The gcp profile's project when ``--project`` is not given (as in feature_repo/profiles)."""
DEFAULT_BUDGET_S = 30.0
"""How long one resource's RPCs are retried on UNAVAILABLE / DEADLINE_EXCEEDED."""
CHECK_BUDGET_S = 15.0
"""The same for a command's check that its topics exist (``replay``)."""
TOPIC_KINDS = ("transactions", "labels", "alerts", "dlq", "monitoring")
"""The job's topics, by the ``fraudstream run`` option that names them (``--<kind>_topic``)."""
CREDENTIALS_HINT = (
    'set PUBSUB_EMULATOR_HOST for the emulator (eval "$(fraudstream emulators up)") '
    "or run `gcloud auth application-default login`"
)

Report = Callable[[str], None]


class CloudError(RuntimeError):
    """A cloud resource a command needs is missing or unusable; the message says what to do."""


@dataclass(frozen=True)
class SetupConfig:
    """What ``fraudstream setup`` creates; names are ids (or full ``projects/...`` paths)."""

    profile: str = "emulator"
    project: str | None = None
    """Pub/Sub (and default Bigtable) project: ``demo-project`` on the emulator, else
    ``$FRAUDSTREAM_GCP_PROJECT``."""
    topics: dict[str, str] = field(default_factory=lambda: {k: k for k in TOPIC_KINDS})
    """Topic id by kind (:data:`TOPIC_KINDS`); each gets a subscription of the same id."""
    feature_repo: str = str(REPO)
    feast_registry: str | None = None
    bigtable_project: str | None = None
    bigtable_instance: str | None = None
    bucket: str | None = None
    bucket_location: str | None = None
    budget_s: float = DEFAULT_BUDGET_S

    def resolved_project(self) -> str:
        """The project, or ValueError naming what to set."""
        if self.project:
            return self.project
        if self.profile == "emulator":
            return EMULATOR_PROJECT
        if os.environ.get(GCP_PROJECT_ENV):
            return os.environ[GCP_PROJECT_ENV]
        raise ValueError(f"the gcp profile needs --project (or ${GCP_PROJECT_ENV})")

    def store_settings(self) -> Any:
        """The Feast :class:`~streaming.store.feast_store.StoreSettings` of this setup."""
        from streaming.store.feast_store import StoreSettings

        bigtable_project = self.bigtable_project
        if self.profile == "gcp" and bigtable_project is None:
            bigtable_project = self.resolved_project()
        return StoreSettings(
            self.profile,
            self.feature_repo,
            self.feast_registry,
            bigtable_project,
            self.bigtable_instance,
        )

    def bucket_name(self) -> str | None:
        """``bucket``, else the bucket of a ``gs://`` registry, else None."""
        if self.bucket:
            return self.bucket.removeprefix("gs://").split("/", 1)[0]
        if self.feast_registry and self.feast_registry.startswith("gs://"):
            return self.feast_registry.removeprefix("gs://").split("/", 1)[0]
        return None


@dataclass(frozen=True)
class Outcome:
    """One resource: what it is, its name, and ``created``, ``applied`` (a Feast registry
    written) or ``exists`` (left as it was)."""

    kind: str
    name: str
    state: str

    @classmethod
    def of(cls, kind: str, name: str, changed: bool, verb: str = "created") -> Outcome:
        return cls(kind, name, verb if changed else "exists")

    def line(self) -> str:
        return f"{self.kind} {self.name}: {self.state}"


def run_setup(config: SetupConfig, report: Report | None = None) -> list[Outcome]:
    """Create every missing resource of ``config``; ``report`` gets one line per resource
    (default: stderr). ValueError for a wrong environment, a cloud error if one fails."""
    report = report or _stderr
    check_environment(config.profile, need_gcs=config.bucket_name() is not None)
    project = config.resolved_project()
    outcomes: list[Outcome] = []

    def done(outcome: Outcome) -> None:
        outcomes.append(outcome)
        report(outcome.line())

    bucket = config.bucket_name()
    if bucket is not None:
        created = ensure_bucket(project, bucket, config.bucket_location, config.budget_s)
        done(Outcome.of("bucket", f"gs://{bucket}", created))
    for outcome in ensure_pubsub(project, config.topics, config.budget_s):
        done(outcome)
    for outcome in ensure_feast(config.store_settings(), config.budget_s, report):
        done(outcome)
    return outcomes


def check_environment(profile: str, need_gcs: bool) -> None:
    """The emulator profile needs the emulators' variables; the gcp profile needs them unset
    (a client would silently use the emulator). ValueError names the variable."""
    if profile not in PROFILES:
        raise ValueError(f"unknown setup profile {profile!r}; choose from {PROFILES}")
    names = [n for n in EMULATOR_ENV if n != "gcs" or need_gcs]
    if profile == "emulator":
        missing = [EMULATOR_ENV[n] for n in names if not os.environ.get(EMULATOR_ENV[n])]
        if missing:
            raise ValueError(
                f"the emulator profile needs {', '.join(missing)}: "
                'run eval "$(fraudstream emulators up)" first'
            )
    else:
        present = [v for v in EMULATOR_ENV.values() if os.environ.get(v)]
        if present:
            raise ValueError(
                f"the gcp profile with {', '.join(present)} set would use the emulator: unset it"
            )


def resource_path(project: str, collection: str, name: str) -> str:
    """``projects/<project>/<collection>/<name>``; a full path is returned as it is, if it is
    of ``collection`` (else ValueError)."""
    if not name.startswith("projects/"):
        return f"projects/{project}/{collection}/{name}"
    parts = name.split("/")
    if len(parts) != 4 or parts[2] != collection or not parts[3]:
        raise ValueError(f"{name!r} is not a projects/PROJECT/{collection}/NAME path")
    return name


def resource_id(project: str, collection: str, name: str) -> str:
    """The last part of :func:`resource_path`; ValueError if a full path names another project."""
    path = resource_path(project, collection, name)
    if path.split("/")[1] != project:
        raise ValueError(f"{name!r} is not in project {project!r}")
    return path.rsplit("/", 1)[-1]


def ensure_pubsub(project: str, topics: dict[str, str], budget_s: float) -> list[Outcome]:
    """Create each topic and a subscription of the same id on it, unless there."""
    from google.api_core import exceptions as gexc
    from google.cloud import pubsub_v1

    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    rpc = {"retry": retry_policy(budget_s), "timeout": budget_s}
    outcomes = []
    for kind in TOPIC_KINDS:
        if kind not in topics:
            continue
        topic = resource_path(project, "topics", topics[kind])
        try:
            publisher.create_topic(name=topic, **rpc)
            outcomes.append(Outcome.of("topic", topic, True))
        except gexc.AlreadyExists:
            outcomes.append(Outcome.of("topic", topic, False))
        subscription = f"projects/{project}/subscriptions/{topic.rsplit('/', 1)[-1]}"
        try:
            subscriber.create_subscription(name=subscription, topic=topic, **rpc)
            outcomes.append(Outcome.of("subscription", subscription, True))
        except gexc.AlreadyExists:
            existing = subscriber.get_subscription(subscription=subscription, **rpc).topic
            if existing != topic:
                raise CloudError(
                    f"subscription {subscription} exists on topic {existing}, not {topic}: "
                    "choose another topic id or delete the subscription"
                ) from None
            outcomes.append(Outcome.of("subscription", subscription, False))
    return outcomes


def require_topics(project: str, topics: Iterable[str], budget_s: float | None = None) -> None:
    """CloudError naming the first of ``topics`` (ids or paths) that does not exist; an
    unreachable service is retried for ``budget_s`` (default :data:`CHECK_BUDGET_S`)."""
    from google.api_core import exceptions as gexc
    from google.cloud import pubsub_v1

    budget_s = CHECK_BUDGET_S if budget_s is None else budget_s
    publisher = pubsub_v1.PublisherClient()
    for name in topics:
        path = resource_path(project, "topics", name)
        try:
            publisher.get_topic(topic=path, retry=retry_policy(budget_s), timeout=budget_s)
        except gexc.NotFound:
            raise CloudError(
                f"Pub/Sub topic {path} not found: create it with "
                f"`fraudstream setup --project {project}` (or check the topic and --project)"
            ) from None


def ensure_bucket(project: str, bucket: str, location: str | None, budget_s: float) -> bool:
    """Create the GCS bucket unless there; True if created. A name taken by someone else's
    bucket reads as permission denied."""
    from google.api_core import exceptions as gexc
    from google.cloud import storage
    from google.cloud.storage.retry import DEFAULT_RETRY

    client = storage.Client(project=project)
    retry = DEFAULT_RETRY.with_deadline(budget_s)
    try:
        client.create_bucket(bucket, location=location, timeout=budget_s, retry=retry)
    except gexc.Conflict:
        client.get_bucket(bucket, timeout=budget_s, retry=retry)  # ours to use, or Forbidden
        return False
    return True


def ensure_feast(settings: Any, budget_s: float, report: Report) -> list[Outcome]:
    """The project's Bigtable table, then ``feast apply`` unless the registry already holds
    every definition as it is."""
    from streaming.store.bigtable import codec
    from streaming.store.bigtable.admin import TableAdmin
    from streaming.store.feast_store import apply_repo

    report(f"feast: reading the repository {settings.repo} ({settings.profile} profile)")
    config = settings.repo_config()
    online = config.online_store.model_copy(
        update={
            "operation_timeout_s": budget_s,
            "attempt_timeout_s": min(budget_s, config.online_store.attempt_timeout_s),
        }
    )
    table = codec.table_name(config.project)
    where = f"{online.project_id or EMULATOR_PROJECT}/{online.instance}/{table}"
    created_table = TableAdmin(online).ensure(table, codec.FAMILY)
    outcomes = [Outcome.of("bigtable table", where, created_table)]
    path = config.registry.path
    if "://" not in path and not Path(path).is_absolute():
        path = str(Path(settings.repo) / path)
    registry = f"{path} (Feast project {config.project})"
    stale = registry_changes(settings)
    if stale:
        apply_repo(settings)
    outcomes.append(Outcome.of("feast registry", registry, bool(stale), "applied"))
    return outcomes


def registry_changes(settings: Any) -> list[str]:
    """Names of the repository's definitions the registry lacks or holds differently."""
    from feast import Entity, FeatureService, FeatureView
    from feast.data_source import DataSource
    from feast.diff.property_diff import TransitionType
    from feast.repo_contents import RepoContents

    from streaming.store.feast_store import load_definitions

    objects = load_definitions(settings.repo).all_definitions()
    contents = RepoContents(
        projects=[],
        data_sources=[o for o in objects if isinstance(o, DataSource)],
        feature_views=[o for o in objects if isinstance(o, FeatureView)],
        on_demand_feature_views=[],
        stream_feature_views=[],
        label_views=[],
        entities=[o for o in objects if isinstance(o, Entity)],
        feature_services=[o for o in objects if isinstance(o, FeatureService)],
        permissions=[],
    )
    registry_diff, _, _ = settings.feature_store().plan(contents)
    # apply() registers only what it is given: objects of the registry that are not among
    # them (its project, the batch sources apply adds) read as deletions here and are ignored
    wanted = (TransitionType.CREATE, TransitionType.UPDATE)
    return [d.name for d in registry_diff.feast_object_diffs if d.transition_type in wanted]


def run_flags(config: SetupConfig) -> list[str]:
    """The ``fraudstream run`` options that use what ``config`` creates."""
    project = config.resolved_project()
    topics = {k: resource_path(project, "topics", v) for k, v in config.topics.items()}
    flags = []
    if config.profile == "gcp":
        flags += ["--runner", "DataflowRunner", "--project", project]
        if config.bucket_name():
            flags += ["--temp_location", f"gs://{config.bucket_name()}/tmp"]
    for kind in ("transactions", "labels"):
        if kind in topics:
            sub = topics[kind].rsplit("/", 1)[-1]
            flags += [f"--{kind}_subscription", f"projects/{project}/subscriptions/{sub}"]
    for kind in ("alerts", "dlq", "monitoring"):
        if kind in topics:
            flags += [f"--{kind}_topic", topics[kind]]
    flags += ["--feature_store", "feast", "--feature_store_profile", config.profile]
    if config.feature_repo != str(REPO):
        flags += ["--feature_repo", config.feature_repo]
    for name in ("feast_registry", "bigtable_project", "bigtable_instance"):
        if getattr(config, name):
            flags += [f"--{name}", getattr(config, name)]
    return flags


def retry_policy(budget_s: float) -> Any:
    """Retry UNAVAILABLE / DEADLINE_EXCEEDED with exponential backoff for ``budget_s``."""
    from google.api_core import exceptions as gexc
    from google.api_core.retry import Retry, if_exception_type

    retryable = if_exception_type(gexc.ServiceUnavailable, gexc.DeadlineExceeded)
    return Retry(predicate=retryable, initial=0.1, maximum=2.0, multiplier=2.0, timeout=budget_s)


def cloud_error(exc: BaseException) -> str | None:
    """One line that says what failed and what to do, if ``exc`` (or an exception it was
    raised from or while handling) is a credentials, missing-resource, permission or
    reachability error of a Google client library; else None."""
    for error in _chain(exc):
        line = _describe(error)
        if line is not None:
            return line
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _describe(error: BaseException) -> str | None:
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth

    text = _one_line(error)
    if isinstance(error, CloudError):
        return text
    if isinstance(error, auth.DefaultCredentialsError | gexc.Unauthenticated):
        return f"no Google credentials: {CREDENTIALS_HINT}"
    if isinstance(error, auth.RefreshError):
        return f"Google credentials failed ({text}): run `gcloud auth application-default login`"
    if isinstance(error, gexc.NotFound):
        return f"not found: {text}: create it with `fraudstream setup` (or check the names)"
    if isinstance(error, gexc.PermissionDenied | gexc.Forbidden):
        return f"permission denied: {text}: grant the account the role it needs"
    if isinstance(error, gexc.ServiceUnavailable | gexc.DeadlineExceeded | gexc.RetryError):
        return _unreachable(text)
    return _describe_transport(error, text)


def _describe_transport(error: BaseException, text: str) -> str | None:
    """gRPC errors no client library wrapped, and HTTP connection failures (GCS)."""
    try:
        import grpc
    except ImportError:  # pragma: no cover - grpc comes with the Google clients
        grpc = None
    if grpc is not None and isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        code = error.code()
        details = " ".join(str(error.details() or code).split())
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return _unreachable(details)
        if code == grpc.StatusCode.NOT_FOUND:
            return f"not found: {details}: create it with `fraudstream setup`"
        if code == grpc.StatusCode.PERMISSION_DENIED:
            return f"permission denied: {details}: grant the account the role it needs"
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return f"no Google credentials: {CREDENTIALS_HINT}"
    import requests

    if isinstance(error, requests.exceptions.ConnectionError):
        return _unreachable(text)
    return None


def _unreachable(text: str) -> str:
    hosts = [f"{v}={os.environ[v]}" for v in EMULATOR_ENV.values() if os.environ.get(v)]
    if not hosts:
        return f"cannot reach Google Cloud: {text}: check the network"
    return (
        f"cannot reach the emulators ({', '.join(hosts)}): {text}: are they up? "
        '(fraudstream emulators status; eval "$(fraudstream emulators up)")'
    )


def _one_line(error: BaseException, limit: int = 400) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _stderr(line: str) -> None:
    print(f"setup: {line}", file=sys.stderr, flush=True)
