"""The plain-data contract (generator/protocol.py): typed clip facts across the process
boundary, event encoding, and the Backend protocol that both backends satisfy. No torch."""

from __future__ import annotations

import inspect
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from generator import local_pipe
from generator.backends import LocalBackend
from generator.protocol import (
    Backend,
    ClipFacts,
    Done,
    Failed,
    GenerationRequest,
    Progress,
    event_from_dict,
    event_to_dict,
)
from generator.redis_backend import RedisBackend
from generator.redis_common import decode_entry, encode_entry, entry_worker
from tests.jobs_backend import FakeBackend, FleetFakeBackend


def facts(**changes: Any) -> ClipFacts:
    values: dict[str, Any] = {
        "width": 832,
        "height": 480,
        "num_frames": 81,
        "fps": 16,
        "bytes": 4_200_000,
        "video_width": 832,
        "video_height": 480,
        "crf": 23,
        "steps": 4,
        "seed": 2**63 - 1,
        "preset": "local:my-model",
        "frame_rule": 4,
        "max_clip_frames": 121,
        "max_frames": 361,
        "duration_frames": {"short": 49, "standard": 81, "long": 121},
        "gen_seconds": 41.5,
        "encode_seconds": 1.25,
        "timings": {"generate": 41.5, "encode": 1.25},
        "degraded": True,
        "oom_retry": True,
        "speedups": ("compile",),
        "worker": "gpu-1",
        "served": "local:my-model",
    }
    values.update(changes)
    return ClipFacts(**values)


def test_clip_facts_survive_a_json_round_trip() -> None:
    """ClipFacts -> JSON -> ClipFacts gives the same facts, and a Done event carries them."""
    original = facts()
    assert ClipFacts.from_dict(json.loads(json.dumps(original.to_dict()))) == original
    done = Done("/clips/a.mp4", original)
    wire = json.loads(local_pipe.encode_line(local_pipe.job_event("a", done)))
    assert wire["job_id"] == "a" and event_from_dict(wire["event"]) == done
    fields = {k.encode(): v.encode() for k, v in encode_entry(done, "gpu-1").items()}
    assert (decode_entry(fields), entry_worker(fields)) == (done, "gpu-1")


def test_clip_facts_fill_defaults_for_what_a_producer_does_not_know() -> None:
    """Only size, length, fps and bytes are required; rules and timings default to unknown."""
    minimal = ClipFacts.from_dict(
        {"width": 16, "height": 16, "num_frames": 9, "fps": 8, "bytes": 10}
        | {"video_width": 16, "video_height": 16}
    )
    assert minimal.frame_rule is None and minimal.max_frames is None
    assert minimal.timings == {} and minimal.speedups == () and minimal.fits is True


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"width": 0}, "width"),
        ({"height": 10**9}, "height"),
        ({"num_frames": 9.5}, "num_frames"),
        ({"num_frames": True}, "num_frames"),
        ({"bytes": -1}, "bytes"),
        ({"seed": 2**64}, "seed"),
        ({"frame_rule": 0}, "frame_rule"),
        ({"max_frames": "241"}, "max_frames"),
        ({"fps": math.nan}, "fps"),
        ({"fps": 0}, "fps"),
        ({"gen_seconds": math.inf}, "gen_seconds"),
        ({"timings": {"generate": -1.0}}, "timings"),
        ({"timings": {"x" * 100: 1.0}}, "timings"),
        ({"duration_frames": {"long": 0}}, "duration_frames"),
        ({"degraded": "yes"}, "degraded"),
        ({"note": "x" * 5000}, "note"),
        ({"speedups": ["compile", 3]}, "speedups"),
    ],
)
def test_clip_facts_refuse_bad_values_with_a_message_naming_the_field(
    changes: dict[str, Any], field: str
) -> None:
    """A malformed value (wrong type, out of range, not finite) raises ValueError naming it."""
    data = facts().to_dict() | changes
    with pytest.raises(ValueError, match=field):
        ClipFacts.from_dict(data)


def test_malformed_events_from_redis_raise_value_error_at_the_boundary() -> None:
    """Unknown fields, missing facts and bad progress or failure values are all ValueError."""
    good = event_to_dict(Done("/a.mp4", facts()))
    bad: list[Any] = [
        [],
        {"type": "done", "path": "/a.mp4"},
        {**good, "meta": {}},
        {**good, "facts": {**good["facts"], "bogus": 1}},
        {"type": "done", "path": 3, "facts": good["facts"]},
        {"type": "progress", "step": -1, "total": 2, "stage": "denoise"},
        {"type": "progress", "step": 1, "total": 2, "stage": "dance"},
        {"type": "failed", "kind": "explode", "message": "x"},
        {"type": "failed", "kind": "crash", "message": 42},
        {"type": "teleport"},
    ]
    for data in bad:
        with pytest.raises(ValueError):
            event_from_dict(data)
    with pytest.raises(ValueError):
        decode_entry({b"e": b"{not json", b"w": b"gpu"})
    with pytest.raises(ValueError):
        decode_entry({b"w": b"gpu"})
    # Nothing but ValueError escapes, whatever the bytes: the watcher catches only that.
    for raw in (
        b'{"type": "progress", "step": 1e999, "total": 1, "stage": "denoise"}',
        b"[" * 100_000 + b"]" * 100_000,
        b"\xff\xfe",
        b'"just text"',
    ):
        with pytest.raises(ValueError):
            decode_entry({b"e": raw, b"w": b"gpu"})


def test_progress_and_failed_round_trip() -> None:
    """Progress and Failed events come back equal from their JSON form."""
    for event in (Progress(3, 4, "denoise"), Failed("requeue", "handed back")):
        assert event_from_dict(json.loads(json.dumps(event_to_dict(event)))) == event


# -- the Backend protocol -------------------------------------------------------------------

# Calls the bot makes on a backend, with the arguments it passes.
CALLS: dict[str, tuple[Any, ...]] = {
    "route": ("ltx-fast",),
    "capacity": ("ltx-fast",),
    "total_slots": ("ltx-fast",),
    "served": (),
    "cancel": ("job",),
    "submit": (GenerationRequest("j", "i.png", "p", "o.mp4", 1),),
    "start": (),
    "close": (),
}


def _backends() -> list[Any]:
    return [
        LocalBackend("wan-480p-fast"),  # not started: nothing runs
        RedisBackend("redis://127.0.0.1:1/0"),  # not started: never connects
        FakeBackend(),
        FleetFakeBackend({"ltx-fast": 1}),
    ]


def test_every_backend_satisfies_the_backend_protocol() -> None:
    """Both real backends (and the tests' fakes) have every member of Backend, and accept the
    arguments the bot passes: the bot needs no probing of what a backend can do."""
    members = [n for n in [*dir(Backend), *Backend.__annotations__] if not n.startswith("_")]
    assert set(CALLS) | {"state", "ready", "error", "detail", "on_change"} <= set(members)
    for backend in _backends():
        assert isinstance(backend, Backend), type(backend).__name__
        for name, args in CALLS.items():
            method = getattr(backend, name)
            inspect.signature(method).bind(*args)  # raises TypeError if the bot could not call it
            assert callable(method)
        assert backend.route(None) is None or isinstance(backend.route(None), str)
        assert isinstance(backend.capacity(None), int)
        assert isinstance(backend.total_slots(None), int)
        assert isinstance(backend.served(), dict)
        backend.on_change = lambda: None  # settable
        assert backend.error is None or isinstance(backend.error, str)
        assert backend.detail is None or isinstance(backend.detail, str)


def test_local_backend_serves_one_pool() -> None:
    """LocalBackend's trivial pool answers: one route (None), one slot, nothing extra served."""
    backend = LocalBackend("wan-480p-fast")
    assert backend.route("ltx-fast") is None and backend.route(None) is None
    assert backend.capacity("ltx-fast") == backend.capacity() == 1
    assert backend.total_slots("ltx-fast") == 1 and backend.served() == {}
    assert backend.error is None and backend.detail is None


# -- the Redis transport's layout -----------------------------------------------------------


@pytest.mark.timeout(60)
def test_redis_worker_and_backend_share_modules_but_not_each_other() -> None:
    """The remote worker never loads the bot-side client and the client never loads the
    worker: both stand on redis_common/redis_queue only (and neither loads torch)."""
    code = (
        "import sys, importlib\n"
        "first, other = sys.argv[1], sys.argv[2]\n"
        "importlib.import_module(first)\n"
        "assert other not in sys.modules, other\n"
        "assert 'generator.redis_common' in sys.modules\n"
        "assert 'torch' not in sys.modules\n"
    )
    root = Path(__file__).resolve().parent.parent
    for first, other in (
        ("generator.redis_worker", "generator.redis_backend"),
        ("generator.redis_backend", "generator.redis_worker"),
    ):
        subprocess.run([sys.executable, "-c", code, first, other], cwd=root, check=True, timeout=60)
