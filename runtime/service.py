"""The daemon's lifecycle in one place: build every stage from the Config, run the pipeline, reload, close.

Signals only set events: SIGINT/SIGTERM `stop`, SIGHUP `reload`; either wakes the pipeline, which finishes the
frames in flight and returns within ~0.1 s. On a reload the config file is read again: an invalid one is logged in
one line and the running one stays; a valid one changes what can change live (thresholds, smoothing, emit, status
and stats, publishers added or removed, existing subscribers kept) and rebuilds only the stages whose settings
changed (runtime.stages), then the pipeline runs on in the same session. systemd hears READY=1 once everything is
up, RELOADING=1 ... READY=1 around a reload, WATCHDOG=1 while frames flow and STOPPING=1 at the end; outside
systemd those calls do nothing.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from runtime import stages as stage_builder
from runtime import systemd
from runtime.config import Config, load_config
from runtime.errors import FatalError, UserError, printable, say
from runtime.events import EventBuilder, new_session_id
from runtime.outputs import Outputs
from runtime.pipeline import Counters, Pipeline
from runtime.reporter import Locked, Reporter
from runtime.sources import Stopped


@dataclass
class RunResult:
    reason: str  # "eos", "stopped" or "reader_gone"
    counters: Counters
    seconds: float
    stuck: bool = False  # a worker thread did not end (blocked on stdout): exit without the final flush

    @property
    def fps(self) -> float:
        return self.counters.frames / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        c = self.counters
        return (
            f"emotiond: {self.reason}: {c.frames} frames in {self.seconds:.2f} s ({self.fps:.1f} frames/s), "
            f"{c.faces} faces, {c.dropped} dropped, {c.skipped} skipped"
            + (f", {c.errors} left out by errors" if c.errors else "")
        )


@contextlib.contextmanager
def signals(stop: threading.Event, reload: threading.Event, wake: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set `stop`, SIGHUP sets `reload`; both set `wake` (nothing else happens in a handler). A
    second SIGINT while stopping raises KeyboardInterrupt: the way out if a stage hangs. Only the main thread may
    install handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, _frame: object) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        (reload if signum == signal.SIGHUP else stop).set()
        wake.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(
    config: Config, stop: threading.Event | None = None, log=sys.stderr, config_path: str | None = None,
    reload: threading.Event | None = None, read_config: Callable[[], Config] | None = None,
) -> RunResult:  # fmt: skip
    """Build, run until the end of the stream / a stop / the reader leaving (reloading on `reload`), close.

    `config_path`: the file a reload reads again (None: a reload keeps the running config); `read_config` reads
    it as the command line did (the file, then its flags), default load_config(config_path). `stop`/`reload` may
    be set by the caller (tests) as by the signals.
    """
    if read_config is None and config_path is not None:
        read_config = functools.partial(load_config, config_path)
    stop = stop or threading.Event()
    reload = reload or threading.Event()
    wake = threading.Event()
    started = time.monotonic()
    with signals(stop, reload, wake), contextlib.ExitStack() as stack:
        live, fixed = _viewers(config, stop, wake, stack)
        outputs = stack.enter_context(Outputs(config.output.publishers, config.output.mqtt, stop, fixed=fixed))
        publisher = Locked(outputs)
        builder = EventBuilder(
            session=new_session_id(), source=config.source.uri, model_id="", emit_empty=config.events.emit == "all"
        )  # the model's id once it is loaded
        publisher.set_hello(builder.hello)  # socket subscribers' first line (runtime/sockets.py)
        reporter = Reporter(builder, publisher, config.events.stats_interval_s, config.events.status)
        try:
            stages = stage_builder.build(config, stop, reporter.status)
        except Stopped:
            return _finish(RunResult("stopped", Counters(), time.monotonic() - started), log)
        stack.callback(lambda: stages.close())  # the stages of the moment, after any reload
        builder.model_id = stages.classifier.model_id
        counters = Counters()
        ticker = stack.enter_context(
            reporter.ticker(lambda: stages.source.dropped, lambda: counters.errors, lambda: stages.source.skipped)
        )
        stack.callback(systemd.stopping)  # registered last: unwinds first, before any stage closes
        reporter.starting(config_path)  # every stage built: a user's mistake would have been one error line
        start = time.monotonic()
        while True:
            pipeline = Pipeline(
                source=stages.source, detector=stages.detectors, cropper=stages.cropper,
                classifier=stages.classifier, tracker=stages.tracker, builder=builder, publisher=publisher,
                annotator=stages.annotator, stop=wake, on_heartbeat=systemd.watchdog_ping, stats=reporter.stats,
                counters=counters, hard_stop=stop, live=live,
            )  # fmt: skip
            if not stages.started:
                stages.source.start()
                stages.started = True
                _online(reporter, stages, config)
                for name in fixed:  # said once everything is up: a mistake found before is the only line
                    say(f"emotiond: live page at {name}/")
            try:
                reason = pipeline.run()
            except (UserError, FatalError) as e:
                reporter.status("error", " ".join(str(e).split()), error=type(e).__name__)
                raise
            if reason == "stopped" and reload.is_set() and not stop.is_set():
                reload.clear()
                wake.clear()
                config, stages = _reload(
                    config, config_path, read_config, stages, outputs, builder, reporter, ticker, stop
                )
                if stop.is_set() or reload.is_set():  # a signal that came during the reload: not lost
                    wake.set()
                continue
            break
        seconds = time.monotonic() - start
        if pipeline.stuck:  # the outputs are held by a finisher blocked on stdout: no more events
            reporter.publish_status = False
        if reason == "eos":
            reporter.status("eos", f"{counters.frames} frames", frames=counters.frames, skipped=stages.source.skipped)
        else:
            reporter.status("stopping", "stop requested" if reason == "stopped" else "the reader left")
    result = RunResult(reason, counters, seconds, stuck=bool(pipeline.stuck))
    if stages.source.stills and reason == "eos" and counters.frames == 0:
        raise UserError(f"no decodable image in {printable(config.source.uri)} ({counters.skipped} skipped)")
    return _finish(result, log)


def _viewers(config: Config, stop: threading.Event, wake: threading.Event, stack: contextlib.ExitStack):
    """The window (--show) and the http page (--http), if asked for, over one LiveView; the page's event stream is
    a fixed output. Built before the stages, so that no display or a busy port is one line before MediaPipe starts.
    Returns (live view or None, fixed outputs by name)."""
    if not (config.output.show or config.output.http):
        return None, {}
    from runtime.live import LiveView

    live = LiveView()
    stack.callback(live.close)  # last to unwind: after the window and the page closed their threads
    if config.output.show:  # first: no display is the likelier mistake, and opens nothing others would see
        from runtime.window import Window

        def quit_asked() -> None:  # q or Esc in the window: as SIGINT
            stop.set()
            wake.set()

        stack.enter_context(Window(live, quit_asked, title=f"emotiond: {config.source.uri}", stop=stop))
    fixed = {}
    if config.output.http:
        from runtime.http_preview import HttpPreview

        http = stack.enter_context(HttpPreview(config.output.http, live, config.output.http_auth_file, stop))
        fixed[http.name] = http
    return live, fixed


def _viewer_settings(config: Config) -> tuple:
    return config.output.show, config.output.http, config.output.http_auth_file


def _online(reporter: Reporter, stages, config: Config) -> None:
    c = stages.classifier
    what = f"{c.model_id} ({c.backend} {c.precision})"
    detail = f"watching {config.source.uri} with {what}"
    reporter.status("online", detail, model=c.model_id, backend=c.backend, precision=c.precision)
    systemd.ready(detail)


def _reload(config: Config, path: str | None, read_config, stages, outputs, builder, reporter, ticker, stop):
    """The config and stages after a SIGHUP: the new ones, or the running ones if the new config is invalid or a
    changed stage cannot be built (one line on stderr and in a status event either way)."""
    systemd.reloading()
    reporter.status("reloading", f"reading {path}" if path else "no config file: nothing to reload")
    try:
        if read_config is None:
            raise UserError("started without a config file")
        new = read_config()
        new_stages, changed = stage_builder.rebuild(stages, config, new, stop, reporter.status)
        try:
            with reporter.publisher.exclusive:  # no event is published to an output being replaced
                changed += outputs.reconfigure(new.output.publishers, new.output.mqtt)
        except UserError:
            for stage in new_stages.owned:
                if stage not in stages.owned:
                    stage.close()
            raise
    except (UserError, Stopped) as e:
        message = " ".join(str(e).split()) or "stopping"
        say(f"emotiond: reload failed, the running config stays: {message}", "warning")
        reporter.status("error", f"reload failed: {message}", error="reload")
        _online(reporter, stages, config)
        return config, stages
    for stage in stages.owned:
        if stage not in new_stages.owned:
            with contextlib.suppress(Exception):
                stage.close()
    if _viewer_settings(new) != _viewer_settings(config):
        say("emotiond: output.show, output.http and output.http_auth_file change at the next start", "warning")
        running = dict(zip(("show", "http", "http_auth_file"), _viewer_settings(config), strict=True))
        new = new.model_copy(update={"output": new.output.model_copy(update=running)})  # what runs, for the next
    builder.emit_empty = new.events.emit == "all"
    builder.model_id = new_stages.classifier.model_id
    builder.source = new.source.uri
    reporter.publish_status = new.events.status
    ticker.retune(new.events.stats_interval_s)
    say(f"emotiond: reloaded {path}: {', '.join(changed) or 'nothing'} changed")
    if new_stages.started:
        _online(reporter, new_stages, new)
    return new, new_stages


def _finish(result: RunResult, log) -> RunResult:
    if log is sys.stderr:
        say(result.summary())
    elif log is not None:
        print(result.summary(), file=log, flush=True)
    return result
