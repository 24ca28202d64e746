"""``zshard convert`` and ``zshard reshard``: commands that write a store."""

from __future__ import annotations

import argparse
import sys

from ..store.url import redact_url
from .output import EXIT_INTERRUPTED, EXIT_OK, EXIT_PROBLEMS, follow, one_line, redact_for


def cmd_convert(args: argparse.Namespace) -> int:
    from ..multiscale.convert import convert
    from ..multiscale.write import WriteOptions
    from ..reshard.layout import parse_shape

    options = WriteOptions(chunks=parse_shape(args.chunks, "--chunks"),
                           shards=parse_shape(args.shards, "--shards"), compressor=args.codec,
                           level=args.codec_level, checksum=not args.no_checksum,
                           levels=args.levels, overwrite=args.overwrite)
    steps = convert(args.src, args.dst, options=options,
                    rebuild=args.rebuild_pyramid or args.levels is not None,
                    src_options=dict(args.options), dst_options=dict(args.dst_options))
    try:
        for _ in follow(steps, show=not args.quiet and sys.stderr.isatty()):
            pass
    except KeyboardInterrupt:
        steps.close()
        print(f"zshard: interrupted; nothing was written to {redact_url(args.dst)}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"wrote {redact_url(args.dst)}")
    return EXIT_OK


def cmd_reshard(args: argparse.Namespace) -> int:
    from ..reshard import VerificationError, parse_level_layouts, plan_reshard

    levels = parse_level_layouts(args.levels)
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
    summary = None
    try:
        for step in follow(steps, show=not args.quiet and sys.stderr.isatty(),
                           describe=lambda message: message[-40:]):
            summary = step.summary or summary
    except KeyboardInterrupt:
        steps.close()
        print(f"zshard: interrupted; the shards done so far are journaled in "
              f"{redact_url(args.dst)}: run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except VerificationError as e:
        print(f"zshard: verification failed: {redact_for(one_line(e), args)}", file=sys.stderr)
        return EXIT_PROBLEMS
    assert summary is not None
    print(summary.text())
    return EXIT_OK if summary.complete else EXIT_PROBLEMS
