"""Messages of Pub/Sub schema topics: Avro or protobuf payloads decoded with the revision they
were published in.

A topic with a Pub/Sub schema stamps each message with the attributes
``googclient_schemaname``, ``googclient_schemarevisionid`` and ``googclient_schemaencoding``
(``BINARY`` or ``JSON``). :class:`SchemaDecoder` reads that revision from Pub/Sub's schema
service (once per revision on each worker thread), decodes the payload and hands the wire
contract's parsers its fields, so one set of rules holds for every producer:

* Avro (fastavro): ``BINARY`` payloads and Avro's ``JSON`` encoding (unions written as
  ``{"long": 5}``); the record must be the whole payload. A ``timestamp-millis``/``-micros``
  time reaches the parser as RFC 3339 text (UTC), a ``local-timestamp-*`` one as naive ISO 8601
  (read in ``--naive_time_zone``), a ``decimal`` amount as a number.
* Protobuf: the revision's ``.proto`` text is compiled with protoc (grpcio-tools) and its one
  top-level message reads ``BINARY`` payloads and proto3 ``JSON`` ones; the fields reach the
  parser in proto3's JSON form (an ``int64`` as a string of digits), fields at their default
  value included, as the binary form does not tell them from absent ones.
* A message without the attributes (a topic without a schema) passes through as JSON.

Refused with a ``ValueError`` (the job's dead letter): a payload that does not decode with its
revision, a schema the job cannot read (not an Avro record, a ``.proto`` that does not compile
or has no single top-level message), a revision the service does not have or will not show
(``NotFound``, ``PermissionDenied``: asked again after :data:`RETRY_S`). Other errors of the
schema service (unavailable, deadline) propagate, so the runner retries the bundle.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import fastavro

from streaming.schema import MAX_PAYLOAD_BYTES

SCHEMA_NAME = "googclient_schemaname"
SCHEMA_REVISION = "googclient_schemarevisionid"
SCHEMA_ENCODING = "googclient_schemaencoding"
RETRY_S = 60.0
"""How long a revision the service refused stays refused on a worker before it is asked again."""


@dataclass(frozen=True)
class SchemaRevision:
    """One revision of a Pub/Sub schema: ``type`` is ``AVRO`` or ``PROTOCOL_BUFFER``."""

    name: str
    type: str
    definition: str


Fetch = Callable[[str], SchemaRevision]
"""``fetch("projects/P/schemas/S@REVISION")``; raises ``LookupError`` for a revision the service
does not have or will not show, anything else for a failure worth retrying."""

_client: Any = None


def fetch_from_pubsub(name: str) -> SchemaRevision:
    """A revision from Pub/Sub's schema service (the emulator's where ``$PUBSUB_EMULATOR_HOST``
    is set). The caller needs ``pubsub.schemas.get`` (e.g. ``roles/pubsub.viewer``)."""
    global _client
    from google.api_core import exceptions
    from google.cloud import pubsub_v1

    if _client is None:
        _client = pubsub_v1.SchemaServiceClient()
    try:
        schema = _client.get_schema(request={"name": name})
    except (exceptions.NotFound, exceptions.PermissionDenied, exceptions.InvalidArgument) as exc:
        raise LookupError(f"{exc.code.value} {exc.message}") from exc
    return SchemaRevision(name, schema.type_.name, schema.definition)


def topic_schema(path: str, timeout_s: float = 10.0) -> tuple[str, str] | None:
    """``(schema, encoding)`` of the topic that ``path`` (a subscription or a topic) reads, or
    None when the topic has no schema; raises what the client raises when it cannot tell."""
    from google.cloud import pubsub_v1

    topic = path
    if "/subscriptions/" in path:
        subscriber = pubsub_v1.SubscriberClient()
        topic = subscriber.get_subscription(subscription=path, timeout=timeout_s).topic
    settings = pubsub_v1.PublisherClient().get_topic(topic=topic, timeout=timeout_s)
    if not settings.schema_settings.schema:
        return None
    return settings.schema_settings.schema, settings.schema_settings.encoding.name


Decode = Callable[[bytes], dict]

_AVRO_ERRORS = (EOFError, ValueError, IndexError, KeyError, TypeError, struct.error, OverflowError)
"""What fastavro raises on bytes that are not a record of the schema."""


class SchemaDecoder:
    """``decoder(data, attributes)`` -> the payload's fields (a schema topic's message), or
    ``data`` itself (no schema attributes: JSON for the wire contract's parser).

    Picklable (a Beam DoFn carries it); each worker keeps its own cache of revisions."""

    def __init__(
        self, fetch: Fetch = fetch_from_pubsub, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.fetch, self.clock = fetch, clock
        self._revisions: dict[str, SchemaRevision] = {}
        self._decoders: dict[tuple[str, str], Decode] = {}
        self._refused: dict[str, tuple[float, str]] = {}

    def __call__(self, data: bytes, attributes: Mapping[str, str]) -> bytes | dict:
        name = attributes.get(SCHEMA_NAME)
        if name is None:
            return data
        revision = attributes.get(SCHEMA_REVISION, "")
        encoding = attributes.get(SCHEMA_ENCODING, "")
        if len(data) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"payload of {len(data)} bytes exceeds {MAX_PAYLOAD_BYTES}")
        key = (f"{name}@{revision}" if revision else name, encoding)
        decode = self._decoders.get(key)
        if decode is None:
            decode = self._decoders[key] = self._decoder(*key)
        return decode(data)

    def _decoder(self, name: str, encoding: str) -> Decode:
        revision = self._revisions.get(name)
        if revision is None:
            revision = self._revisions[name] = self._fetch(name)
        try:
            if encoding not in ("BINARY", "JSON"):
                raise ValueError(f"schema encoding {encoding!r} of {name} is not BINARY or JSON")
            if revision.type == "PROTOCOL_BUFFER":
                return protobuf_decoder(revision, encoding)
            return avro_decoder(revision, encoding)
        except ValueError as exc:  # a revision never changes: refused for good
            return _refuse(str(exc))

    def _fetch(self, name: str) -> SchemaRevision:
        refused = self._refused.get(name)
        if refused is not None and self.clock() < refused[0]:
            raise ValueError(refused[1])
        try:
            return self.fetch(name)
        except LookupError as exc:
            reason = f"schema {name} cannot be read: {exc}"
            self._refused[name] = (self.clock() + RETRY_S, reason)
            raise ValueError(reason) from exc

    def __getstate__(self) -> dict:
        return {"fetch": self.fetch, "clock": self.clock}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["fetch"], state["clock"])


def avro_decoder(revision: SchemaRevision, encoding: str) -> Decode:
    """``decode(payload) -> fields`` for messages of an Avro ``revision`` in ``encoding``."""
    if revision.type != "AVRO":
        raise ValueError(f"schema {revision.name} is {revision.type}, not AVRO or PROTOCOL_BUFFER")
    try:
        schema = fastavro.parse_schema(json.loads(revision.definition))
    except (ValueError, fastavro.schema.SchemaParseException) as exc:
        raise ValueError(f"schema {revision.name} is not a valid Avro schema: {exc}") from exc
    if not isinstance(schema, dict) or schema.get("type") != "record":
        raise ValueError(f"schema {revision.name} is not an Avro record")
    what = f"Avro {encoding} of schema {revision.name}"

    def decode(data: bytes) -> dict:
        try:
            if encoding == "BINARY":
                buffer = io.BytesIO(data)
                record = fastavro.schemaless_reader(buffer, schema)
                if buffer.tell() != len(data):
                    raise ValueError(f"{len(data) - buffer.tell()} bytes after the record")
            else:
                record = _one_json_record(data, schema)
        except _AVRO_ERRORS as exc:  # UnicodeDecodeError is a ValueError
            detail = str(exc) or ("ends inside the record" if isinstance(exc, EOFError) else "")
            raise ValueError(f"payload is not {what} ({type(exc).__name__}: {detail})") from exc
        return {field: _plain(value) for field, value in record.items()}

    return decode


def _refuse(reason: str) -> Decode:
    def refuse(data: bytes) -> dict:
        raise ValueError(reason)

    return refuse


def _one_json_record(data: bytes, schema: dict) -> dict:
    records = list(fastavro.json_reader(io.StringIO(data.decode("utf-8")), schema))
    if len(records) != 1:
        raise ValueError(f"{len(records)} records in one message")
    return records[0]


def _plain(value: Any) -> Any:
    """A decoded value in the form the wire contract's parser reads (times as ISO 8601 text)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def protobuf_decoder(revision: SchemaRevision, encoding: str) -> Decode:
    """``decode(payload) -> fields`` for messages of a protobuf ``revision`` in ``encoding``."""
    from google.protobuf import json_format
    from google.protobuf.message import DecodeError

    message_class = _message_class(revision)
    what = f"protobuf {encoding} of schema {revision.name}"

    def decode(data: bytes) -> dict:
        message = message_class()
        try:
            if encoding == "BINARY":
                message.ParseFromString(data)
            else:
                json_format.Parse(data.decode("utf-8"), message)
        except (DecodeError, json_format.ParseError, UnicodeDecodeError) as exc:
            raise ValueError(f"payload is not {what} ({type(exc).__name__}: {exc})") from exc
        return json_format.MessageToDict(
            message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )

    return decode


def _message_class(revision: SchemaRevision) -> type:
    """The class of the one top-level message of ``revision``'s ``.proto`` text, compiled by
    protoc into a pool of its own (two revisions may define the same names)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "schema.proto").write_text(revision.definition)
        well_known = resources.files("grpc_tools") / "_proto"
        compiled = subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp}", f"-I{well_known}",
             "--include_imports", f"--descriptor_set_out={tmp}/schema.pb", "schema.proto"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if compiled.returncode != 0:
            error = compiled.stderr.strip().replace(f"{tmp}/", "")
            raise ValueError(f"schema {revision.name} does not compile: {error}")
        files = descriptor_pb2.FileDescriptorSet.FromString(Path(tmp, "schema.pb").read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:  # imports first, as protoc writes them
        pool.Add(file)
    messages = list(pool.FindFileByName("schema.proto").message_types_by_name.values())
    if len(messages) != 1:
        names = [m.name for m in messages]
        raise ValueError(f"schema {revision.name} must define one top-level message, not {names}")
    return message_factory.GetMessageClass(messages[0])
