"""What the online store holds for a card or a terminal, asked for by the id a producer sent.

An investigator reading an alert knows the card as the payment service names it (``17``, a
token, a UUID); the store keys it by that id's key (:func:`features.limits.id_of_text`) and,
when ids are pseudonymised, by the key's pseudonym. :func:`entity_features` applies both, as the
job and ``fraudstream materialize`` do, and reads through Feast's ``get_online_features``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from features.limits import id_of_text
from features.spec import FeatureSpec
from streaming.pseudonymise import Pseudonymiser
from streaming.store.base import OnlineFeatureReader
from streaming.store.names import stored_entities


def entity_features(
    spec: FeatureSpec,
    ids: Mapping[str, str],
    open_reader: Callable[[], OnlineFeatureReader],
    pseudonyms: Pseudonymiser | None,
) -> dict[str, Any]:
    """``{entity name: {"id", "key", "stored_as", "found", "features"}}`` for each entity of
    ``ids`` (entity name -> the id as sent: digits or a text id), read in one call of the
    reader ``open_reader`` gives (opened once the ids are known to be valid: a Feast store
    takes seconds). A feature without a live value is ``None``. ``ValueError`` names an id the
    job would refuse or an entity the spec does not store."""
    entities = {e.name: e for e in stored_entities(spec)}
    unknown = sorted(set(ids) - set(entities))
    if unknown:
        raise ValueError(f"{spec.name} stores no {unknown} features (it has {sorted(entities)})")
    stored: dict[str, tuple[int, int]] = {}
    for name, given in ids.items():
        try:
            key = id_of_text(given)[0]
        except ValueError as exc:
            raise ValueError(f"{name} id {exc}") from None
        stored[name] = (key, key if pseudonyms is None else pseudonyms.pseudonymise(name, key))
    rows = {e.key: np.array([stored.get(e.name, (0, 0))[1]], np.int64) for e in entities.values()}
    read = open_reader().read(rows)
    out: dict[str, Any] = {}
    for name, (key, as_stored) in stored.items():
        names = spec.entity_names(entities[name])
        values = read.values[0, [read.columns.index(n) for n in names]].tolist()
        out[name] = {
            "id": ids[name],
            "key": key,
            "stored_as": as_stored,
            "found": bool(read.found[name][0]),
            "features": {n: None if v != v else v for n, v in zip(names, values, strict=True)},
        }
    return out
