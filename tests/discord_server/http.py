"""HTTP plumbing: the middleware (record, auth, spec check, faults), body parsing, JSON answers
with Discord's exact content type, rate-limit headers.
"""

from __future__ import annotations

import hashlib
import json
import re
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.discord_server.constants import API_PREFIX
from tests.discord_server.errors import DiscordHTTPError, _form_error
from tests.discord_server.model import Fault, RequestRecord


@dataclass
class _Body:
    json: Any = None
    files: list[tuple[int, str, str | None, bytes]] = field(default_factory=list)
    multipart: bool = False


_BODY = web.RequestKey("body", _Body)


def _snowflake_int(value: Any, path: Sequence[str | int]) -> int:
    try:
        result = int(value)
    except (TypeError, ValueError):
        raise _form_error(
            path, "NUMBER_TYPE_COERCE", f"Value {value!r} is not snowflake."
        ) from None
    if result < 0:
        raise _form_error(path, "NUMBER_TYPE_COERCE", f"Value {value!r} is not snowflake.")
    return result


class HttpPlumbing:
    """Middleware and helpers every REST handler goes through."""

    @staticmethod
    def _json(
        data: Any, *, status: int = 200, headers: dict[str, str] | None = None
    ) -> web.Response:
        # Exactly "application/json": discord.py compares the header verbatim and would treat
        # "application/json; charset=utf-8" (aiohttp's json_response) as text.
        all_headers = {"Content-Type": "application/json"}
        all_headers.update(headers or {})
        return web.Response(status=status, body=json.dumps(data).encode(), headers=all_headers)

    @staticmethod
    def _no_content() -> web.Response:
        return web.Response(status=204)

    @staticmethod
    def _bucket_hash(template: str) -> str:
        return hashlib.sha1(template.encode()).hexdigest()[:16]

    async def _read_body(self, request: web.Request) -> _Body:
        body = _Body()
        if request.method in ("GET", "HEAD"):
            return body
        ctype = request.content_type
        if ctype == "multipart/form-data":
            body.multipart = True
            reader = await request.multipart()
            position = 0
            while True:
                part = await reader.next()
                if part is None:
                    break
                raw = bytes(await part.read(decode=False))  # type: ignore[union-attr]
                name = part.name or ""
                if name == "payload_json":
                    body.json = self._parse_json(raw)
                    continue
                match = re.fullmatch(r"files\[(\d+)\]", name)
                index = int(match.group(1)) if match else position
                position += 1
                filename = part.filename or f"file{index}"  # type: ignore[union-attr]
                body.files.append((index, filename, part.headers.get("Content-Type"), raw))
            return body
        raw = await request.read()
        if raw:
            body.json = self._parse_json(raw)
        return body

    @staticmethod
    def _parse_json(raw: bytes) -> Any:
        try:
            return json.loads(raw)
        except ValueError:
            raise DiscordHTTPError(400, 50109, "The request body contains invalid JSON.") from None

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path
        is_api = path.startswith(API_PREFIX + "/") or path == API_PREFIX
        is_cdn = path.startswith("/cdn/")
        if not (is_api or is_cdn):
            return await handler(request)
        rel = path[len(API_PREFIX) :] if is_api else path
        record = RequestRecord(method=request.method, path=rel, query=dict(request.query))
        self.requests.append(record)
        response: web.StreamResponse
        fault: Fault | None = None
        try:
            if is_api:
                body = await self._read_body(request)
                request[_BODY] = body
                record.json = body.json
                record.files = [(f[1], len(f[3])) for f in body.files]
            hold = self._take_hold(request.method, rel) if is_api else None
            if hold is not None and not hold.after:
                await hold._wait()
            fault = self._take_fault(request.method, rel)
            if fault is not None and not fault.after:
                record.fault = True
                response = self._fault_response(fault, self._template(request, rel))
            else:
                if is_api:
                    self._check_auth(request, rel)
                    self._check_spec(request.method, rel, request[_BODY])
                response = await handler(request)
                if hold is not None and hold.after:
                    self._notify()  # it happened: tests waiting on the server see it now
                    await hold._wait()
                if fault is not None:
                    record.fault = True
                    response = self._fault_response(fault, self._template(request, rel))
        except DiscordHTTPError as exc:
            record.code = exc.code
            response = self._json(exc.body(), status=exc.status, headers=exc.headers)
            if fault is not None and fault.after:
                record.fault = True
                response = self._fault_response(fault, self._template(request, rel))
        except web.HTTPException:
            raise
        except Exception as exc:
            # A bug in this server, not in the client: keep it for the test to fail on.
            self.errors.append(f"{request.method} {rel}: {traceback.format_exc()}")
            response = self._json({"message": f"500: {exc!r}", "code": 0}, status=500)
        record.status = response.status
        if is_api and response.status != 429 and not response.prepared:
            self._ratelimit_headers(response, self._template(request, rel))
        self._notify()
        return response

    def _template(self, request: web.Request, rel: str) -> str:
        route = request.match_info.route
        resource = route.resource if route is not None else None
        canonical = resource.canonical if resource is not None else rel
        return f"{request.method} {canonical}"

    def _ratelimit_headers(self, response: web.StreamResponse, template: str) -> None:
        # Generous, static limits: discord.py lets requests of one bucket run concurrently once
        # it has seen these (without them it serialises every route through a limit of 1).
        response.headers["X-RateLimit-Limit"] = "50"
        response.headers["X-RateLimit-Remaining"] = "49"
        response.headers["X-RateLimit-Reset"] = f"{self.clock.time() + 1:.3f}"
        response.headers["X-RateLimit-Reset-After"] = "1.000"
        response.headers["X-RateLimit-Bucket"] = self._bucket_hash(template)

    def _check_auth(self, request: web.Request, rel: str) -> None:
        # Interaction callbacks and webhook-token routes are authorised by their token.
        if rel.startswith("/interactions/") or re.match(r"^/webhooks/\d+/[^/]+", rel):
            return
        if rel in ("/gateway",):
            return
        if request.headers.get("Authorization") != f"Bot {self.token}":
            raise DiscordHTTPError(401, 0, "401: Unauthorized")

    async def _unhandled(self, request: web.Request) -> web.Response:
        rel = request.path[len(API_PREFIX) :]
        self.unhandled.append(f"{request.method} {rel}")
        raise DiscordHTTPError(404, 0, "404: Not Found")
