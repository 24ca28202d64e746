"""``zshard annotations merge``: the annotators' label images into a consensus and conflicts."""

from __future__ import annotations

import argparse
import json

from .output import EXIT_OK


def cmd_annotations_merge(args: argparse.Namespace) -> int:
    from ..annotations.consensus import merge

    inputs = [n.strip() for n in args.inputs.split(",") if n.strip()] if args.inputs else "all"
    report = merge(args.url, inputs=inputs, mode=args.mode, quorum=args.quorum,
                   workers=args.workers, storage_options=dict(args.options))
    if args.json:
        print(json.dumps(vars(report), indent=2, default=list))
        return EXIT_OK
    print(f"merged {len(report.inputs)} annotators ({', '.join(report.inputs)}) in "
          f"{report.seconds:.1f} s, {report.mode} mode")
    if report.skipped:
        print(f"skipped (no coverage): {', '.join(report.skipped)}")
    if report.mode == "instance":
        print(f"{report.consensus_objects} consensus objects")
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(report.conflict_kinds.items()))
    print(f"{report.conflicts} conflicts" + (f" ({kinds})" if kinds else ""))
    if report.overrides_applied:
        print(f"{report.overrides_applied} resolutions re-applied")
    return EXIT_OK


def add_merge_parser(sub, common: argparse.ArgumentParser) -> None:
    """Add ``merge`` to the sub-commands ``sub`` of ``zshard annotations``."""
    text = "merge the annotators' label images into labels/consensus and labels/conflicts"
    p = sub.add_parser("merge", parents=[common], help=text, description=text)
    p.add_argument("url", metavar="URL", help="the OME-Zarr image (path or s3:// URL)")
    p.add_argument("--inputs", help="label images to merge, comma-separated (default: all "
                                    "listed ones with a coverage map)")
    p.add_argument("--mode", choices=["semantic", "instance"], default="semantic",
                   help="semantic: values are classes; instance: values are objects")
    p.add_argument("--quorum", type=int, help="votes a decision needs (default: a strict "
                                              "majority of the annotators covering it)")
    p.add_argument("--workers", type=int, help="threads (default: one per core)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=cmd_annotations_merge)
