"""JSON Schema validation that a client cannot turn against the proxy.

Schemas arrive in requests (``response_format``, tool ``parameters``) and the replies
they judge are, through the model, shaped by the same client. Two things follow:

- **Patterns run with a deadline.** ``jsonschema`` evaluates ``pattern`` and
  ``patternProperties`` with Python's backtracking ``re``: ``^(a+)+$`` against 26
  characters blocks the event loop for seconds (measured: 1.2 s at 24 characters, 6.4 s
  for ``(x+x+)+y`` at 26) and with it every tenant's requests. Here both keywords use
  the ``regex`` module, whose searches take a timeout, against one budget per
  validation (``PATTERN_BUDGET_S``); running out is a validation failure (fail closed).
- **Nothing is fetched.** A ``$ref`` that is not inside the schema cannot be resolved
  and fails the validation (``referencing`` retrieves nothing unless told to).

Compiled validators are cached by schema hash (``ValidatorCache``): agents send the
same tool schemas on every turn.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

import regex
from jsonschema import Draft202012Validator, ValidationError, validators
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.protocols import Validator
from referencing.exceptions import Unresolvable

# Total regex time one validation may spend. Generous for sane patterns (microseconds
# each), small enough that a hostile one costs one request, not the event loop.
PATTERN_BUDGET_S = 0.05

_deadline: contextvars.ContextVar[float] = contextvars.ContextVar("schema_regex_deadline")


class PatternTimeout(Exception):
    """A ``pattern`` search ran past the validation's regex budget."""


def _search(pattern: str, text: str) -> bool:
    remaining = _deadline.get(time.perf_counter() + PATTERN_BUDGET_S) - time.perf_counter()
    if remaining <= 0:
        raise PatternTimeout(pattern)
    try:
        return regex.search(pattern, text, timeout=remaining) is not None
    except TimeoutError:
        raise PatternTimeout(pattern) from None


def _pattern(
    validator: Validator, pattern: str, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Validator, properties: Mapping[str, Any], instance: Any,
    schema: Mapping[str, Any],
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in properties.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


SafeValidator = validators.extend(
    Draft202012Validator, {"pattern": _pattern, "patternProperties": _pattern_properties}
)


def check_schema(schema: Mapping[str, Any]) -> None:
    """Raise ``SchemaError`` unless ``schema`` is valid Draft 2020-12 of plain JSON."""
    try:
        json.dumps(schema)
    except (TypeError, ValueError) as e:
        # YAML can produce dates, sets, ...: not JSON, so not a JSON Schema.
        raise SchemaError(f"not plain JSON ({e})") from None
    Draft202012Validator.check_schema(schema)


def first_error(validator: Validator, document: object) -> str | None:
    """The most relevant violation as ``"at <json path>: <reason>"``, or None."""
    token = _deadline.set(time.perf_counter() + PATTERN_BUDGET_S)
    try:
        error = best_match(validator.iter_errors(document))
    except Unresolvable as e:
        return f"the schema has a $ref that cannot be resolved ({e})"
    except PatternTimeout as e:
        return f"pattern {str(e)[:60]!r} took too long to evaluate"
    except regex.error as e:
        return f"a pattern cannot be evaluated ({e})"
    finally:
        _deadline.reset(token)
    if error is None:
        return None
    return f"at {error.json_path}: {error.message}"


class ValidatorCache:
    """Compiled validators by schema hash, least recently used evicted. One per process
    (``Services.shared``), shared by tenants and kept across policy reloads."""

    def __init__(self, size: int = 512) -> None:
        self._size = size
        self._items: OrderedDict[bytes, Validator] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, schema: Mapping[str, Any]) -> Validator:
        """The validator for ``schema``; raises ``SchemaError`` if it is not one."""
        try:
            canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"))
        except (TypeError, ValueError) as e:
            raise SchemaError(f"not plain JSON ({e})") from None
        key = hashlib.sha256(canonical.encode()).digest()
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
            return found
        check_schema(schema)
        validator: Validator = SafeValidator(schema)
        self._items[key] = validator
        if len(self._items) > self._size:
            self._items.popitem(last=False)
        return validator
