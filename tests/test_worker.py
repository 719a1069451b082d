"""The worker process through LocalBackend: a real child process running a tiny Wan 2.1 model.

One worker is shared across the module (starting one costs seconds: it imports torch and
diffusers). The tests run in file order on that worker: the first one also proves that a job
submitted while the model loads waits and sees "load" progress.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import pytest_asyncio
from PIL import Image

from generator import encode
from generator.backends import LocalBackend
from generator.protocol import (
    Backend,
    BackendState,
    Done,
    Failed,
    GenerationRequest,
    Progress,
    WorkerStartError,
)

ROOT = Path(__file__).resolve().parent.parent
module_loop = pytest.mark.asyncio(loop_scope="module")

# Steps slow enough to cancel between (a 33-frame job at this pixel budget takes ~70 ms per
# step on a CPU), while a 9-frame job stays under two seconds. max_frames differs from the
# tiny model's default (65) so a test can see that the folder's settings are the ones reported.
SETTINGS = {"steps": 6, "pixel_budget": 256 * 256, "max_clip_frames": 33, "max_frames": 57}
SMALL, BIG = 9, 33


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built in a child process so this test process never imports torch.
    folder = tmp_path_factory.mktemp("models") / "wan21"
    cmd = [sys.executable, "-m", "tests.tiny_models", "wan21", str(folder)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=120)
    settings = json.loads((folder / "zoetrope.json").read_text())
    settings.update(SETTINGS)
    (folder / "zoetrope.json").write_text(json.dumps(settings))
    return folder


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("work")
    y, x = np.mgrid[0:64, 0:96]
    rgb = np.stack([x * 2, y * 3, (x + y) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(folder / "input.png")
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The worker's data dir (its signing identity lands here), fresh for the module."""
    return tmp_path_factory.mktemp("data")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend(tiny_model: Path, data_dir: Path):
    env = {"ZOETROPE_DATA_DIR": str(data_dir)}
    backend = LocalBackend(str(tiny_model), start_timeout=120, stop_timeout=10, env=env)
    await backend.start()  # returns while the model is still loading
    yield backend
    await backend.close()


def request(work: Path, name: str, **changes: Any) -> GenerationRequest:
    fields: dict[str, Any] = {
        "job_id": name,
        "image_path": str(work / "input.png"),
        "prompt": "waves roll in, camera slowly pushes forward",
        "output_path": str(work / f"{name}.mp4"),
        "seed": 1234,
        "num_frames": SMALL,
    }
    fields.update(changes)
    return GenerationRequest(**fields)


async def collect(backend: LocalBackend, req: GenerationRequest) -> list[Any]:
    return [event async for event in backend.submit(req)]


REFERENCE: dict[str, np.ndarray] = {}  # frames of the first clip, made by a fresh worker


async def reference_frames(backend: LocalBackend, work: Path) -> np.ndarray:
    """The first test's clip; made now when that test did not run (e.g. under -k)."""
    if "frames" not in REFERENCE:
        events = await collect(backend, request(work, "reference"))
        REFERENCE["frames"] = encode.read_frames(events[-1].path)[0]
    return REFERENCE["frames"]


@module_loop
async def test_job_reports_progress_and_writes_a_playable_mp4(
    backend: LocalBackend, work: Path
) -> None:
    """A job sent while the model loads waits, then reports load/denoise/encode and Done."""
    assert isinstance(backend, Backend)
    assert backend.state is BackendState.STARTING and not backend.ready
    assert backend.capacity() == 1  # a job may be handed over while the model loads
    events = await collect(backend, request(work, "first"))

    stages = [e.stage for e in events if isinstance(e, Progress)]
    assert stages[0] == "load"
    assert {"load", "denoise", "decode", "encode"} <= set(stages)
    denoise = [e for e in events if isinstance(e, Progress) and e.stage == "denoise"]
    assert [e.step for e in denoise] == list(range(SETTINGS["steps"] + 1))
    assert all(e.total == SETTINGS["steps"] for e in denoise)
    done = events[-1]
    assert isinstance(done, Done) and not any(isinstance(e, Done | Failed) for e in events[:-1])

    info = encode.probe(done.path)
    assert (info["codec"], info["pix_fmt"], info["faststart"]) == ("h264", "yuv420p", True)
    facts = done.facts
    assert info["frames"] == facts.num_frames == SMALL
    assert (info["width"], info["height"]) == (facts.width, facts.height)
    assert (facts.video_width, facts.video_height) == (facts.width, facts.height)
    assert facts.crf is not None and facts.note is None and facts.seed == 1234
    assert facts.encode_seconds > 0 and facts.gen_seconds > 0
    assert facts.fits is True and facts.bytes == info["bytes"]
    assert {"generate", "encode", "mark"} <= set(facts.timings)
    assert backend.ready and backend.capacity() == 1
    assert backend.info["pid"] == backend.pid and backend.info["preset"] == "local:wan21"
    REFERENCE["frames"] = encode.read_frames(done.path)[0]


@module_loop
async def test_every_finished_clip_is_marked_as_ai_generated(
    backend: LocalBackend, work: Path, data_dir: Path
) -> None:
    """The worker's clip carries the metadata and a C2PA manifest signed with the key made in
    its data dir, naming the model (the preset/folder name) and the job."""
    from generator.provenance import AI_SOURCE_TYPE, read_provenance

    done = (await collect(backend, request(work, "marked")))[-1]
    assert isinstance(done, Done)
    found = read_provenance(done.path, data_dir=data_dir)
    assert found.valid and not found.tampered and found.ai_generated
    assert found.validation_state == "Trusted"  # signed by the CA in the worker's data dir
    assert (data_dir / "provenance" / "signer-key.pem").is_file()
    assert found.metadata["model"] == done.facts.preset == "local:wan21"
    assert found.metadata["job_id"] == "marked"
    assert found.metadata["digital_source_type"] == AI_SOURCE_TYPE
    assert done.facts.bytes == Path(done.path).stat().st_size


@module_loop
async def test_done_reports_the_frame_rules_of_the_local_model_used(
    backend: LocalBackend, work: Path
) -> None:
    """A `local:` folder's clip carries its model's frame rule, per-duration frames and caps."""
    events = await collect(backend, request(work, "rules", num_frames=None, duration="long"))
    facts = events[-1].facts
    assert facts.preset == "local:wan21"
    # 4k+1: the tiny Wan VAE's temporal stride, read from the loaded model
    assert facts.frame_rule == 4 and facts.num_frames == 17
    assert (facts.max_clip_frames, facts.max_frames) == (33, 57)  # the folder's zoetrope.json
    assert dict(facts.duration_frames) == {"short": 9, "standard": 9, "long": 17}


@module_loop
async def test_cancel_stops_within_one_step_and_leaves_no_state(
    backend: LocalBackend, work: Path
) -> None:
    """Cancel mid-run ends within one step; the next clip equals the fresh worker's clip."""
    reference = await reference_frames(backend, work)
    pid = backend.pid
    after_cancel: list[Progress] = []
    result = None
    cancelled = False
    async for event in backend.submit(request(work, "big", num_frames=BIG, seed=99)):
        if not isinstance(event, Progress):
            result = event
        elif event.stage == "denoise" and cancelled:
            after_cancel.append(event)
        elif event.stage == "denoise" and event.step >= 1:
            await backend.cancel("big")  # after the first step, with steps still to go
            cancelled = True
    assert cancelled
    assert isinstance(result, Failed) and result.kind == "cancelled"
    assert len(after_cancel) <= 1, after_cancel
    assert not (work / "big.mp4").exists()

    events = await collect(backend, request(work, "again"))
    assert isinstance(events[-1], Done)
    assert backend.pid == pid  # the same worker served it
    np.testing.assert_array_equal(encode.read_frames(events[-1].path)[0], reference)


@module_loop
async def test_cancel_of_a_waiting_job_fails_it_at_once(backend: LocalBackend, work: Path) -> None:
    """A job waiting for the slot is cancelled without running; the running job is untouched."""
    running = asyncio.create_task(collect(backend, request(work, "running")))
    while backend.capacity():
        await asyncio.sleep(0.01)
    waiting = asyncio.create_task(collect(backend, request(work, "waiting")))
    await asyncio.sleep(0.05)
    await backend.cancel("waiting")
    events = await asyncio.wait_for(waiting, 5)
    assert events == [Failed("cancelled", "Cancelled before it started.")]
    assert isinstance((await running)[-1], Done)
    assert not (work / "waiting.mp4").exists()


@module_loop
async def test_bad_request_fails_and_the_worker_survives(backend: LocalBackend, work: Path) -> None:
    """Bad requests end with Failed("bad_request") naming the value; the worker keeps serving."""
    pid = backend.pid
    missing = await collect(backend, request(work, "missing", image_path=str(work / "nope.png")))
    assert isinstance(missing[-1], Failed) and missing[-1].kind == "bad_request"
    assert "image_path" in missing[-1].message
    frames = await collect(backend, request(work, "frames", num_frames=0))
    assert isinstance(frames[-1], Failed) and frames[-1].kind == "bad_request"
    assert "num_frames" in frames[-1].message
    original: list[Any] = []
    duplicate: list[Any] = []
    async for event in backend.submit(request(work, "dup")):
        original.append(event)
        if not duplicate:  # a second job with the same id while the first runs
            duplicate = await collect(backend, request(work, "dup"))
    assert len(duplicate) == 1 and duplicate[0].kind == "bad_request"
    assert isinstance(original[-1], Done)  # the original "dup" job still finished
    assert backend.pid == pid and backend.ready and backend.capacity() == 1


@module_loop
async def test_kill_9_mid_job_is_a_crash_and_a_fresh_worker_takes_over(
    backend: LocalBackend, work: Path
) -> None:
    """kill -9 of the worker mid-job gives Failed("crash"); the next job runs on a new worker."""
    reference = await reference_frames(backend, work)
    old = backend.pid
    assert old is not None
    result = None
    async for event in backend.submit(request(work, "killed")):
        if isinstance(event, Progress) and event.stage == "denoise" and result is None:
            os.kill(old, signal.SIGKILL)
            result = "killed"
        if not isinstance(event, Progress):
            result = event
    assert isinstance(result, Failed) and result.kind == "crash"
    assert "SIGKILL" in result.message
    assert not psutil.pid_exists(old) or psutil.Process(old).status() != psutil.STATUS_ZOMBIE

    events = await collect(backend, request(work, "after-crash"))
    assert isinstance(events[-1], Done)
    assert backend.pid not in (None, old) and backend.restarts == 1
    np.testing.assert_array_equal(encode.read_frames(events[-1].path)[0], reference)


@module_loop
async def test_close_stops_the_worker_cleanly(backend: LocalBackend, work: Path) -> None:
    """close() stops the worker (no zombie left), is idempotent, and later jobs are refused."""
    pid = backend.pid
    assert pid is not None
    await backend.close()
    assert backend.state is BackendState.CLOSED and backend.pid is None
    assert not psutil.pid_exists(pid)
    await backend.close()
    events = await collect(backend, request(work, "late"))
    assert len(events) == 1 and isinstance(events[0], Failed)
    assert backend.capacity() == 0


@module_loop
async def test_a_model_that_cannot_load_fails_clearly(tmp_path: Path) -> None:
    """A worker whose model cannot load: state failed, a readable reason, jobs refused."""
    backend = LocalBackend(str(tmp_path), start_timeout=60)  # a folder without a model
    try:
        with pytest.raises(WorkerStartError, match="model_index.json"):
            await backend.wait_ready(timeout=60)
        assert backend.state is BackendState.FAILED and backend.capacity() == 0
        assert backend.pid is None
        req = GenerationRequest("j", "x.png", "p", str(tmp_path / "o.mp4"), seed=1)
        events = await collect(backend, req)
        assert len(events) == 1 and events[0].kind == "error"
        assert "model_index.json" in events[0].message
    finally:
        await backend.close()


# -- the worker's pieces in this process (no torch needed) ----------------------------------


def test_stdio_server_rejects_malformed_requests() -> None:
    """A generate command with unknown fields is answered with Failed("bad_request")."""
    from generator.worker import StdioServer

    out = io.StringIO()
    server = StdioServer(out)
    server.handle(b'{"op": "generate", "request": {"job_id": "x", "bogus": 1}}')
    server.handle(b"not json")  # ignored, logged
    (line,) = out.getvalue().splitlines()
    message = json.loads(line)
    assert message["job_id"] == "x"
    assert message["event"]["type"] == "failed" and message["event"]["kind"] == "bad_request"
    assert "bogus" in message["event"]["message"]


def test_stdio_server_cancels_a_queued_job() -> None:
    """A cancel for a job still queued in the worker fails it at once with "cancelled"."""
    from generator.worker import StdioServer

    out = io.StringIO()
    server = StdioServer(out)
    req = {"job_id": "q", "image_path": "i.png", "prompt": "p", "output_path": "o.mp4", "seed": 1}
    server.handle(json.dumps({"op": "generate", "request": req}).encode())
    server.handle(b'{"op": "cancel", "job_id": "q"}')
    events = [json.loads(line)["event"] for line in out.getvalue().splitlines()]
    assert events[0] == {"type": "progress", "step": 0, "total": 0, "stage": "load"}
    assert events[-1]["type"] == "failed" and events[-1]["kind"] == "cancelled"


# -- WorkerCore's failure handling, with a stand-in generator --------------------------------
# A GPU out-of-memory cannot happen on a CPU, so these drive WorkerCore.run with a generator
# object that raises the pipeline's real exceptions on cue; everything else is real (encode).


class ScriptedGenerator:
    """Raises the given exceptions on successive calls, then returns a small clip."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.requests: list[GenerationRequest] = []

    def generate(self, request, *, on_progress, should_cancel):
        from generator.pipeline import ClipResult

        self.requests.append(request)
        on_progress(Progress(0, 2, "denoise"))
        if self.failures:
            raise self.failures.pop(0)
        frames = np.full((5, 32, 48, 3), 90, np.uint8)
        return ClipResult(frames=frames, fps=8, meta={"num_frames": 5, "timings": {"vae": 0.1}})


def run_core(generator: ScriptedGenerator, tmp_path: Path) -> tuple[Any, list[Progress]]:
    from generator.worker import WorkerCore

    events: list[Progress] = []
    core = WorkerCore(generator, model="scripted")
    req = GenerationRequest("core", str(tmp_path / "in.png"), "p", str(tmp_path / "o.mp4"), 1)
    return core.run(req, on_progress=events.append), events


def test_out_of_memory_is_retried_once_degraded(tmp_path: Path) -> None:
    """An OOM is retried once with degraded=True; success then carries the encode meta."""
    from generator.pipeline import OutOfMemory

    generator = ScriptedGenerator(OutOfMemory("6 GiB short"))
    result, events = run_core(generator, tmp_path)
    assert isinstance(result, Done)
    assert [r.degraded for r in generator.requests] == [False, True]
    assert result.facts.degraded is True and result.facts.oom_retry is True
    assert result.facts.timings["vae"] == 0.1 and "encode" in result.facts.timings
    assert result.facts.bytes == Path(result.path).stat().st_size
    assert [e.stage for e in events][-2:] == ["encode", "encode"]


class BlockingGenerator:
    """Denoises until asked to stop, as a long job does; stops as the pipeline does."""

    def __init__(self) -> None:
        self.started = threading.Event()

    def generate(self, request, *, on_progress, should_cancel):
        from generator.pipeline import GenerationCancelled

        self.started.set()
        while not should_cancel():
            on_progress(Progress(1, 2, "denoise"))
            time.sleep(0.01)
        raise GenerationCancelled(request.job_id)


def _serve_in_thread(server: Any, core: Any) -> threading.Thread:
    thread = threading.Thread(target=server.serve, args=(core,), daemon=True)
    thread.start()
    return thread


def _finals(out: io.StringIO) -> dict[str, dict[str, Any]]:
    messages = [json.loads(line) for line in out.getvalue().splitlines()]
    return {m["job_id"]: m["event"] for m in messages if m["event"]["type"] != "progress"}


@pytest.mark.timeout(30)
def test_a_shutdown_hands_the_jobs_back_as_requeue_at_the_source(tmp_path: Path) -> None:
    """The worker itself reports the running and the waiting job of a shutdown as "requeue"."""
    from generator.worker import StdioServer, WorkerCore

    generator = BlockingGenerator()
    out = io.StringIO()
    server = StdioServer(out)
    for job_id in ("running", "waiting"):
        req = GenerationRequest(job_id, "i.png", "p", str(tmp_path / f"{job_id}.mp4"), 1)
        server.handle(json.dumps({"op": "generate", "request": dataclasses.asdict(req)}).encode())
    thread = _serve_in_thread(server, WorkerCore(generator, model="blocking"))
    assert generator.started.wait(10)
    server.handle(b'{"op": "shutdown"}')
    thread.join(10)
    assert not thread.is_alive()
    finals = _finals(out)
    assert finals["running"]["type"] == "failed" and finals["running"]["kind"] == "requeue"
    assert finals["waiting"]["type"] == "failed" and finals["waiting"]["kind"] == "requeue"


@pytest.mark.timeout(30)
def test_a_members_cancel_stays_cancelled_when_a_shutdown_follows(tmp_path: Path) -> None:
    """A running job cancelled by its member ends "cancelled" even if the worker then stops."""
    from generator.worker import StdioServer, WorkerCore

    generator = BlockingGenerator()
    out = io.StringIO()
    server = StdioServer(out)
    req = GenerationRequest("mine", "i.png", "p", str(tmp_path / "mine.mp4"), 1)
    server.handle(json.dumps({"op": "generate", "request": dataclasses.asdict(req)}).encode())
    thread = _serve_in_thread(server, WorkerCore(generator, model="blocking"))
    assert generator.started.wait(10)
    server.handle(b'{"op": "cancel", "job_id": "mine"}')
    server.handle(b'{"op": "shutdown"}')
    thread.join(10)
    assert _finals(out)["mine"] == {"type": "failed", "kind": "cancelled", "message": "Cancelled."}


def test_out_of_memory_twice_is_failed_oom(tmp_path: Path) -> None:
    """A second OOM, already degraded, ends with Failed("oom")."""
    from generator.pipeline import OutOfMemory

    generator = ScriptedGenerator(OutOfMemory("short"), OutOfMemory("still short"))
    result, _ = run_core(generator, tmp_path)
    assert isinstance(result, Failed) and result.kind == "oom"
    assert len(generator.requests) == 2 and not (tmp_path / "o.mp4").exists()


def test_pipeline_errors_map_to_failure_kinds(tmp_path: Path) -> None:
    """Cancelled, bad request and unexpected errors become their Failed kinds, never raise."""
    from generator.pipeline import BadRequest, GenerationCancelled

    for error, kind in [
        (GenerationCancelled("x"), "cancelled"),
        (BadRequest("num_frames must be positive, not -1"), "bad_request"),
        (RuntimeError("boom"), "error"),
    ]:
        result, _ = run_core(ScriptedGenerator(error), tmp_path)
        assert isinstance(result, Failed) and result.kind == kind, (error, result)
    assert (
        "num_frames"
        in run_core(ScriptedGenerator(BadRequest("num_frames -1")), tmp_path)[0].message
    )
