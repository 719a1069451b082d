"""Zoetrope's command line.

    python main.py bot                      run the Discord bot (the main job)
    python main.py animate IMAGE "PROMPT"   make one clip locally, with a progress bar
    python main.py worker                   serve jobs from Redis ($ZOETROPE_REDIS_URL) on this GPU
    python main.py models list|pull NAME    list presets / pre-download their weights
    python main.py verify CLIP.mp4          what a clip says about itself (AI-generated, C2PA)

Heavy imports (torch, diffusers) never happen here: generation runs in a worker process.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

EXIT_BAD_INPUT = 2


class CliError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


def _default_data_dir() -> Path:
    return Path(os.environ.get("ZOETROPE_DATA_DIR", "data"))


# -- animate -----------------------------------------------------------------------------------


class ProgressBar:
    """A one-line terminal progress bar for load, denoise steps and encode."""

    LABELS = {
        "load": "loading model",
        "denoise": "generating",
        "decode": "decoding",
        "encode": "encoding",
    }

    def __init__(self, stream=sys.stderr, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self._last = ""

    def update(self, stage: str, step: int, total: int) -> None:
        label = self.LABELS.get(stage, stage)
        if total > 0:
            filled = round(self.width * step / total)
            bar = "█" * filled + "░" * (self.width - filled)
            line = f"{label:<14} {bar} {step}/{total}"
        else:
            line = f"{label:<14} …"
        if line != self._last:
            end = "\r" if self.stream.isatty() else "\n"
            self.stream.write(line.ljust(len(self._last)) + end)
            self.stream.flush()
            self._last = line

    def close(self) -> None:
        if self._last and self.stream.isatty():
            self.stream.write("\n")
            self.stream.flush()


def _model_argument(args: argparse.Namespace) -> str:
    if args.model is not None:
        model_dir = Path(args.model)
        if not (model_dir / "model_index.json").is_file():
            raise CliError(f"--model {args.model}: not a diffusers folder (no model_index.json)")
        return str(model_dir.resolve())
    from generator.presets import PRESETS

    if args.preset != "auto" and args.preset not in PRESETS:
        raise CliError(
            f"--preset {args.preset}: unknown preset (choose from: auto, {', '.join(PRESETS)})"
        )
    return args.preset


async def _animate(args: argparse.Namespace) -> int:
    from bot.errors import ZoetropeError
    from bot.intake import accept_image, normalise_prompt
    from generator.backends import LocalBackend
    from generator.protocol import Done, Failed, GenerationRequest, Progress

    # Everything is checked before anything is written: bad input changes nothing.
    if args.variation_strength and args.variation_seed is None:
        raise CliError("--variation-strength needs --variation-seed")
    if not 0.0 <= args.variation_strength <= 1.0:
        raise CliError(f"--variation-strength {args.variation_strength}: must be between 0 and 1")
    if args.frames is not None and args.frames < 1:
        raise CliError(f"--frames {args.frames}: must be at least 1")
    model = _model_argument(args)
    try:
        prompt = normalise_prompt(args.prompt)
        negative = normalise_prompt(args.negative or "", allow_empty=True, what="negative prompt")
    except ZoetropeError as exc:
        raise CliError(exc.message) from None
    image = Path(args.image)
    if not image.is_file():
        raise CliError(f"{args.image}: no such file")
    try:
        data = image.read_bytes()
    except OSError as exc:
        raise CliError(f"{args.image}: cannot read it ({exc.strerror})") from None
    try:
        stored = accept_image(data, inputs_dir=_default_data_dir() / "inputs").path
    except ZoetropeError as exc:
        raise CliError(f"{args.image}: {exc.message}") from None

    seed = args.seed if args.seed is not None else random.randrange(2**32)
    out = Path(args.out) if args.out else Path(f"zoetrope-{seed}.mp4")
    out.parent.mkdir(parents=True, exist_ok=True)
    request = GenerationRequest(
        job_id=f"cli{seed}",
        image_path=str(stored),
        prompt=prompt,
        negative_prompt=negative,
        output_path=str(out.resolve()),
        seed=seed,
        num_frames=args.frames,
        duration=None if args.frames is not None else args.duration,
        variation_seed=args.variation_seed,
        variation_strength=args.variation_strength,
    )

    # Failures come back as events and are printed once below; the log is for --verbose.
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.CRITICAL,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    bar = ProgressBar()
    started = time.monotonic()
    backend = LocalBackend(model)
    result: Done | Failed | None = None
    try:
        await backend.start()
        async for event in backend.submit(request):
            if isinstance(event, Progress):
                bar.update(event.stage, event.step, event.total)
            else:
                result = event
    finally:
        bar.close()
        await backend.close()
    if isinstance(result, Failed):
        print(f"error: generation failed ({result.kind}): {result.message}", file=sys.stderr)
        return 1
    assert isinstance(result, Done)
    facts = result.facts
    total = time.monotonic() - started
    print(result.path)
    print(
        f"seed {seed} · {facts.width}x{facts.height} · {facts.num_frames} frames "
        f"@ {facts.fps:g} fps · {facts.bytes / 1e6:.2f} MB"
    )
    print(
        f"generated in {facts.gen_seconds:.1f} s · encoded in "
        f"{facts.encode_seconds:.1f} s · {total:.1f} s in all (model load included)"
    )
    if facts.note:
        print(f"note: {facts.note}")
    return 0


# -- models ------------------------------------------------------------------------------------


def _models_list(_: argparse.Namespace) -> int:
    from generator.presets import GIB, PRESETS
    from generator.weights import weights_cached

    # need: free GPU memory with everything resident (weights from the real configs plus an
    # activation estimate); weights: what `models pull` stores for it.
    print(
        f"{'preset':<16} {'need':>6}  {'size':<9} {'fps':>3}  {'cached':<6}  "
        f"{'weights':>7}  {'offload':>7}  hub id"
    )
    for preset in PRESETS.values():
        cached = "yes" if weights_cached(preset) else "no"
        size = "{}x{}".format(*preset.default_size)
        auto = "" if preset.auto else "  (by name only)"
        print(
            f"{preset.name:<16} {preset.vram_gb:>4.0f}GB  {size:<9} {preset.fps:>3}  {cached:<6}  "
            f"{preset.weight_bytes() / GIB:>5.1f}GB  {preset.offload_vram_gb:>5.0f}GB  "
            f"{preset.hub_id}{auto}"
        )
    return 0


def _models_pull(args: argparse.Namespace) -> int:
    from generator.presets import PresetError, get_preset
    from generator.weights import WeightsMissing, pull

    try:
        preset = get_preset(args.name)
    except PresetError as exc:
        raise CliError(str(exc)) from None
    # The files keep the dtype they were stored in, so the download can be larger than the
    # weights' size in memory.
    print(
        f"pulling {preset.name} from {preset.hub_id}: the files its pipeline loads", file=sys.stderr
    )
    try:
        paths = pull(preset)  # huggingface_hub draws a progress bar per file on stderr
    except WeightsMissing as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:  # network errors, disk full, a gated or missing repo
        raise CliError(f"cannot pull {preset.name}: {exc}") from None
    for path in paths:
        print(path)
    return 0


# -- bot and worker ----------------------------------------------------------------------------


def _bot(_: argparse.Namespace) -> int:
    from bot.app import run_bot

    return run_bot()


def _worker(args: argparse.Namespace) -> int:
    from generator.redis_common import check_url
    from generator.redis_worker import run_redis_worker

    if args.slots < 1:
        raise CliError(f"--slots {args.slots}: must be at least 1")
    # The environment is the place for a URL with a password: argv is visible to every user
    # of the machine (`ps`). A bad value is never echoed, as it may carry the password.
    url = (args.redis or os.environ.get("ZOETROPE_REDIS_URL", "")).strip()
    source = "--redis" if args.redis else "ZOETROPE_REDIS_URL"
    if not url:
        raise CliError("no Redis URL: set ZOETROPE_REDIS_URL (or pass --redis)")
    try:
        check_url(url)
        urlsplit(url).port  # noqa: B018 - a bad port raises here, without the URL in the text
    except ValueError:
        raise CliError(f"{source}: expected redis://[:password@]host:port/db") from None
    model = _model_argument(args)
    if args.model is None and model != "auto":
        from generator.presets import get_preset
        from generator.weights import WeightsMissing, local_snapshot

        try:
            local_snapshot(get_preset(model))
        except WeightsMissing as exc:
            raise CliError(str(exc)) from None
    # Weights come from `models pull` only: the worker loads the cached folders and never
    # reaches the hub (a download inside a job would hit the start timeout).
    os.environ["HF_HUB_OFFLINE"] = "1"
    return run_redis_worker(url, model=model, slots=args.slots, device=args.device)


# -- verify ------------------------------------------------------------------------------------


def _verify(args: argparse.Namespace) -> int:
    from generator.provenance import ProvenanceError, format_report, read_provenance

    try:
        found = read_provenance(args.clip, data_dir=_default_data_dir())
    except ProvenanceError as exc:
        raise CliError(exc.message) from None
    print(format_report(found))
    return 0 if found.valid else 1


# -- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="main.py", description="Zoetrope: image-to-video for Discord"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("bot", help="run the Discord bot").set_defaults(func=_bot)

    animate = sub.add_parser("animate", help="make one clip locally")
    animate.add_argument("image", help="input image (PNG, JPEG, WebP, GIF, BMP, TIFF)")
    animate.add_argument("prompt", help="what should happen in the clip")
    _add_model_arguments(animate)
    animate.add_argument("--seed", type=int)
    animate.add_argument("--variation-seed", type=int)
    animate.add_argument("--variation-strength", type=float, default=0.0)
    length = animate.add_mutually_exclusive_group()
    length.add_argument("--duration", choices=["short", "standard", "long"], default="standard")
    length.add_argument("--frames", type=int)
    animate.add_argument("--negative", help="what to avoid")
    animate.add_argument("--out", help="output MP4 path (default zoetrope-<seed>.mp4)")
    animate.add_argument("--verbose", action="store_true", help="log the worker's output")
    animate.set_defaults(func=lambda a: asyncio.run(_animate(a)))

    worker = sub.add_parser("worker", help="serve jobs from Redis on this GPU machine")
    worker.add_argument(
        "--redis",
        help="redis://host:port/db (default: $ZOETROPE_REDIS_URL; put a password there, "
        "not here: arguments are visible in ps)",
    )
    _add_model_arguments(worker)
    worker.add_argument("--slots", type=int, default=1, help="model copies on this GPU")
    worker.add_argument("--device", help="torch device, e.g. cuda:1 (default: cuda if present)")
    worker.set_defaults(func=_worker)

    models = sub.add_parser("models", help="list or pre-download model presets")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    models_sub.add_parser("list", help="presets, VRAM needs, cached weights").set_defaults(
        func=_models_list
    )
    pull = models_sub.add_parser("pull", help="download a preset's weights ahead of time")
    pull.add_argument("name")
    pull.set_defaults(func=_models_pull)

    verify = sub.add_parser(
        "verify", help="print a clip's provenance; exit 0 valid, 1 no/invalid manifest"
    )
    verify.add_argument("clip", help="an MP4 file")
    verify.set_defaults(func=_verify)
    return parser


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--preset", default="auto", help="preset name or auto (default)")
    which.add_argument("--model", help="a local diffusers folder (save_pretrained output)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
