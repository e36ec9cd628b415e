"""MutateRows with plain protobufs: which entries are sent again, and when it gives up."""

from __future__ import annotations

import pytest
from google.api_core import exceptions as gexc

from streaming.store.bigtable.mutate import mutate_rows, set_cells

UNAVAILABLE, INVALID_ARGUMENT, NOT_FOUND = 14, 3, 5


class Server:
    """A fake MutateRows: each call answers with the next script, a function of the entries'
    row keys that returns ``{position: code}`` (a missing position gets no answer) or raises."""

    def __init__(self, *scripts) -> None:
        self.scripts, self.calls = list(scripts), []

    def __call__(self, entries):
        keys = [e.row_key for e in entries]
        self.calls.append(keys)
        script = (
            self.scripts.pop(0) if self.scripts else (lambda ks: dict.fromkeys(range(len(ks)), 0))
        )
        return self._answers(script, keys)

    @staticmethod
    def _answers(script, keys):
        codes = script(keys)  # may raise before any answer
        for index, code in codes.items():
            yield index, code, f"code {code}"


def entries(n: int):
    return [set_cells(f"k{i}".encode(), "f", [(b"view", 1_000 * i, b"v")]) for i in range(n)]


def test_entries_are_plain_protobufs_with_their_cells():
    (entry,) = entries(1)
    cell = entry.mutations[0].set_cell
    assert (entry.row_key, cell.family_name, cell.column_qualifier) == (b"k0", "f", b"view")
    assert (cell.timestamp_micros, cell.value) == (0, b"v")
    from google.protobuf.message import Message

    assert isinstance(entry, Message)  # a plain protobuf, not a proto-plus wrapper


def test_an_entry_is_the_one_the_data_client_builds():
    """Cells in order, each as the data client's own ``SetCell`` sends it."""
    from google.cloud.bigtable.data.mutations import RowMutationEntry, SetCell

    cells = [(b"customer", 5_000, b"\x01" * 40), (b"terminal", 7_000, b"")]
    theirs = RowMutationEntry(
        b"CUSTOMER_ID=42", [SetCell("f", q, v, timestamp_micros=t) for q, t, v in cells]
    )._to_pb()
    assert set_cells(b"CUSTOMER_ID=42", "f", cells) == type(theirs).pb(theirs)


def test_one_call_when_every_entry_succeeds():
    server = Server()
    assert mutate_rows(server, entries(3), budget_s=5, what="write") == 1
    assert server.calls == [[b"k0", b"k1", b"k2"]]


def test_only_the_entries_that_failed_retryably_or_got_no_answer_are_sent_again():
    server = Server(lambda ks: {0: 0, 1: UNAVAILABLE, 3: 0})  # k2: no answer
    assert mutate_rows(server, entries(4), budget_s=5, what="write") == 2
    assert server.calls == [[b"k0", b"k1", b"k2", b"k3"], [b"k1", b"k2"]]


def test_a_call_that_fails_retryably_sends_everything_again():
    def unavailable(ks):
        raise gexc.ServiceUnavailable("connection refused")

    server = Server(unavailable)
    assert mutate_rows(server, entries(2), budget_s=5, what="write") == 2
    assert server.calls == [[b"k0", b"k1"], [b"k0", b"k1"]]


def test_an_answer_streamed_before_the_cut_is_not_sent_again():
    calls = []

    def send(batch):
        calls.append([e.row_key for e in batch])
        if len(calls) == 1:
            yield 0, 0, ""
            raise gexc.ServiceUnavailable("stream broken")
        yield from ((i, 0, "") for i in range(len(batch)))

    assert mutate_rows(send, entries(3), budget_s=5, what="write") == 2
    assert calls == [[b"k0", b"k1", b"k2"], [b"k1", b"k2"]]


@pytest.mark.parametrize(("code", "error"), [(INVALID_ARGUMENT, gexc.InvalidArgument),
                                             (NOT_FOUND, gexc.NotFound)])  # fmt: skip
def test_a_failure_that_is_not_retryable_raises_its_error_at_once(code, error):
    server = Server(lambda ks: {0: 0, 1: code})
    with pytest.raises(error, match=f"code {code}"):
        mutate_rows(server, entries(2), budget_s=5, what="write")
    assert len(server.calls) == 1


def test_a_spent_budget_names_the_write_and_the_setting():
    server = Server(*[lambda ks: {0: UNAVAILABLE}] * 100)
    with pytest.raises(gexc.RetryError, match=r"write to t.*operation_timeout_s"):
        mutate_rows(server, entries(1), budget_s=0.3, what="write to t")
    assert 2 <= len(server.calls) < 100
