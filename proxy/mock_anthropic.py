"""The mock provider's Anthropic Messages API (``POST /v1/messages``), plain and SSE:
enough for litellm's translation round trip. Same echo, faults and request log as the
OpenAI endpoints of ``mock_upstream.py``."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from aiohttp import web

from proxy.mock_upstream import Mock, _pieces, last_text, prompt_text, tokens


async def anthropic_messages(mock: Mock, request: web.Request) -> web.StreamResponse:
    """Anthropic's Messages API, enough for litellm's translation round trip."""
    body, spec = await mock.receive(request)
    early = await mock.before(spec, request)
    if early is not None:
        return early
    text = last_text(body.get("messages") or [])
    content = f"Echo: {text}"
    usage = {"input_tokens": tokens(prompt_text(body.get("messages") or [])),
             "output_tokens": tokens(content)}
    mid = "msg_" + hashlib.sha1(content.encode()).hexdigest()[:16]
    if not body.get("stream"):
        return web.json_response({
            "id": mid, "type": "message", "role": "assistant", "model": body.get("model"),
            "content": [{"type": "text", "text": content}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": usage})
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)

    async def send(event: str, data: dict[str, Any]) -> None:
        await response.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())

    await send("message_start", {"type": "message_start", "message": {
        "id": mid, "type": "message", "role": "assistant", "model": body.get("model"),
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 1}}})
    await send("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}})
    for piece in _pieces(content, spec.chunks):
        if spec.chunk_delay_ms:
            await asyncio.sleep(spec.chunk_delay_ms / 1000)
        await send("content_block_delta", {"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "text_delta", "text": piece}})
    await send("content_block_stop", {"type": "content_block_stop", "index": 0})
    await send("message_delta", {"type": "message_delta", "delta": {
        "stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": usage["output_tokens"]}})
    await send("message_stop", {"type": "message_stop"})
    await response.write_eof()
    return response
