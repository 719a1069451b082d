"""The worker process: owns the warm VideoGenerator and runs one job at a time.

    python -m generator.worker --model MODEL [--device DEVICE]

Started as a fresh subprocess by `LocalBackend` (CUDA and fork do not mix). It speaks the
JSON-lines messages of generator/local_pipe.py: commands on stdin, events on stdout.

Only the protocol is written to the real stdout: at start-up the stdout file descriptor is
duplicated for events, and fd 1 / sys.stdout are pointed at stderr, so a stray print from
torch, diffusers or a C library lands in the log instead of corrupting the protocol.

`WorkerCore` runs one request synchronously (generate, OOM retry, encode, the clip's facts)
with `on_progress` / `should_cancel` / `stopping` callbacks; the stdio loop here and the Redis
worker (generator/redis_worker.py) both sit on top of it.

A job stopped because the worker itself stops (shutdown, SIGTERM) ends as `Failed("requeue")`
right here, where the reason is known: it did not fail, it was handed back.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from generator import encode, local_pipe, provenance
from generator.protocol import ClipFacts, Done, Event, Failed, GenerationRequest, Progress

log = logging.getLogger("zoetrope.worker")

ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]


def _never() -> bool:
    return False


def _ignore(_: Progress) -> None:
    return None


class WorkerCore:
    """A loaded VideoGenerator plus everything one job needs around it.

    `run()` never raises for a job's failure: it returns Done or Failed, so a serving loop
    keeps going whatever one request does.
    """

    def __init__(
        self,
        generator: Any,
        *,
        model: str,
        load_seconds: float = 0.0,
        data_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.generator = generator
        self.model = model
        self.load_seconds = load_seconds
        # The signing identity lives in the data dir (generator/provenance.py); the bot
        # passes its own ZOETROPE_DATA_DIR to a local worker, so both sign with one key.
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()

    @classmethod
    def load(
        cls,
        model: str,
        *,
        device: str | None = None,
        on_progress: Callable[..., None] | None = None,
    ) -> WorkerCore:
        """Load the model (the slow part: seconds to minutes). Raises what the pipeline raises."""
        from generator.pipeline import VideoGenerator  # torch: only in the worker process

        started = time.perf_counter()
        generator = VideoGenerator.load(model, device=device, on_progress=on_progress)
        return cls(generator, model=model, load_seconds=time.perf_counter() - started)

    def info(self) -> dict[str, Any]:
        """Model facts for the `ready` event (JSON-serialisable)."""
        preset = getattr(self.generator, "preset", None)
        info: dict[str, Any] = {
            "model": self.model,
            "preset": getattr(preset, "name", None),
            "fps": getattr(preset, "fps", None),
            "steps": getattr(preset, "steps", None),
            "device": str(getattr(self.generator, "device", "")) or None,
            "pid": os.getpid(),
            "load_seconds": round(self.load_seconds, 3),
            # What load() chose and what runs (a compile that failed its warm-up is "off").
            "speedups": list(getattr(self.generator, "speedups", [])),
            "attention_backend": getattr(self.generator, "attention_backend", None),
            "compile": getattr(self.generator, "compile", None),
            "compile_error": getattr(self.generator, "compile_error", None),
        }
        return info

    def run(
        self,
        request: GenerationRequest,
        *,
        on_progress: ProgressFn = _ignore,
        should_cancel: CancelFn = _never,
        stopping: CancelFn = _never,
    ) -> Done | Failed:
        """Generate, encode to `request.output_path`, and say how it went.

        `should_cancel` stops the job at its next step; if `stopping()` is then true the
        worker is shutting down and the job is handed back (`Failed("requeue")`), else the
        member cancelled it (`Failed("cancelled")`)."""
        from generator.pipeline import BadRequest, GenerationCancelled, OutOfMemory

        started = time.perf_counter()
        oom_retry = False
        try:
            try:
                clip = self.generator.generate(
                    request, on_progress=on_progress, should_cancel=should_cancel
                )
            except OutOfMemory as exc:
                if request.degraded:
                    raise
                # One retry with the pipeline's low-memory settings (offload, VAE tiling,
                # fewer frames) before telling the member it does not fit.
                log.warning("job %s: out of memory (%s); retrying degraded", request.job_id, exc)
                _free_memory()
                oom_retry = True
                request = dataclasses.replace(request, degraded=True)
                clip = self.generator.generate(
                    request, on_progress=on_progress, should_cancel=should_cancel
                )
            gen_seconds = time.perf_counter() - started
            if should_cancel():  # asked after the last step: the member no longer wants it
                raise GenerationCancelled(request.job_id)

            on_progress(Progress(0, 1, "encode"))
            result = encode.encode_mp4(
                clip.frames, request.output_path, fps=clip.fps, byte_budget=request.byte_budget
            )
            on_progress(Progress(1, 1, "encode"))
            facts = self._facts(request, clip, result, gen_seconds, oom_retry)
            return Done(result.path, self._mark(request, result.path, facts))
        except GenerationCancelled:
            if stopping():
                return Failed("requeue", "The generator shut down before this job finished.")
            return Failed("cancelled", "Cancelled.")
        except OutOfMemory as exc:
            _free_memory()
            return Failed("oom", f"Out of GPU memory even with low-memory settings: {exc}")
        except BadRequest as exc:
            return Failed("bad_request", str(exc))
        except encode.EncodeError as exc:
            log.error("job %s: encoding failed: %s", request.job_id, exc.message)
            return Failed("error", f"Encoding failed: {exc.message}")
        except Exception as exc:
            log.exception("job %s failed", request.job_id)
            return Failed("error", f"{type(exc).__name__}: {exc}")

    def _mark(self, request: GenerationRequest, path: str, facts: ClipFacts) -> ClipFacts:
        """Mark the clip as AI-generated (EU AI Act Art. 50(2)), naming the model that made it;
        the clip is delivered even if marking fails (see provenance.mark_finished)."""
        started = time.perf_counter()
        how = provenance.mark_finished(
            path, model=self.model_name(facts), data_dir=self.data_dir, job_id=request.job_id
        )
        timings = {**facts.timings, "mark": round(time.perf_counter() - started, 3)}
        if how != "c2pa":
            log.error("job %s: marked with %s only", request.job_id, how)
        return dataclasses.replace(facts, timings=timings, bytes=os.path.getsize(path))

    def model_name(self, facts: ClipFacts) -> str:
        """The preset name, or the folder's name for a local model."""
        return facts.preset or Path(self.model).name or self.model

    def _facts(
        self,
        request: GenerationRequest,
        clip: Any,
        result: encode.EncodeResult,
        gen_seconds: float,
        oom_retry: bool,
    ) -> ClipFacts:
        meta = clip.meta
        timings = {str(k): float(v) for k, v in dict(meta.get("timings") or {}).items()}
        timings.update(generate=round(gen_seconds, 3), encode=round(result.seconds, 3))
        # The rules of the preset actually used (after load: a local folder's rules come from
        # its VAE), so the bot can size an Extend of a `local:` model, which PRESETS lacks.
        preset = getattr(self.generator, "preset", None)
        return ClipFacts(
            width=int(meta.get("width") or result.width),
            height=int(meta.get("height") or result.height),
            num_frames=int(meta.get("num_frames") or result.frames),
            fps=float(meta.get("fps") or result.fps),
            bytes=result.bytes,
            video_width=result.width,
            video_height=result.height,
            fits=result.fits,
            crf=result.crf,
            note=result.note,
            steps=_int_or_none(meta.get("steps")),
            seed=request.seed,
            preset=meta.get("preset") or getattr(preset, "name", None),
            frame_rule=getattr(preset, "frame_rule", None),
            max_clip_frames=getattr(preset, "max_clip_frames", None),
            max_frames=getattr(preset, "max_frames", None),
            duration_frames=dict(getattr(preset, "frames", None) or {}),
            gen_seconds=round(float(meta.get("gen_seconds") or gen_seconds), 3),
            encode_seconds=round(result.seconds, 3),
            timings=timings,
            degraded=request.degraded,
            oom_retry=oom_retry,
            device=str(meta["device"]) if meta.get("device") else None,
            speedups=tuple(str(name) for name in meta.get("speedups") or ()),
            lora=str(meta["lora"]) if meta.get("lora") else None,
        )


def default_data_dir() -> Path:
    """Where the bot keeps its data (bot/config.py reads the same variable)."""
    return Path(os.environ.get("ZOETROPE_DATA_DIR", "").strip() or "data").expanduser()


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _free_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- the stdin/stdout loop ----------------------------------------------------------------------


class StdioServer:
    """Reads commands on a thread (so a cancel lands while a job runs) and runs jobs on the
    calling thread, one at a time, writing events as JSON lines to `out`."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._write_lock = threading.Lock()
        self._lock = threading.Lock()  # guards the job bookkeeping below
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._pending: dict[str, GenerationRequest] = {}
        self._running: str | None = None
        self._cancelled: set[str] = set()
        self._loading = True
        self._stop = threading.Event()

    # events

    def send(self, message: dict[str, Any]) -> None:
        line = local_pipe.encode_line(message)
        with self._write_lock:
            try:
                self._out.write(line)
                self._out.flush()
            except (BrokenPipeError, ValueError):
                self._stop.set()  # the parent is gone; nobody reads events any more

    def send_event(self, job_id: str, event: Event) -> None:
        self.send(local_pipe.job_event(job_id, event))

    def load_progress(self, *args: Any) -> None:
        """`on_progress` for VideoGenerator.load: a Progress, or (step, total)."""
        if len(args) == 1 and isinstance(args[0], Progress):
            step, total = args[0].step, args[0].total
        elif len(args) >= 2:
            step, total = int(args[0]), int(args[1])
        else:
            return
        self.send(local_pipe.loading(step, total))
        with self._lock:
            waiting = list(self._pending)
        for job_id in waiting:
            self.send_event(job_id, Progress(step, total, "load"))

    # commands

    def read_commands(self, fd: int) -> None:
        """Thread body: read JSON lines from `fd` until end of input."""
        buffer = b""
        while True:
            try:
                # os.read on the raw fd, not sys.stdin: a daemon thread blocked inside a
                # buffered reader can abort the interpreter at exit.
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    self.handle(line)
        log.info("end of input: stopping")
        self.stop()

    def handle(self, line: bytes) -> None:
        try:
            message = local_pipe.decode_line(line)
        except ValueError:
            log.error("ignored a command that is not a JSON object: %r", line[:200])
            return
        op = message.get("op")
        if op == "generate":
            self._enqueue(message.get("request"))
        elif op == "cancel":
            self.cancel(str(message.get("job_id")))
        elif op == "shutdown":
            log.info("shutdown requested")
            self.stop()
        else:
            log.error("ignored an unknown command: %r", message)

    def _enqueue(self, data: Any) -> None:
        job_id = data.get("job_id") if isinstance(data, dict) else None
        try:
            if not isinstance(data, dict):
                raise ValueError(f"request must be an object, got {type(data).__name__}")
            request = GenerationRequest.from_dict(data)
        except (TypeError, ValueError) as exc:
            self.send_event(str(job_id), Failed("bad_request", f"invalid request: {exc}"))
            return
        with self._lock:
            duplicate = request.job_id in self._pending or request.job_id == self._running
            if not duplicate:
                self._pending[request.job_id] = request
            loading = self._loading
        if duplicate:
            message = f"job {request.job_id!r} is already queued or running"
            self.send_event(request.job_id, Failed("bad_request", message))
            return
        if loading:
            self.send_event(request.job_id, Progress(0, 0, "load"))
        self._queue.put(request.job_id)

    def cancel(self, job_id: str) -> None:
        with self._lock:
            waiting = self._pending.pop(job_id, None)
            if waiting is None and job_id == self._running:
                self._cancelled.add(job_id)  # the running job's should_cancel sees it
        if waiting is not None:
            self.send_event(job_id, Failed("cancelled", "Cancelled before it started."))

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)

    # jobs

    def serve(self, core: WorkerCore) -> None:
        """Run queued jobs until stopped. Call after the model is loaded."""
        with self._lock:
            self._loading = False
        while not self._stop.is_set():
            job_id = self._queue.get()
            if job_id is None:
                break
            with self._lock:
                request = self._pending.pop(job_id, None)
                if request is None:
                    continue  # cancelled while waiting
                self._running = job_id
            try:
                result = core.run(
                    request,
                    on_progress=lambda p, j=job_id: self.send_event(j, p),
                    should_cancel=lambda j=job_id: j in self._cancelled or self._stop.is_set(),
                    # a member's cancel wins over a shutdown that comes after it
                    stopping=lambda j=job_id: self._stop.is_set() and j not in self._cancelled,
                )
            finally:
                with self._lock:
                    self._running = None
                    self._cancelled.discard(job_id)
            self.send_event(job_id, result)
        with self._lock:
            left, self._pending = list(self._pending), {}
        for job_id in left:
            self.send_event(job_id, Failed("requeue", "The generator shut down before this job."))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m generator.worker", description=__doc__)
    parser.add_argument("--model", required=True, help="preset name, 'auto', or a folder")
    parser.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    # Keep the real stdout for events only (see the module docstring).
    events = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    # Ctrl-C in the bot's terminal reaches us too; the parent decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",  # the parent adds time and pid
    )
    server = StdioServer(events)
    reader = threading.Thread(target=server.read_commands, args=(0,), daemon=True, name="stdin")
    reader.start()
    try:
        core = WorkerCore.load(args.model, device=args.device, on_progress=server.load_progress)
    except Exception as exc:
        log.exception("cannot load model %r", args.model)
        message = str(exc).strip() or type(exc).__name__
        server.send(local_pipe.load_error(message))
        return 1
    server.send(local_pipe.ready(core.info()))
    log.info("ready: %s", core.info())
    server.serve(core)
    with contextlib.suppress(Exception):
        events.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
