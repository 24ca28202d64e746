"""``zshard info`` and ``zshard fsck``: what is stored at a URL, and whether it is intact."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import MetadataError
from ..store import open_store
from ..survey import (
    ArrayInfo,
    FsckPlan,
    FsckReport,
    describe,
    partial_files,
    plan_fsck,
    remove_partial_files,
    run_fsck,
    survey,
)
from ..survey.fsck import annotation_state, survey_interrupted
from .output import EXIT_ERROR, EXIT_INCOMPLETE, EXIT_INTERRUPTED, EXIT_OK, EXIT_PROBLEMS

_METHODS = {
    "crc32c": "crc32c of every chunk, no decompression",
    "decode": "every chunk decoded",
}


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
    interrupted = None
    try:
        found = survey(args.url, storage_options=dict(args.options))
    except MetadataError:  # no metadata: an interrupted reshard's destination?
        store = open_store(args.url, dict(args.options))
        partial = survey_interrupted(store)
        if partial is None:
            raise
        found = partial
        interrupted = ("an interrupted write: no Zarr metadata yet (rerun the reshard to "
                       "finish it)")
        if not args.json:
            print(f"note: {found.url} is {interrupted}; checking the {len(found.arrays)} "
                  "array(s) its reshard journal plans, as far as written")
    if not found.arrays and not found.listable:
        print(f"zshard: error: no arrays found in {found.url}: the store cannot be listed and the "
              "group's metadata names none; give an array's URL", file=sys.stderr)
        return EXIT_ERROR
    plan = plan_fsck(found, full=args.full)
    report = FsckReport(found.url, problems=list(plan.problems), skipped=list(plan.skipped),
                        interrupted=interrupted)
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
    report.partial_files = (remove_partial_files if args.remove_partial else partial_files)(found)
    report.annotations = annotation_state(found)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        count, size = report.partial_files
        if count:
            what = f"{count:,} partial file(s) ({size / 2**20:,.1f} MiB) of interrupted writes"
            print(f"removed {what}" if args.remove_partial else
                  f"note: {what}; readers ignore them, --remove-partial deletes them")
        for state in report.annotations:
            if state["interrupted"]:
                print(f"note: labels/{state['label_image']}: {len(state['interrupted'])} "
                      "interrupted annotation commit(s); readers see whole shards only; "
                      f"`zshard annotations repair {found.url}` finishes them")
        totals = (f"{report.objects_found:,} {noun} and {report.chunks_checked:,} inner chunks "
                  "checked" if sharded else f"{report.objects_found:,} {noun} checked")
        if report.damaged:
            print(f"DAMAGED: {report.damaged_objects:,} of {report.objects_found:,} {noun} "
                  f"have problems ({len(report.problems)} problem(s); {totals})")
        elif report.interrupted:
            print(f"INCOMPLETE: no damage found in what was written ({totals}), but the store "
                  f"is {report.interrupted}")
        elif report.unchecked:
            unread = report.unchecked - len(report.skipped)
            print(f"INCOMPLETE: no damage found, but {len(report.skipped)} array(s) skipped "
                  f"and {unread} object(s) unreadable ({totals})")
        else:
            print(f"clean: {totals}")
    if report.damaged:
        return EXIT_PROBLEMS
    return EXIT_INCOMPLETE if report.unchecked else EXIT_OK


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
