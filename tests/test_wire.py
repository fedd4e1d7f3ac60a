"""Response heads and refusal bodies as they go on the wire (proxy/wire.py)."""

from __future__ import annotations

import pytest

from proxy.wire import describe, encode_head


def test_describe_names_the_fault_kind_and_hides_5xx_detail() -> None:
    assert describe(400, "too_long")["error"]["code"] == "request_header_too_large"
    assert describe(400, None)["error"]["code"] == "bad_http"
    assert describe(500, "http")["error"] == {
        "message": "internal error in Warden's HTTP server; see its log",
        "type": "server_error", "param": None, "code": "internal_error"}


def test_encode_head_frames_and_refuses_line_breaks() -> None:
    head = encode_head(201, {"X-A": "1", "content-length": "99", "Server": "other"},
                       "Content-Length: 2\r\n", close=True)
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 201 Created"
    assert b"X-A: 1" in lines and b"Content-Length: 2" in lines
    assert b"content-length: 99" not in lines and b"Server: other" not in lines
    assert b"Server: warden" in lines and b"Connection: close" in lines
    assert head.endswith(b"\r\n\r\n")
    with pytest.raises(ValueError):
        encode_head(200, {"X-A": "1\nInjected: yes"}, "", close=False)
    with pytest.raises(ValueError):
        encode_head(200, {"X-A\r": "1"}, "", close=False)
