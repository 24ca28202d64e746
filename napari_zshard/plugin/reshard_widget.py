"""File ▸ IO utilities ▸ Reshard a store…: preview what a new chunk/shard layout costs, then
rewrite the store in the background (activity-dock progress, Cancel, resumable), and open the
result. The same core as ``zshard reshard`` and :func:`napari_zshard.reshard.plan_reshard`."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, ComboBox, Container, Label, LineEdit, PushButton

from ..reshard import parse_level_layouts, parse_shape
from ..store import normalize_url
from .save_widget import LocationEdit

if TYPE_CHECKING:
    import napari


def _shape_text(shape) -> str:
    return ",".join(map(str, shape))


def default_destination(source: str) -> str:
    """``/data/vol.zarr`` → ``/data/vol-resharded.zarr`` (URLs alike)."""
    base = source.rstrip("/")
    stem = base[:-5] if base.endswith(".zarr") else base
    return f"{stem}-resharded.zarr"


def layer_store(layer: Any) -> str:
    """The store a layer was opened from, as a path or URL ("" if none): where napari says it
    opened it, else the address napari-zshard's reader put in its metadata (for a label
    image, the store that holds it)."""
    path = getattr(getattr(layer, "source", None), "path", None)
    if path:
        return str(path)
    meta = getattr(layer, "metadata", None) or {}
    url = (meta.get("napari_zshard") or {}).get("url") or ""
    head, sep, _ = url.rpartition("/labels/")
    url = head if sep else url
    return normalize_url(url) if url.startswith("file://") else url


def _suggestion(source: str) -> tuple[str, str]:
    """The suggested layout of the source's full-resolution array, as form text."""
    from ..reshard import suggest_layout
    from ..reshard.source import open_source

    first = open_source(source).arrays[0].array
    chunks, shards = suggest_layout(first.shape, first.dtype)
    return _shape_text(chunks), _shape_text(shards)


class ReshardWidget(Container):
    """Source, destination, layout and codec; Preview shows the plan, Run reshards it."""

    def __init__(self, viewer: napari.viewer.Viewer, source: str = ""):
        super().__init__(labels=True)
        self.viewer = viewer
        # the selected layer's store, and later selections while the field still shows a
        # store picked that way (never over what the user typed)
        source = source or layer_store(viewer.layers.selection.active)
        self._prefilled = source
        self.source = LocationEdit(label="source (path or URL)", value=source, mode="folder",
                                   on_chosen=self.suggest)
        self.destination = LocationEdit(label="destination",
                                        value=default_destination(source) if source else "")
        self.chunks = LineEdit(label="chunk shape", value="auto")
        self.shards = LineEdit(label="shard shape", value="auto")
        # other layouts for some pyramid levels: "CHUNKS/SHARDS" per level, "-" keeps the above
        self.levels = LineEdit(label="per level (optional)", value="")
        self.levels.tooltip = ("CHUNKS/SHARDS for levels 0, 1, …, separated by blanks, e.g. "
                               "'- 32,64,64/64,512,512'; '-' keeps the shapes above")
        self.codec = ComboBox(label="codec", choices=["zstd", "blosc", "gzip", "none"],
                              value="zstd")
        self.verify = ComboBox(label="verify", choices=["sample", "full", "none"],
                               value="sample")
        self.on_corrupt = ComboBox(label="corrupt source shard", choices=["stop", "skip"],
                                   value="stop")
        self.open_result = CheckBox(label="open result when done", value=True)
        self.preview_button = PushButton(text="Preview")
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self.table = Label(value="")
        self.extend([self.source, self.destination, self.chunks, self.shards, self.levels,
                     self.codec, self.verify, self.on_corrupt, self.open_result,
                     self.preview_button, self.run_button, self.cancel_button, self.status,
                     self.table])
        self._monospace(self.table)
        self.preview_button.changed.connect(self.preview)
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.source.text.native.editingFinished.connect(self.suggest)
        viewer.layers.selection.events.active.connect(self._follow_selection)
        self.worker: Any = None
        self.plan = None
        self.summary = None
        self._cancel = threading.Event()
        self._suggested_layout: tuple[str, str] | None = None
        if source:
            self.suggest()

    def _follow_selection(self, event: Any = None) -> None:
        store = layer_store(self.viewer.layers.selection.active)
        if not store or store == self.source.value or self.source.value != self._prefilled:
            return
        if self.destination.value in ("", default_destination(self._prefilled)):
            self.destination.value = default_destination(store)
        self.source.value = self._prefilled = store
        if (self.chunks.value, self.shards.value) == self._suggested_layout:
            self.chunks.value = self.shards.value = "auto"  # the new source's suggestion
        self.suggest()

    @staticmethod
    def _monospace(label: Label) -> None:
        from qtpy.QtCore import Qt
        from qtpy.QtGui import QFontDatabase

        label.native.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        label.native.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

    # -- the form --------------------------------------------------------------------------
    def form(self) -> dict[str, Any]:
        """The plan's arguments; a wrong value raises with a message for the user."""
        source, destination = self.source.value.strip(), self.destination.value.strip()
        if not source:
            raise ValueError("give the source (a path or URL)")
        if not destination:
            raise ValueError("give the destination (a path or URL)")
        return {"src": source, "dst": destination,
                "chunks": parse_shape(self.chunks.value, "chunk shape"),
                "shards": parse_shape(self.shards.value, "shard shape"),
                "levels": parse_level_layouts(self.levels.value),
                "codec": self.codec.value}

    def suggest(self) -> None:
        """Fill the destination and the suggested layout once the source is known."""
        from napari.qt.threading import create_worker

        source = self.source.value.strip()
        if not source:
            return
        if not self.destination.value.strip():
            self.destination.value = default_destination(source)
        worker = create_worker(_suggestion, source, _start_thread=False)
        worker.returned.connect(self._suggested)
        worker.errored.connect(lambda e: setattr(self.status, "value", f"source: {e}"))
        worker.start()

    def _suggested(self, layout: tuple[str, str]) -> None:
        self._suggested_layout = layout
        if self.chunks.value.strip().lower() in ("", "auto"):
            self.chunks.value = layout[0]
        if self.shards.value.strip().lower() in ("", "auto"):
            self.shards.value = layout[1]

    def _report(self, error: Exception, what: str) -> None:
        from napari.utils.notifications import show_error

        self.status.value = f"{what} failed: {error}"
        show_error(f"Reshard: {error}")

    # -- preview ---------------------------------------------------------------------------
    def preview(self) -> None:
        """Plan in a worker thread and show the plan's table."""
        from napari.qt.threading import create_worker

        from ..reshard import plan_reshard

        try:
            form = self.form()
        except ValueError as e:
            self._report(e, "preview")
            return
        self.status.value = "planning…"
        self.preview_button.enabled = False
        worker = create_worker(plan_reshard, **form, _start_thread=False)
        worker.returned.connect(self._previewed)
        worker.errored.connect(lambda e: self._report(e, "preview"))
        worker.finished.connect(lambda: setattr(self.preview_button, "enabled", True))
        worker.start()

    def _previewed(self, plan) -> None:
        self.plan = plan
        self.table.value = plan.table()
        self.status.value = "plan ready: press Run"

    # -- run -------------------------------------------------------------------------------
    def start(self) -> None:
        """Reshard in a worker thread, with progress in the activity dock."""
        from napari.qt.threading import create_worker

        try:
            form = self.form()
        except ValueError as e:
            self._report(e, "reshard")
            return
        self._cancel.clear()
        self.summary = None
        self.worker = create_worker(self._run, form, self.verify.value, self.on_corrupt.value,
                                    self._cancel, _start_thread=False)
        self.worker.returned.connect(self._done)
        self.worker.errored.connect(lambda e: self._report(e, "reshard"))
        self.worker.finished.connect(self._finished)
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = f"resharding into {form['dst']}…"
        self.worker.start()

    @staticmethod
    def _run(form: dict[str, Any], verify: str, on_corrupt: str, cancel: threading.Event):
        """The worker: plan, run, feed the activity dock; stop cleanly when cancelled."""
        from napari.utils import progress

        from ..reshard import plan_reshard

        plan = plan_reshard(**form, measure=False)
        steps = plan.run(verify=verify, on_corrupt=on_corrupt)
        bar = summary = None
        try:
            for step in steps:
                if bar is None:
                    bar = progress(total=step.total, desc=f"resharding {form['dst']}")
                bar.update(step.done - bar.n)
                summary = step.summary or summary
                yield step
                if cancel.is_set():
                    return None
        finally:
            steps.close()  # running shard tasks finish and are journaled: a rerun resumes
            if bar is not None:
                bar.close()
        return summary

    def cancel(self) -> None:
        if self.worker is not None:
            self.status.value = "cancelling…"
            self._cancel.set()

    def _done(self, summary) -> None:
        from napari.utils.notifications import show_info

        if summary is None:
            self.status.value = ("cancelled: the destination is not complete; Run again to "
                                 "resume")
            return
        self.summary = summary
        self.table.value = summary.text()
        self.status.value = f"resharded into {summary.destination}"
        show_info(f"Resharded into {summary.destination}")
        if self.open_result.value and summary.complete:
            self.viewer.open(self.destination.value.strip(), plugin="napari-zshard")

    def _finished(self) -> None:
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        self.worker = None


def open_reshard_widget(viewer: napari.viewer.Viewer) -> None:
    """File ▸ IO utilities ▸ Reshard a store…: dock the reshard widget, prefilled with the
    selected layer's store when it was opened from one."""
    viewer.window.add_dock_widget(ReshardWidget(viewer), name="Reshard a store", area="right")
