"""``zshard annotations log`` and ``zshard annotations repair``."""

from __future__ import annotations

import argparse
import json

from .annotations_merge import add_merge_parser
from .output import EXIT_OK


def cmd_annotations_log(args: argparse.Namespace) -> int:
    from ..annotations import log

    records = log(args.url, labels=args.labels, storage_options=dict(args.options))
    if args.json:
        print(json.dumps([vars(r) for r in records], indent=2, default=str))
        return EXIT_OK
    if not records:
        print("no annotation commits")
    for r in records:
        conflicts = sum(c.get("voxels", 0) for c in r.conflicts)
        state = r.status + (" (repaired)" if r.repaired else "")
        line = (f"{r.created or '?'}  {r.label_image}  {r.annotator or '?'}  {state}  "
                f"{r.voxels_written:,} voxels, {r.shards_written} shards")
        if r.conflicts:
            line += f", {len(r.conflicts)} conflict(s) ({conflicts:,} voxels)"
        if r.message:
            line += f"  \"{r.message}\""
        print(f"{r.commit_id}  {line}")
    return EXIT_OK


def cmd_annotations_repair(args: argparse.Namespace) -> int:
    from ..annotations import repair

    report = repair(args.url, labels=args.labels, storage_options=dict(args.options))
    if args.json:
        print(json.dumps(vars(report), indent=2))
        return EXIT_OK
    for cid in report.finished:
        print(f"finished {cid}")
    for cid in report.already_finished:
        print(f"already finished meanwhile: {cid}")
    for cid in report.unreadable:
        print(f"cannot finish {cid}: its intent or diff is unreadable")
    if not (report.finished or report.already_finished or report.unreadable):
        print("nothing to repair: every commit is complete")
    return EXIT_OK if not report.unreadable else 1


def add_parsers(commands, common: argparse.ArgumentParser) -> None:
    """``zshard annotations {log,repair,merge}``."""
    parser = commands.add_parser(
        "annotations", parents=[common],
        help="annotation commits: log, repair; merge annotators into a consensus",
        description="The annotation commits of an OME-Zarr image's label images.")
    sub = parser.add_subparsers(dest="annotations_command", required=True, metavar="ACTION")
    for name, run, text in (
            ("log", cmd_annotations_log, "who committed what, when, and the conflicts"),
            ("repair", cmd_annotations_repair,
             "finish interrupted commits (idempotent; safe while a commit is running)")):
        p = sub.add_parser(name, parents=[common], help=text, description=text)
        p.add_argument("url", metavar="URL", help="the OME-Zarr image (path or s3:// URL)")
        p.add_argument("--labels", help="only this label image (default: all listed)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(run=run)
    add_merge_parser(sub, common)
