"""``fraudstream redrive``: dead letters back to the topic they were read from, once their cause
is fixed (a producer's bug, a job started without an option it needed).

:func:`redrive` pulls the dead-letter records of a subscription (those the job writes:
``payload``, ``payload_encoding``, ``error``, ``stage``, ``time``, and ``attributes`` for a
message read with ``--pubsub_schemas``) and republishes each selected one's payload, as sent,
to the input topic of its stage: ``parse_transactions`` and ``features`` (``DUPLICATE``,
``TOO_LATE``) to the transactions topic, ``parse_labels`` to the labels topic. A record is
acknowledged only once its message is published; the others (not selected, a dry run, no topic
for the stage, not a dead-letter record) are handed back to the subscription at the end, so
nothing is lost. Attributes Pub/Sub reserves (``goog...``: a schema topic's name and revision)
are not republished: Pub/Sub stamps them again on a schema topic.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

STAGES = ("parse_transactions", "parse_labels", "features")
DEFAULT_STAGES = ("parse_transactions", "parse_labels")
"""What is redriven unless ``--stage`` says otherwise: a ``features`` dead letter is a
duplicate or a transaction too late to apply, which a second delivery does not change."""
PULL_MAX = 500
HOLD_S = 600
"""How long a letter kept by a run is held from other pulls (Pub/Sub's longest ack deadline);
a run's end hands it back at once."""
RESERVED_PREFIX = "goog"


@dataclass(frozen=True)
class Selection:
    """Which dead letters to redrive: their stages, and a text their error must contain."""

    stages: tuple[str, ...] = DEFAULT_STAGES
    error_contains: str | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.stages) - set(STAGES))
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}: one of {list(STAGES)}")

    def wants(self, letter: dict) -> bool:
        return letter["stage"] in self.stages and (
            self.error_contains is None or self.error_contains in letter["error"]
        )


@dataclass
class Report:
    """What a run did, by (stage, error): ``redriven``, ``kept`` (handed back) and why."""

    redriven: Counter = field(default_factory=Counter)
    kept: Counter = field(default_factory=Counter)

    def rows(self) -> list[tuple[str, str, str, int]]:
        """(action, stage, error, count), most frequent first within each action."""
        out = [("redriven", s, e, n) for (s, e), n in self.redriven.most_common()]
        return out + [("kept: " + why, s, e, n) for (why, s, e), n in self.kept.most_common()]


def letter_of(data: bytes) -> dict | None:
    """The dead-letter record in a message, or None if it is not one."""
    try:
        letter = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    keys = ("payload", "payload_encoding", "error", "stage")
    if not isinstance(letter, dict) or any(k not in letter for k in keys):
        return None
    return letter


def payload_of(letter: dict) -> bytes:
    """The payload as the producer sent it; ``ValueError`` if the record's encoding is wrong."""
    if letter["payload_encoding"] == "base64":
        try:
            return base64.b64decode(letter["payload"], validate=True)
        except binascii.Error as exc:
            raise ValueError(f"payload is not base64 ({exc})") from exc
    if letter["payload_encoding"] == "text":
        return str(letter["payload"]).encode("utf-8")
    raise ValueError(f"unknown payload_encoding {letter['payload_encoding']!r}")


def attributes_of(letter: dict) -> dict[str, str]:
    """The message's attributes to republish: those kept, less the ones Pub/Sub reserves."""
    kept = letter.get("attributes") or {}
    return {k: str(v) for k, v in kept.items() if not k.startswith(RESERVED_PREFIX)}


def redrive(
    subscription: str,
    topics: dict[str, str | None],
    selection: Selection = Selection(),
    max_messages: int | None = None,
    dry_run: bool = False,
    wait_s: float = 5.0,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Redrive the selected dead letters of ``subscription`` (see the module); ``topics`` maps
    ``transactions`` and ``labels`` to their topic paths (None: that stage is kept)."""
    from google.cloud import pubsub_v1

    subscriber, publisher = pubsub_v1.SubscriberClient(), pubsub_v1.PublisherClient()
    report, held, seen = Report(), {}, set()
    try:
        while max_messages is None or len(seen) < max_messages:
            batch = _pull(subscriber, subscription, wait_s if not seen else min(wait_s, 1.0))
            new = [m for m in batch if m.message.message_id not in seen]
            for received in batch:  # a message held past its deadline comes again: newest ack id
                if received.message.message_id in held:
                    held[received.message.message_id] = received.ack_id
            if not new:
                break
            if max_messages is not None:
                new = new[: max_messages - len(seen)]
            seen.update(m.message.message_id for m in new)
            before = set(held)
            done = _handle(new, topics, selection, dry_run, publisher, report, held)
            if done:
                subscriber.acknowledge(subscription=subscription, ack_ids=done)
            kept = [held[i] for i in held.keys() - before]
            if kept:  # held until the end, not redelivered to this run meanwhile
                subscriber.modify_ack_deadline(
                    subscription=subscription, ack_ids=kept, ack_deadline_seconds=HOLD_S
                )
            if progress is not None:
                progress(len(new))
    finally:
        if held:  # back to the subscription, at once
            ids = list(held.values())
            for start in range(0, len(ids), PULL_MAX):
                subscriber.modify_ack_deadline(
                    subscription=subscription, ack_ids=ids[start : start + PULL_MAX],
                    ack_deadline_seconds=0,
                )  # fmt: skip
    return report


def _pull(subscriber: Any, subscription: str, timeout: float) -> Sequence[Any]:
    from google.api_core import exceptions

    try:
        response = subscriber.pull(
            subscription=subscription, max_messages=PULL_MAX, timeout=timeout
        )
    except exceptions.DeadlineExceeded:
        return []
    return response.received_messages


_TOPIC_OF_STAGE = {"parse_transactions": "transactions", "features": "transactions",
                   "parse_labels": "labels"}  # fmt: skip


def _handle(
    received: Sequence[Any],
    topics: dict[str, str | None],
    selection: Selection,
    dry_run: bool,
    publisher: Any,
    report: Report,
    held: dict[str, str],
) -> list[str]:
    """Publish the selected letters of ``received``; the ack ids of those published."""
    sent: list[tuple[Any, Any, tuple[str, str]]] = []
    for m in received:
        letter = letter_of(m.message.data)
        if letter is None:
            why, key = "not a dead letter", ("?", "?")
        else:
            key = (str(letter["stage"]), str(letter["error"])[:80])
            topic = topics.get(_TOPIC_OF_STAGE.get(letter["stage"], ""))
            why = _why_kept(letter, selection, topic, dry_run)
            if why is None:
                try:
                    data = payload_of(letter)
                except ValueError as exc:
                    why = str(exc)
                else:
                    sent.append((m, publisher.publish(topic, data, **attributes_of(letter)), key))
                    continue
        report.kept[(why, *key)] += 1
        held[m.message.message_id] = m.ack_id
    done = []
    for m, future, key in sent:
        try:
            future.result(timeout=60)
        except Exception as exc:  # kept: the letter stays in the subscription
            report.kept[(f"publish failed: {type(exc).__name__}", *key)] += 1
            held[m.message.message_id] = m.ack_id
        else:
            report.redriven[key] += 1
            done.append(m.ack_id)
    return done


def _why_kept(letter: dict, selection: Selection, topic: str | None, dry_run: bool) -> str | None:
    if not selection.wants(letter):
        return "not selected"
    if topic is None:
        return "no topic given for its stage"
    if dry_run:
        return "dry run"
    return None
