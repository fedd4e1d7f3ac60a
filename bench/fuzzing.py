"""Hostile-input generators and the invariants every Warden response must hold.

Shared by the CI fuzz suite (tests/test_fuzz.py, a few hundred cases) and the long run
(bench/fuzz.py, thousands): the same strategies, the same checks, only the budget
differs. A "case" is one HTTP exchange; ``Verdict`` says what was wrong with it.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

KEY = "vk-test-key-0001"
# A tenant with the screening policies on (PII, injection, scope, and limits/budget once
# they exist), so hostile input also goes through every request and response hook.
GUARDED_KEY = "vk-fuzz-guarded-001"
GUARDED_SECTIONS: dict[str, Any] = {
    "pii": {"tier": "default", "actions": {"CREDIT_CARD": "mask", "US_SSN": "block"}},
    "injection": {"action": "block"},
    "scope": {"max_tokens": 4096, "max_messages": 500},
    "limits": {"rpm": 1_000_000, "tpm": 1_000_000_000, "concurrency": 1000},
    "budget": {"tokens": 1_000_000_000, "period": "day", "max_tokens": 256},
}
# Tenants whose provider is broken on purpose: a 502/503/504 is the right answer there.
FAULTY_KEYS = ("vk-fuzz-faulty-0001", "vk-fuzz-down-00001")
ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/chat/completions", "/embeddings")
TRACE_MARKERS = ("Traceback (most recent call last)", 'File "/', "  File \"", "aiohttp/web_")


@dataclass
class Verdict:
    """Counters over many cases; ``problems`` keeps the first few bad exchanges."""

    cases: int = 0
    server_errors: int = 0  # 5xx not explained by a configured provider fault
    tracebacks: int = 0
    bad_shapes: int = 0  # a 4xx whose body is not an OpenAI error
    crashes: int = 0  # the server stopped answering (connection refused / reset)
    problems: list[str] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)

    def note(self, what: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(what)

    @property
    def ok(self) -> bool:
        return not (self.server_errors or self.tracebacks or self.bad_shapes or self.crashes)

    def figure(self) -> str:
        return (f"{self.cases} cases tried, {self.server_errors} responses 5xx, "
                f"{self.tracebacks} tracebacks, {self.crashes} crashes, "
                f"{self.bad_shapes} non-OpenAI 4xx")


def is_openai_error(body: bytes) -> bool:
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    err = doc.get("error") if isinstance(doc, dict) else None
    return (isinstance(err, dict) and isinstance(err.get("message"), str)
            and isinstance(err.get("type"), str)
            and {"message", "type", "param", "code"} <= set(err))


def judge(verdict: Verdict, status: int, body: bytes, label: str,
          fault_allowed: bool = False, protocol_level: bool = False) -> None:
    """Record one exchange. ``protocol_level``: the request was not valid HTTP/1.1, so
    aiohttp's parser answered before Warden's app ran; its error must still be
    OpenAI-shaped (proxy/server.py). Kept as a parameter so a report can tell the two
    kinds of case apart."""
    verdict.cases += 1
    verdict.statuses[status] += 1
    text = body.decode("utf-8", "replace")
    if any(m in text for m in TRACE_MARKERS):
        verdict.tracebacks += 1
        verdict.note(f"traceback: {label}: {text[:300]}")
    if status >= 500 and not (fault_allowed and status in (502, 503, 504)):
        verdict.server_errors += 1
        verdict.note(f"{status}: {label}: {text[:300]}")
    if 400 <= status < 500 and not is_openai_error(body):
        verdict.bad_shapes += 1
        verdict.note(f"non-OpenAI {status}: {label}: {text[:300]}")


# --- JSON values -----------------------------------------------------------------

surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
nasty_text = st.one_of(
    st.text(max_size=40),
    st.text(st.one_of(st.characters(), surrogates), max_size=20),
    st.sampled_from(["", "\x00", "\u202e", "\ufeff", "%s%n", "' OR 1=1--", "\r\nX-Evil: 1",
                     "[[call:x {}]]", "<script>", "${jndi:ldap://x}", "data: [DONE]\n\n"]),
)
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), nasty_text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(nasty_text, inner, max_size=4)),
    max_leaves=12,
)


def valid_chat(model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}]}


CHAT_FIELDS = ("model", "messages", "stream", "stream_options", "max_tokens",
               "max_completion_tokens", "n", "tools", "functions", "temperature", "user",
               "tool_choice", "response_format", "seed", "logit_bias")
MESSAGE_FIELDS = ("role", "content", "name", "tool_calls", "tool_call_id")
MODELS = ("gpt-4o-mini", "text-embedding-3-small", "claude", "nope", "")


@st.composite
def chat_bodies(draw: st.DrawFn) -> Any:
    """A chat body close enough to valid that it gets deep into Warden, then broken."""
    body: dict[str, Any] = valid_chat(draw(st.sampled_from(MODELS)))
    body["stream"] = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["field", "message", "unknown", "number", "nest", "big"]))
        if kind == "field":
            body[draw(st.sampled_from(CHAT_FIELDS))] = draw(json_values)
        elif kind == "message":
            msg = body["messages"][0] if isinstance(body.get("messages"), list) and \
                body["messages"] and isinstance(body["messages"][0], dict) else None
            if msg is not None:
                msg[draw(st.sampled_from(MESSAGE_FIELDS))] = draw(json_values)
        elif kind == "unknown":
            body[draw(nasty_text)] = draw(json_values)
        elif kind == "number":
            name = draw(st.sampled_from(["n", "max_tokens", "max_completion_tokens"]))
            body[name] = draw(st.sampled_from([0, -1, -(2**63), 2**31, 2**64, 10**30, 128, 129,
                                               1, 1.5, True]))
        elif kind == "nest":
            depth = draw(st.integers(10, 200))
            body[draw(st.sampled_from(["metadata", "tools", "messages"]))] = \
                _nested(depth, draw(st.booleans()))
        else:
            body["messages"] = [{"role": "user",
                                 "content": "A" * draw(st.integers(1_000, 300_000))}]
    return body


def _nested(depth: int, as_list: bool) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value] if as_list else {"a": value}
    return value


@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    """Bytes that are not (valid) JSON, or JSON that stdlib parsers choke on."""
    kind = draw(st.sampled_from(["bytes", "truncated", "deep", "utf8", "surrogate",
                                 "constant", "bom", "huge_number", "dup_keys"]))
    base = json.dumps(valid_chat()).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "truncated":
        return base[: draw(st.integers(0, len(base) - 1))]
    if kind == "deep":
        depth = draw(st.integers(500, 200_000))
        return b"[" * depth + b"]" * draw(st.sampled_from([0, depth]))
    if kind == "utf8":
        bad = draw(st.sampled_from([b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf8\x88\x80",
                                    b"\xe2\x82"]))
        return base.replace(b"hello", b"he" + bad + b"llo")
    if kind == "surrogate":
        return base.replace(b"hello", draw(st.sampled_from([b"\\ud800", b"\\udfff",
                                                            b"\\ud800\\u0041"])))
    if kind == "constant":
        return base.replace(b'"hello"', draw(st.sampled_from([b"NaN", b"Infinity",
                                                              b"-Infinity"])))
    if kind == "bom":
        return b"\xef\xbb\xbf" + base
    if kind == "huge_number":
        return base[:-1] + b', "max_tokens": 1' + b"0" * draw(st.integers(20, 5000)) + b"}"
    return base[:-1] + b', "model": 1, "model": "gpt-4o-mini"}'


# --- headers -----------------------------------------------------------------------

header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60)


@st.composite
def auth_headers(draw: st.DrawFn) -> dict[str, str]:
    scheme = draw(st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", "Token", "", "Bearer ",
                                   "Digest", "Bearer\t"]))
    key = draw(st.one_of(st.just(KEY), st.just(KEY.upper()), header_text,
                         st.just(KEY + " " + KEY), st.just(" " * 3), st.just("sha256:" + "0" * 64)))
    headers = {"Authorization": f"{scheme} {key}".strip() if scheme else key}
    if draw(st.booleans()):
        headers["api-key"] = draw(st.one_of(st.just(KEY), header_text))
    if draw(st.booleans()):
        headers[draw(st.sampled_from(["x-request-id", "x-warden-agent", "x-warden-conversation",
                                      "Content-Type", "Accept", "X-Forwarded-For", "Host"]))] \
            = draw(header_text)
    return headers


# --- raw HTTP: what an HTTP client library refuses to send ---------------------------

def raw_exchange(host: str, port: int, request: bytes, timeout: float = 15
                 ) -> tuple[int, bytes, bytes]:
    """Send bytes as they are, read until the server closes; (status, head, body). Status 0
    means the server closed without answering (acceptable only for garbage requests)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(request)
        chunks = []
        while True:
            try:
                data = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            chunks.append(data)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return status, head, body


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return bytes(out)


def http_request(method: str, path: str, headers: list[tuple[bytes, bytes]],
                 body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1",
             *(k + b": " + v for k, v in headers),
             b"Content-Length: " + str(len(body)).encode(), b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# Requests a well-behaved client library will not produce. Each is (label, bytes,
# protocol_level): protocol_level requests break HTTP/1.1 itself, so aiohttp's parser
# answers before any route runs (in OpenAI's shape: proxy/server.py).
def header_abuse_requests() -> list[tuple[str, bytes, bool]]:
    body = json.dumps(valid_chat()).encode()
    auth = (b"Authorization", b"Bearer " + KEY.encode())
    ctype = (b"Content-Type", b"application/json")
    path = "/v1/chat/completions"
    return [
        ("duplicate Authorization", http_request("POST", path, [
            (b"Authorization", b"Bearer wrong-key-123"), auth, ctype], body), False),
        ("duplicate Authorization, good first", http_request("POST", path, [
            auth, (b"Authorization", b"Bearer wrong-key-123"), ctype], body), False),
        ("duplicate Content-Type", http_request("POST", path, [
            auth, ctype, (b"Content-Type", b"text/plain")], body), True),
        ("CRLF in x-request-id", http_request("POST", path, [
            auth, ctype, (b"x-request-id", b"abc\r\nX-Injected: 1")], body), False),
        ("bare LF in header value", http_request("POST", path, [
            auth, ctype, (b"x-warden-agent", b"a\nX-Injected: 1")], body), True),
        ("bare CR in header value", http_request("POST", path, [
            auth, ctype, (b"x-warden-agent", b"a\rX-Injected: 1")], body), True),
        ("NUL in Authorization", http_request("POST", path, [
            (b"Authorization", b"Bearer vk-test\x00-key-0001"), ctype], body), True),
        ("huge header value (64 KiB)", http_request("POST", path, [
            auth, ctype, (b"x-warden-agent", b"a" * 65536)], body), True),
        ("huge Authorization (64 KiB)", http_request("POST", path, [
            (b"Authorization", b"Bearer " + b"k" * 65536), ctype], body), True),
        ("many headers (500)", http_request("POST", path, [
            auth, ctype, *((f"x-h{i}".encode(), b"v") for i in range(500))], body), True),
        ("non-latin1 bytes in Authorization", http_request("POST", path, [
            (b"Authorization", "Bearer ключ-ключ".encode()), ctype], body), False),
        ("Content-Length lies (short)", http_request("POST", path, [auth, ctype], body)
            .replace(f"Content-Length: {len(body)}".encode(), b"Content-Length: 5"), True),
        ("negative Content-Length", http_request("POST", path, [auth, ctype], body)
            .replace(f"Content-Length: {len(body)}".encode(), b"Content-Length: -1"), True),
        ("chunked + Content-Length", http_request("POST", path, [
            auth, ctype, (b"Transfer-Encoding", b"chunked")], body), True),
        ("garbage request line", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\r\n\r\n",
         True),
        ("HTTP/0.9", b"GET /healthz\r\n\r\n", True),
        ("absolute-form URI", http_request("GET", "http://169.254.169.254/latest/meta-data",
                                           [auth]), False),
        ("path traversal", http_request("GET", "/v1/models/..%2f..%2fetc%2fpasswd", [auth]),
         False),
        ("Host header pointing elsewhere", http_request("POST", path, [
            auth, ctype, (b"X-Forwarded-Host", b"169.254.169.254")], body)
            .replace(b"Host: 127.0.0.1", b"Host: 169.254.169.254"), False),
    ]


# --- schemathesis against the served OpenAPI description ----------------------------

def run_schemathesis(base_url: str, verdict: Verdict, max_examples: int,
                     seed: int = 0) -> dict[str, int]:
    """Positive and negative cases for every operation in /openapi.json; each response
    judged by Warden's invariants and by schemathesis's conformance checks (status code
    documented, content type documented, body matches its schema). Returns counts of
    conformance failures by check name (empty when everything conforms)."""
    import requests
    import schemathesis
    from hypothesis.errors import Unsatisfiable

    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    conformance: dict[str, int] = {}
    with requests.Session() as session:
        for result in schema.get_all_operations():
            for mode in (schemathesis.GenerationMode.POSITIVE,
                         schemathesis.GenerationMode.NEGATIVE):
                # Nothing to negate in an operation without parameters or body.
                with contextlib.suppress(Unsatisfiable):
                    _fuzz_operation(result.ok(), mode, base_url, session, verdict,
                                    conformance, max_examples, seed)
    return conformance


def _fuzz_operation(op: Any, mode: Any, base_url: str, session: Any, verdict: Verdict,
                    conformance: dict[str, int], max_examples: int, seed: int) -> None:
    import requests
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed
    from schemathesis import checks as st_checks

    chosen = [st_checks.not_a_server_error, st_checks.status_code_conformance,
              st_checks.content_type_conformance, st_checks.response_schema_conformance]

    @given(case=op.as_strategy(generation_mode=mode), authed=st.booleans(),
           known_model=st.booleans())
    @hypothesis_seed(seed)
    @settings(max_examples=max_examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def one(case: Any, authed: bool, known_model: bool) -> None:
        if known_model and isinstance(case.body, dict) and "model" in case.body:
            # Half the bodies name a routed model, so they reach the provider.
            case.body["model"] = ("text-embedding-3-small" if "embeddings" in op.path
                                  else "gpt-4o-mini")
        headers = {"Authorization": f"Bearer {KEY}"} if authed else None
        try:
            response = case.call(base_url=base_url, session=session, headers=headers,
                                 timeout=30)
        except requests.exceptions.InvalidHeader:
            return  # requests refused to send it (covered by the raw tests)
        except requests.exceptions.ConnectionError as e:
            verdict.cases += 1
            verdict.crashes += 1
            verdict.note(f"connection error: {op.label}: {e}")
            return
        judge(verdict, response.status_code, response.content,
              f"schemathesis {mode.value} {op.label}: {case.body!r:.200}")
        try:
            case.validate_response(response, checks=chosen)
        # A FailureGroup (one entry per failed check) is a BaseExceptionGroup.
        except (Exception, BaseExceptionGroup) as e:
            for failure in getattr(e, "exceptions", [e]):
                name = type(failure).__name__
                conformance[name] = conformance.get(name, 0) + 1
                verdict.note(f"conformance {name}: {op.label} {mode.value}: "
                             f"{str(failure)[:200]}")

    one()
