"""CPU cost of the scope and output policies per request and per stream chunk.

    PYTHONPATH=. python bench/bench_contracts.py [--n 2000]

An AutoGen-shaped request (20 messages of ~400 characters, 5 tools) through scope's
request hook, output's request + response hooks (tool schemas and a response_format
schema, validators cached), and output's chunk hook over a 200-chunk JSON reply.
Prints microseconds per call; run on a quiet machine for numbers to quote.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from proxy.context import RequestContext
from proxy.policies.output import OutputConfig, OutputPolicy, ValidatorCache
from proxy.policies.scope import ScopeConfig, ScopePolicy

TOOLS = [{"type": "function", "function": {"name": f"tool_{i}", "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}, "k": {"type": "integer"}},
    "required": ["q"]}}} for i in range(5)]
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"},
                                           "sources": {"type": "array",
                                                       "items": {"type": "string"}}},
          "required": ["answer"]}
DOC = json.dumps({"answer": "word " * 150, "sources": ["a", "b", "c"]})


def body() -> dict[str, Any]:
    messages = [{"role": "user" if i % 2 else "assistant", "content": "lorem ipsum " * 35}
                for i in range(20)]
    return {"model": "m", "messages": messages, "tools": TOOLS, "max_tokens": 500,
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "a", "schema": SCHEMA}}}


def ctx() -> RequestContext:
    b = body()
    return RequestContext(request_id="b", operation="chat", body=b, model="m")


async def main(n: int) -> None:
    scope = ScopePolicy(ScopeConfig.model_validate({
        "models": ["m"], "max_tokens": 1000, "max_messages": 100, "max_input_tokens": 50000,
        "tools": [f"tool_{i}" for i in range(5)], "response_formats": ["json_schema"],
        "topics": {"deny": ["weapons", "medical advice", "c++"]}}))
    output = OutputPolicy(OutputConfig.model_validate({}), ValidatorCache())
    reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": DOC}}]}
    chunks = [{"choices": [{"index": 0, "delta": {"content": DOC[i:i + 4]}}]}
              for i in range(0, len(DOC), 4)][:200]
    contexts = [ctx() for _ in range(n)]

    def report(name: str, started: float, count: int) -> None:
        print(f"{name:<40} {(time.perf_counter() - started) / count * 1e6:8.1f} us")

    t = time.perf_counter()
    for c in contexts:
        await scope.on_request(c)
    report("scope.on_request", t, n)
    t = time.perf_counter()
    for c in contexts:
        await output.on_request(c)
    report("output.on_request (6 schemas, cached)", t, n)
    t = time.perf_counter()
    for c in contexts:
        await output.on_response(c, reply)
    report("output.on_response (~800 B JSON)", t, n)
    c = contexts[0]
    t = time.perf_counter()
    for chunk in chunks:
        output.on_chunk(c, chunk)
    report("output.on_chunk", t, len(chunks))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    asyncio.run(main(parser.parse_args().n))
