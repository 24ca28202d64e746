"""The ``zshard`` command: ``info``, ``fsck``, ``convert``, ``reshard``, ``view``, ``demo``,
``annotations``.

This module parses the command line and runs the command; its siblings in ``cli/`` hold the
commands (thin shells over the library that print and return exit codes). Exit codes: 0 clean,
1 problems found, 2 usage error or the URL cannot be opened, 3 (fsck) something could not be
checked, 130 interrupted. Errors are one line on stderr (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from typing import Any

from .. import __version__
from .annotations import add_parsers as add_annotation_parsers
from .output import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, one_line, redact_for
from .survey import cmd_fsck, cmd_info
from .write import cmd_convert, cmd_reshard


def _storage_option(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


def _at_least(minimum: int):
    """An argparse ``type``: an integer ≥ ``minimum``, or a message naming what is expected."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer ≥ {minimum}, got {value}")
        return value

    return parse


def _source_and_destination(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="source array or image (path or URL)")
    parser.add_argument("dst", metavar="DST", help="destination (path or URL)")


def _destination_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dst-option", dest="dst_options", action="append",
                        type=_storage_option, default=[], metavar="NAME=VALUE",
                        help="transport option for DST (-o applies to SRC)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _codec_arguments(parser: argparse.ArgumentParser) -> None:
    """The codec options every command that writes shards takes."""
    parser.add_argument("--codec", choices=["zstd", "blosc", "gzip", "none"], default="zstd")
    parser.add_argument("--codec-level", type=int, default=3)
    parser.add_argument("--no-checksum", action="store_true",
                        help="leave out the inner crc32c checksums")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log what the engine does (DEBUG level) on stderr")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error")
    common.add_argument("-o", "--storage-option", dest="options", action="append",
                        type=_storage_option, default=argparse.SUPPRESS, metavar="NAME=VALUE",
                        help="transport option, e.g. -o anon=true -o endpoint_url=http://... "
                             "(values are JSON when they parse as JSON)")
    parser = argparse.ArgumentParser(
        prog="zshard", parents=[common],
        description="Inspect and check sharded Zarr v3 (and Zarr v2) arrays and groups.")
    parser.set_defaults(verbose=False, debug=False, options=[])
    parser.add_argument("--version", action="version", version=f"zshard {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = commands.add_parser(
        "info", parents=[common], help="shapes, codecs, shards stored, compression ratio",
        description="Describe the array at URL, or every array of the group at URL.")
    info.add_argument("url", metavar="URL", help="local path or file://, http(s)://, s3://, "
                      "gs://, memory:// URL")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(run=cmd_info)
    fsck = commands.add_parser(
        "fsck", parents=[common], help="check shard indexes and inner chunks",
        description="Check every stored shard's index and inner chunks. By default a chunk "
        "whose codecs end with crc32c has only its checksum verified (no decompression); "
        "other chunks are decoded.",
        epilog="exit codes: 0 clean (everything checked); 1 damage found (corrupt metadata, "
        "index or chunk, or a link out of the store); 2 usage error or URL cannot be opened; "
        "3 no damage found but something could not be checked (an array skipped: codecs the "
        "engine does not implement or a string dtype; an object that cannot be read, e.g. a "
        "folder where a shard belongs); 130 interrupted")
    fsck.add_argument("url", metavar="URL", help="the array or group to check")
    fsck.add_argument("--full", action="store_true",
                      help="decode every inner chunk, even where a crc32c checksum exists")
    fsck.add_argument("--remove-partial", action="store_true",
                      help="delete the temporary files of writes whose process died (a "
                           "killed save or reshard; never a running writer's)")
    fsck.add_argument("--json", action="store_true", help="machine-readable report on stdout")
    fsck.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    fsck.set_defaults(run=cmd_fsck)
    convert = commands.add_parser(
        "convert", parents=[common], help="write a store as sharded OME-Zarr 0.5",
        description="Convert a Zarr v2/v3 array or an OME-Zarr 0.4/0.5 image (with its labels) "
        "into a sharded OME-Zarr 0.5 image. The source is not modified.")
    _source_and_destination(convert)
    convert.add_argument("--chunks", help="inner chunk shape, e.g. 64,64,64 (default: auto)")
    convert.add_argument("--shards", help="shard shape, e.g. 256,256,256 (default: auto)")
    _codec_arguments(convert)
    convert.add_argument("--levels", type=_at_least(1),
                         help="rebuild the pyramid with this many levels (default: keep the "
                              "source's levels)")
    convert.add_argument("--rebuild-pyramid", action="store_true",
                         help="build a new pyramid from level 0 down to a 3D-viewable level")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    _destination_options(convert)
    convert.set_defaults(run=cmd_convert)
    reshard = commands.add_parser(
        "reshard", parents=[common], help="rewrite a store with new chunk and shard shapes",
        description="Rewrite the array or OME-Zarr image (every level and label image) at SRC "
        "into DST with new chunk and shard shapes, streaming one destination shard at a time. "
        "The plan (objects, index bytes, what one plane and one 512x512 tile cost a viewer, "
        "before and after, and the estimated time) is printed first. An interrupted run "
        "(Ctrl-C, crash, kill) resumes when the same command is run again. SRC is never "
        "modified.",
        epilog="exit codes: 0 done, 1 shards skipped (corrupt source) or verification failed, "
        "2 usage error or the job cannot run, 130 interrupted (rerun to resume)")
    _source_and_destination(reshard)
    reshard.add_argument("--chunks", help="inner chunk shape, e.g. 32,32,32 (default: suggested)")
    reshard.add_argument("--shards", help="shard shape, e.g. 512,512,512 (default: suggested)")
    _codec_arguments(reshard)
    reshard.add_argument("--levels", nargs="+", metavar="CHUNKS/SHARDS",
                         help="per pyramid level, e.g. 32,32,32/512,512,512 16,64,64/256,256,256"
                              " ('-' keeps --chunks/--shards for that level)")
    reshard.add_argument("--recompress", action="store_true",
                         help="decode and re-encode every chunk, even where the chunk shape "
                              "and codecs stay the same (by default such chunks are copied as "
                              "stored, after checking them)")
    reshard.add_argument("--plan-only", action="store_true", help="print the plan and stop")
    reshard.add_argument("--verify", choices=["sample", "full", "none"], default="sample",
                         help="compare the result with the source: a random layer of a few "
                              "shards per array (default), everything, or nothing")
    reshard.add_argument("--on-corrupt", choices=["stop", "skip"], default="stop",
                         help="a corrupt source shard stops the job (default) or its "
                              "destination shards are skipped")
    reshard.add_argument("--workers", type=_at_least(1), help="threads (default: one per core)")
    reshard.add_argument("--scheduler", metavar="ADDRESS",
                         help="run the shard tasks on this dask.distributed scheduler")
    _destination_options(reshard)
    reshard.set_defaults(run=cmd_reshard)
    view = commands.add_parser(
        "view", parents=[common], help="open napari on a store (default: the sample volume)",
        description="Open napari on URL, or on the generated sample volume. With --screenshot "
        "FILE, save what the canvas shows and exit (for machines without a display, run it "
        "under xvfb-run).")
    view.add_argument("url", nargs="?", metavar="URL", help="store to open (default: sample)")
    view.add_argument("--screenshot", metavar="FILE", help="save the canvas to FILE and exit")
    view.add_argument("--ndisplay", type=int, choices=(2, 3), default=2)
    view.set_defaults(run=cmd_view)
    demo = commands.add_parser(
        "demo", parents=[common], help="make the sample volume and report what the engine reads",
        description="Generate the sample sharded volume (once) and print what the engine reads.")
    demo.add_argument("path", nargs="?", help="where to write the sample (default: cache)")
    demo.set_defaults(run=cmd_demo)
    add_annotation_parsers(commands, common)
    return parser


def cmd_view(args: argparse.Namespace) -> int:
    from ..plugin.viewer import show_store  # napari is imported only for this command

    shown = show_store(args.url, ndisplay=args.ndisplay, screenshot=args.screenshot)
    if args.screenshot:
        print(shown)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run

    print(run(args.path))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run ``zshard`` with ``argv`` (default: the command line); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors: argparse already printed
        return e.code if isinstance(e.code, int) else EXIT_ERROR
    logger, handler, level = logging.getLogger("napari_zshard"), None, None
    if args.verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        level = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        code = args.run(args)
    except KeyboardInterrupt:
        print("zshard: interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except Exception as e:
        if args.debug:
            raise
        print(f"zshard: error: {redact_for(one_line(e), args)}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        if handler is not None:  # (main() called again in one process: no stale handler)
            logger.removeHandler(handler)
            logger.setLevel(level)
    if code == EXIT_INTERRUPTED and argv is None and (
            threading.current_thread() is threading.main_thread()):
        # Worker threads finish their current read before the process exits; a second Ctrl-C
        # meanwhile should end it quietly, not print a traceback from the interpreter's exit.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    return code

