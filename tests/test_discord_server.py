"""The local Discord-compatible server, driven by a real discord.py client (not our bot)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import discord
import pytest
import yarl
from discord import app_commands

from tests.discord_server import (
    FakeDiscord,
    Guild,
    Intent,
    InteractionFailed,
    MiB,
    Perm,
    User,
)
from tests.discord_spec import SPEC_ENV, load_spec

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
StartClient = Callable[[discord.Client], Awaitable[discord.Client]]


def _spec_path() -> str | None:
    """The env var's spec, else the copy beside the checkout (../shared), else None."""
    env = os.environ.get(SPEC_ENV, "").strip()
    if env:
        return env
    candidate = Path(__file__).resolve().parents[2] / "shared/discord-api-spec/openapi.json"
    return str(candidate) if candidate.exists() else None


@pytest.fixture
async def server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    path = _spec_path()
    async with FakeDiscord(spec=load_spec(path) if path else None) as srv:
        # discord.py's documented knobs for another API host (the bot sets them from settings).
        monkeypatch.setattr(discord.http.Route, "BASE", srv.api_base)
        monkeypatch.setattr(
            discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(srv.gateway_url)
        )
        yield srv
        assert srv.errors == [], srv.errors
        assert srv.unhandled == [], "discord.py called routes the server does not implement"
        assert srv.spec_violations == [], [str(v) for v in srv.spec_violations]


@pytest.fixture
def guild(server: FakeDiscord) -> Guild:
    return server.add_guild("Test Server")


@pytest.fixture
def alice(server: FakeDiscord, guild: Guild) -> User:
    user = server.add_user("alice")
    server.add_member(guild, user)
    return user


@pytest.fixture
async def start_client(server: FakeDiscord) -> AsyncIterator[StartClient]:
    started: list[tuple[discord.Client, asyncio.Task[None]]] = []

    async def start(client: discord.Client) -> discord.Client:
        task = asyncio.create_task(client.start(server.token))
        started.append((client, task))
        ready = asyncio.create_task(client.wait_until_ready())
        done, _ = await asyncio.wait({task, ready}, timeout=15, return_when="FIRST_COMPLETED")
        if ready not in done:
            ready.cancel()
            if task in done:
                task.result()  # raise the client's start-up error
            raise TimeoutError("client did not become ready")
        return client

    yield start
    for client, task in started:
        await client.close()
        with contextlib.suppress(discord.DiscordException, asyncio.CancelledError):
            await asyncio.wait_for(task, 5)


def _client(**options: Any) -> discord.Client:
    options.setdefault("intents", discord.Intents.default())
    # READY waits this long after the last GUILD_CREATE; 2 s by default.
    options.setdefault("guild_ready_timeout", 0.05)
    return discord.Client(**options)


async def _text_channel(client: discord.Client, guild: Guild) -> discord.TextChannel:
    channel = client.get_channel(guild.text_channels[0].id)
    assert isinstance(channel, discord.TextChannel)
    return channel


async def test_client_connects_and_sees_guild(
    server: FakeDiscord, guild: Guild, start_client: StartClient
) -> None:
    """READY then GUILD_CREATE give the client its user, application, channels, roles and member."""
    client = await start_client(_client())
    assert client.user is not None and client.user.id == server.bot.id
    assert client.application_id == server.application_id
    g = client.get_guild(guild.id)
    assert g is not None and g.name == "Test Server"
    assert [c.name for c in g.text_channels] == ["general"]
    assert g.me is not None and g.me.guild_permissions.attach_files
    assert g.owner_id == guild.owner_id
    assert server.identify_count == 1


async def test_command_sync_counts_creates_only_for_changes(
    server: FakeDiscord, guild: Guild, start_client: StartClient
) -> None:
    """Guild command sync is recorded; re-syncing identical definitions creates nothing new."""
    client = _client()
    tree = app_commands.CommandTree(client)

    @tree.command(name="animate", description="Animate an image")
    async def animate(interaction: discord.Interaction, image: discord.Attachment, prompt: str):
        pass

    await start_client(client)
    target = discord.Object(guild.id)
    tree.copy_global_to(guild=target)
    await tree.sync(guild=target)
    await tree.sync(guild=target)
    assert [c["name"] for c in server.commands(guild)] == ["animate"]
    assert [o["type"] for o in server.commands(guild)[0]["options"]] == [11, 3]
    assert server.command_creates(guild) == 1
    assert [w.created for w in server.command_writes(guild)] == [["animate"], []]
    fetched = await tree.fetch_commands(guild=target)
    assert [c.name for c in fetched] == ["animate"]


async def test_slash_defer_download_followup_and_edit(
    server: FakeDiscord, guild: Guild, alice: User, start_client: StartClient
) -> None:
    """Slash with an attachment: defer, CDN download, followup with a file, edit of the original."""
    client = _client()
    tree = app_commands.CommandTree(client)
    seen: dict[str, Any] = {}

    @tree.command(name="animate", description="Animate an image")
    async def animate(interaction: discord.Interaction, image: discord.Attachment, prompt: str):
        await interaction.response.defer(thinking=True)
        seen["bytes"] = await image.read()
        seen["limit"] = interaction.filesize_limit
        seen["prompt"] = prompt
        clip = discord.File(io.BytesIO(b"MP4DATA"), filename="clip.mp4")
        await interaction.followup.send("here it is", file=clip)
        await interaction.edit_original_response(content="done")

    await start_client(client)
    await tree.sync()
    ix = await server.slash(
        guild, None, alice, "animate", {"prompt": "waves"}, [("cat.png", PNG, "image/png")]
    )
    assert await ix.acknowledged() == 5
    await server.wait_for(lambda: len(ix.original_edits) == 2, what="followup + edit")
    assert seen == {"bytes": PNG, "limit": 10 * MiB, "prompt": "waves"}
    msg = ix.original
    assert msg is not None and not msg.loading and not msg.ephemeral
    assert ix.followups == [msg], "the first followup after a defer fills the deferred message"
    assert msg.content == "done"
    assert [a.filename for a in msg.attachments] == ["clip.mp4"] and msg.file() == b"MP4DATA"
    assert server.messages(guild.text_channels[0]) == [msg]


async def test_dynamic_item_button_click_is_routed(
    server: FakeDiscord, guild: Guild, alice: User, start_client: StartClient
) -> None:
    """A click carries the full message, so discord.py routes it to the DynamicItem."""

    class Counter(discord.ui.DynamicItem[discord.ui.Button], template=r"zt:count:(?P<n>\d+)"):
        def __init__(self, n: int) -> None:
            super().__init__(discord.ui.Button(label=str(n), custom_id=f"zt:count:{n}"))
            self.n = n

        @classmethod
        async def from_custom_id(cls, interaction, item, match):  # type: ignore[override]
            return cls(int(match["n"]))

        async def callback(self, interaction: discord.Interaction) -> None:
            view = discord.ui.View(timeout=None).add_item(Counter(self.n + 1))
            await interaction.response.edit_message(content=f"count {self.n + 1}", view=view)

    client = _client()
    client.add_dynamic_items(Counter)
    await start_client(client)
    channel = await _text_channel(client, guild)
    sent = await channel.send("count 0", view=discord.ui.View(timeout=None).add_item(Counter(0)))
    msg = server.message(sent.id)
    ix = await server.click(msg, "zt:count:0", alice)
    assert await ix.acknowledged() == 7
    assert msg.content == "count 1" and msg.custom_ids == ["zt:count:1"]
    assert ix.original is msg


async def test_modal_from_button_and_submit(
    server: FakeDiscord, guild: Guild, alice: User, start_client: StartClient
) -> None:
    """Button -> modal (prefilled) -> submit with a new value -> ephemeral reply."""
    got: dict[str, str] = {}

    class EditModal(discord.ui.Modal, title="Edit the prompt"):
        prompt = discord.ui.TextInput(label="Prompt", custom_id="prompt", default="waves")

        async def on_submit(self, interaction: discord.Interaction) -> None:
            got["prompt"] = self.prompt.value
            await interaction.response.send_message("queued", ephemeral=True)

    class Edit(discord.ui.DynamicItem[discord.ui.Button], template=r"zt:edit:(?P<id>\d+)"):
        def __init__(self, job: int) -> None:
            super().__init__(discord.ui.Button(label="Edit", custom_id=f"zt:edit:{job}"))

        @classmethod
        async def from_custom_id(cls, interaction, item, match):  # type: ignore[override]
            return cls(int(match["id"]))

        async def callback(self, interaction: discord.Interaction) -> None:
            await interaction.response.send_modal(EditModal())

    client = _client()
    client.add_dynamic_items(Edit)
    await start_client(client)
    channel = await _text_channel(client, guild)
    sent = await channel.send("clip", view=discord.ui.View(timeout=None).add_item(Edit(7)))
    click = await server.click(server.message(sent.id), "zt:edit:7", alice)
    assert await click.acknowledged() == 9
    assert click.modal is not None and click.modal["title"] == "Edit the prompt"
    submit = await server.submit_modal(click, {"prompt": "a storm rolls in"})
    assert await submit.acknowledged() == 4
    assert got == {"prompt": "a storm rolls in"}
    assert submit.ephemeral and submit.original is not None
    assert submit.original.content == "queued" and submit.original.pinged.nobody


async def test_late_acknowledgement_fails(
    server: FakeDiscord, guild: Guild, alice: User, start_client: StartClient
) -> None:
    """An answer after the 3 s window gets 404 Unknown interaction (10062); the user saw a failure."""
    client = _client()
    tree = app_commands.CommandTree(client)
    gate = asyncio.Event()
    errors: list[discord.HTTPException] = []

    @tree.command(name="slow", description="Answers too late")
    async def slow(interaction: discord.Interaction) -> None:
        await gate.wait()
        try:
            await interaction.response.defer()
        except discord.NotFound as exc:
            errors.append(exc)

    await start_client(client)
    await tree.sync()
    ix = await server.slash(guild, None, alice, "slow")
    server.clock.advance(3.5)
    with pytest.raises(InteractionFailed, match="This interaction failed"):
        await ix.acknowledged()
    gate.set()
    await server.wait_for(lambda: ix.callback_results, what="the late callback")
    assert ix.callback_results == [(404, 10062)]
    assert errors and errors[0].code == 10062


async def test_second_initial_response_is_rejected(
    server: FakeDiscord, guild: Guild, alice: User, start_client: StartClient
) -> None:
    """A second callback gets 400 code 40060 in Discord's JSON (Content-Type exactly JSON)."""
    client = _client()
    tree = app_commands.CommandTree(client)

    @tree.command(name="once", description="Answers once")
    async def once(interaction: discord.Interaction) -> None:
        view = discord.ui.View().add_item(discord.ui.Button(label="Go", custom_id="zt:go:1"))
        await interaction.response.send_message(
            "first",
            embed=discord.Embed(title="t"),
            view=view,
            file=discord.File(io.BytesIO(b"clip"), filename="clip.mp4"),
        )

    await start_client(client)
    await tree.sync()
    ix = await server.slash(guild, None, alice, "once")
    assert await ix.acknowledged() == 4
    url = f"{server.api_base}/interactions/{ix.id}/{ix.token}/callback"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json={"type": 4, "data": {"content": "again"}}) as resp,
    ):
        assert resp.status == 400
        assert resp.headers["Content-Type"] == "application/json"
        body = await resp.json()
    assert body["code"] == 40060 and "already been acknowledged" in body["message"]
    assert ix.callback_results == [(200, None), (400, 40060)]
    [first] = server.messages(guild.text_channels[0])
    assert first.content == "first" and first.file() == b"clip" and first.custom_ids == ["zt:go:1"]


async def test_injected_429_is_retried_once(
    server: FakeDiscord, guild: Guild, start_client: StartClient
) -> None:
    """A 429 with Via/X-RateLimit headers and retry_after is retried by discord.py: one message."""
    client = await start_client(_client())
    channel = await _text_channel(client, guild)
    fault = server.inject("POST", r"/channels/\d+/messages$", status=429, retry_after=0.05)
    await channel.send("hello")
    assert fault.hits == 1
    assert [m.content for m in server.messages(channel.id)] == ["hello"]
    assert [r.status for r in server.requests_for("POST", r"/channels/\d+/messages$")] == [429, 200]


async def test_lost_response_and_nonce_do_not_duplicate(
    server: FakeDiscord, guild: Guild, start_client: StartClient
) -> None:
    """A 502 after the message was created is retried with the same nonce: still one message."""
    client = await start_client(_client())
    channel = await _text_channel(client, guild)
    server.inject("POST", r"/channels/\d+/messages$", status=502, after=True)
    sent = await channel.send("result", nonce="job-42")
    messages = server.messages(channel.id)
    assert [m.id for m in messages] == [sent.id] and messages[0].nonce == "job-42"
    assert [r.status for r in server.requests_for("POST", r"/messages$")] == [502, 200]


async def test_expired_token_gives_401(
    server: FakeDiscord, guild: Guild, alice: User, start_client: StartClient
) -> None:
    """After 15 minutes the interaction token is dead: followups get 401 code 50027."""
    client = _client()
    tree = app_commands.CommandTree(client)
    kept: list[discord.Interaction] = []

    @tree.command(name="later", description="Defers and answers later")
    async def later(interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        kept.append(interaction)

    await start_client(client)
    await tree.sync()
    ix = await server.slash(guild, None, alice, "later")
    assert await ix.acknowledged() == 5
    await server.wait_for(lambda: kept)
    server.clock.advance(15 * 60 + 1)
    with pytest.raises(discord.HTTPException) as info:
        await kept[0].followup.send("too late")
    assert info.value.status == 401 and info.value.code == 50027
    assert ix.webhook_errors and ix.webhook_errors[0][2:] == (401, 50027)


async def test_upload_over_limit_gives_413(
    server: FakeDiscord, guild: Guild, start_client: StartClient
) -> None:
    """A file over the guild's upload limit is refused with 413 code 40005 and nothing is posted."""
    server.set_upload_limit(guild, 1024)
    client = await start_client(_client())
    channel = await _text_channel(client, guild)
    with pytest.raises(discord.HTTPException) as info:
        await channel.send(file=discord.File(io.BytesIO(b"x" * 2048), filename="big.mp4"))
    assert info.value.status == 413 and info.value.code == 40005
    assert server.messages(channel.id) == []


async def test_allowed_mentions_decide_who_is_pinged(
    server: FakeDiscord, guild: Guild, alice: User, start_client: StartClient
) -> None:
    """@everyone with AllowedMentions.none() pings no one; adding one user pings only that user."""
    role = server.add_role(guild, "fans", mentionable=True)
    client = await start_client(_client(allowed_mentions=discord.AllowedMentions.none()))
    channel = await _text_channel(client, guild)
    text = f"@everyone @here {alice.mention} {role.mention} look"
    quiet = await channel.send(text)
    assert server.message(quiet.id).pinged.nobody
    only_alice = discord.AllowedMentions(users=[discord.Object(alice.id)])
    one = await channel.send(text, allowed_mentions=only_alice)
    pinged = server.message(one.id).pinged
    assert pinged.users == {alice.id} and not pinged.everyone and not pinged.roles
    # Without any allowed_mentions Discord parses everything: the rules really are applied.
    loud = await client.http.send_message(channel.id, params=_plain_params(text))
    pinged = server.message(int(loud["id"])).pinged
    assert pinged.everyone and pinged.here and pinged.users == {alice.id}
    assert pinged.roles == {role.id}


def _plain_params(content: str) -> discord.http.MultipartParameters:
    return discord.http.handle_message_parameters(content=content)


async def test_spec_validation_rejects_malformed_body(
    server: FakeDiscord, guild: Guild, start_client: StartClient
) -> None:
    """With the OpenAPI spec loaded, a body of the wrong shape gets 400 50035 and is recorded."""
    if server.spec is None:
        pytest.skip(f"Discord's OpenAPI file not found (set {SPEC_ENV})")
    client = await start_client(_client())
    route = discord.http.Route(
        "POST", "/channels/{channel_id}/messages", channel_id=guild.text_channels[0].id
    )
    with pytest.raises(discord.HTTPException) as info:
        await client.http.request(route, json={"content": 123, "tts": "yes"})
    assert info.value.status == 400 and info.value.code == 50035
    [violation] = server.spec_violations
    assert violation.operation_id == "create_message"
    assert {e.path for e in violation.errors} == {("content",), ("tts",)}
    server.spec_violations.clear()
    assert server.messages(guild.text_channels[0]) == []


async def test_component_and_modal_limits(
    server: FakeDiscord, guild: Guild, start_client: StartClient
) -> None:
    """The server itself (spec off) refuses a 101-char custom_id, 6 rows and 6 buttons in a row."""
    server.spec = None
    client = await start_client(_client())
    channel_id = guild.text_channels[0].id

    def button(custom_id: str) -> dict[str, Any]:
        return {"type": 2, "style": 1, "label": "x", "custom_id": custom_id}

    bad_bodies = [
        [{"type": 1, "components": [button("x" * 101)]}],
        [{"type": 1, "components": [button(f"r{i}")]} for i in range(6)],
        [{"type": 1, "components": [button(f"b{i}") for i in range(6)]}],
        [{"type": 1, "components": [button("same"), button("same")]}],
    ]
    route = discord.http.Route("POST", "/channels/{channel_id}/messages", channel_id=channel_id)
    for components in bad_bodies:
        with pytest.raises(discord.HTTPException) as info:
            await client.http.request(route, json={"content": "x", "components": components})
        assert info.value.status == 400 and info.value.code == 50035
    ok = [{"type": 1, "components": [button(f"r{r}b{b}") for b in range(5)]} for r in range(5)]
    await client.http.request(route, json={"content": "25 buttons", "components": ok})
    assert [m.content for m in server.messages(channel_id)] == ["25 buttons"]


async def test_unwritable_channel_and_closed_dms(
    server: FakeDiscord, guild: Guild, alice: User, start_client: StartClient
) -> None:
    """No Send Messages -> 403 50013 (CHANNEL_UPDATE reaches the cache); closed DMs -> 403 50007."""
    client = await start_client(_client())
    channel = await _text_channel(client, guild)
    server.set_bot_can_send(guild.text_channels[0], False)
    await server.wait_for(lambda: not channel.permissions_for(channel.guild.me).send_messages)
    with pytest.raises(discord.Forbidden) as info:
        await channel.send("hi")
    assert info.value.code == 50013
    server.close_dms(alice)
    user = await client.fetch_user(alice.id)
    with pytest.raises(discord.Forbidden) as info:
        await user.send("your clip")
    assert info.value.code == 50007
    server.close_dms(alice, closed=False)
    await user.send("your clip")
    assert [m.content for m in server.dm_messages(alice)] == ["your clip"]


async def test_gateway_resume_after_drop(
    server: FakeDiscord, guild: Guild, alice: User, start_client: StartClient
) -> None:
    """A dropped socket is RESUMEd (no new IDENTIFY) and interactions keep arriving."""
    client = _client()
    tree = app_commands.CommandTree(client)

    @tree.command(name="ping", description="Pong")
    async def ping(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("pong")

    await start_client(client)
    await tree.sync()
    await server.drop_connections(4000)
    await server.wait_for(lambda: server.resume_count == 1 and server.connected, what="RESUME")
    ix = await server.slash(guild, None, alice, "ping")
    assert await ix.acknowledged() == 4
    assert server.identify_count == 1


async def test_privileged_intents_need_the_portal_switch(
    server: FakeDiscord, guild: Guild, start_client: StartClient
) -> None:
    """Asking for privileged intents not enabled closes with 4014; enabling them lets it in."""
    client = _client(intents=discord.Intents.all())
    with pytest.raises(discord.PrivilegedIntentsRequired):
        await asyncio.wait_for(client.start(server.token), 10)
    await client.close()
    server.privileged_intents = Intent.PRIVILEGED
    client = await start_client(_client(intents=discord.Intents.all()))
    assert client.get_guild(guild.id) is not None


async def test_bad_token_is_a_login_failure(server: FakeDiscord) -> None:
    """A wrong token gets 401 on GET /users/@me, which discord.py turns into LoginFailure."""
    client = _client()
    with pytest.raises(discord.LoginFailure):
        await client.login("not-the-token")
    await client.close()


async def test_cdn_behaviours(server: FakeDiscord) -> None:
    """The CDN serves the declared type, and can redirect, fail, stream huge bodies and expire."""
    plain = server.make_attachment("cat.png", PNG, "image/png")
    moved = server.make_attachment("moved.png", PNG, redirect_to="http://203.0.113.1/x.png")
    huge = server.make_attachment("huge.png", PNG, extra_bytes=64 * MiB, declared_size=len(PNG))
    gone = server.make_attachment("gone.png", PNG, status=403)
    async with aiohttp.ClientSession() as session:
        async with session.get(plain.url) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "image/png"
            assert await resp.read() == PNG
        async with session.get(moved.url, allow_redirects=False) as resp:
            assert resp.status == 302 and resp.headers["Location"] == "http://203.0.113.1/x.png"
        async with session.get(huge.url) as resp:
            assert resp.content_length == len(PNG) + 64 * MiB
            assert len(await resp.content.read(MiB)) > 0  # the client stops early; no hang
        async with session.get(gone.url) as resp:
            assert resp.status == 403
        server.clock.advance(25 * 3600)  # signed attachment URLs die after about a day
        async with session.get(plain.url) as resp:
            assert resp.status == 404


async def test_permissions_in_interaction_payload(
    server: FakeDiscord, guild: Guild, alice: User, start_client: StartClient
) -> None:
    """Member permissions reach discord.py: a moderator has Manage Messages, alice does not."""
    mod = server.add_user("mod")
    server.add_member(guild, mod, permissions=Perm.MANAGE_MESSAGES | Perm.MANAGE_GUILD)
    client = _client()
    tree = app_commands.CommandTree(client)
    seen: dict[str, tuple[bool, bool, int]] = {}

    @tree.command(name="whoami", description="Permissions")
    async def whoami(interaction: discord.Interaction) -> None:
        perms = interaction.permissions
        seen[interaction.user.name] = (
            perms.manage_messages,
            interaction.app_permissions.send_messages,
            interaction.filesize_limit,
        )
        await interaction.response.send_message("ok", ephemeral=True)

    await start_client(client)
    await tree.sync()
    for user in (alice, mod):
        assert await (await server.slash(guild, None, user, "whoami")).acknowledged() == 4
    await server.wait_for(lambda: len(seen) == 2)
    assert seen == {"alice": (False, True, 10 * MiB), "mod": (True, True, 10 * MiB)}


async def test_ephemeral_defer_followups_and_webhook_edits(
    server: FakeDiscord, guild: Guild, alice: User, start_client: StartClient
) -> None:
    """Ephemeral defer: 1st followup fills it (after a 429), 2nd is new; edit by id, delete."""
    client = _client()
    tree = app_commands.CommandTree(client)
    done = asyncio.Event()

    @tree.command(name="info", description="Ephemeral info")
    async def info(interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        await interaction.followup.send("seed 42", ephemeral=True)
        extra = await interaction.followup.send(
            "file", file=discord.File(io.BytesIO(b"abc"), filename="a.txt"), wait=True
        )
        await extra.edit(content="file (edited)")
        await interaction.delete_original_response()
        done.set()

    await start_client(client)
    await tree.sync()
    # The webhook adapter (followups) retries a 429 too.
    fault = server.inject("POST", r"^/webhooks/\d+/[^/]+$", status=429, retry_after=0.01)
    ix = await server.slash(guild, None, alice, "info")
    assert await ix.acknowledged() == 5
    await asyncio.wait_for(done.wait(), 5)
    assert fault.hits == 1
    first, second = ix.followups
    assert first is ix.original and first.ephemeral and first.deleted and first.content == "seed 42"
    assert second.content == "file (edited)" and second.file() == b"abc" and second.edits
    assert server.messages(guild.text_channels[0]) == [second]


async def test_offline_bot_and_command_permissions(
    server: FakeDiscord, guild: Guild, alice: User, start_client: StartClient
) -> None:
    """Manage-Server commands are not offered to alice; with the bot offline interactions fail."""
    from tests.discord_server import CommandUnavailable

    client = _client()
    tree = app_commands.CommandTree(client)

    @tree.command(name="settings", description="Server settings")
    @app_commands.default_permissions(manage_guild=True)
    async def settings(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("settings", ephemeral=True)

    await start_client(client)
    await tree.sync()
    with pytest.raises(CommandUnavailable):
        await server.slash(guild, None, alice, "settings")
    owner = server.users[guild.owner_id]
    assert await (await server.slash(guild, None, owner, "settings")).acknowledged() == 4
    await client.close()
    await server.wait_for(lambda: not server.connected, what="the client to leave")
    ix = await server.slash(guild, None, owner, "settings")
    assert not ix.delivered
    server.clock.advance(3.5)
    with pytest.raises(InteractionFailed):
        await ix.acknowledged()


async def test_common_discord_py_payloads_match_the_spec(
    server: FakeDiscord, guild: Guild, alice: User, start_client: StartClient
) -> None:
    """Embeds, replies, selects, link buttons, file edits and interaction edits pass the spec."""
    client = await start_client(_client(allowed_mentions=discord.AllowedMentions.none()))
    channel = await _text_channel(client, guild)
    embed = discord.Embed(title="Clip", description="a *prompt*", colour=0x5865F2)
    embed.add_field(name="Seed", value="42").set_footer(text="ltx-fast")
    view = discord.ui.View(timeout=None)
    view.add_item(discord.ui.Button(label="Reroll", custom_id="zt:reroll:1", emoji="🔄"))
    view.add_item(discord.ui.Button(label="Docs", url="https://example.com/docs"))
    select = discord.ui.Select(
        custom_id="zt:preset:1", options=[discord.SelectOption(label="ltx-fast")]
    )
    view.add_item(select)
    clip = discord.File(io.BytesIO(b"MP4"), filename="clip.mp4", description="the clip")
    first = await channel.send(
        f"{alice.mention} your clip",
        embed=embed,
        view=view,
        file=clip,
        nonce="job-1",
        allowed_mentions=discord.AllowedMentions(users=[discord.Object(alice.id)]),
    )
    reply = await first.reply("reply", mention_author=False)
    await first.edit(content="edited", attachments=[], view=None)
    await reply.delete()
    assert server.spec_checked == 3 or server.spec is None
    stored = server.message(first.id)
    assert stored.pinged.users == {alice.id} and stored.attachments == []
    assert server.message(reply.id).deleted
