"""generator/provenance.py with the real ffmpeg and the real c2pa library: a clip is marked
(metadata + signed C2PA manifest), read back, and tampering after signing is detected."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generator import encode, provenance
from generator.provenance import (
    AI_SOURCE_TYPE,
    ProvenanceError,
    mark_clip,
    parse_ffmetadata,
    read_provenance,
    signing_identity,
)
from tests.test_encode import moving_frames

ROOT = Path(__file__).resolve().parent.parent
MODEL = "wan2.1-i2v-14b-480p"


def make_clip(path: Path, frames: int = 17) -> Path:
    encode.encode_mp4(moving_frames(frames, 64, 96), path, fps=16)
    return path


@pytest.fixture(scope="module")
def marked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """A real clip marked once: (clip, data dir, its frames before marking)."""
    root = tmp_path_factory.mktemp("prov")
    clip = make_clip(root / "clip.mp4")
    before, _ = encode.read_frames(clip)
    mark_clip(clip, model=MODEL, data_dir=root / "data", job_id="j42")
    return clip, root / "data", before


def test_marked_clip_carries_metadata_and_a_valid_manifest(
    marked: tuple[Path, Path, np.ndarray],
) -> None:
    """The clip names Zoetrope, the model and AI-generated in its tags, and its C2PA manifest
    (c2pa.created, trainedAlgorithmicMedia) validates as Trusted against our own CA."""
    clip, data_dir, _ = marked
    found = read_provenance(clip, data_dir=data_dir)
    assert found.metadata["ai_generated"] == "true"
    assert found.metadata["model"] == MODEL and found.metadata["job_id"] == "j42"
    assert found.metadata["generator"].startswith("Zoetrope ")
    assert "AI-generated" in found.metadata["comment"] and MODEL in found.metadata["comment"]
    assert found.metadata["digital_source_type"] == AI_SOURCE_TYPE
    assert found.valid and not found.tampered and found.ai_generated
    assert found.validation_state == "Trusted" and found.failures == []
    actions = [
        a
        for assertion in found.manifest["assertions"]
        if assertion["label"].startswith("c2pa.actions")
        for a in assertion["data"]["actions"]
    ]
    assert actions == [
        {
            "action": "c2pa.created",
            "digitalSourceType": AI_SOURCE_TYPE,
            "softwareAgent": {"name": "Zoetrope", "version": provenance.software_version()},
            "parameters": {"model": MODEL},
        }
    ]
    assert found.manifest["signature_info"]["alg"].lower() == "es256"


def test_marking_is_a_remux_not_a_re_encode(marked: tuple[Path, Path, np.ndarray]) -> None:
    """Frames are bit-identical after marking; still H.264, faststart, no temp files left."""
    clip, _, before = marked
    after, fps = encode.read_frames(clip)
    assert np.array_equal(before, after) and fps == 16
    info = encode.probe(clip)
    assert info["codec"] == "h264" and info["faststart"] is True
    assert sorted(p.name for p in clip.parent.iterdir()) == ["clip.mp4", "data"]


def test_without_our_ca_the_manifest_is_valid_but_not_trusted(
    marked: tuple[Path, Path, np.ndarray],
) -> None:
    """Read without the data dir, the signature still matches (Valid), signer unknown."""
    found = read_provenance(marked[0])
    assert found.validation_state == "Valid" and found.valid and found.failures == []


def test_bytes_changed_after_signing_are_reported_as_tampered(
    marked: tuple[Path, Path, np.ndarray], tmp_path: Path
) -> None:
    """Flipping one byte of the video data after signing makes the manifest Invalid, with
    C2PA's hash-mismatch code; the clip still plays as a video."""
    clip, data_dir, _ = marked
    data = bytearray(clip.read_bytes())
    data[data.index(b"mdat") + 64] ^= 0xFF
    tampered = tmp_path / "tampered.mp4"
    tampered.write_bytes(bytes(data))
    found = read_provenance(tampered, data_dir=data_dir)
    assert found.tampered and not found.valid
    assert any("mismatch" in code for code in found.failures), found.failures
    assert "INVALID (tampered)" in found.summary


def test_a_changed_manifest_is_reported_as_tampered(
    marked: tuple[Path, Path, np.ndarray], tmp_path: Path
) -> None:
    """Editing the model name inside the manifest's bytes breaks its signature: Invalid."""
    clip, data_dir, _ = marked
    data = clip.read_bytes()
    at = data.index(MODEL.encode(), data.index(b"c2pa"))  # inside the manifest store
    forged = tmp_path / "forged.mp4"
    forged.write_bytes(data[:at] + b"X" + data[at + 1 :])
    found = read_provenance(forged, data_dir=data_dir)
    assert found.tampered and not found.valid


def test_an_unmarked_clip_has_no_manifest(tmp_path: Path) -> None:
    """A plain encode carries neither our tags nor a manifest."""
    found = read_provenance(make_clip(tmp_path / "plain.mp4"))
    assert found.manifest is None and found.validation_state is None
    assert not found.valid and not found.tampered and not found.ai_generated
    assert found.summary == "no C2PA manifest"


def test_the_signing_identity_is_made_once_and_kept(tmp_path: Path) -> None:
    """The key and chain are made on first use (key file 0600), then reused unchanged."""
    first = signing_identity(tmp_path)
    again = signing_identity(tmp_path)
    assert first == again
    assert first.chain_pem.count(b"BEGIN CERTIFICATE") == 2
    assert stat.S_IMODE((tmp_path / "provenance" / "signer-key.pem").stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["provenance"]


def test_bad_input_changes_nothing(tmp_path: Path) -> None:
    """Marking a missing file, a non-video or with an empty model raises ProvenanceError and
    leaves the file as it was."""
    with pytest.raises(ProvenanceError, match="no such clip"):
        mark_clip(tmp_path / "missing.mp4", model=MODEL, data_dir=tmp_path)
    text = tmp_path / "note.mp4"
    text.write_text("not a video")
    with pytest.raises(ProvenanceError, match="metadata"):
        mark_clip(text, model=MODEL, data_dir=tmp_path)
    assert text.read_text() == "not a video"
    with pytest.raises(ProvenanceError, match="not an MP4 file"):
        read_provenance(text)
    png = tmp_path / "picture.png"
    Image.new("RGB", (8, 8)).save(png)
    with pytest.raises(ProvenanceError, match="not an MP4 file"):
        read_provenance(png)
    png.unlink()
    clip = make_clip(tmp_path / "c.mp4")
    with pytest.raises(ProvenanceError, match="model"):
        mark_clip(clip, model=" ", data_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.mp4", "note.mp4"]


def test_parse_ffmetadata_unescapes() -> None:
    """ffmetadata escapes (= ; # \\ and newlines) are undone; sections end the globals."""
    text = ";FFMETADATA1\na=1\\=2\nb=line\\\nnext\nc=back\\\\slash\n[STREAM]\nd=x\n"
    assert parse_ffmetadata(text) == {"a": "1=2", "b": "line\nnext", "c": "back\\slash"}


def run_verify(clip: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "main.py", "verify", str(clip)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"ZOETROPE_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.timeout(180)
def test_main_verify_exit_codes(marked: tuple[Path, Path, np.ndarray], tmp_path: Path) -> None:
    """`python main.py verify`: 0 and the report for a marked clip, 1 for an unmarked or
    tampered one, 2 for a file that is not a video or does not exist."""
    clip, data_dir, _ = marked
    good = run_verify(clip, data_dir)
    assert good.returncode == 0, good.stderr
    assert "AI-generated: yes" in good.stdout and "C2PA manifest Trusted" in good.stdout
    assert f"model: {MODEL}" in good.stdout and "trainedAlgorithmicMedia" in good.stdout
    plain = run_verify(make_clip(tmp_path / "plain.mp4"), data_dir)
    assert plain.returncode == 1 and "no C2PA manifest" in plain.stdout
    data = bytearray(clip.read_bytes())
    data[data.index(b"mdat") + 64] ^= 0xFF
    (tmp_path / "bad.mp4").write_bytes(bytes(data))
    tampered = run_verify(tmp_path / "bad.mp4", data_dir)
    assert tampered.returncode == 1 and "tampered" in tampered.stdout
    (tmp_path / "text.mp4").write_text("hello")
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clip.read_bytes()[:40])  # an ftyp box, then nothing ffmpeg can read
    for bad in (tmp_path / "text.mp4", tmp_path / "missing.mp4", truncated):
        result = run_verify(bad, data_dir)
        assert result.returncode == 2 and result.stderr.startswith("error: ")


def test_a_mark_fits_in_the_headroom_left_for_it(tmp_path: Path) -> None:
    """What marking adds to a clip stays under MARK_HEADROOM_BYTES (delivery's re-encode to
    an upload limit leaves that much room), for a short and a longer clip."""
    for frames in (17, 81):
        clip = make_clip(tmp_path / f"clip{frames}.mp4", frames)
        before = clip.stat().st_size
        assert provenance.mark_finished(clip, model=MODEL, data_dir=tmp_path, job_id="j") == "c2pa"
        assert 0 < clip.stat().st_size - before <= provenance.MARK_HEADROOM_BYTES


def test_a_failed_signature_still_leaves_the_metadata_mark(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With a damaged signing key C2PA fails: the clip keeps its frames and gets the container
    mark alone, and the failure is logged as an error (the clip is still delivered)."""
    signing_identity(tmp_path)
    (tmp_path / "provenance" / "signer-key.pem").write_bytes(b"not a key")
    clip = make_clip(tmp_path / "clip.mp4")
    before, _ = encode.read_frames(clip)
    with caplog.at_level("ERROR", logger="zoetrope.provenance"):
        how = provenance.mark_finished(clip, model=MODEL, data_dir=tmp_path, job_id="j7")
    assert how == "metadata"
    assert any("C2PA marking failed" in r.getMessage() for r in caplog.records)
    found = read_provenance(clip, data_dir=tmp_path)
    assert found.manifest is None and found.ai_generated
    assert found.metadata["model"] == MODEL and found.metadata["job_id"] == "j7"
    assert np.array_equal(encode.read_frames(clip)[0], before)


def test_a_file_that_cannot_be_marked_is_left_as_it_was(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file ffmpeg cannot read gets neither mark; mark_finished says "none", logs an error,
    and leaves the file and its folder untouched (no temp files)."""
    text = tmp_path / "note.mp4"
    text.write_text("hello")
    with caplog.at_level("ERROR", logger="zoetrope.provenance"):
        assert provenance.mark_finished(text, model=MODEL, data_dir=tmp_path / "d") == "none"
    assert any("no machine-readable mark" in r.getMessage() for r in caplog.records)
    assert text.read_text() == "hello"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "d") == ["note.mp4"]
