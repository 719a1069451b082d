"""Image intake: a corpus of good, odd and bad files built here; downloads; prompts."""

from __future__ import annotations

import asyncio
import hashlib
import io
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from PIL import Image, PngImagePlugin

from bot.errors import BadImage, BadPrompt, DownloadFailed
from bot.intake import (
    ImageLimits,
    accept_image,
    fetch_attachment,
    input_path,
    normalise_image,
    normalise_pil,
    normalise_prompt,
    store_image,
)

# -- corpus builders ------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with garbage where the pixels should be:
    only a header check can refuse it as too big (decoding would call it damaged)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def decoded(result) -> Image.Image:
    image = Image.open(io.BytesIO(result.png))
    image.load()
    return image


def close(pixel, expected, tolerance=6) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


def quadrant_image(width: int = 120, height: int = 80) -> Image.Image:
    """Red top-left block on grey: shows where the top-left corner ended up."""
    image = Image.new("RGB", (width, height), (128, 128, 128))
    image.paste((255, 0, 0), (0, 0, 30, 30))
    return image


# -- good and odd-but-valid files -----------------------------------------------------


def test_png_is_normalised_and_stored_once_by_content_hash(tmp_path: Path) -> None:
    """A plain PNG becomes metadata-free RGB PNG stored as inputs/<sha256>.png, once."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "secret comment")
    data = encode(quadrant_image(), "PNG", pnginfo=info)
    result = accept_image(data, inputs_dir=tmp_path)
    assert result.path == tmp_path / f"{result.sha256}.png"
    assert hashlib.sha256(result.path.read_bytes()).hexdigest() == result.sha256
    assert (result.width, result.height, result.source_format) == (120, 80, "PNG")
    out = decoded(result)
    assert out.mode == "RGB" and "Comment" not in out.info and not out.getexif()
    again = accept_image(data, inputs_dir=tmp_path)
    assert again.sha256 == result.sha256
    assert [p.name for p in tmp_path.iterdir()] == [f"{result.sha256}.png"]


def test_exif_orientation_applied_and_gps_stripped() -> None:
    """A phone JPEG rotated by EXIF comes out upright, without its EXIF (GPS) data."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    exif[0x8825] = {1: "N", 2: (52.0, 22.0, 0.0)}  # GPS IFD
    exif[0x010F] = "PhoneMaker"
    data = encode(quadrant_image(), "JPEG", exif=exif.tobytes(), quality=95)
    assert Image.open(io.BytesIO(data)).getexif()[0x0112] == 6
    result = normalise_image(data)
    out = decoded(result)
    assert out.size == (80, 120)  # turned upright
    # stored top-left corner is the displayed top-right corner after a 90° turn
    assert close(out.getpixel((75, 5)), (255, 0, 0), 20)
    assert close(out.getpixel((5, 5)), (128, 128, 128), 20)
    assert not out.getexif() and "exif" not in out.info


def test_mpo_from_phones_takes_the_first_frame() -> None:
    """An MPO (multi-picture JPEG from phones) is accepted as its first picture."""
    first = Image.new("RGB", (96, 96), (255, 0, 0))
    second = Image.new("RGB", (96, 96), (0, 0, 255))
    data = encode(first, "MPO", save_all=True, append_images=[second])
    result = normalise_image(data)
    assert result.source_format == "MPO"
    assert close(decoded(result).getpixel((40, 40)), (255, 0, 0), 8)


@pytest.mark.parametrize(
    "fmt,params",
    [
        ("WEBP", {"lossless": True}),
        ("BMP", {}),
        ("TIFF", {}),
        ("JPEG", {"quality": 95}),
    ],
)
def test_other_formats(fmt: str, params: dict) -> None:
    """WebP, BMP, TIFF and JPEG are read by content with their colours intact."""
    data = encode(quadrant_image(), fmt, **params)
    result = normalise_image(data)
    assert result.source_format == fmt
    out = decoded(result)
    assert out.size == (120, 80)
    assert close(out.getpixel((5, 5)), (255, 0, 0), 12)
    assert close(out.getpixel((100, 60)), (128, 128, 128), 12)


def test_animated_gif_and_multipage_tiff_use_the_first_frame() -> None:
    """Animated GIFs and multi-page TIFFs give their first frame."""
    red = Image.new("RGB", (80, 80), (255, 0, 0))
    blue = Image.new("RGB", (80, 80), (0, 0, 255))
    gif = encode(red, "GIF", save_all=True, append_images=[blue], duration=100, loop=0)
    assert Image.open(io.BytesIO(gif)).n_frames == 2
    assert decoded(normalise_image(gif)).getpixel((10, 10)) == (255, 0, 0)
    tiff = encode(blue, "TIFF", save_all=True, append_images=[red])
    assert decoded(normalise_image(tiff)).getpixel((10, 10)) == (0, 0, 255)


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    """16-bit greyscale maps 0..65535 onto 0..255 (mid-grey stays mid-grey)."""
    values = np.full((64, 64), 32896, dtype=np.uint16)  # 128 * 257
    values[:, :16] = 65535
    values[:, 16:32] = 257
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    for fmt in ("PNG", "TIFF"):
        out = decoded(normalise_image(encode(image, fmt)))
        assert out.getpixel((40, 5)) == (128, 128, 128)
        assert out.getpixel((5, 5)) == (255, 255, 255)
        assert out.getpixel((20, 5)) == (1, 1, 1)


def test_cmyk_palette_and_alpha_become_rgb_on_a_background() -> None:
    """CMYK converts to RGB; palette and alpha transparency land on a white background."""
    cmyk = Image.new("CMYK", (80, 80), (255, 0, 0, 0))  # pure cyan
    assert close(decoded(normalise_image(encode(cmyk, "JPEG"))).getpixel((9, 9)), (0, 255, 255))

    palette = Image.new("P", (80, 80), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0])
    palette.paste(1, (40, 0, 80, 80))
    out = decoded(normalise_image(encode(palette, "PNG", transparency=0)))
    assert out.getpixel((5, 5)) == (255, 255, 255)  # transparent index -> background
    assert out.getpixel((60, 5)) == (0, 255, 0)

    rgba = Image.new("RGBA", (80, 80), (255, 0, 0, 128))
    out = decoded(normalise_image(encode(rgba, "PNG")))
    assert close(out.getpixel((5, 5)), (255, 127, 127), 2)

    la = Image.new("LA", (80, 80), (0, 0))  # fully transparent black
    out = decoded(normalise_image(encode(la, "PNG"), limits=ImageLimits(background=(1, 2, 3))))
    assert out.getpixel((5, 5)) == (1, 2, 3)


def test_big_images_are_downscaled_keeping_the_aspect_ratio() -> None:
    """An image beyond the stored size is scaled down to it, aspect ratio kept."""
    data = encode(Image.new("RGB", (3000, 1500), (10, 20, 30)), "PNG")
    result = normalise_image(data)
    assert (result.width, result.height) == (2048, 1024)
    assert decoded(result).getpixel((1000, 500)) == (10, 20, 30)


def test_normalise_pil_for_extend_frames(tmp_path: Path) -> None:
    """A decoded frame (e.g. a clip's last frame) takes the same path into inputs/."""
    result = normalise_pil(Image.new("RGB", (64, 48), (1, 2, 3)))
    path = store_image(result, tmp_path)
    assert path == input_path(tmp_path, result.sha256) and path.is_file()
    with pytest.raises(ValueError, match="64 lowercase hex"):
        input_path(tmp_path, "../../etc/passwd")


# -- refusals -------------------------------------------------------------------------

REFUSALS = [
    ("text named .png", b"hello, this is not a picture at all", "isn't an image Zoetrope can read"),
    ("html", b"<!doctype html><html><body>hi</body></html>", "isn't an image Zoetrope can read"),
    ("zero bytes", b"", "That file is empty"),
    ("truncated png", "truncated_png", "damaged or incomplete"),
    ("truncated jpeg", "truncated_jpeg", "damaged or incomplete"),
    ("bomb under pillow's limit", png_header_only(9000, 9000), "too many pixels"),
    ("bomb over pillow's warning", png_header_only(12000, 12000), "too many pixels"),
    ("bomb over pillow's error", png_header_only(20000, 20000), "too many pixels"),
    ("1x1", "one_pixel", "only 1×1 pixels"),
    ("too small", "small", "at least 64 pixels"),
    ("extreme aspect", "thin", "too long and thin"),
    ("unsupported format (PPM)", "ppm", "PNG, JPEG, WebP, GIF, BMP or TIFF"),
]


def _bad_bytes(kind: str | bytes) -> bytes:
    if isinstance(kind, bytes):
        return kind
    noise = np.random.default_rng(1).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    if kind == "truncated_png":
        data = encode(Image.fromarray(noise), "PNG")
        return data[: len(data) // 2]
    if kind == "truncated_jpeg":
        data = encode(Image.fromarray(noise), "JPEG")
        return data[: len(data) // 2]
    if kind == "one_pixel":
        return encode(Image.new("RGB", (1, 1)), "PNG")
    if kind == "small":
        return encode(Image.new("RGB", (200, 40)), "PNG")
    if kind == "thin":
        return encode(Image.new("RGB", (800, 100)), "PNG")
    if kind == "ppm":
        return encode(Image.new("RGB", (100, 100)), "PPM")
    raise AssertionError(kind)


@pytest.mark.parametrize("name,kind,message", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_bad_files_are_refused_with_a_clear_message_and_nothing_stored(
    tmp_path: Path, name: str, kind: str | bytes, message: str
) -> None:
    """Each bad kind is refused with its own readable message; nothing reaches inputs/."""
    inputs = tmp_path / "inputs"
    with pytest.raises(BadImage) as info:
        accept_image(_bad_bytes(kind), inputs_dir=inputs)
    assert message in info.value.message
    assert info.value.message.endswith(".")
    assert not inputs.exists() or not any(inputs.iterdir())


def test_bomb_is_refused_from_the_header_even_when_pillow_only_warns() -> None:
    """With warnings as plain warnings (production), Pillow warns and our cap still refuses."""
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(BadImage, match="pixels"):
        normalise_image(png_header_only(12000, 12000))


def test_own_pixel_and_byte_caps() -> None:
    """Our pixel cap and byte cap apply to valid images too, before decoding."""
    data = encode(Image.new("RGB", (300, 300)), "PNG")
    with pytest.raises(BadImage, match=r"too many pixels \(300×300\)"):
        normalise_image(data, limits=ImageLimits(max_pixels=50_000))
    with pytest.raises(BadImage, match="too big"):
        normalise_image(data, limits=ImageLimits(max_bytes=100))


# -- prompts --------------------------------------------------------------------------


def test_prompt_normalisation() -> None:
    """NFKC, invisible and bidi characters dropped, whitespace collapsed, length capped."""
    assert normalise_prompt("ｗａｖｅｓ  roll\n\tin") == "waves roll in"
    assert normalise_prompt("a\u200bcat\u200d \u202ewalks\u202c\u2066 home\u2069\ufeff") == (
        "acat walks home"
    )
    assert normalise_prompt("tag\U000e0041\U000e0042 chars") == "tag chars"
    assert normalise_prompt("x" * 600) == "x" * 600
    with pytest.raises(BadPrompt, match="601 characters long; the limit is 600"):
        normalise_prompt("x" * 601)
    with pytest.raises(BadPrompt, match="empty"):
        normalise_prompt(" \u200b\u200f ")
    assert normalise_prompt("", allow_empty=True, what="negative prompt") == ""


# -- downloads ------------------------------------------------------------------------


@pytest.fixture
async def cdn() -> AsyncIterator[tuple[str, dict]]:
    """A local file server with an image, a redirect, a big file, a slow one and a 404."""
    png = encode(quadrant_image(), "PNG")
    state = {"big_sent": 0}
    done = asyncio.Event()

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=png, content_type="image/png")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/image.png")

    async def declared_big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 200_000, content_type="image/png")

    async def streamed_big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(100):
            await response.write(b"x" * 65536)
            state["big_sent"] += 65536
        await response.write_eof()
        return response

    async def slow(request: web.Request) -> web.Response:
        await done.wait()  # until the test ends: longer than any client timeout
        return web.Response(body=png)

    app = web.Application()
    app.router.add_get("/image.png", image)
    app.router.add_get("/redirect.png", redirect)
    app.router.add_get("/declared.png", declared_big)
    app.router.add_get("/streamed.png", streamed_big)
    app.router.add_get("/slow.png", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", state
    done.set()
    await runner.cleanup()


async def test_fetch_attachment(cdn: tuple[str, dict]) -> None:
    """Allowed host downloads; redirects, other hosts, plain http elsewhere, oversize bodies (declared or streamed), errors and timeouts are refused with clear messages."""
    base, state = cdn
    hosts = ["127.0.0.1", "cdn.discordapp.com"]
    async with aiohttp.ClientSession() as session:
        data = await fetch_attachment(
            f"{base}/image.png", session=session, allowed_hosts=hosts, max_bytes=1_000_000
        )
        assert normalise_image(data).width == 120

        async def refused(url: str, error: type, text: str, **kw) -> None:
            kw.setdefault("max_bytes", 100_000)
            with pytest.raises(error) as info:
                await fetch_attachment(url, session=session, allowed_hosts=hosts, **kw)
            assert text in info.value.message, info.value.message

        await refused(f"{base}/redirect.png", DownloadFailed, "redirected")
        await refused(f"{base}/nope.png", DownloadFailed, "answered 404")
        await refused(f"{base}/declared.png", BadImage, "too big")
        await refused(f"{base}/streamed.png", BadImage, "too big")
        assert state["big_sent"] < 100 * 65536  # stopped reading early
        await refused(f"{base}/slow.png", DownloadFailed, "took too long", timeout=0.2)
        only_discord = "only downloads images attached to Discord"
        await refused("https://evil.example/x.png", DownloadFailed, only_discord)
        await refused("http://cdn.discordapp.com/x.png", DownloadFailed, only_discord)
        await refused("file:///etc/passwd", DownloadFailed, only_discord)
        await refused("https://user:pw@cdn.discordapp.com/x.png", DownloadFailed, only_discord)
        await refused("not a url", DownloadFailed, only_discord)
        port = base.rsplit(":", 1)[1]
        with pytest.raises(DownloadFailed):
            await fetch_attachment(
                f"http://localhost:{port}/image.png",
                session=session,
                allowed_hosts=["127.0.0.1"],
                max_bytes=1_000_000,
            )
