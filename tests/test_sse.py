"""The SSE splitter returns exactly the complete events, whatever the cut points."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from proxy import sse

STREAM = (b'data: {"a":1}\n\n'
          b": keep-alive\n\n"
          b'data: {"b":"x\xc3\xa9y"}\n\n'
          b"event: ping\ndata: line1\ndata: line2\n\n"
          b"data: [DONE]\n\n")
EVENTS = [b'data: {"a":1}\n\n', b": keep-alive\n\n", b'data: {"b":"x\xc3\xa9y"}\n\n',
          b"event: ping\ndata: line1\ndata: line2\n\n", b"data: [DONE]\n\n"]


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(st.lists(st.integers(min_value=0, max_value=500), max_size=30))
def test_any_cut_points_give_the_same_events(cuts: list[int]) -> None:
    splitter = sse.EventSplitter()
    out: list[bytes] = []
    for piece in split_at(STREAM, cuts):
        out.extend(splitter.feed(piece))
    assert out == EVENTS
    assert splitter.pending == b""


def test_every_single_byte_boundary() -> None:
    for cut in range(len(STREAM) + 1):
        splitter = sse.EventSplitter()
        out = splitter.feed(STREAM[:cut]) + splitter.feed(STREAM[cut:])
        assert out == EVENTS, cut


def test_crlf_framing_is_understood() -> None:
    splitter = sse.EventSplitter()
    out = splitter.feed(b'data: {"a":1}\r\n\r')
    out += splitter.feed(b'\ndata: [DONE]\r\n\r\n')
    assert [sse.event_data(e) for e in out] == [b'{"a":1}', b"[DONE]"]


def test_truncated_event_stays_pending() -> None:
    splitter = sse.EventSplitter()
    assert splitter.feed(b'data: {"a":1}\n\ndata: {"b"') == [b'data: {"a":1}\n\n']
    assert splitter.pending == b'data: {"b"'


def test_event_data() -> None:
    assert sse.event_data(b"data: [DONE]\n\n") == sse.DONE
    assert sse.event_data(b": comment\n\n") is None
    assert sse.event_data(b"event: x\ndata:a\ndata: b\n\n") == b"a\nb"


def test_encode_round_trip() -> None:
    raw = sse.encode({"text": "héllo", "n": [1, 2]})
    assert raw == 'data: {"text":"héllo","n":[1,2]}\n\n'.encode()
    assert sse.encode_done() == b"data: [DONE]\n\n"
