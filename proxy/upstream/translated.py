"""Every provider that does not speak the OpenAI API, translated by litellm.

The only module that imports litellm, and only when a translated deployment is called
(``import litellm`` costs ~4 s and ~200 MB; a fleet of OpenAI-only sidecars never pays
it). The import runs in a thread so the event loop keeps serving meanwhile. litellm's
own retries are off: failover is ``failover.py``'s job.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
from collections.abc import AsyncIterator
from typing import Any

from proxy import jsonbody, sse
from proxy.context import Operation
from proxy.tenants import Deployment
from proxy.upstream.base import PhaseClock, UpstreamError, UpstreamReply

# Never fetch the price map from GitHub; litellm ships a copy.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

# OpenAI request fields litellm knows how to translate. Anything else would reach a
# non-OpenAI provider as an unknown parameter and fail there, so for translated
# deployments only these are passed (the fast path forwards every field).
_ALLOWED = frozenset({
    "messages", "temperature", "top_p", "n", "stop", "max_tokens", "max_completion_tokens",
    "presence_penalty", "frequency_penalty", "logit_bias", "user", "tools", "tool_choice",
    "parallel_tool_calls", "response_format", "seed", "stream_options", "metadata",
    "input", "dimensions", "encoding_format",
})


class TranslatedTransport:
    def __init__(self) -> None:
        self._litellm: Any = None
        self._lock = asyncio.Lock()

    async def _module(self) -> Any:
        if self._litellm is None:
            async with self._lock:
                if self._litellm is None:
                    loop = asyncio.get_running_loop()
                    self._litellm = await loop.run_in_executor(None, _import_litellm)
        return self._litellm

    async def warm(self) -> None:
        await self._module()

    async def send(
        self, deployment: Deployment, operation: Operation, body: dict[str, Any], stream: bool
    ) -> UpstreamReply | TranslatedStream:
        """Timeouts per phase as on the fast path: the reply's head (for a plain reply,
        the reply) within ``first_byte``, stream chunks within ``idle`` of each other,
        all within ``total``. ``connect`` reaches litellm's HTTP client only for the
        providers litellm gives a per-phase timeout (bedrock; it reduces the others'
        to one number), so elsewhere a hung connect ends at ``first_byte``."""
        litellm = await self._module()
        t = deployment.timeouts
        clock = PhaseClock(t.total)
        # A deep copy: litellm's translation may edit messages in place, and the next
        # attempt (another deployment) must get the body exactly as the policies left it.
        kwargs: dict[str, Any] = copy.deepcopy({k: v for k, v in body.items() if k in _ALLOWED})
        kwargs.update(
            model=f"{deployment.provider}/{deployment.model}",
            api_base=deployment.api_base, api_key=deployment.credential() or "none",
            timeout=_httpx_timeout(t.total, t.connect), num_retries=0, max_retries=0,
        )
        if deployment.headers:
            kwargs["extra_headers"] = dict(deployment.headers)
        try:
            if stream and operation == "chat":
                kwargs["stream"] = True
                kwargs["stream_options"] = {"include_usage": True}
                wait, reason = clock.limit(t.first_byte, "first_byte_timeout")
                async with asyncio.timeout(wait):
                    wrapper = await litellm.acompletion(**kwargs)
                return TranslatedStream(wrapper, t.idle, clock)
            wait, reason = clock.limit(t.first_byte, "first_byte_timeout")
            async with asyncio.timeout(wait):
                if operation == "embeddings":
                    result = await litellm.aembedding(**kwargs)
                else:
                    result = await litellm.acompletion(**kwargs)
        except TimeoutError:
            raise UpstreamError(reason, "provider did not answer in time", timeout=True) \
                from None
        except Exception as e:  # litellm maps provider errors onto its exception types
            return _error_reply(litellm, e)
        return UpstreamReply(200, jsonbody.dumps(_dump(result)))

    async def close(self) -> None:
        if self._litellm is None:
            return
        # litellm runs a logging task on the loop of its first call; stop it with the app,
        # or a closing loop destroys it pending (and tests see it as an unraisable error).
        from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER

        with contextlib.suppress(Exception):
            await GLOBAL_LOGGING_WORKER.stop()


def _import_litellm() -> Any:
    import litellm

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    return litellm


def _dump(obj: Any) -> dict[str, Any]:
    data: dict[str, Any] = obj.model_dump(exclude_none=False)
    # litellm adds private bookkeeping fields that are not part of the OpenAI shape.
    for k in [k for k in data if k.startswith("_")]:
        del data[k]
    return data


def _httpx_timeout(total: float, connect: float) -> Any:
    import httpx  # litellm's own dependency, loaded with it

    return httpx.Timeout(total, connect=connect)


# litellm exception class -> OpenAI error code, so classify.py sees what the provider
# meant (litellm keeps the status but not the provider's code).
_CODES = (("ContextWindowExceededError", "context_length_exceeded"),
          ("ContentPolicyViolationError", "content_policy_violation"))


def _error_reply(litellm: Any, exc: Exception) -> UpstreamReply:
    status = getattr(exc, "status_code", None)
    if isinstance(exc, litellm.Timeout):
        connect = "connect" in str(exc).lower()
        raise UpstreamError("connect_timeout" if connect else "timeout",
                            "provider did not answer in time", timeout=True) from None
    if isinstance(exc, litellm.APIConnectionError) or not isinstance(status, int):
        raise UpstreamError("connect_error",
                            f"provider call failed: {type(exc).__name__}") from None
    code = next((c for name, c in _CODES if isinstance(exc, getattr(litellm, name))),
                str(status))
    message = str(getattr(exc, "message", "") or exc)
    body = {"error": {"message": message, "type": "upstream_error", "param": None,
                      "code": code}}
    response = getattr(exc, "response", None)
    source = getattr(response, "headers", None) or {}
    headers = {k: str(source[k]) for k in ("retry-after", "retry-after-ms") if k in source}
    return UpstreamReply(status, json.dumps(body).encode(), headers)


class TranslatedStream:
    status = 200

    def __init__(self, wrapper: Any, idle_s: float, clock: PhaseClock) -> None:
        self.headers: dict[str, str] = {}
        self._wrapper = wrapper
        self._idle_s = idle_s
        self._clock = clock

    async def __aiter__(self) -> AsyncIterator[bytes]:
        iterator = self._wrapper.__aiter__()
        while True:
            wait, reason = self._clock.limit(self._idle_s, "idle_timeout")
            try:
                async with asyncio.timeout(wait):
                    chunk = await iterator.__anext__()
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise UpstreamError(reason, "provider stream stalled", timeout=True) from None
            except Exception as e:
                raise UpstreamError("reset", f"provider stream failed: {type(e).__name__}") \
                    from None
            yield sse.encode(_dump(chunk))
        yield sse.encode_done()

    async def aclose(self) -> None:
        close = getattr(self._wrapper, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):  # closing a half-read stream: best effort
                await close()
