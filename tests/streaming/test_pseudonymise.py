"""Keyed id pseudonymisation: deterministic, keyed, domain-separated, int63, key never shown."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import pickle
import sys

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from streaming.pseudonymise import (
    CUSTOMER,
    ENV_KEY,
    ENV_KEY_SECRET,
    TERMINAL,
    KeyConfigError,
    Pseudonymiser,
    parse_key_text,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
int64s = st.integers(min_value=INT64_MIN, max_value=INT64_MAX)


@pytest.fixture(scope="module")
def pz() -> Pseudonymiser:
    return Pseudonymiser(KEY)


def _reference(key: bytes, entity: str, entity_id: int) -> int:
    """The documented construction, written out with the standard library."""
    message = b"fraudstream/id/v1\x00" + entity.encode() + b"\x00"
    message += entity_id.to_bytes(8, "big", signed=True)
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def test_known_answers(pz: Pseudonymiser) -> None:
    # Pinned: changing the construction would orphan every pseudonymised row already stored.
    assert pz.customer(5) == 1491451769457487660
    assert pz.terminal(5) == 8509789126477709258
    assert pz.fingerprint == "798bccbe"
    for entity, entity_id in [(CUSTOMER, 5), (TERMINAL, 5), (CUSTOMER, -1), (TERMINAL, 0)]:
        assert pz.pseudonymise(entity, entity_id) == _reference(KEY, entity, entity_id)


def test_deterministic_for_a_key(pz: Pseudonymiser) -> None:
    again = Pseudonymiser(bytes(KEY))
    ids = np.arange(-50, 50, dtype=np.int64)
    assert [pz.customer(int(i)) for i in ids] == [again.customer(int(i)) for i in ids]
    np.testing.assert_array_equal(pz.terminals(ids), again.terminals(ids))
    assert pz == again and pz.fingerprint == again.fingerprint


def test_different_keys_give_different_pseudonyms(pz: Pseudonymiser) -> None:
    other = Pseudonymiser(OTHER_KEY)
    ids = np.arange(1000, dtype=np.int64)
    assert not np.any(pz.customers(ids) == other.customers(ids))
    assert pz.fingerprint != other.fingerprint
    assert pz != other


def test_customer_and_terminal_domains_are_separate(pz: Pseudonymiser) -> None:
    ids = np.arange(1000, dtype=np.int64)
    customers, terminals = pz.customers(ids), pz.terminals(ids)
    assert not np.any(customers == terminals)
    assert not set(customers.tolist()) & set(terminals.tolist())
    assert pz.pseudonymise("merchant", 7) not in (pz.customer(7), pz.terminal(7))


@settings(max_examples=200, deadline=None)
@given(ids=st.lists(int64s, max_size=50))
@example(ids=[0])
@example(ids=[INT64_MAX])
@example(ids=[INT64_MIN, -1, 0, 1, INT64_MAX])
@example(ids=[3, 3, 3, 0, 3])
def test_vectorised_equals_scalar(pz: Pseudonymiser, ids: list[int]) -> None:
    array = np.array(ids, dtype=np.int64)
    for entity in (CUSTOMER, TERMINAL):
        out = pz.pseudonymise_array(entity, array)
        assert out.dtype == np.int64 and out.shape == array.shape
        assert out.tolist() == [pz.pseudonymise(entity, i) for i in ids]
        assert out.tolist() == [_reference(KEY, entity, i) for i in ids]


@settings(max_examples=200, deadline=None)
@given(entity_id=int64s)
@example(entity_id=0)
@example(entity_id=INT64_MAX)
@example(entity_id=INT64_MIN)
def test_pseudonyms_are_non_negative_int63(pz: Pseudonymiser, entity_id: int) -> None:
    for value in (pz.customer(entity_id), pz.terminal(entity_id)):
        assert isinstance(value, int)
        assert 0 <= value <= INT64_MAX


def test_array_shapes_dtypes_and_scalar_types(pz: Pseudonymiser) -> None:
    grid = np.arange(12, dtype=np.int32).reshape(3, 4)
    out = pz.customers(grid)
    assert out.shape == (3, 4) and out.dtype == np.int64
    assert out[2, 3] == pz.customer(11) == pz.customer(np.int64(11))
    assert pz.customers(np.array([], dtype=np.int64)).shape == (0,)
    assert pz.customers([]).dtype == np.int64
    assert pz.customers(np.array([7], dtype=np.uint64)).tolist() == [pz.customer(7)]
    with pytest.raises(TypeError, match="integer dtype"):
        pz.customers(np.array([1.5]))
    with pytest.raises(ValueError, match="int64 range"):
        pz.customers(np.array([2**63], dtype=np.uint64))
    with pytest.raises(ValueError, match="int64 range"):
        pz.customer(2**63)
    with pytest.raises(TypeError, match="integer"):
        pz.customer("5")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="integer"):
        pz.customer(True)
    with pytest.raises(ValueError, match="entity"):
        pz.pseudonymise("Customer\x00", 1)


def test_no_collisions_among_consecutive_ids(pz: Pseudonymiser) -> None:
    ids = np.arange(100_000, dtype=np.int64)
    for out in (pz.customers(ids), pz.terminals(ids)):
        assert np.unique(out).size == ids.size
        assert out.min() >= 0


# -- keys -------------------------------------------------------------------------------------


def test_short_or_invalid_keys_are_refused_clearly() -> None:
    with pytest.raises(KeyConfigError, match=r"31 bytes; at least 32"):
        Pseudonymiser(b"k" * 31)
    with pytest.raises(TypeError, match="bytes"):
        Pseudonymiser("0" * 64)  # type: ignore[arg-type]
    with pytest.raises(KeyConfigError, match="16 bytes; at least 32"):
        parse_key_text("ab" * 16, "$X")
    with pytest.raises(KeyConfigError, match="not valid base64"):
        parse_key_text("not a key!!", "$X")
    with pytest.raises(KeyConfigError, match="not valid hex"):
        parse_key_text("hex:zz" + "00" * 32, "$X")
    with pytest.raises(KeyConfigError, match="empty"):
        parse_key_text("  \n", "$X")
    with pytest.raises(KeyConfigError, match="ASCII"):
        parse_key_text(b"\xff" * 40, "$X")


def test_key_text_encodings() -> None:
    assert parse_key_text(KEY.hex()) == KEY
    assert parse_key_text(KEY.hex().upper() + "\n") == KEY
    assert parse_key_text("hex:" + KEY.hex()) == KEY
    assert parse_key_text(base64.b64encode(KEY).decode()) == KEY
    assert parse_key_text("base64:" + base64.b64encode(KEY).decode()) == KEY
    url_key = bytes([251] * 40)  # '+'/'/' in standard base64, '-'/'_' in URL-safe
    assert parse_key_text(base64.urlsafe_b64encode(url_key).decode().rstrip("=")) == url_key
    assert parse_key_text(base64.b64encode(url_key)) == url_key


def test_from_env_sources_in_order() -> None:
    secret_key = bytes(range(100, 140))
    fetched: list[str] = []

    def fetch(name: str) -> bytes:
        fetched.append(name)
        return secret_key.hex().encode() + b"\n"

    name = "projects/p/secrets/s/versions/3"
    env = {ENV_KEY: OTHER_KEY.hex(), ENV_KEY_SECRET: name}
    assert Pseudonymiser.from_env(True, key=KEY, environ=env, fetch_secret=fetch) == Pseudonymiser(
        KEY
    )
    assert Pseudonymiser.from_env(True, environ=env, fetch_secret=fetch) == Pseudonymiser(OTHER_KEY)
    assert not fetched
    env = {ENV_KEY_SECRET: name}
    assert Pseudonymiser.from_env(True, environ=env, fetch_secret=fetch) == Pseudonymiser(
        secret_key
    )
    assert fetched == [name]


def test_from_env_without_a_key() -> None:
    assert Pseudonymiser.from_env(False, environ={}) is None
    with pytest.raises(KeyConfigError, match=ENV_KEY):
        Pseudonymiser.from_env(True, environ={})
    # Set but unusable fails closed, even when not required.
    with pytest.raises(KeyConfigError, match="empty"):
        Pseudonymiser.from_env(False, environ={ENV_KEY: ""})
    with pytest.raises(KeyConfigError, match="at least 32"):
        Pseudonymiser.from_env(False, environ={ENV_KEY: "00" * 8})
    with pytest.raises(KeyConfigError, match="projects/P/secrets/S/versions/V"):
        Pseudonymiser.from_env(False, environ={ENV_KEY_SECRET: "my-secret"})


def test_secret_manager_client_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    import google.cloud

    calls: list[dict[str, str]] = []

    class FakeClient:
        def access_secret_version(self, request: dict[str, str]) -> object:
            calls.append(request)
            payload = type("Payload", (), {"data": base64.b64encode(KEY)})()
            return type("Response", (), {"payload": payload})()

    fake = type(sys)("fake_secretmanager")
    fake.SecretManagerServiceClient = FakeClient  # type: ignore[attr-defined]
    monkeypatch.setattr(google.cloud, "secretmanager", fake, raising=False)
    name = "projects/p/secrets/s/versions/latest"
    got = Pseudonymiser.from_env(True, environ={ENV_KEY_SECRET: name})
    assert got == Pseudonymiser(KEY)
    assert calls == [{"name": name}]


def test_missing_secret_manager_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import google.cloud

    monkeypatch.delattr(google.cloud, "secretmanager", raising=False)
    monkeypatch.setitem(sys.modules, "google.cloud.secretmanager", None)
    with pytest.raises(KeyConfigError, match="google-cloud-secret-manager"):
        Pseudonymiser.from_env(True, environ={ENV_KEY_SECRET: "projects/p/secrets/s/versions/1"})


# -- the key never shows ----------------------------------------------------------------------


def test_repr_and_errors_hide_the_key(caplog: pytest.LogCaptureFixture) -> None:
    key = bytes(range(200, 240))
    pz = Pseudonymiser(key)
    shown = {repr(pz), str(pz), f"{pz}"}
    assert shown == {f"Pseudonymiser(fingerprint={pz.fingerprint!r})"}
    forms = {key.hex(), key.hex().upper(), base64.b64encode(key).decode(), repr(key)}
    for text in shown:
        assert not any(form in text for form in forms)
    expected = hmac.new(key, b"fraudstream-key-id", hashlib.sha256).hexdigest()[:8]
    assert pz.fingerprint == expected

    bad = "ab" * 20 + "zz"
    with caplog.at_level(logging.DEBUG), pytest.raises(KeyConfigError) as info:
        Pseudonymiser.from_env(False, environ={ENV_KEY: "hex:" + bad})
    assert bad not in str(info.value)
    with caplog.at_level(logging.DEBUG):
        Pseudonymiser.from_env(
            False,
            environ={ENV_KEY: key.hex(), ENV_KEY_SECRET: "projects/p/secrets/s/versions/1"},
        )
    assert not any(form in caplog.text for form in forms)


def test_pickle_round_trip(pz: Pseudonymiser) -> None:
    pz.customer(1)  # populate the per-entity cache, which must not be pickled
    clone = pickle.loads(pickle.dumps(pz))
    assert clone == pz and repr(clone) == repr(pz)
    ids = np.arange(-5, 500, dtype=np.int64)
    np.testing.assert_array_equal(clone.customers(ids), pz.customers(ids))
    np.testing.assert_array_equal(clone.terminals(ids), pz.terminals(ids))


def test_the_jobs_pseudonymiser_remembers_pseudonyms_within_its_bound(
    pz: Pseudonymiser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each id is hashed once while the memo holds it; a full memo starts afresh."""
    from streaming.job import ids
    from streaming.schema import Label, Transaction

    monkeypatch.setattr(ids, "MEMO_SIZE", 3)
    hashed: list[tuple[str, int]] = []

    class Counting:
        """The key's pseudonyms, each call recorded."""

        def customer(self, i: int) -> int:
            hashed.append((CUSTOMER, i))
            return pz.customer(i)

        def terminal(self, i: int) -> int:
            hashed.append((TERMINAL, i))
            return pz.terminal(i)

    # what on_worker resolves from the environment, counted
    step = ids.WorkerPseudonyms(Counting(), {}, {}, keep_clear=False)
    records = [Transaction(t, 0, c, c + 100, 1.0) for t, c in enumerate([1, 2, 1, 3, 1, 4, 5])]
    records.append(Label(9, 2, 102, 0, 0, 1))
    expected = [(pz.customer(r.customer_id), pz.terminal(r.terminal_id)) for r in records]
    out = [step(r) for r in records]
    assert [(o.customer_id, o.terminal_id) for o in out] == expected
    assert [type(o) for o in out] == [type(r) for r in records]
    customers = [i for e, i in hashed if e == CUSTOMER]
    assert customers == [1, 2, 3, 4, 5, 2]  # repeats remembered; full at 3 ids, then afresh
    assert len(step.customers) <= 3 and len(step.terminals) <= 3
    with pytest.raises(TypeError, match="integer"):
        step(Transaction(10, 0, True, 1, 1.0))  # a bool is no id, remembered or not


def test_every_copy_of_the_job_step_shares_the_process_memo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A runner may set up a copy of the parse step per bundle: the key is resolved once per
    source and what one copy remembered the next one finds."""
    from streaming.job import ids
    from streaming.schema import Transaction

    monkeypatch.setattr(ids, "_WORKER", {})
    monkeypatch.delenv(ENV_KEY_SECRET, raising=False)
    monkeypatch.setenv(ENV_KEY, KEY.hex())
    resolved = []
    from_env = Pseudonymiser.from_env
    monkeypatch.setattr(
        Pseudonymiser,
        "from_env",
        classmethod(lambda cls, *a, **k: resolved.append(1) or from_env(*a, **k)),
    )
    settings = ids.PseudonymiseIds(None, False)
    first = settings.on_worker()
    first(Transaction(1, 0, 7, 107, 1.0))
    second = settings.on_worker()
    assert len(resolved) == 1 and second.ids is first.ids
    assert second.customers == {7: Pseudonymiser(KEY).customer(7)}
    monkeypatch.setenv(ENV_KEY, OTHER_KEY.hex())  # another key: its own pseudonyms and memo
    third = settings.on_worker()
    assert len(resolved) == 2 and third.ids == Pseudonymiser(OTHER_KEY) and not third.customers


@pytest.mark.parametrize("keep_clear", [False, True])
def test_the_jobs_pseudonymiser_changes_the_ids_and_nothing_else(
    pz: Pseudonymiser, keep_clear: bool
) -> None:
    """Every other field as it was (a transaction's looked-up features, clear ids and text
    transaction id too); ``keep_clear``: a transaction keeps its clear ids, a label has none
    to keep."""
    import dataclasses

    from streaming.job import ids
    from streaming.schema import Label, Transaction

    @dataclasses.dataclass(frozen=True)
    class Other:  # any record with the two ids
        customer_id: int
        terminal_id: int
        note: str = "kept"

    step = ids.WorkerPseudonyms(pz, {}, {}, keep_clear=keep_clear)
    tx = Transaction(
        5, 10**18, 7, 107, 12.5, received_at=3.25, lookups=(1.0, 2.0), text_ids=("tx-5", None, None)
    )  # a transaction id sent as text stays for the alert
    earlier = dataclasses.replace(tx, clear_ids=(70, 170))  # clear ids set before
    label = Label(5, 7, 107, 10**18, 10**18 + 9, 1, received_at=4.5)
    for record in (tx, label):  # a field added to the records must be set here, and kept
        unset = {f.name for f in dataclasses.fields(record) if getattr(record, f.name) == f.default}
        assert unset <= {"clear_ids"}, unset
    for record in (tx, earlier, label, Other(7, 107)):
        out = step(record)
        clear = {}
        if keep_clear and hasattr(record, "clear_ids"):
            clear = {"clear_ids": (record.customer_id, record.terminal_id)}
        assert out == dataclasses.replace(
            record, customer_id=pz.customer(7), terminal_id=pz.terminal(107), **clear
        )
        assert type(out) is type(record)
