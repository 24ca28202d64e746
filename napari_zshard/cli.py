"""The ``zshard`` command: ``zshard info URL`` and ``zshard fsck URL``.

A thin shell over :mod:`napari_zshard.survey`: argument parsing, printing and exit codes.
Exit codes: 0 clean, 1 problems found (fsck), 2 usage error or the URL cannot be opened,
130 interrupted. Errors are one line on stderr (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from typing import Any

from . import __version__
from .survey import ArrayInfo, FsckPlan, FsckReport, describe, plan_fsck, run_fsck, survey

EXIT_OK, EXIT_PROBLEMS, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130

_METHODS = {
    "crc32c": "crc32c of every chunk, no decompression",
    "decode": "every chunk decoded",
}


def _storage_option(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


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
        epilog="exit codes: 0 clean, 1 damage found, 2 usage error or URL cannot be opened, "
        "130 interrupted")
    fsck.add_argument("url", metavar="URL", help="the array or group to check")
    fsck.add_argument("--full", action="store_true",
                      help="decode every inner chunk, even where a crc32c checksum exists")
    fsck.add_argument("--json", action="store_true", help="machine-readable report on stdout")
    fsck.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    fsck.set_defaults(run=cmd_fsck)
    convert = commands.add_parser(
        "convert", parents=[common], help="write a store as sharded OME-Zarr 0.5",
        description="Convert a Zarr v2/v3 array or an OME-Zarr 0.4/0.5 image (with its labels) "
        "into a sharded OME-Zarr 0.5 image. The source is not modified.")
    convert.add_argument("src", metavar="SRC", help="source array or image (path or URL)")
    convert.add_argument("dst", metavar="DST", help="destination (path or URL)")
    convert.add_argument("--chunks", help="inner chunk shape, e.g. 64,64,64 (default: auto)")
    convert.add_argument("--shards", help="shard shape, e.g. 256,256,256 (default: auto)")
    _codec_arguments(convert)
    convert.add_argument("--levels", type=int,
                         help="rebuild the pyramid with this many levels (default: keep the "
                              "source's levels)")
    convert.add_argument("--rebuild-pyramid", action="store_true",
                         help="build a new pyramid from level 0 down to a 3D-viewable level")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    convert.add_argument("--dst-option", dest="dst_options", action="append",
                         type=_storage_option, default=[], metavar="NAME=VALUE",
                         help="transport option for DST (-o applies to SRC)")
    convert.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
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
    reshard.add_argument("src", metavar="SRC", help="source array or image (path or URL)")
    reshard.add_argument("dst", metavar="DST", help="destination (path or URL)")
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
    reshard.add_argument("--workers", type=int, help="threads (default: one per core)")
    reshard.add_argument("--scheduler", metavar="ADDRESS",
                         help="run the shard tasks on this dask.distributed scheduler")
    reshard.add_argument("--dst-option", dest="dst_options", action="append",
                         type=_storage_option, default=[], metavar="NAME=VALUE",
                         help="transport option for DST (-o applies to SRC)")
    reshard.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
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
    return parser


def cmd_convert(args: argparse.Namespace) -> int:
    from .multiscale.convert import convert
    from .multiscale.write import WriteOptions

    def shape(text: str | None, what: str):
        if not text:
            return None
        try:
            return tuple(int(v) for v in text.replace("x", ",").split(","))
        except ValueError:
            raise ValueError(f"{what} must look like 64,64,64, not {text!r}") from None

    options = WriteOptions(chunks=shape(args.chunks, "--chunks"),
                           shards=shape(args.shards, "--shards"), compressor=args.codec,
                           level=args.codec_level, checksum=not args.no_checksum,
                           levels=args.levels, overwrite=args.overwrite)
    steps = convert(args.src, args.dst, options=options,
                    rebuild=args.rebuild_pyramid or args.levels is not None,
                    src_options=dict(args.options), dst_options=dict(args.dst_options))
    show = not args.quiet and sys.stderr.isatty()
    bar = None
    try:
        for step in steps:
            if show and bar is None:
                from tqdm import tqdm

                bar = tqdm(total=step.total, unit="shard", file=sys.stderr)
            if bar is not None:
                bar.update(step.done - bar.n)
                bar.set_description(step.message)
    except KeyboardInterrupt:
        steps.close()
        print(f"zshard: interrupted; nothing was written to {args.dst}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if bar is not None:
            bar.close()
    print(f"wrote {args.dst}")
    return EXIT_OK


def cmd_reshard(args: argparse.Namespace) -> int:
    from .reshard import VerificationError, plan_reshard

    levels = None
    if args.levels:
        levels = []
        for text in args.levels:
            chunks, sep, shards = text.partition("/")
            if text != "-" and not sep:
                raise ValueError(f"--levels takes CHUNKS/SHARDS per level, not {text!r}")
            levels.append(None if text == "-" else (chunks or None, shards or None))
    plan = plan_reshard(args.src, args.dst, chunks=args.chunks, shards=args.shards,
                        codec=args.codec, codec_level=args.codec_level,
                        checksum=not args.no_checksum, levels=levels,
                        recompress=args.recompress, src_options=dict(args.options),
                        dst_options=dict(args.dst_options))
    print(plan.table(), flush=True)
    if args.plan_only:
        return EXIT_OK
    steps = plan.run(verify=args.verify, on_corrupt=args.on_corrupt, workers=args.workers,
                     client=args.scheduler)
    show = not args.quiet and sys.stderr.isatty()
    bar = summary = None
    try:
        for step in steps:
            summary = step.summary or summary
            if show and bar is None:
                from tqdm import tqdm

                bar = tqdm(total=step.total, unit="shard", file=sys.stderr)
            if bar is not None:
                bar.update(step.done - bar.n)
                bar.set_description(step.message[-40:])
    except KeyboardInterrupt:
        steps.close()
        print(f"zshard: interrupted; the shards done so far are journaled in {args.dst}: run "
              "the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except VerificationError as e:
        print(f"zshard: verification failed: {_one_line(e)}", file=sys.stderr)
        return EXIT_PROBLEMS
    finally:
        if bar is not None:
            bar.close()
    assert summary is not None
    print(summary.text())
    return EXIT_OK if summary.complete else EXIT_PROBLEMS


def cmd_view(args: argparse.Namespace) -> int:
    from ._launch import main as launch  # napari is imported only for this command

    argv = [args.url] if args.url else []
    if args.screenshot:
        argv += ["--screenshot", args.screenshot]
    return launch([*argv, "--ndisplay", str(args.ndisplay)])


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
    if args.verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger = logging.getLogger("napari_zshard")
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
        print(f"zshard: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    if code == EXIT_INTERRUPTED and argv is None and (
            threading.current_thread() is threading.main_thread()):
        # Worker threads finish their current read before the process exits; a second Ctrl-C
        # meanwhile should end it quietly, not print a traceback from the interpreter's exit.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    return code


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if isinstance(error, (OSError, ValueError)) or type(error).__module__.startswith(
            "napari_zshard"):
        return text or type(error).__name__
    return f"{type(error).__name__}: {text} (run with --debug for the traceback)"


# -- info ------------------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    found = survey(args.url, storage_options=dict(args.options))
    infos = describe(found)
    if args.json:
        print(json.dumps({"url": found.url, "node_type": found.node_type,
                          "listable": found.listable, "listing_error": found.listing_error,
                          "arrays": [i.to_json() for i in infos]}, indent=2))
        return EXIT_OK
    if found.node_type == "group":
        print(f"group {found.url}: {len(infos)} array{'s' if len(infos) != 1 else ''}\n")
    if not found.listable:
        print(f"note: this store cannot be listed ({found.listing_error}); what is stored "
              "is unknown, the rest comes from metadata\n")
    if not infos and not found.listable:
        print("no arrays found: the group's metadata names none (no consolidated metadata or "
              "OME-Zarr multiscales) and the store cannot be listed; give an array's URL")
    if infos:
        print("\n\n".join(_format_info(info) for info in infos))
    return EXIT_OK


def _dims(shape: tuple[int, ...] | None) -> str:
    return " x ".join(map(str, shape)) if shape else "scalar"


def _size(n: int, *, exact: bool = True) -> str:
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            break
        value /= 1024
    if unit == "B":
        return f"{n} B"
    return f"{value:.1f} {unit}" + (f" ({n:,} B)" if exact else "")


def _arrow() -> str:
    """The codec chain separator, in ASCII where stdout cannot encode the arrow (a cp1252 pipe)."""
    try:
        "→".encode(sys.stdout.encoding or "ascii")
        return " → "
    except (UnicodeEncodeError, LookupError):
        return " -> "


def _format_info(info: ArrayInfo) -> str:
    lines = [f"{info.path}  ({info.url})" if info.path else info.url]
    if info.error is not None:
        return "\n".join([*lines, f"  cannot describe: {info.error}"])
    noun = "shards" if info.shard_shape else "chunks"
    rows: list[tuple[str, str]] = [
        ("zarr format", str(info.zarr_format)),
        ("shape", f"{_dims(info.shape)}  {info.dtype}  ({_size(info.nbytes or 0, exact=False)})"),
        ("inner chunks" if info.shard_shape else "chunks", _dims(info.chunk_shape)),
    ]
    if info.shard_shape:
        rows.append(("shards", _dims(info.shard_shape)))
    rows.append(("codecs", _arrow().join(info.codecs)))
    if info.shard_shape:
        rows.append(("shard index", f"at {info.index_location}, "
                     + ("crc32c" if info.index_checksum else "no checksum")))
    rows.append(("fill value", str(info.fill_value)))
    if info.objects_present is None:
        rows.append((f"{noun} present", f"unknown (store not listable) of "
                     f"{info.objects_possible:,} possible"))
    else:
        rows.append((f"{noun} present", f"{info.objects_present:,} of "
                     f"{info.objects_possible:,}"))
        rows.append(("bytes stored", _size(info.bytes_stored or 0)))
        rows.append(("uncompressed", f"{_size(info.uncompressed_bytes or 0)} in stored {noun}"))
        ratio = info.compression_ratio
        rows.append(("compression", "n/a" if ratio is None else f"{ratio:.2f}x"))
    return "\n".join([*lines, *(f"  {name:<15} {value}" for name, value in rows)])


# -- fsck ------------------------------------------------------------------------------------
def cmd_fsck(args: argparse.Namespace) -> int:
    found = survey(args.url, storage_options=dict(args.options))
    if not found.arrays and not found.listable:
        print(f"zshard: error: no arrays found in {found.url}: the store cannot be listed and the "
              "group's metadata names none; give an array's URL", file=sys.stderr)
        return EXIT_ERROR
    plan = plan_fsck(found, full=args.full)
    report = FsckReport(found.url, problems=list(plan.problems), skipped=list(plan.skipped))
    sharded = all(n.meta.sharding for n, _ in plan.targets if n.meta)
    noun = "shards" if sharded else "objects"
    try:
        _check_with_progress(args, plan, report, noun)
    except KeyboardInterrupt:
        if args.json:
            print(json.dumps(report.to_json(), indent=2))
        print(f"zshard: interrupted after {report.objects_checked:,} of {plan.total:,} {noun}; "
              f"{len(report.problems)} problem(s) found so far", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        totals = (f"{report.objects_found:,} {noun} and {report.chunks_checked:,} inner chunks "
                  "checked" if sharded else f"{report.objects_found:,} {noun} checked")
        if report.clean and not report.objects_checked and report.skipped:
            print(f"nothing checked: {len(report.skipped)} array(s) skipped")
        elif report.clean:
            print(f"clean: {totals}")
        else:
            print(f"DAMAGED: {report.damaged_objects:,} of {report.objects_found:,} {noun} "
                  f"have problems ({len(report.problems)} problem(s); {totals})")
    return EXIT_OK if report.clean else EXIT_PROBLEMS


def _check_with_progress(args: argparse.Namespace, plan: FsckPlan, report: FsckReport,
                         noun: str) -> None:
    from tqdm import tqdm

    say = (lambda text: None) if args.json else print
    methods = sorted({_METHODS[m] for _, m in plan.targets})
    say(f"checking {report.url}: {len(plan.targets)} array(s), {plan.total:,} {noun} "
        f"({'; '.join(methods) or 'nothing to check'})")
    if not plan.survey.listable:
        say(f"note: the store cannot be listed ({plan.survey.listing_error}); asking for every "
            f"possible {noun[:-1]}")
    for problem in plan.problems:
        say(f"bad metadata: {problem.message}")
    for path, reason in plan.skipped:
        say(f"skipped: {path or report.url}: {reason}")
    with tqdm(total=plan.total, unit=noun[:-1], file=sys.stderr, leave=False,
              disable=args.quiet or not sys.stderr.isatty()) as bar:
        for check in run_fsck(plan):
            report.add(check)
            bar.update(1)
            for problem in check.problems:
                kind = "unreadable" if problem.kind == "read" else "corrupt"
                if not args.json:
                    bar.write(f"{kind}: {problem.message}", file=sys.stdout)
    report.complete = True


if __name__ == "__main__":
    sys.exit(main())
