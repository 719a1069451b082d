"""Bytes in, normalised image out: attachment download, image validation, prompt clean-up.

Nothing here trusts a file name or a declared content type: the format is decided by the
bytes (Pillow, restricted to an allowlist of formats). Every refusal raises `BadImage`,
`BadPrompt` or `DownloadFailed` with a message a member can read, and stores nothing.

Public API:

    fetch_attachment(url, *, session, allowed_hosts, max_bytes, timeout=30.0) -> bytes
    normalise_image(data, *, limits=ImageLimits()) -> NormalisedImage
    normalise_pil(image, *, limits=ImageLimits(), source_format="PNG") -> NormalisedImage
    store_image(image, inputs_dir) -> Path            # data/inputs/<sha256>.png, atomic
    accept_image(data, *, inputs_dir, limits=ImageLimits()) -> NormalisedImage  # both above
    input_path(inputs_dir, sha256) -> Path
    normalise_prompt(text, *, max_len=600, allow_empty=False, what="prompt") -> str
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import ipaddress
import os
import re
import struct
import tempfile
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import yarl
from PIL import Image, ImageOps, UnidentifiedImageError

from bot.errors import BadImage, BadPrompt, DownloadFailed

# Decided by content: Pillow tries only these decoders. MPO (what phones write: a JPEG with
# extra pictures) comes out of the JPEG decoder; we take its first picture.
OPEN_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
ALLOWED_FORMATS: tuple[str, ...] = (*OPEN_FORMATS, "MPO")
FORMATS_TEXT = "PNG, JPEG, WebP, GIF, BMP or TIFF"

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """What an input image must satisfy. Our pixel cap sits well below Pillow's own bomb
    limit (about 89 Mpx) so it is always our check, with our message, that refuses first."""

    max_bytes: int = 25 * MiB
    max_pixels: int = 50_000_000
    min_side: int = 64
    max_aspect: float = 3.0  # longest side / shortest side
    # Bigger images are downscaled before storing: the generator works at <= 1280 px anyway.
    max_stored_side: int = 2048
    background: tuple[int, int, int] = (255, 255, 255)  # transparent pixels land on this


DEFAULT_LIMITS = ImageLimits()


@dataclass(frozen=True, slots=True)
class NormalisedImage:
    """An RGB image ready for the generator, as PNG bytes with no metadata."""

    png: bytes = field(repr=False)
    sha256: str
    width: int
    height: int
    source_format: str
    path: Path | None = None


# -- download -------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_attachment_url(url: str, allowed_hosts: Iterable[str]) -> yarl.URL:
    """The URL, parsed, if it may be fetched: https to an allowed host (plain http only to
    a loopback host, which the tests use). Raises DownloadFailed otherwise."""
    refusal = DownloadFailed("Zoetrope only downloads images attached to Discord messages.")
    try:
        parsed = yarl.URL(url)
    except (ValueError, TypeError):
        raise refusal from None
    host = (parsed.host or "").lower().rstrip(".")
    if not parsed.is_absolute() or not host or parsed.user or parsed.password:
        raise refusal
    if parsed.scheme != "https" and not (parsed.scheme == "http" and _is_loopback(host)):
        raise refusal
    allowed = {h.lower().rstrip(".") for h in allowed_hosts}
    if host not in allowed and f"{host}:{parsed.port}" not in allowed:
        raise refusal
    return parsed


def _too_big(max_bytes: int) -> BadImage:
    return BadImage(f"That file is too big: the limit is {max_bytes / MiB:.0f} MiB.")


async def fetch_attachment(
    url: str,
    *,
    session: aiohttp.ClientSession,
    allowed_hosts: Iterable[str],
    max_bytes: int,
    timeout: float = 30.0,
) -> bytes:
    """Download an attachment: allowed hosts only, no redirects, at most `max_bytes`.

    The byte cap is checked on the declared Content-Length first and again while streaming,
    so an oversize body is refused as soon as it passes the cap, never buffered whole.
    """
    parsed = check_attachment_url(url, allowed_hosts)
    try:
        async with asyncio.timeout(timeout):
            async with session.get(
                parsed,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                if 300 <= response.status < 400:
                    raise DownloadFailed(
                        "The attachment link redirected elsewhere; Zoetrope only downloads "
                        "from Discord. Try attaching the image again."
                    )
                if response.status != 200:
                    raise DownloadFailed(
                        f"Discord's file server answered {response.status} for that "
                        "attachment. Try attaching the image again."
                    )
                if response.content_length is not None and response.content_length > max_bytes:
                    raise _too_big(max_bytes)
                data = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    data += chunk
                    if len(data) > max_bytes:
                        raise _too_big(max_bytes)
                return bytes(data)
    except TimeoutError:
        raise DownloadFailed(
            "Downloading the image took too long. Try again in a moment."
        ) from None
    except aiohttp.ClientError as exc:
        raise DownloadFailed(
            f"Couldn't download the image ({type(exc).__name__}). Try attaching it again."
        ) from None


# -- images ---------------------------------------------------------------------------

_NOT_AN_IMAGE = f"That file isn't an image Zoetrope can read ({FORMATS_TEXT})."
_DAMAGED = "That image is damaged or incomplete; Zoetrope can't read all of it."
# What Pillow raises on damaged data. The bomb error/warning are listed so that Pillow's
# own guard (which only fires above ~89 Mpx, after ours) can never escape as a crash,
# even where warnings are turned into errors.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    struct.error,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


def normalise_image(data: bytes, *, limits: ImageLimits = DEFAULT_LIMITS) -> NormalisedImage:
    """Validate `data` as an image and return it as clean RGB PNG bytes.

    Order matters: size checks use only the header (Image.open is lazy), so a
    decompression bomb is refused before a single pixel is decoded.
    """
    if not data:
        raise BadImage("That file is empty.")
    if len(data) > limits.max_bytes:
        raise _too_big(limits.max_bytes)
    try:
        image = Image.open(io.BytesIO(data), formats=OPEN_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(_too_many_pixels(limits)) from None
    except (UnidentifiedImageError, Warning, *_DECODE_ERRORS):
        raise BadImage(_NOT_AN_IMAGE) from None
    with image:
        source_format = image.format or "?"
        if source_format not in ALLOWED_FORMATS:
            raise BadImage(_NOT_AN_IMAGE)
        width, height = image.size
        if width * height > limits.max_pixels:
            raise BadImage(_too_many_pixels(limits, (width, height)))
        if min(width, height) < limits.min_side:
            raise BadImage(
                f"That image is only {width}×{height} pixels; each side needs at least "
                f"{limits.min_side} pixels."
            )
        aspect = max(width, height) / min(width, height)
        if aspect > limits.max_aspect:
            raise BadImage(
                f"That image is too long and thin ({width}×{height}); the longest side may "
                f"be at most {limits.max_aspect:g} times the shortest."
            )
        try:
            # Animated GIF/WebP/MPO/multi-page TIFF: the first frame is the picture.
            image.seek(0)
            image.load()
            if image.width * image.height > limits.max_pixels:  # a frame bigger than its file
                raise BadImage(_too_many_pixels(limits, image.size))
            upright = ImageOps.exif_transpose(image)
            rgb = _to_rgb(upright, limits.background)
        except BadImage:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise BadImage(_too_many_pixels(limits)) from None
        except _DECODE_ERRORS:
            raise BadImage(_DAMAGED) from None
    return normalise_pil(rgb, limits=limits, source_format=source_format)


def _too_many_pixels(limits: ImageLimits, size: tuple[int, int] | None = None) -> str:
    dims = f" ({size[0]}×{size[1]})" if size else ""
    return (
        f"That image has too many pixels{dims}; the limit is "
        f"{limits.max_pixels / 1e6:.0f} megapixels."
    )


def normalise_pil(
    image: Image.Image,
    *,
    limits: ImageLimits = DEFAULT_LIMITS,
    source_format: str = "PNG",
) -> NormalisedImage:
    """Turn an already decoded image (e.g. a clip's last frame) into a NormalisedImage."""
    rgb = image if image.mode == "RGB" else _to_rgb(image, limits.background)
    longest = max(rgb.size)
    if longest > limits.max_stored_side:
        scale = limits.max_stored_side / longest
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    # A fresh image from raw pixels carries no metadata at all: no EXIF (GPS), no comments,
    # no ICC profile, no text chunks.
    clean = Image.frombytes("RGB", rgb.size, rgb.tobytes())
    buffer = io.BytesIO()
    clean.save(buffer, format="PNG", optimize=False, compress_level=6)
    png = buffer.getvalue()
    return NormalisedImage(
        png=png,
        sha256=hashlib.sha256(png).hexdigest(),
        width=clean.width,
        height=clean.height,
        source_format=source_format,
    )


def _to_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        image = _high_depth_to_l(image)
        mode = image.mode
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        "transparency" in image.info and mode in ("P", "L", "RGB", "1")
    )
    try:
        if has_alpha:
            rgba = image.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (*background, 255))
            canvas.alpha_composite(rgba)
            return canvas.convert("RGB")
        return image.convert("RGB")
    except ValueError:
        raise BadImage(f"That image uses a colour format Zoetrope can't read ({mode}).") from None


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """16-bit (and 32-bit int/float) greyscale to 8-bit by scaling, never by clipping."""
    array = np.asarray(image)
    if image.mode.startswith("I;16"):
        scaled = array.astype(np.float64) / 257.0
    elif image.mode == "I":
        # Pillow opens 16-bit PNG/TIFF greyscale as "I" too; values beyond 16 bits mean a
        # genuine 32-bit image, which we stretch over its own range.
        low, high = int(array.min()), int(array.max())
        if low >= 0 and high <= 65535:
            scaled = array.astype(np.float64) / 257.0
        else:
            scaled = (array.astype(np.float64) - low) * (255.0 / max(high - low, 1))
    else:  # "F": [0, 1] floats, or anything else stretched over its range
        finite = np.nan_to_num(array.astype(np.float64))
        low, high = float(finite.min()), float(finite.max())
        if low >= 0.0 and high <= 1.0:
            scaled = finite * 255.0
        else:
            scaled = (finite - low) * (255.0 / max(high - low, 1e-12))
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def input_path(inputs_dir: Path, sha256: str) -> Path:
    """Where an input image lives. Only a 64-hex digest ever becomes a path component."""
    if not _SHA256.match(sha256):
        raise ValueError(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")
    return Path(inputs_dir) / f"{sha256}.png"


def store_image(image: NormalisedImage, inputs_dir: Path) -> Path:
    """Write the PNG once as `<inputs_dir>/<sha256>.png` (temp file + os.replace)."""
    target = input_path(inputs_dir, image.sha256)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{image.sha256[:16]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(image.png)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def accept_image(
    data: bytes, *, inputs_dir: Path, limits: ImageLimits = DEFAULT_LIMITS
) -> NormalisedImage:
    """normalise_image + store_image: the whole intake of one image. CPU-bound: call it
    through asyncio.to_thread from the event loop."""
    image = normalise_image(data, limits=limits)
    path = store_image(image, inputs_dir)
    return NormalisedImage(
        png=image.png,
        sha256=image.sha256,
        width=image.width,
        height=image.height,
        source_format=image.source_format,
        path=path,
    )


# -- prompts --------------------------------------------------------------------------


def normalise_prompt(
    text: str, *, max_len: int = 600, allow_empty: bool = False, what: str = "prompt"
) -> str:
    """NFKC, no invisible characters, one space between words, at most `max_len` chars.

    Format characters (category Cf: zero-width spaces and joiners, bidi overrides and
    isolates, BOM, tag characters) are dropped; control characters become spaces.
    """
    if not isinstance(text, str):
        raise BadPrompt(f"The {what} must be text.")
    text = unicodedata.normalize("NFKC", text)
    kept = []
    for char in text:
        category = unicodedata.category(char)
        if category == "Cf":
            continue
        kept.append(" " if category in ("Cc", "Zl", "Zp") else char)
    clean = " ".join("".join(kept).split())
    if not clean and not allow_empty:
        raise BadPrompt(f"The {what} is empty. Describe the motion you want to see.")
    if len(clean) > max_len:
        raise BadPrompt(
            f"The {what} is {len(clean)} characters long; the limit is {max_len}. "
            "Please shorten it."
        )
    return clean
