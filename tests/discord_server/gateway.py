"""The gateway websocket: HELLO, IDENTIFY/READY, heartbeats, RESUME with replay, sharding,
intents, member requests, and dispatching events to sessions.
"""

from __future__ import annotations

import asyncio
import collections
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.discord_server.clock import _iso
from tests.discord_server.constants import Intent, MiB
from tests.discord_server.interaction import Interaction
from tests.discord_server.model import Guild, Message


class _Connection:
    """One gateway websocket; frames go out in order through a queue drained by a writer."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.queue: asyncio.Queue[str | tuple[int, str] | None] = asyncio.Queue()
        self.session: _Session | None = None
        self.writer: asyncio.Task[None] | None = None
        self.server_closing = False

    def send(self, frame: str) -> None:
        self.queue.put_nowait(frame)

    def close(self, code: int, reason: str = "") -> None:
        self.queue.put_nowait((code, reason))

    async def run_writer(self) -> None:
        while True:
            item = await self.queue.get()
            if item is None:  # the socket is done: stop after what was queued before
                return
            if isinstance(item, tuple):
                self.server_closing = True
                await self.ws.close(code=item[0], message=item[1].encode())
                return
            if self.ws.closed:
                continue
            try:
                await self.ws.send_str(item)
            except (ConnectionError, RuntimeError):
                return


@dataclass(eq=False)
class _Session:
    id: str
    intents: int
    shard: tuple[int, int]
    identified_at: float
    seq: int = 0
    conn: _Connection | None = None
    invalid: bool = False
    buffer: collections.deque[tuple[int, str, Interaction | None]] = field(
        default_factory=lambda: collections.deque(maxlen=2000)
    )

    def covers(self, guild_id: int | None) -> bool:
        if guild_id is None:
            return self.shard[0] == 0  # DMs go to shard 0
        return (guild_id >> 22) % self.shard[1] == self.shard[0]


class Gateway:
    """Sessions and connections; every event the server dispatches goes through here."""

    @property
    def connected(self) -> bool:
        return any(s.conn is not None for s in self._sessions.values())

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await self.wait_for(lambda: self.connected, timeout=timeout, what="a gateway session")

    def _session_for(self, guild_id: int | None) -> _Session | None:
        live = [s for s in self._sessions.values() if not s.invalid and s.covers(guild_id)]
        if not live:
            return None
        connected = [s for s in live if s.conn is not None]
        pool = connected or live
        return max(pool, key=lambda s: s.identified_at)

    def _dispatch(
        self,
        session: _Session,
        event: str,
        data: dict[str, Any],
        *,
        interaction: Interaction | None = None,
    ) -> None:
        session.seq += 1
        frame = json.dumps({"op": 0, "t": event, "s": session.seq, "d": data})
        session.buffer.append((session.seq, frame, interaction))
        if session.conn is not None:
            session.conn.send(frame)
            if interaction is not None:
                interaction.delivered = True

    def _guild_event(
        self, guild_id: int, event: str, data: dict[str, Any], *, intent: int = Intent.GUILDS
    ) -> None:
        guild = self.guilds.get(guild_id)
        if guild is None or self.bot.id not in guild.members:
            return
        for session in self._sessions.values():
            if not session.invalid and session.covers(guild_id) and session.intents & intent:
                self._dispatch(session, event, data)

    def _message_event(
        self, event: str, msg: Message, *, data: dict[str, Any] | None = None
    ) -> None:
        intent = Intent.GUILD_MESSAGES if msg.guild_id is not None else Intent.DIRECT_MESSAGES
        payload = data or self.message_payload(msg)
        if data is None and msg.guild_id is not None:
            payload = {**payload, "guild_id": str(msg.guild_id)}
        for session in self._sessions.values():
            if not session.invalid and session.covers(msg.guild_id) and session.intents & intent:
                self._dispatch(session, event, payload)

    def _guild_create_payload(self, guild: Guild, intents: int) -> dict[str, Any]:
        members = [
            m.payload()
            for m in guild.members.values()
            if intents & Intent.GUILD_MEMBERS or m.user is self.bot or m.user.id == guild.owner_id
        ]
        return {
            **self._guild_payload(guild),
            "unavailable": False,
            "joined_at": _iso(guild.members[self.bot.id].joined_at),
            "large": False,
            "member_count": len(guild.members),
            "channels": [c.payload() for c in guild.channels.values()],
            "members": members,
            "threads": [],
            "presences": [],
            "voice_states": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "embedded_activities": [],
        }

    def _broadcast_guild_create(self, guild: Guild) -> None:
        for session in self._sessions.values():
            if not session.invalid and session.covers(guild.id) and session.intents & Intent.GUILDS:
                self._dispatch(
                    session, "GUILD_CREATE", self._guild_create_payload(guild, session.intents)
                )

    async def request_reconnect(self) -> None:
        """Send op 7 RECONNECT to every connected client (they should RESUME)."""
        for session in self._sessions.values():
            if session.conn is not None:
                session.conn.send(json.dumps({"op": 7, "d": None}))
        await asyncio.sleep(0)

    async def drop_connections(self, code: int = 4000) -> None:
        """Close every gateway socket with ``code`` (4000: clients reconnect and RESUME)."""
        for session in self._sessions.values():
            if session.conn is not None:
                session.conn.close(code, "dropped by test")
        await asyncio.sleep(0)

    def invalidate_sessions(self) -> None:
        """Forget every session: a RESUME gets op 9 and the client must IDENTIFY again."""
        for session in self._sessions.values():
            session.invalid = True

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        # autoclose off: the server must see the code of a client's close frame (1000/1001
        # ends the session; other codes keep it resumable).
        ws = web.WebSocketResponse(autoping=True, autoclose=False, max_msg_size=16 * MiB)
        await ws.prepare(request)
        conn = _Connection(ws)
        conn.writer = asyncio.get_running_loop().create_task(conn.run_writer())
        self._connections.add(conn)
        conn.send(json.dumps({"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval_ms}}))
        client_close_code: int | None = None
        try:
            while True:
                msg = await ws.receive()
                if msg.type == WSMsgType.CLOSE:
                    client_close_code = msg.data
                    if not conn.server_closing:
                        await ws.close(code=msg.data)
                    break
                if msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    break
                if msg.type != WSMsgType.TEXT:
                    conn.close(4002, "Decode error")
                    break
                try:
                    frame = json.loads(msg.data)
                    op = frame["op"]
                except (ValueError, KeyError, TypeError):
                    conn.close(4002, "Decode error")
                    break
                if op == 1:
                    conn.send(json.dumps({"op": 11}))
                elif op == 2:
                    self._identify(conn, frame.get("d") or {})
                elif op == 6:
                    self._resume(conn, frame.get("d") or {})
                elif op == 8:
                    self._request_members(conn, frame.get("d") or {})
                elif op in (3, 4):
                    if conn.session is None:
                        conn.close(4003, "Not authenticated")
                else:
                    conn.close(4001, "Unknown opcode")
                self._notify()
        finally:
            session = conn.session
            if session is not None and session.conn is conn:
                session.conn = None
                if not conn.server_closing and client_close_code in (1000, 1001):
                    # A client that closes with 1000/1001 ends its session (no RESUME).
                    # discord.py's Client.close() puts 4000 on the wire (its reader closes
                    # first), so its sessions stay resumable, as they would on Discord.
                    session.invalid = True
            self._connections.discard(conn)
            if conn.writer is not None:
                # Let queued frames (and a close code) go out before the writer stops.
                conn.queue.put_nowait(None)
                try:
                    await asyncio.wait_for(asyncio.shield(conn.writer), 1.0)
                except TimeoutError:
                    conn.writer.cancel()
            self._notify()
        return ws

    def _identify(self, conn: _Connection, d: dict[str, Any]) -> None:
        if conn.session is not None:
            conn.close(4005, "Already authenticated")
            return
        if d.get("token") != self.token:
            conn.close(4004, "Authentication failed")
            return
        intents = d.get("intents")
        if not isinstance(intents, int) or intents < 0 or intents >= 1 << 26:
            conn.close(4013, "Invalid intent(s)")
            return
        if intents & Intent.PRIVILEGED & ~self.privileged_intents:
            conn.close(4014, "Disallowed intent(s)")
            return
        shard = d.get("shard") or [0, 1]
        if not (isinstance(shard, list) and len(shard) == 2 and 0 <= shard[0] < shard[1]):
            conn.close(4010, "Invalid shard")
            return
        self.identify_count += 1
        session = _Session(
            id=secrets.token_hex(16),
            intents=intents,
            shard=(int(shard[0]), int(shard[1])),
            identified_at=time.monotonic(),
            conn=conn,
        )
        self._sessions[session.id] = session
        conn.session = session
        guilds = [
            g for g in self.guilds.values() if self.bot.id in g.members and session.covers(g.id)
        ]
        ready: dict[str, Any] = {
            "v": 10,
            "user": self._bot_user_payload(),
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.application_id), "flags": self._application_flags()},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "user_settings": {},
            "auth": {},
        }
        if d.get("shard"):
            ready["shard"] = list(session.shard)
        self._dispatch(session, "READY", ready)
        if intents & Intent.GUILDS:
            for guild in guilds:
                self._dispatch(session, "GUILD_CREATE", self._guild_create_payload(guild, intents))

    def _resume(self, conn: _Connection, d: dict[str, Any]) -> None:
        session = self._sessions.get(str(d.get("session_id")))
        if session is None or session.invalid or d.get("token") != self.token:
            conn.send(json.dumps({"op": 9, "d": False}))
            return
        if session.conn is not None and session.conn is not conn:
            session.conn.close(4000, "Session resumed elsewhere")
        self.resume_count += 1
        session.conn = conn
        conn.session = session
        seq = d.get("seq") or 0
        for s, frame, interaction in list(session.buffer):
            if s > seq:
                conn.send(frame)
                if interaction is not None:
                    interaction.delivered = True
        self._dispatch(session, "RESUMED", {})

    def _request_members(self, conn: _Connection, d: dict[str, Any]) -> None:
        if conn.session is None:
            conn.close(4003, "Not authenticated")
            return
        guild = self.guilds.get(int(d.get("guild_id") or 0))
        if guild is None:
            return
        wanted = {int(u) for u in d.get("user_ids") or []}
        query = (d.get("query") or "").lower()
        members = [
            m.payload()
            for m in guild.members.values()
            if (not wanted or m.user.id in wanted) and m.user.username.lower().startswith(query)
        ]
        limit = d.get("limit") or 0
        if limit:
            members = members[:limit]
        chunk: dict[str, Any] = {
            "guild_id": str(guild.id),
            "members": members,
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [],
        }
        if d.get("nonce") is not None:
            chunk["nonce"] = d["nonce"]
        self._dispatch(conn.session, "GUILD_MEMBERS_CHUNK", chunk)
