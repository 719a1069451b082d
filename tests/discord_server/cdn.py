"""The CDN: attachment downloads with signed-URL expiry and per-file behaviour knobs."""

from __future__ import annotations

import asyncio

from aiohttp import web


class Cdn:
    """GET /cdn/attachments/{channel}/{attachment}/{filename}."""

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        try:
            att = self._attachments.get(int(request.match_info["attachment_id"]))
        except ValueError:
            att = None
        if att is None or request.match_info["filename"] != att.filename:
            return web.Response(status=404, text="Not Found")
        expires = request.query.get("ex")
        if expires is not None:
            try:
                expired = int(expires, 16) < self.clock.time()
            except ValueError:
                expired = True
            if expired:
                return web.Response(status=404, text="This content is no longer available.")
        att.downloads += 1
        if att.delay:
            await asyncio.sleep(att.delay)
        if att.status is not None:
            return web.Response(status=att.status, text=f"{att.status}")
        if att.redirect_to is not None:
            return web.Response(status=302, headers={"Location": att.redirect_to})
        total = att.size + att.extra_bytes
        response = web.StreamResponse(status=200)
        response.content_type = att.content_type or "application/octet-stream"
        if att.send_length:
            response.content_length = total
        await response.prepare(request)
        chunk = 64 * 1024
        try:
            for start in range(0, att.size, chunk):
                await response.write(att.data[start : start + chunk])
                if att.chunk_delay:
                    await asyncio.sleep(att.chunk_delay)
            remaining = att.extra_bytes
            zeros = bytes(chunk)
            while remaining > 0:
                n = min(chunk, remaining)
                await response.write(zeros[:n])
                remaining -= n
                if att.chunk_delay:
                    await asyncio.sleep(att.chunk_delay)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client gave up (byte cap): that is what the test wanted to see
        return response
