"""`emotiond`: the command line. Every error a user can cause arrives here as UserError and leaves as one line
on stderr ("error: ...") with exit code 2, never a traceback (argparse's mistakes too); a stage that keeps failing
leaves the same way with 1; Ctrl-C leaves quietly with 130.

Configuration: --config PATH, else ./config.yaml if present, else the built-in defaults (the same values as the
repository's config.yaml); flags of `run` override single keys.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path
from typing import Any

from runtime import subscribe
from runtime.config import load_config
from runtime.errors import FatalError, UserError, printable, say

LOCAL_CONFIG = Path("config.yaml")
EXIT_FATAL = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class OneLineParser(argparse.ArgumentParser):
    """argparse's mistakes as one `error:` line (its default is the whole usage block) and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        say(f"error: {' '.join(message.split())} (see '{self.prog} --help')", "error")
        sys.exit(EXIT_USER_ERROR)


EPILOG = """\
examples:
  emotiond fetch-models                         # once: the face detector model into the cache
  emotiond run --source samples/faces.mp4       # a video file, every frame, as fast as possible
  emotiond run --source 0                       # the first webcam (latest frame wins)
  emotiond run --source photos/ --annotate out/ # a directory of images, annotated copies in out/
  emotiond run --source clip.mp4 | jq -c '.faces[] | {id, emotion, confidence}'
  emotiond check-config --config /etc/emotiond/cam1.yaml
"""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("emotiond")
    except Exception:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="emotiond",
        description="Edge daemon: camera -> faces (MediaPipe) -> facial expressions -> one JSON event per frame.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"emotiond {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    config_help = "YAML config file (default: ./config.yaml if present, else built-in defaults)"

    run = sub.add_parser(
        "run",
        help="watch a source and print one JSON event per frame on stdout",
        description="Watch a source (webcam, video file, URL, image or directory of images) and publish one JSON "
        "event per processed frame (JSON Lines on stdout by default). Flags override the config file's keys. "
        "A one-line summary goes to stderr at the end.",
    )
    run.add_argument("--config", metavar="PATH", help=config_help)
    run.add_argument(
        "--source",
        metavar="URI",
        help="webcam index (0) or device (/dev/video0), video file, rtsp:// or http(s):// URL, image, or directory "
        "of images [source.uri]",
    )
    run.add_argument(
        "--output",
        action="append",
        metavar="SPEC",
        help="publisher, repeatable: 'stdout', 'unix:PATH[?mode=0660]' or 'tcp:[HOST:]PORT' (HOST: 127.0.0.1); "
        "sockets serve many subscribers ('emotiond subscribe ADDRESS'); 'systemd:NAME' the socket systemd passed "
        "(FileDescriptorName=NAME); 'mqtt://[USER@]HOST[:PORT]/PREFIX' or "
        "'mqtts://...' publishes to an MQTT broker (settings: output.mqtt) [output.publishers]",
    )
    run.add_argument("--backend", choices=["onnxruntime", "openvino"], help="inference engine [classifier.backend]")
    run.add_argument("--precision", choices=["int8", "fp32"], help="model variant [classifier.precision]")
    run.add_argument(
        "--model",
        metavar="DIR|NAME",
        help="model set: a folder with manifest.json, or a shipped set's name [classifier.model]",
    )
    run.add_argument("--threads", type=int, metavar="N", help="classifier CPU threads [classifier.threads]")
    run.add_argument(
        "--realtime",
        action="store_true",
        default=None,
        help="files: play at the file's own frame rate instead of as fast as possible [source.realtime]",
    )
    run.add_argument(
        "--live",
        action="store_true",
        default=None,
        help="latest frame wins even for a file: stale frames are dropped, not queued [source.live]",
    )
    run.add_argument(
        "--annotate",
        metavar="PATH",
        help="write what the daemon saw with boxes and expressions: .mp4/.avi for streams, a directory for "
        "images [output.annotate]",
    )
    run.add_argument(
        "--show",
        action="store_true",
        default=None,
        help="show the annotated frames live in a window; q or Esc quits, Space saves a snapshot [output.show]",
    )
    run.add_argument(
        "--http",
        metavar="[HOST:]PORT",
        help="serve a live page (annotated stream, expression bars, status) at http://HOST:PORT/ (HOST: "
        "127.0.0.1); 'systemd:NAME' on the socket systemd passed (FileDescriptorName=NAME) [output.http]",
    )
    run.add_argument(
        "--emit", choices=["all", "faces"], help="events for all frames or only frames with faces [events.emit]"
    )
    run.add_argument(
        "--log-level",
        choices=["error", "warning", "info", "debug"],
        help="emotiond's lines on stderr; debug adds the native libraries' logs [log.level]",
    )
    run.set_defaults(func=cmd_run)

    fetch = sub.add_parser(
        "fetch-models",
        help="fetch the face detector model into the local cache",
        description="Fetch the MediaPipe BlazeFace short-range model (taken from the mediapipe==0.10.21 wheel on "
        "the Python package index, SHA-256 checked) into the cache: $EMOTIOND_CACHE_DIR, else "
        "$XDG_CACHE_HOME/emotiond, else ~/.cache/emotiond. The expression model ships with emotiond.",
    )
    fetch.add_argument("--force", action="store_true", help="fetch again even if a verified copy is cached")
    fetch.set_defaults(func=cmd_fetch_models)

    check = sub.add_parser(
        "check-config",
        help="validate a config file without running",
        description="Validate a config file as `run` would (unknown keys, types, ranges) and exit: prints "
        "'ok: PATH' (exit 0) or one line naming the problem key (exit 2). Suits systemd's ExecStartPre=.",
    )
    check.add_argument("--config", metavar="PATH", help=config_help)
    check.set_defaults(func=cmd_check_config)
    subscribe.add_parser(sub)  # `emotiond subscribe ADDRESS` (runtime/subscribe.py)
    return parser


def resolve_config_path(path: str | None) -> Path | None:
    if path is not None:
        return Path(path)
    return LOCAL_CONFIG if LOCAL_CONFIG.is_file() else None


def run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Only the flags the user gave: an absent flag never hides the config file's value."""
    pairs = {
        "source.uri": args.source,
        "source.realtime": args.realtime,
        "source.live": args.live,
        "output.publishers": args.output,
        "output.annotate": args.annotate,
        "output.show": args.show,
        "output.http": args.http,
        "classifier.backend": args.backend,
        "classifier.precision": args.precision,
        "classifier.model": args.model,
        "classifier.threads": args.threads,
        "events.emit": args.emit,
        "log.level": args.log_level,
    }
    return {key: value for key, value in pairs.items() if value is not None}


def check_encodable(overrides: dict[str, Any]) -> None:
    """A name in a foreign encoding reaches Python with surrogates, which the config cannot hold: say so plainly
    (a directory holding such names is fine: its files are read as bytes)."""
    for key, value in overrides.items():
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    raise UserError(f"{key} {printable(text)}: the name is not valid UTF-8 (rename it)") from None


def cmd_run(args: argparse.Namespace) -> int:
    overrides = run_overrides(args)
    check_encodable(overrides)
    config = load_config(resolve_config_path(args.config), overrides)
    from runtime.errors import set_log_level
    from runtime.native_logs import filter_native_stderr

    set_log_level(config.log.level)
    if config.log.level != "debug":
        filter_native_stderr()
    from runtime import service  # mediapipe, onnxruntime: loaded only when running

    path = resolve_config_path(args.config)
    # A reload (SIGHUP) reads the file again and applies the same flags over it.
    read_again = None if path is None else functools.partial(load_config, path, overrides)
    result = service.run(config, config_path=None if path is None else str(path), read_config=read_again)
    code = 0 if result.reason in ("eos", "stopped", "reader_gone") else 1
    if result.stuck:
        # A worker is still blocked writing to stdout (its reader stopped reading): the interpreter's own final
        # flush would block on that stream too, so leave without it, stderr flushed.
        say("emotiond: stdout is not being read; events still queued for it were dropped", "warning")
        os._exit(code)
    return code


def cmd_fetch_models(args: argparse.Namespace) -> int:
    from runtime.detector_model import fetch_detector_model

    print(f"ok: {fetch_detector_model(force=args.force)}")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    path = resolve_config_path(args.config)
    config = load_config(path)
    from runtime.publishers import check_publishers

    check_publishers(config.output.publishers, config.output.mqtt)  # what `run` would refuse, opening nothing
    if config.output.http:
        from runtime.addresses import parse_http_address
        from runtime.http_preview import read_credentials

        parse_http_address(config.output.http)  # systemd:NAME: only its form, as for the outputs
        if config.output.http_auth_file:
            read_credentials(config.output.http_auth_file)
    if config.classifier.model:
        from runtime.manifest import load_manifest, model_dir

        load_manifest(model_dir(config.classifier.model))
    print(f"ok: {path if path is not None else 'built-in defaults'}")
    return 0


def quiet_native_logs() -> None:
    """OpenCV and FFmpeg print warnings on stderr for what we report ourselves as one line ("cannot open source
    ..."); keep them to real errors unless the user asked for more. Must run before cv2 is imported."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET


def main(argv: list[str] | None = None) -> int:
    try:
        quiet_native_logs()
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (UserError, FatalError) as e:
        message = " ".join(str(e).split()) or type(e).__name__  # one line, whatever the message held
        say(f"error: {message}", "error")
        return EXIT_FATAL if isinstance(e, FatalError) else EXIT_USER_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
