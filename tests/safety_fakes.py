"""Test-only classifiers with the interface of generator.safety's (`name`, `classify`).

A positive (sexual) image cannot be shipped in a repository, so the blocking paths are driven by
a classifier that returns a given score; everything around it (policy, verdict, frame sampling,
the child process, timeouts) is the real code. The real classifier is tested on real, safe
photos in tests/test_safety.py.
"""

from __future__ import annotations

import time

import numpy as np
from PIL import Image

from generator.safety import SafetyScores


class FixedScoreClassifier:
    """Returns `sexual` for every image; counts the images it saw."""

    name = "fixed-score (test only)"

    def __init__(self, sexual: float) -> None:
        self.sexual = sexual
        self.seen: list[tuple[int, int]] = []

    def classify(self, image: Image.Image) -> SafetyScores:
        self.seen.append(image.size)
        return SafetyScores(sexual=self.sexual, model=self.name)


class BrightFrameClassifier:
    """Scores an image by how bright it is (mean of its pixels / 255): a clip with one white
    frame among dark ones stands in for a clip with one explicit frame."""

    name = "brightness (test only)"

    def classify(self, image: Image.Image) -> SafetyScores:
        mean = float(np.asarray(image.convert("L"), dtype=np.float64).mean())
        return SafetyScores(sexual=mean / 255.0, model=self.name)


class SlowClassifier:
    """Sleeps `seconds` per image (only for images `only_width` wide, when given), then returns
    `sexual`: a check that outlasts its timeout, beside quick ones."""

    name = "slow (test only)"

    def __init__(self, seconds: float, sexual: float = 0.0, only_width: int | None = None) -> None:
        self.seconds = seconds
        self.sexual = sexual
        self.only_width = only_width

    def classify(self, image: Image.Image) -> SafetyScores:
        if self.only_width is None or image.width == self.only_width:
            time.sleep(self.seconds)
        return SafetyScores(sexual=self.sexual, model=self.name)


class BrokenClassifier:
    """Raises inside classify, as a model failing at run time would."""

    name = "broken (test only)"

    def classify(self, image: Image.Image) -> SafetyScores:
        raise RuntimeError("onnxruntime: invalid input")
