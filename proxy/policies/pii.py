"""``pii``: redact PII in everything sent to the provider, restore it in what comes back.

Request: every text part of the body (``proxy.pii.parts``) is scanned by Presidio on a
worker thread (cached by content hash, so a conversation costs the scans of its new
messages), and each finding gets the tenant's action. Pseudonyms are stable across
turns and replicas (``proxy.pii.pseudonyms``). A scan that fails or times out refuses
the request with 503: raw text is never forwarded.

Reply: placeholders the model wrote are replaced with the original values (plain
replies, streams — also when a placeholder is split across chunks — and tool-call
arguments), using only this request's mapping. Optionally the reply is scanned for PII
the model produced itself: ``flag`` (header flag + decision) or ``redact`` (plain
replies; a stream is only flagged, at its end, since its text has already been sent).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from proxy.context import RequestContext, StateKey
from proxy.pii.cache import ScanCache, Spans
from proxy.pii.parts import extract
from proxy.pii.pseudonyms import Pseudonymizer, random_process_key, resolve_secret
from proxy.pii.redact import Action, Redactions, redact
from proxy.pii.restore import ReplyRestorer, restore_message
from proxy.pii.scanner import Scanner, fingerprint
from proxy.pipeline import Chunk, Policy
from proxy.services import Services
from proxy.tenants import Frozen

_ENTITY = r"^[A-Z][A-Z0-9_]{1,40}$"
_SECRET_REF = re.compile(r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:.+)$")

CORE_ENTITIES: tuple[str, ...] = (
    "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "US_SSN", "IBAN_CODE", "IP_ADDRESS",
    "CRYPTO", "STREET_ADDRESS", "API_KEY", "AWS_ACCESS_KEY", "GITHUB_TOKEN", "JWT",
    "PRIVATE_KEY", "BEARER_TOKEN", "CONNECTION_STRING", "SECRET",
)
NER_DEFAULT: tuple[str, ...] = ("PERSON", "LOCATION")


class PiiPattern(Frozen):
    entity: str = Field(pattern=_ENTITY, description="Entity type the matches get.")
    regex: str = Field(min_length=1, description="Python regular expression.")
    score: float = Field(0.9, gt=0, le=1)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"invalid regular expression: {e}") from None
        return v


class PiiConfig(Frozen):
    tier: Literal["default", "ner"] = Field(
        "default", description="'ner' adds PERSON/LOCATION/DATE_TIME/NRP (warden[ner]).")
    entities: list[str] | None = Field(
        None, description="Entity types to redact; default: the tier's list.")
    score_threshold: float = Field(0.4, ge=0, le=1)
    default_action: Action = "pseudonymize"
    actions: dict[str, Action] = Field(default_factory=dict, description="Per entity type.")
    phone_regions: list[str] = Field(default_factory=lambda: ["US", "GB"], min_length=1)
    deny_lists: dict[str, list[str]] = Field(
        default_factory=dict, description="Entity type -> exact terms (case-insensitive).")
    patterns: list[PiiPattern] = Field(default_factory=list)
    allow_list: list[str] = Field(default_factory=list, description="Never redacted.")
    restore: bool = Field(True, description="Put original values back into replies.")
    output: Literal["off", "flag", "redact"] = "off"
    secret: str | None = Field(None, description="Pseudonym key: env:VAR or file:/path.")
    timeout_s: float = Field(5.0, gt=0, le=120, description="Scan time limit (then 503).")

    @field_validator("secret")
    @classmethod
    def _secret_ref(cls, v: str | None) -> str | None:
        if v is not None and not _SECRET_REF.match(v):
            raise ValueError("must be a reference, 'env:VAR_NAME' or 'file:/path'")
        return v

    @field_validator("phone_regions")
    @classmethod
    def _regions(cls, v: list[str]) -> list[str]:
        import phonenumbers

        unknown = [r for r in v if r not in phonenumbers.SUPPORTED_REGIONS]
        if unknown:
            raise ValueError(f"unknown phone region(s) {unknown}; use ISO codes like US, GB")
        return v

    @field_validator("deny_lists")
    @classmethod
    def _deny(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for entity in v:
            if not re.match(_ENTITY, entity):
                raise ValueError(f"entity type {entity!r} must be UPPER_SNAKE_CASE")
        return v

    @model_validator(mode="after")
    def _actions_known(self) -> PiiConfig:
        custom = set(self.deny_lists) | {p.entity for p in self.patterns}
        listed = set(self.entity_list()) | custom
        for entity in self.actions:
            if entity not in listed:
                raise ValueError(f"actions: {entity!r} is not among the redacted entities")
        return self

    def entity_list(self) -> tuple[str, ...]:
        if self.entities is not None:
            return tuple(self.entities)
        return CORE_ENTITIES + (NER_DEFAULT if self.tier == "ner" else ())


@dataclass(slots=True, eq=False)
class PiiState:
    redactions: Redactions
    stream: ReplyRestorer | None = None
    template: dict[str, Any] | None = None  # id/model of the stream, for a flush chunk
    output_text: list[str] = field(default_factory=list)  # stream output scan only


STATE: StateKey[PiiState] = StateKey("pii")


class PiiPolicy(Policy):
    name = "pii"

    def __init__(self, config: PiiConfig, scanner: Scanner, cache: ScanCache, key: bytes,
                 services: Services, record: Callable[[str, str, str, str, int], None]
                 ) -> None:
        self.config = config
        self.scanner = scanner
        self.cache = cache
        self._key = key
        self._executor = services.executor
        self._record = record

    async def _scan(self, texts: list[str]) -> list[Spans]:
        return await self.scanner.scan(texts, self.cache, self._executor)

    async def on_request(self, ctx: RequestContext) -> None:
        found = extract(ctx.body, ctx.operation)
        spans = await self._scan([s.text for s in found.slots])
        pseudonyms = Pseudonymizer(self._key, ctx.tenant_name)
        state = Redactions()
        cfg = self.config
        for slot, hits in zip(found.slots, spans, strict=True):
            if hits:
                slot.write(redact(slot.text, hits, cfg.actions, cfg.default_action, pseudonyms,
                                  state, bare=slot.bare))
        found.commit()
        for (action, entity), n in sorted(state.counts.items()):
            ctx.decide("pii", action, entity, count=n)
            self._record(ctx.tenant_name, entity, action, "request", n)
        ctx.set(STATE, PiiState(state))

    # -- replies ----------------------------------------------------------------------

    async def on_response(self, ctx: RequestContext, body: dict[str, Any]) -> None:
        st = ctx.get(STATE)
        choices = body.get("choices")
        if st is None or not isinstance(choices, list):
            return
        messages = [c["message"] for c in choices
                    if isinstance(c, dict) and isinstance(c.get("message"), dict)]
        if self.config.output != "off":
            await self._scan_output(ctx, messages)
        if not self.config.restore or not st.redactions.mapping:
            return
        for msg in messages:
            restore_message(msg, st.redactions.mapping)

    async def _scan_output(self, ctx: RequestContext, messages: list[dict[str, Any]]) -> None:
        targets = [m for m in messages if isinstance(m.get("content"), str)]
        spans = await self._scan([m["content"] for m in targets])
        redacting = self.config.output == "redact"
        counts: dict[str, int] = {}
        for msg, hits in zip(targets, spans, strict=True):
            for s in hits:
                counts[s.entity] = counts.get(s.entity, 0) + 1
            if redacting and hits:
                text = msg["content"]
                for s in reversed(hits):  # type-only tag: nothing to restore it from
                    text = f"{text[:s.start]}<{s.entity}>{text[s.end:]}"
                msg["content"] = text
        self._output_decisions(ctx, counts, "redact" if redacting else "flag")

    def _output_decisions(self, ctx: RequestContext, counts: dict[str, int], action: str
                          ) -> None:
        if not counts:
            return
        ctx.flag("pii-output")
        for entity, n in sorted(counts.items()):
            ctx.decide("pii", action, entity, count=n, side="output")
            self._record(ctx.tenant_name, entity, action, "output", n)

    def on_chunk(self, ctx: RequestContext, chunk: Chunk) -> list[Chunk]:
        st = ctx.get(STATE)
        if st is None:
            return [chunk]
        restoring = self.config.restore and bool(st.redactions.mapping)
        scanning = self.config.output != "off"
        if not (restoring or scanning):
            return [chunk]
        if st.template is None:
            st.template = {k: chunk[k] for k in ("id", "object", "created", "model")
                           if k in chunk}
        if restoring and st.stream is None:
            st.stream = ReplyRestorer(st.redactions.mapping)
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            index = choice.get("index", 0)
            if scanning and isinstance(delta.get("content"), str):
                st.output_text.append(delta["content"])
            if st.stream is not None:
                st.stream.delta(index, delta)
                if choice.get("finish_reason") is not None:
                    st.stream.finish(index, delta)
        return [chunk]

    async def on_stream_end(self, ctx: RequestContext) -> list[Chunk]:
        st = ctx.get(STATE)
        if st is None:
            return []
        out: list[Chunk] = []
        stream = st.stream
        if stream is not None and (held := stream.holding()):
            choices = []
            for index in held:
                delta: dict[str, Any] = {}
                stream.finish(index, delta)
                choices.append({"index": index, "delta": delta, "finish_reason": None})
            out.append({**(st.template or {}), "choices": choices})
        if self.config.output != "off" and st.output_text:
            spans = await self._scan(["".join(st.output_text)])
            counts: dict[str, int] = {}
            for s in spans[0]:
                counts[s.entity] = counts.get(s.entity, 0) + 1
            self._output_decisions(ctx, counts, "flag")  # already sent: flag only
        return out

    async def on_done(self, ctx: RequestContext) -> None:
        ctx.state.pop(STATE.name, None)  # the mapping holds raw values: drop it now


def _recorder(services: Services) -> Callable[[str, str, str, str, int], None]:
    """``warden_pii_redactions_total{tenant, entity, action, side}`` (no values)."""
    from prometheus_client import Counter

    counter = services.shared("pii.metrics", lambda: Counter(
        "warden_pii_redactions", "PII findings by entity type and the action taken.",
        ["tenant", "entity", "action", "side"], registry=services.metrics.registry))

    def record(tenant: str, entity: str, action: str, side: str, n: int) -> None:
        counter.labels(tenant, entity, action, side).inc(n)
    return record


def build(config: PiiConfig, services: Services) -> PiiPolicy:
    # Presidio and spaCy load here, not at import: `warden check` and tenants without
    # a pii section never pay for them.
    from proxy.pii.engine import EngineSpec, build_analyzer, supported_entities
    from proxy.pii.recognizers import deny_list_recognizer, pattern_recognizer

    spec = EngineSpec(tier=config.tier, phone_regions=tuple(config.phone_regions))
    try:
        engine = services.shared(spec.key, lambda: build_analyzer(spec))
    except (RuntimeError, OSError) as e:
        raise ValueError(f"pii: cannot build the analyzer: {e}") from None
    extra = [deny_list_recognizer(e, terms) for e, terms in config.deny_lists.items() if terms]
    extra += [pattern_recognizer(p.entity, p.regex, p.score) for p in config.patterns]
    custom = {r for rec in extra for r in rec.supported_entities}
    entities = config.entity_list()
    unknown = sorted(set(entities) - supported_entities(engine) - custom)
    if unknown:
        hint = " (PERSON/LOCATION/DATE_TIME/NRP need tier: ner)" if config.tier == "default" \
            else ""
        raise ValueError(f"pii.entities: unknown entity type(s) {unknown}{hint}")
    scanner = Scanner(
        engine=engine, entities=tuple(dict.fromkeys((*entities, *sorted(custom)))),
        threshold=config.score_threshold, extra=tuple(extra), allow=tuple(config.allow_list),
        fingerprint=fingerprint(spec.key, entities, config.score_threshold,
                                sorted(config.deny_lists.items()),
                                [p.model_dump() for p in config.patterns], config.allow_list),
        timeout_s=config.timeout_s,
    )
    settings = services.settings
    process_secret = settings.pii_secret.get_secret_value() if settings.pii_secret else None
    try:
        key = resolve_secret(config.secret, process_secret)
    except ValueError as e:
        raise ValueError(str(e)) from None
    if key is None:
        key = services.shared("pii.process_key", random_process_key)
    cache = services.shared("pii.cache", lambda: ScanCache(settings.pii_cache_size))
    return PiiPolicy(config, scanner, cache, key, services, _recorder(services))

