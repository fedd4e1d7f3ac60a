"""Output contracts (D2): a reply must match the schema it was promised.

A contract applies to a chat request when any of these holds:

- the request asks for ``response_format: {type: json_schema, json_schema: {schema}}``
  (the reply content must be JSON valid against that schema) or ``{type: json_object}``
  (the content must be a JSON object) — unless ``request_schemas: false``;
- the tenant (or the model's entry under ``models``) declares a ``schema``;
- the request declares tools or legacy functions and ``tool_arguments`` is on: every
  tool call in the reply must name a declared tool and carry arguments valid against
  its ``parameters`` schema.

The content contracts read the final answer: a reply that calls tools is not one, so
its content is not checked (its tool-call arguments are). A structured-output refusal
(``message.refusal`` and no content) is passed through: it carries no data a client
could mistake for a valid document.

Policy file::

    output:
      schema: {type: object, required: [answer]}   # optional tenant-wide contract
      on_failure: refuse        # or retry: call the provider once more, then refuse
      strict: false             # streams: true buffers the whole reply, see below
      request_schemas: true     # honour response_format json_schema / json_object
      tool_arguments: true
      max_error_chars: 300      # validation error text in the refusal is cut here
      max_reply_bytes: 4194304  # larger replies cannot be checked: refused
      models:                   # per requested model; unset keys inherit the above
        gpt-4o-mini: {schema: {...}, strict: true}

What a client sees when a contract fails:

- plain reply: 400 ``content_filter`` with the validation error (where and why, cut to
  ``max_error_chars``); with ``on_failure: retry`` the first failure is not shown, the
  proxy asks the provider once more with the unchanged body.
- streamed, ``strict: false``: the chunks are relayed as they arrive, so by the time
  the stream ends the client has the whole (invalid) reply text; instead of the final
  ``data: [DONE]`` it then gets one ``data: {"error": {..., "code": "content_filter"}}``
  event and the connection closes. The openai SDK raises ``APIError`` at that event.
  Nothing is retried: part of the reply was already delivered.
- streamed, ``strict: true``: every chunk is held (the client receives only the
  response head) until the reply is complete and valid, then all chunks are released
  at once; an invalid reply yields only the error event. Streams are never retried
  (the response head is sent when the first chunk arrives; see ``RetryUpstream``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

from jsonschema.exceptions import SchemaError
from jsonschema.protocols import Validator
from pydantic import Field, field_validator

from proxy.config import Frozen
from proxy.context import RequestContext, StateKey
from proxy.errors import BadRequest, ContentFiltered
from proxy.pipeline import Chunk, Policy, RetryUpstream
from proxy.schemas import ValidatorCache, check_schema, first_error
from proxy.services import Services

OnFailure = Literal["refuse", "retry"]
_OBJECT_SCHEMA: dict[str, Any] = {"type": "object"}


def _check_schema(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    if schema is not None:
        try:
            check_schema(schema)
        except SchemaError as e:
            where = "/".join(str(p) for p in e.path) or "(root)"
            raise ValueError(f"invalid JSON Schema at {where}: {e.message}") from None
    return schema


class ModelContract(Frozen):
    """Per-model overrides; a key left out inherits the tenant-wide value."""

    reply_schema: dict[str, Any] | None = Field(None, alias="schema")
    on_failure: OnFailure | None = None
    strict: bool | None = None
    request_schemas: bool | None = None
    tool_arguments: bool | None = None

    @field_validator("reply_schema")
    @classmethod
    def _valid_schema(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return _check_schema(v)


class OutputConfig(Frozen):
    """The ``output:`` section of a tenant's policy file."""

    reply_schema: dict[str, Any] | None = Field(
        None, alias="schema", description="JSON Schema (2020-12) every final reply must match."
    )
    on_failure: OnFailure = Field("refuse", description="refuse, or retry once then refuse.")
    strict: bool = Field(False, description="Buffer streamed replies until validated.")
    request_schemas: bool = Field(True, description="Enforce the request's response_format.")
    tool_arguments: bool = Field(True, description="Validate tool-call arguments.")
    max_error_chars: int = Field(300, ge=40, description="Longest error text in a refusal.")
    max_reply_bytes: int = Field(4 << 20, ge=1024, description="Largest reply validated.")
    models: dict[str, ModelContract] = Field(default_factory=dict)

    @field_validator("reply_schema")
    @classmethod
    def _valid_schema(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return _check_schema(v)


@dataclass(frozen=True, slots=True)
class Resolved:
    """The contract for one model, tenant defaults and model overrides merged."""

    schema: dict[str, Any] | None
    on_failure: OnFailure
    strict: bool
    request_schemas: bool
    tool_arguments: bool


def resolve(config: OutputConfig, model: ModelContract | None) -> Resolved:
    def pick(name: str) -> Any:
        value = getattr(model, name) if model is not None else None
        return getattr(config, name) if value is None else value

    return Resolved(
        pick("reply_schema"), pick("on_failure"), pick("strict"),
        pick("request_schemas"), pick("tool_arguments"),
    )


@dataclass(slots=True)
class _Choice:
    """What one streamed choice has said so far (only what a contract reads)."""

    content: list[str] = field(default_factory=list)
    refusal: bool = False
    tools: dict[int, list[str]] = field(default_factory=dict)  # index -> [name, args]
    function: list[str] | None = None  # legacy function_call [name, args]


@dataclass(slots=True)
class _Contract:
    """Per-request state: the validators that apply and, for streams, what was said."""

    rules: Resolved
    content: list[tuple[str, Validator]]
    tools: dict[str, Validator] | None
    choices: dict[int, _Choice] = field(default_factory=dict)
    held: list[Chunk] = field(default_factory=list)
    size: int = 0


_CONTRACT: StateKey[_Contract] = StateKey("output.contract")
_RETRIED: StateKey[bool] = StateKey("output.retried")


class OutputPolicy(Policy):
    name = "output"

    def __init__(self, config: OutputConfig, cache: ValidatorCache) -> None:
        self.config = config
        self.cache = cache
        self._default = resolve(config, None)
        self._by_model = {m: resolve(config, c) for m, c in config.models.items()}
        # Tenant schemas were checked at load; compiling them now keeps them hot.
        for rules in (self._default, *self._by_model.values()):
            if rules.schema is not None:
                cache.get(rules.schema)

    # -- request: decide which contracts apply -------------------------------------

    async def on_request(self, ctx: RequestContext) -> None:
        if ctx.operation != "chat":
            return
        rules = self._by_model.get(ctx.model or str(ctx.body.get("model")), self._default)
        content: list[tuple[str, Validator]] = []
        if rules.schema is not None:
            content.append(("the tenant's schema", self.cache.get(rules.schema)))
        if rules.request_schemas:
            content.extend(self._request_schema(ctx.body))
        tools = self._tool_schemas(ctx.body) if rules.tool_arguments else None
        if content or tools is not None:
            ctx.set(_CONTRACT, _Contract(rules, content, tools))

    def _compile(self, schema: object, param: str) -> Validator:
        if not isinstance(schema, dict):
            raise BadRequest(f"output: {param} must be a JSON Schema object", param=param)
        try:
            return self.cache.get(schema)
        except SchemaError as e:
            # Fail closed: a reply cannot be checked against a schema that is not one.
            raise BadRequest(
                f"output: {param} is not a valid JSON Schema: {e.message}"[:300], param=param
            ) from None

    def _request_schema(self, body: dict[str, Any]) -> list[tuple[str, Validator]]:
        fmt = body.get("response_format")
        if not isinstance(fmt, dict):
            return []
        if fmt.get("type") == "json_object":
            return [("response_format json_object", self.cache.get(_OBJECT_SCHEMA))]
        if fmt.get("type") != "json_schema":
            return []
        spec = fmt.get("json_schema")
        spec = spec if isinstance(spec, dict) else {}
        schema = spec.get("schema", {})
        param = "response_format.json_schema.schema"
        return [("response_format.json_schema", self._compile(schema, param))]

    def _tool_schemas(self, body: dict[str, Any]) -> dict[str, Validator] | None:
        declared: list[tuple[str, object, str]] = []
        tools = body.get("tools")
        for i, tool in enumerate(tools if isinstance(tools, list) else []):
            fn = tool.get("function") if isinstance(tool, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("name"), str):
                declared.append((fn["name"], fn.get("parameters", {}),
                                 f"tools[{i}].function.parameters"))
        functions = body.get("functions")
        for i, fn in enumerate(functions if isinstance(functions, list) else []):
            if isinstance(fn, dict) and isinstance(fn.get("name"), str):
                declared.append((fn["name"], fn.get("parameters", {}),
                                 f"functions[{i}].parameters"))
        if not declared:
            return None
        return {name: self._compile(schema, param) for name, schema, param in declared}

    # -- plain replies ------------------------------------------------------------

    async def on_response(self, ctx: RequestContext, body: dict[str, Any]) -> None:
        contract = ctx.get(_CONTRACT)
        if contract is None:
            return
        choices = body.get("choices")
        for i, choice in enumerate(choices if isinstance(choices, list) else []):
            message = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(message, dict):
                continue
            calls = [
                (f"tool_calls[{j}]", c["function"].get("name"), c["function"].get("arguments"))
                for j, c in enumerate(message.get("tool_calls") or [])
                if isinstance(c, dict) and isinstance(c.get("function"), dict)
            ]
            if isinstance(message.get("function_call"), dict):
                fc = message["function_call"]
                calls.append(("function_call", fc.get("name"), fc.get("arguments")))
            error = self._check(contract, message.get("content"),
                                bool(message.get("refusal")), calls)
            if error is not None:
                self._fail(ctx, contract, f"choices[{i}].message.{error}")
        ctx.decide(self.name, "pass", "valid")

    # -- streamed replies ---------------------------------------------------------

    def on_chunk(self, ctx: RequestContext, chunk: Chunk) -> list[Chunk]:
        contract = ctx.get(_CONTRACT)
        if contract is None:
            return [chunk]
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if isinstance(choice, dict) and isinstance(choice.get("delta"), dict):
                self._accumulate(contract, choice.get("index", 0), choice["delta"])
        if contract.size > self.config.max_reply_bytes:
            # Memory is bounded and an unchecked reply is not released: fail now.
            self._fail(ctx, contract, f"reply exceeds {self.config.max_reply_bytes} bytes "
                       "and cannot be validated", retry=False)
        if contract.rules.strict:
            contract.held.append(chunk)
            return []
        return [chunk]

    def _accumulate(self, contract: _Contract, index: object, delta: dict[str, Any]) -> None:
        state = contract.choices.setdefault(index if isinstance(index, int) else 0, _Choice())
        text = delta.get("content")
        if isinstance(text, str) and contract.content:
            state.content.append(text)
            contract.size += len(text)
        if delta.get("refusal"):
            state.refusal = True
        if contract.tools is None:
            # Tool calls still end content checks (a tool-calling reply is not final).
            if delta.get("tool_calls") or delta.get("function_call"):
                state.tools.setdefault(-1, ["", ""])
            return
        for call in delta.get("tool_calls") or []:
            if not isinstance(call, dict):
                continue
            slot = state.tools.setdefault(call.get("index", 0), ["", ""])
            self._extend(contract, slot, call.get("function"))
        if isinstance(delta.get("function_call"), dict):
            state.function = state.function or ["", ""]
            self._extend(contract, state.function, delta["function_call"])

    @staticmethod
    def _extend(contract: _Contract, slot: list[str], fn: object) -> None:
        if not isinstance(fn, dict):
            return
        for i, key in enumerate(("name", "arguments")):
            part = fn.get(key)
            if isinstance(part, str):
                slot[i] += part
                contract.size += len(part)

    async def on_stream_end(self, ctx: RequestContext) -> list[Chunk]:
        contract = ctx.get(_CONTRACT)
        if contract is None:
            return []
        for index in sorted(contract.choices):
            state = contract.choices[index]
            calls: list[tuple[str, object, object]] = [
                (f"tool_calls[{j}]", name, args)
                for j, (name, args) in sorted(state.tools.items())
                if j >= 0
            ]
            if state.function is not None:
                calls.append(("function_call", state.function[0], state.function[1]))
            has_calls = bool(state.tools) or state.function is not None
            content = "".join(state.content) if not has_calls else None
            error = self._check(contract, content, state.refusal, calls,
                                calls_present=has_calls)
            if error is not None:
                # A stream's head is sent: refuse, never retry (see RetryUpstream).
                self._fail(ctx, contract, f"choices[{index}].{error}", retry=False)
        if not contract.choices and contract.content:
            self._fail(ctx, contract, "the stream carried no reply", retry=False)
        ctx.decide(self.name, "pass", "valid")
        held, contract.held = contract.held, []
        return held

    # -- validation ---------------------------------------------------------------

    def _check(
        self,
        contract: _Contract,
        content: object,
        refusal: bool,
        calls: list[tuple[str, object, object]],
        calls_present: bool | None = None,
    ) -> str | None:
        """The first violation as ``"<where>: <why>"``, or None."""
        if calls_present is None:
            calls_present = bool(calls)
        if contract.tools is not None:
            for where, name, arguments in calls:
                error = self._check_call(contract.tools, name, arguments)
                if error is not None:
                    return f"{where}.function.arguments {error}"
        if calls_present or not contract.content or (refusal and not content):
            return None
        if not isinstance(content, str):
            return "content: no content, a JSON document was required"
        try:
            document = json.loads(content)
        except ValueError as e:
            return f"content: not valid JSON ({e})"
        for label, validator in contract.content:
            error = first_error(validator, document)
            if error is not None:
                return f"content does not match {label}: {error}"
        return None

    @staticmethod
    def _check_call(
        schemas: dict[str, Validator], name: object, arguments: object
    ) -> str | None:
        if not isinstance(name, str) or name not in schemas:
            shown = name[:48] if isinstance(name, str) else name
            return f"call an undeclared tool {shown!r}"
        text = arguments if isinstance(arguments, str) else ""
        try:
            # Some providers send "" for a tool without parameters.
            document = json.loads(text) if text.strip() else {}
        except ValueError as e:
            return f"for {name!r}: not valid JSON ({e})"
        error = first_error(schemas[name], document)
        return None if error is None else f"for {name!r} do not match its parameters: {error}"

    def _fail(
        self, ctx: RequestContext, contract: _Contract, error: str, *, retry: bool = True
    ) -> NoReturn:
        if retry and contract.rules.on_failure == "retry" and not ctx.get(_RETRIED):
            ctx.set(_RETRIED, True)
            ctx.decide(self.name, "retry", "schema")
            raise RetryUpstream("output contract failed")
        ctx.decide(self.name, "block", "schema")
        message = f"output: the reply breaks its contract: {error}"
        limit = self.config.max_error_chars
        if len(message) > limit:
            message = message[: limit - 3] + "..."
        raise ContentFiltered(message)


def build(config: OutputConfig, services: Services) -> OutputPolicy:
    return OutputPolicy(config, services.shared("schemas.validators", ValidatorCache))
