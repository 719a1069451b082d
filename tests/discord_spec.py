"""Validate request bodies against Discord's OpenAPI description (discord/discord-api-spec).

The local Discord server (tests/discord_server/spec_checks.py) calls :meth:`DiscordSpec.validate`
for every JSON body (or multipart ``payload_json``) the client sends when the environment
variable ``ZOETROPE_DISCORD_SPEC`` names the spec file. The spec is large (about 1.2 MB), so it is
loaded once per process and path, and one validator is compiled per operation and content type.

Deliberate relaxations of the spec, each matching what Discord itself accepts:

* ``SnowflakeType`` is typed as a decimal string; Discord also accepts integers, and discord.py
  sends some ids as integers (``attachments[].id``, ``allowed_mentions.users``). Integers >= 0
  are accepted wherever the spec says snowflake.

For speed only (the accepted bodies do not change), oneOf/anyOf unions are rewritten into
equivalent ``enum`` / if-then schemas: see :func:`_dispatch_unions`.
"""

from __future__ import annotations

import copy
import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_ENV = "ZOETROPE_DISCORD_SPEC"
_SPEC_URI = "urn:discord-api-spec"
_MAX_ERRORS = 10


class SpecFileError(Exception):
    """The OpenAPI file named by the caller or by ``ZOETROPE_DISCORD_SPEC`` is unusable."""


@dataclass(frozen=True)
class SpecError:
    """One schema violation: where in the body, and what is wrong."""

    path: tuple[str | int, ...]
    message: str

    def __str__(self) -> str:
        where = ".".join(str(p) for p in self.path) or "<body>"
        return f"{where}: {self.message}"


@dataclass
class SpecViolation:
    """A request whose body does not match the operation's requestBody schema."""

    method: str
    path: str
    template: str
    operation_id: str | None
    errors: list[SpecError]
    body: Any = field(repr=False)

    def __str__(self) -> str:
        details = "; ".join(str(e) for e in self.errors)
        return f"{self.method} {self.path} ({self.operation_id}): {details}"


@dataclass(frozen=True)
class Operation:
    """One (path template, method) of the spec."""

    template: str
    method: str
    operation_id: str | None
    pointer: str  # JSON pointer of the operation object inside the spec
    content_types: tuple[str, ...]  # request body content types, in spec order


def _relax(document: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of the spec with the relaxations listed in the module docstring."""
    doc = copy.deepcopy(document)
    schemas = doc.get("components", {}).get("schemas", {})
    snowflake = schemas.get("SnowflakeType")
    if snowflake is not None:
        schemas["SnowflakeType"] = {
            "anyOf": [snowflake, {"type": "integer", "minimum": 0, "maximum": (1 << 64) - 1}]
        }
    _dispatch_unions(doc, schemas)
    return doc


def _discriminator(schemas: dict[str, Any], branch: Any) -> list[Any] | None:
    """The ``type`` values a union branch accepts, if it is a $ref that requires ``type``."""
    if not isinstance(branch, dict) or set(branch) != {"$ref"}:
        return None
    ref = branch["$ref"]
    prefix = "#/components/schemas/"
    if not ref.startswith(prefix):
        return None
    target = schemas.get(ref[len(prefix) :])
    if not isinstance(target, dict) or "type" not in (target.get("required") or []):
        return None
    prop = (target.get("properties") or {}).get("type")
    if not isinstance(prop, dict):
        return None
    if "const" in prop:
        return [prop["const"]]
    values = prop.get("enum")
    return list(values) if isinstance(values, list) and values else None


def _dispatch_unions(node: Any, schemas: dict[str, Any]) -> None:
    """Rewrite unions into equivalent schemas that jsonschema checks faster, in place.

    jsonschema tries every branch of a oneOf. Discord's enums are oneOf lists of titled consts:
    with distinct values that is exactly an ``enum``. Unions whose branches all require a
    ``type`` field with disjoint values (components, options, callbacks) become if/then
    dispatch: "exactly one branch matches" is then the same as "the branch owning this
    ``type`` matches", one branch is checked, and its errors name the bad field directly.
    """
    if isinstance(node, list):
        for item in node:
            _dispatch_unions(item, schemas)
        return
    if not isinstance(node, dict):
        return
    for key in ("oneOf", "anyOf"):
        branches = node.get(key)
        if not isinstance(branches, list):
            continue
        consts = [b.get("const") for b in branches if isinstance(b, dict) and "const" in b]
        plain = all(
            isinstance(b, dict) and set(b) <= {"const", "title", "description"} for b in branches
        )
        if plain and len(consts) == len(branches) and len(set(map(repr, consts))) == len(consts):
            # Discord's enums are oneOf lists of titled consts: the same as one "enum".
            del node[key]
            node["enum"] = consts
            continue
        if len(branches) < 3:
            continue
        values = [_discriminator(schemas, b) for b in branches]
        flat = [v for vs in values if vs is not None for v in vs]
        if any(v is None for v in values) or len(flat) != len(set(map(repr, flat))):
            continue
        del node[key]
        node.setdefault("type", "object")
        node.setdefault("required", [])
        if "type" not in node["required"]:
            node["required"] = [*node["required"], "type"]
        node.setdefault("properties", {})["type"] = {"enum": flat}
        node["allOf"] = [
            *node.get("allOf", []),
            *[
                {"if": {"properties": {"type": {"enum": vs}}}, "then": b}
                for vs, b in zip(values, branches, strict=True)
            ],
        ]
    for value in list(node.values()):
        _dispatch_unions(value, schemas)


def _escape_pointer(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}/]+\})", template)
    regex = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(f"^{regex}$")


class DiscordSpec:
    """Discord's OpenAPI document with compiled request-body validators."""

    def __init__(self, document: dict[str, Any]) -> None:
        if "paths" not in document or "components" not in document:
            raise SpecFileError("not an OpenAPI document: 'paths' or 'components' missing")
        self.document = _relax(document)
        resource = Resource.from_contents(self.document, default_specification=DRAFT202012)
        self._registry: Registry = Registry().with_resource(_SPEC_URI, resource)
        self._operations: list[tuple[re.Pattern[str], int, Operation]] = []
        for template, item in self.document["paths"].items():
            literal_weight = -template.count("{")  # literal segments win over parameters
            for method, op in item.items():
                if method in ("parameters", "summary", "description", "servers"):
                    continue
                content = (op.get("requestBody") or {}).get("content", {})
                pointer = f"/paths/{_escape_pointer(template)}/{method}"
                operation = Operation(
                    template=template,
                    method=method.upper(),
                    operation_id=op.get("operationId"),
                    pointer=pointer,
                    content_types=tuple(content),
                )
                self._operations.append((_template_regex(template), literal_weight, operation))
        # More literal templates first: /messages/@original before /messages/{message_id}.
        self._operations.sort(key=lambda entry: -entry[1])
        self._validators: dict[tuple[str, str], jsonschema.protocols.Validator] = {}
        self._lock = threading.Lock()

    def find_operation(self, method: str, path: str) -> Operation | None:
        """The operation for ``method`` and an API path such as ``/channels/1/messages``."""
        method = method.upper()
        for regex, _weight, op in self._operations:
            if op.method == method and regex.match(path):
                return op
        return None

    def _validator(self, op: Operation, content_type: str) -> jsonschema.protocols.Validator:
        key = (op.pointer, content_type)
        validator = self._validators.get(key)
        if validator is None:
            with self._lock:
                pointer = f"{op.pointer}/requestBody/content/{_escape_pointer(content_type)}/schema"
                schema = {"$ref": f"{_SPEC_URI}#{pointer}"}
                validator = jsonschema.Draft202012Validator(schema, registry=self._registry)
                self._validators[key] = validator
        return validator

    def validate(
        self, method: str, path: str, body: Any, *, multipart: bool = False
    ) -> tuple[Operation | None, list[SpecError]]:
        """Check ``body`` against the matching operation's requestBody schema.

        ``multipart`` selects the multipart/form-data schema (the body is then the parsed
        ``payload_json``), falling back to the JSON one. Returns the operation (None when the
        spec has no such route) and the errors found (empty when valid or nothing to check).
        """
        op = self.find_operation(method, path)
        if op is None or not op.content_types:
            return op, []
        if multipart and "multipart/form-data" in op.content_types:
            content_type = "multipart/form-data"
        elif "application/json" in op.content_types:
            content_type = "application/json"
        else:
            content_type = op.content_types[0]
        validator = self._validator(op, content_type)
        errors = list(validator.iter_errors(body))
        if not errors:
            return op, []
        return op, [_to_spec_error(e) for e in errors[:_MAX_ERRORS]]


def _discriminator_failed(errors: list[ValidationError]) -> bool:
    """True when a oneOf/anyOf branch failed on what tells the branches apart.

    Discord's unions are told apart by a ``type`` enum (components, options, callbacks) or by
    ``{"type": "null"}``; a branch that failed there is the wrong branch, not the bad field.
    """
    for err in errors:
        rel = tuple(err.relative_path)
        if rel == ("type",) and err.validator in ("enum", "const"):
            return True
        if not rel and err.validator == "type":
            return True
    return False


def _to_spec_error(error: ValidationError) -> SpecError:
    # For a failed anyOf/oneOf, descend into the branch the body was meant for and report the
    # deepest error there: it names the bad field instead of "is not valid under any schema".
    while error.context:
        branches: dict[Any, list[ValidationError]] = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        meant = [errs for errs in branches.values() if not _discriminator_failed(errs)]
        candidates = meant or list(branches.values())
        error = best_match(min(candidates, key=len))
    message = error.message
    if len(message) > 300:
        message = message[:297] + "..."
    return SpecError(path=tuple(error.absolute_path), message=message)


def discord_error_body(errors: list[SpecError]) -> dict[str, Any]:
    """Discord's 400 "Invalid Form Body" (code 50035) body with errors nested by field path."""
    tree: dict[str, Any] = {}
    for err in errors:
        node = tree
        for part in err.path:
            node = node.setdefault(str(part), {})
        node.setdefault("_errors", []).append({"code": "SPEC_VALIDATION", "message": err.message})
    return {"code": 50035, "message": "Invalid Form Body", "errors": tree}


_cache: dict[str, DiscordSpec] = {}
_cache_lock = threading.Lock()


def load_spec(path: str | os.PathLike[str]) -> DiscordSpec:
    """Load (once per process and resolved path) and compile Discord's OpenAPI file."""
    resolved = str(Path(path).expanduser().resolve())
    with _cache_lock:
        spec = _cache.get(resolved)
        if spec is None:
            try:
                with open(resolved, encoding="utf-8") as fh:
                    document = json.load(fh)
            except FileNotFoundError:
                raise SpecFileError(f"Discord OpenAPI file not found: {resolved!r}") from None
            except (OSError, ValueError) as exc:
                raise SpecFileError(
                    f"cannot read Discord OpenAPI file {resolved!r}: {exc}"
                ) from exc
            spec = _cache[resolved] = DiscordSpec(document)
    return spec


def spec_from_env() -> DiscordSpec | None:
    """The spec named by ``ZOETROPE_DISCORD_SPEC``, or None when the variable is unset/empty."""
    path = os.environ.get(SPEC_ENV, "").strip()
    if not path:
        return None
    return load_spec(path)
