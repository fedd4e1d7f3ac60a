"""Tenant policy files: models, loading, validation, and the frozen policy set.

One YAML file per tenant in the policies directory. Everything is validated when it is
loaded (unknown keys are errors, naming file, key and reason) and frozen afterwards; a
reload builds a whole new ``PolicySet`` and swaps it in one assignment.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from proxy.config import Frozen
from proxy.policies.budget import BudgetConfig
from proxy.policies.injection import InjectionConfig
from proxy.policies.limits import LimitsConfig
from proxy.policies.loops import LoopsConfig
from proxy.policies.output import OutputConfig
from proxy.policies.pii import PiiConfig
from proxy.policies.scope import ScopeConfig
from proxy.upstream.providers import FAST_PROVIDERS

if TYPE_CHECKING:
    from proxy.pipeline import Policy
    from proxy.services import Services




class Timeouts(Frozen):
    connect: float = Field(5.0, gt=0, description="TCP/TLS connect, seconds.")
    first_byte: float = Field(120.0, gt=0, description="Until the response head arrives.")
    idle: float = Field(60.0, gt=0, description="Longest gap between two stream chunks.")
    total: float = Field(600.0, gt=0, description="Whole attempt, body included.")


# A mounted Secret is re-read at most this often: reading it on every request cost an
# open, a read and a close each time, while Kubernetes itself takes up to a minute to
# update a mounted Secret after a rotation.
SECRET_FILE_TTL_S = 1.0
_secret_files: dict[str, tuple[float, str | None]] = {}  # path -> (read at, content)
_clock = time.monotonic


def _secret_file(path: str) -> str | None:
    """The stripped content of a credential file (None when unreadable), cached briefly.
    Paths come from policy files, so the cache is as bounded as they are."""
    now = _clock()
    cached = _secret_files.get(path)
    if cached is not None and now - cached[0] < SECRET_FILE_TTL_S:
        return cached[1]
    try:
        value: str | None = Path(path).read_text().strip()
    except OSError:
        value = None
    _secret_files[path] = (now, value)
    return value


_SECRET_REF = re.compile(r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:.+)$")


class Deployment(Frozen):
    """One place a model can be served from."""

    provider: str = Field(description="openai | azure | openai_compatible | vllm | ollama "
                          "(fast path) or any litellm provider, e.g. anthropic.")
    model: str = Field(min_length=1, description="Model name at the provider.")
    api_base: str | None = Field(None, description="Base URL, e.g. https://api.openai.com/v1.")
    api_key: str | None = Field(
        None, description="Where the provider credential lives: env:VAR or file:/path."
    )
    api_version: str | None = Field(None, description="Azure OpenAI api-version.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra upstream headers.")
    timeouts: Timeouts = Field(default_factory=Timeouts)
    name: str | None = Field(None, description="Label for metrics/logs (default provider/model).")
    input_cost_per_token: float | None = Field(None, ge=0, description="USD, overrides litellm.")
    output_cost_per_token: float | None = Field(None, ge=0, description="USD, overrides litellm.")
    priority: int = Field(0, ge=0, description="Failover level: lower levels are tried first; "
                          "list order within a level.")
    weight: float | None = Field(None, gt=0, description="Share within its priority level: a "
                                 "level where any deployment has a weight is drawn in weighted "
                                 "random order per request (unweighted ones count 1).")

    @field_validator("api_key")
    @classmethod
    def _secret_ref(cls, v: str | None) -> str | None:
        if v is not None and not _SECRET_REF.match(v):
            raise ValueError(
                "must be a reference, 'env:VAR_NAME' or 'file:/path/to/key'; a credential "
                "written into a policy file would be readable by everyone who reads policies"
            )
        return v

    @field_validator("api_base")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("must be an http:// or https:// URL")
        return v.rstrip("/") if v else v

    @property
    def label(self) -> str:
        return self.name or f"{self.provider}/{self.model}"

    @property
    def fast(self) -> bool:
        """Speaks the OpenAI API: called directly, no litellm."""
        return self.provider in FAST_PROVIDERS

    def credential(self) -> str | None:
        """Resolve the key reference now: an env lookup, or the file's content as read
        within the last ``SECRET_FILE_TTL_S`` (a rotated Secret is picked up that fast)."""
        if self.api_key is None:
            return None
        kind, _, where = self.api_key.partition(":")
        if kind == "env":
            return os.environ.get(where)
        return _secret_file(where)


class Retry(Frozen):
    """Per-model overrides of the WARDEN_RETRY_* settings (unset: the setting)."""

    attempts: int | None = Field(None, ge=1, le=10, description="Tries per deployment.")
    backoff_s: float | None = Field(None, ge=0, description="First back-off ceiling, seconds.")
    backoff_max_s: float | None = Field(None, ge=0, description="Largest back-off ceiling.")
    retry_after_max_s: float | None = Field(
        None, ge=0, description="Longest provider Retry-After honoured; longer: no retry there."
    )


# A fallback is another model of the same tenant (its deployments) or a deployment.
Fallback = str | Deployment
FallbackKind = Literal["context_window_fallbacks", "content_policy_fallbacks"]


class ModelRoute(Frozen):
    """Where one model name is served: ordered deployments plus fallbacks.

    A policy file may give just the list of deployments (``gpt-4o: [ ... ]``) or the
    mapping (``gpt-4o: {deployments: [...], context_window_fallbacks: [...]}``).
    """

    deployments: list[Deployment]  # not empty: checked by TenantConfig, naming the model
    context_window_fallbacks: list[Fallback] = Field(
        default_factory=list, description="Tried when a deployment says the prompt is too long."
    )
    content_policy_fallbacks: list[Fallback] = Field(
        default_factory=list, description="Tried when a provider refuses on content policy."
    )
    retry: Retry = Field(default_factory=lambda: Retry())

    @model_validator(mode="before")
    @classmethod
    def _list_shape(cls, value: Any) -> Any:
        return {"deployments": value} if isinstance(value, list) else value

    def all_deployments(self) -> list[Deployment]:
        """Every deployment written inline (named fallbacks are their own models)."""
        extra = [f for f in (*self.context_window_fallbacks, *self.content_policy_fallbacks)
                 if isinstance(f, Deployment)]
        return [*self.deployments, *extra]




class TenantConfig(Frozen):
    """The contents of one policy file. A section that is absent is a policy that is off."""

    tenant: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    keys: list[str] = Field(min_length=1, description="Virtual keys: plain or sha256:<hex>.")
    models: dict[str, ModelRoute] = Field(min_length=1)
    log_prompts: bool = Field(False, description="Opt in to prompt/completion text in logs.")
    loops: LoopsConfig | None = None
    limits: LimitsConfig | None = None
    budget: BudgetConfig | None = None
    injection: InjectionConfig | None = None
    scope: ScopeConfig | None = None
    output: OutputConfig | None = None
    pii: PiiConfig | None = None

    @field_validator("keys")
    @classmethod
    def _keys(cls, keys: list[str]) -> list[str]:
        for k in keys:
            if k.startswith("sha256:") and not re.fullmatch(r"sha256:[0-9a-fA-F]{64}", k):
                raise ValueError("a sha256: key must be followed by 64 hex digits")
            if len(k) < 8:
                raise ValueError("a virtual key must be at least 8 characters")
        return keys

    @field_validator("models")
    @classmethod
    def _models(cls, models: dict[str, ModelRoute]) -> dict[str, ModelRoute]:
        for name, route in models.items():
            if not route.deployments:
                raise ValueError(f"model {name!r} needs at least one deployment")
            for kind in ("context_window_fallbacks", "content_policy_fallbacks"):
                for ref in getattr(route, kind):
                    if isinstance(ref, str) and (ref == name or ref not in models):
                        raise ValueError(f"model {name!r}: {kind} names {ref!r}, which is "
                                         + ("the model itself" if ref == name
                                            else "not a model of this tenant"))
        return models

    def fallbacks(self, model: str, kind: FallbackKind) -> tuple[Deployment, ...]:
        """The deployments of ``context_window_fallbacks`` / ``content_policy_fallbacks``,
        named models expanded to their deployments (not to their own fallbacks)."""
        route = self.models.get(model)
        if route is None:
            return ()
        out: list[Deployment] = []
        for ref in getattr(route, kind):
            out.extend(self.models[ref].deployments if isinstance(ref, str) else (ref,))
        return tuple(out)


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def stored_key_digest(stored: str) -> bytes:
    if stored.startswith("sha256:"):
        return bytes.fromhex(stored[7:])
    return key_digest(stored)


@dataclass(frozen=True, slots=True, eq=False)
class Tenant:
    """A loaded tenant: its config plus its built policy chain."""

    config: TenantConfig
    policies: tuple[Policy, ...]
    source: Path

    @property
    def name(self) -> str:
        return self.config.tenant

    def routes(self, model: str) -> tuple[Deployment, ...] | None:
        found = self.config.models.get(model)
        return tuple(found.deployments) if found is not None else None


@dataclass(frozen=True, slots=True)
class PolicySet:
    tenants: Mapping[str, Tenant]
    # sha256(key) -> tenant. Presented keys are hashed and looked up by digest, and the
    # digest compared with hmac.compare_digest: timing reveals nothing about the key.
    by_key: Mapping[bytes, Tenant] = field(default_factory=dict)
    loaded_from: Path | None = None
    # Keys that authenticated recently -> tenant, so a busy agent does not pay a SHA-256
    # per call. Only successes are cached (no growth from guessing); bounded; dropped
    # with the whole set on reload, so a removed key stops working at once.
    _recent: dict[str, Tenant] = field(default_factory=dict, repr=False)

    def authenticate(self, presented: str) -> Tenant | None:
        cached = self._recent.get(presented)
        if cached is not None:
            return cached
        digest = key_digest(presented)
        tenant = self.by_key.get(digest)
        if tenant is None:
            return None
        for stored in tenant.config.keys:
            if hmac.compare_digest(stored_key_digest(stored), digest):
                if len(self._recent) >= 4096:
                    self._recent.clear()
                self._recent[presented] = tenant
                return tenant
        return None


class PolicyError(Exception):
    """A policy file is invalid; the message names file, key and reason."""

    def __init__(self, file: Path, key: str, reason: str) -> None:
        super().__init__(f"{file}: {key}: {reason}")
        self.file, self.key, self.reason = file, key, reason


def _format_loc(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def parse_policy_file(path: Path) -> TenantConfig:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(file)"
        raise PolicyError(path, where, f"invalid YAML: {getattr(e, 'problem', e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(path, "(file)", f"cannot read: {e}") from None
    if not isinstance(raw, dict):
        raise PolicyError(path, "(top level)", "must be a mapping with tenant, keys, models")
    try:
        return TenantConfig.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        reason = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise PolicyError(path, _format_loc(_as_written(raw, err["loc"])), reason) from None


def _as_written(raw: dict[str, Any], loc: Sequence[Any]) -> Sequence[Any]:
    """A model written as a bare list of deployments is validated as ``{deployments:
    [...]}``; name the error where the user wrote it (``models.m[0]``)."""
    models = raw.get("models")
    if (len(loc) > 2 and loc[0] == "models" and loc[2] == "deployments"
            and isinstance(models, dict) and isinstance(models.get(loc[1]), list)):
        return [*loc[:2], *loc[3:]]
    return loc


def policy_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise PolicyError(directory, "(directory)", "not a directory")
    # Kubernetes mounts ConfigMaps with hidden ..data symlink dirs: skip dot-entries.
    return sorted(
        p for p in directory.iterdir()
        if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file()
    )


def load_configs(directory: Path) -> list[tuple[Path, TenantConfig]]:
    """Parse and validate every policy file; the first error raises ``PolicyError``."""
    configs = [(p, parse_policy_file(p)) for p in policy_files(directory)]
    if not configs:
        raise PolicyError(directory, "(directory)", "no *.yaml policy files found")
    seen_tenants: dict[str, Path] = {}
    seen_keys: dict[bytes, Path] = {}
    for path, cfg in configs:
        if cfg.tenant in seen_tenants:
            raise PolicyError(path, "tenant", f"{cfg.tenant!r} is also defined in "
                              f"{seen_tenants[cfg.tenant].name}")
        seen_tenants[cfg.tenant] = path
        for i, k in enumerate(cfg.keys):
            d = stored_key_digest(k)
            if d in seen_keys:
                raise PolicyError(path, f"keys[{i}]", f"key also used in {seen_keys[d].name}")
            seen_keys[d] = path
    return configs


def build_policy_set(
    configs: Sequence[tuple[Path, TenantConfig]], services: Services, directory: Path | None
) -> PolicySet:
    from proxy.policies import build_chain

    tenants: dict[str, Tenant] = {}
    by_key: dict[bytes, Tenant] = {}
    for path, cfg in configs:
        try:
            chain = build_chain(cfg, services)
        except ValueError as e:
            raise PolicyError(path, "(policies)", str(e)) from None
        tenant = Tenant(config=cfg, policies=chain, source=path)
        tenants[cfg.tenant] = tenant
        for k in cfg.keys:
            by_key[stored_key_digest(k)] = tenant
    return PolicySet(tenants=tenants, by_key=by_key, loaded_from=directory)


def load_policy_set(directory: Path, services: Services) -> PolicySet:
    return build_policy_set(load_configs(directory), services, directory)


class PolicyHolder:
    """The app's current policy set. A reload replaces ``current`` in one assignment,
    so a request sees either the old set or the new one, never a mix."""

    def __init__(self, initial: PolicySet) -> None:
        self.current = initial
        self.version = 1
        self.last_error: str | None = None  # the last rejected reload, for /readyz

    def swap(self, new: PolicySet) -> None:
        self.current = new
        self.version += 1
        self.last_error = None
