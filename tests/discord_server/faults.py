"""Fault injection: 429s (with what discord.py needs to retry) and 5xx on chosen routes."""

from __future__ import annotations

import math
import re
from typing import Any

from aiohttp import web

from tests.discord_server.model import Fault


class FaultInjection:
    """``inject`` arms a fault; the middleware takes it on a matching request."""

    def inject(
        self,
        method: str,
        path_regex: str,
        *,
        status: int = 429,
        count: int = 1,
        retry_after: float = 0.1,
        global_: bool = False,
        after: bool = False,
        body: dict[str, Any] | None = None,
    ) -> Fault:
        """Answer the next ``count`` matching requests with ``status``.

        ``path_regex`` is searched in the path relative to /api/v10 (``/channels/\\d+/messages$``)
        or in the full path for the CDN (``/cdn/...``); ``method`` may be ``*``.
        A 429 carries what discord.py needs to retry (``Via``, ``X-RateLimit-*``, JSON
        ``retry_after``/``global``). ``after=True`` processes the request first and then answers
        with the fault (the response was lost: the client will retry a request that worked).
        """
        if status not in (429, 500, 502, 503, 504) and not 400 <= status < 600:
            raise ValueError(f"status must be an HTTP error status, got {status!r}")
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count!r}")
        fault = Fault(
            method=method.upper(),
            path_regex=re.compile(path_regex),
            status=status,
            count=count,
            retry_after=retry_after,
            global_=global_,
            after=after,
            body=body,
        )
        self.faults.append(fault)
        return fault

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.remaining <= 0:
                continue
            if fault.method not in ("*", method):
                continue
            if fault.path_regex.search(path):
                fault.hits += 1
                return fault
        return None

    def _fault_response(self, fault: Fault, path: str) -> web.Response:
        if fault.status == 429:
            retry = fault.retry_after
            body = fault.body or {
                "message": "You are being rate limited.",
                "retry_after": retry,
                "global": fault.global_,
                "code": 0,
            }
            headers = {
                "Via": "1.1 google",  # without it discord.py takes a 429 for a Cloudflare ban
                "Retry-After": str(max(1, math.ceil(retry))),
                "X-RateLimit-Limit": "5",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": f"{self.clock.time() + retry:.3f}",
                "X-RateLimit-Reset-After": f"{retry:.3f}",
                "X-RateLimit-Bucket": self._bucket_hash(path),
                "X-RateLimit-Scope": "shared" if fault.global_ else "user",
            }
            if fault.global_:
                headers["X-RateLimit-Global"] = "true"
            return self._json(body, status=429, headers=headers)
        body = fault.body or {"message": f"{fault.status}: injected fault", "code": 0}
        return self._json(body, status=fault.status)
