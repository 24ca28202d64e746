"""Plugins ▸ Conflict walker (also Layers ▸ Annotate): the conflicts of a merged store
(issue 15) one by one, and the Merge that makes them.

* **Merge** runs :func:`napari_zshard.annotations.merge` in a napari worker, shown in the
  activity dock as a busy bar; the label layers of the store are then replaced by the new
  ones (conflicts on top, see :mod:`.consensus_layers`), with its progress in the activity
  dock; **Cancel** stops it between two shards: a merge stopped halfway leaves
  nothing that looks complete, and a rerun redoes it.
* The table lists the conflicts (from the conflicts layer's ``features``, i.e. the merge's
  ``conflicts.csv``); a click on a header sorts it (size, kind, annotators). Next/Previous go
  down/up the table as sorted, moving the dims (z) and the camera (centre, zoom) to the
  conflict's centroid and box, in world coordinates.
* Resolving: **Resolve here** checks the conflict's box of ``consensus`` out in the Annotate
  widget (paint, Export: a logged commit naming who resolved it; the next merge rewrites the
  consensus, so this suits a final touch-up). **Record value** stores a resolution with
  :func:`napari_zshard.annotations.resolve` (logged, re-applied by every later merge);
  "take from" fills the value with what an annotator has at the conflict's centroid.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..annotations.consensus.tables import vector
from .annotate.view import focus
from .annotate.widget import _store_url, remembered_annotator
from .consensus_layers import CONFLICTS, ROLE

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

COLUMNS = ("id", "kind", "voxels", "annotators", "centroid")
MODES = ("semantic", "instance")


def _role(layer) -> str | None:
    return (getattr(layer, "metadata", None) or {}).get("napari_zshard", {}).get(ROLE)


def _store_of(url: str) -> str:
    """The image's URL from one of its label images' (``…/labels/<name>``)."""
    head, _, _ = url.rstrip("/").rpartition("/labels/")
    return head or url


def merge_and_open(url: str, *, mode: str):
    """The worker: merge step by step (yielding its progress, so that it can be cancelled
    between shards), then the layer data of the store's label images (read here, off the Qt
    thread)."""
    from .. import annotations as ann
    from ..multiscale import open_nodes
    from .layer_data import layer_data

    report = yield from ann.merge_steps(url, mode=mode)
    layers = [t for t in layer_data(open_nodes(url)) if t[2] == "labels"]
    return report, layers


class WalkerSignals(QObject):
    merged = Signal(object)  # the MergeReport; None when the merge failed
    jumped = Signal(int)  # the conflict id now in view


class ConflictWalker(QWidget):
    """Merge, the conflicts table, Previous/Next, Resolve here, Record value."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = viewer
        self.signals = WalkerSignals()
        self.worker: Any = None
        self._bar: Any = None
        self.report: Any = None
        self.mode = QComboBox()
        self.mode.addItems(MODES)
        self.annotator = QLineEdit(remembered_annotator())
        self.merge_button = QPushButton("Merge")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.previous_button, self.next_button = QPushButton("Previous"), QPushButton("Next")
        self.resolve_here = QPushButton("Resolve here (edit consensus)")
        self.take_from = QComboBox()
        self.value = QSpinBox()
        self.value.setRange(0, 2 ** 31 - 1)
        self.record = QPushButton("Record value")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        form = QFormLayout()
        form.addRow("mode", self.mode)
        form.addRow("annotator", self.annotator)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        buttons = QHBoxLayout()
        buttons.addWidget(self.merge_button)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)
        layout.addWidget(self.table)
        for row in ((self.previous_button, self.next_button),
                    (self.resolve_here,), (QLabel("take from"), self.take_from),
                    (QLabel("value"), self.value, self.record)):
            box = QHBoxLayout()
            for w in row:
                box.addWidget(w)
            layout.addLayout(box)
        layout.addWidget(self.status)
        self.merge_button.clicked.connect(self.merge)
        self.cancel_button.clicked.connect(self.cancel)
        self.previous_button.clicked.connect(lambda: self.step(-1))
        self.next_button.clicked.connect(lambda: self.step(+1))
        self.table.cellClicked.connect(lambda row, _col: self.jump(row))
        self.resolve_here.clicked.connect(self.open_in_annotate)
        self.take_from.activated.connect(lambda _i: self.fill_value())
        self.record.clicked.connect(self.record_value)
        viewer.layers.events.inserted.connect(lambda _: self.load())
        viewer.layers.events.removed.connect(lambda _: self.load())
        self.load()

    # -- where things are ------------------------------------------------------------------
    def conflicts_layer(self):
        return next((layer for layer in reversed(self.viewer.layers)
                     if _role(layer) == CONFLICTS), None)

    def store_url(self) -> str | None:
        layer = self.conflicts_layer()
        if layer is not None:
            return _store_of(_store_url(layer))
        from napari.layers import Image

        active = self.viewer.layers.selection.active
        images = [active, *self.viewer.layers]
        return next((_store_url(im) for im in images
                     if isinstance(im, Image) and _store_url(im)), None)

    def _say(self, text: str, *, error: bool = False) -> None:
        self.status.setText(text)
        if error:
            from napari.utils.notifications import show_error

            show_error(f"Conflict walker: {text}")

    # -- the table -------------------------------------------------------------------------
    def load(self) -> None:
        """Fill the table from the conflicts layer's features (the merge's table)."""
        layer = self.conflicts_layer()
        rows = [] if layer is None else layer.features.to_dict("records")
        self.rows = {int(r["index"]): r for r in rows if "index" in r}
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(self.rows))
        for i, (cid, r) in enumerate(self.rows.items()):
            values = {**r, "id": cid}
            for j, col in enumerate(COLUMNS):
                item = QTableWidgetItem()
                v = values.get(col, "")
                # numbers sort as numbers (Qt compares the display data)
                item.setData(Qt.ItemDataRole.DisplayRole,
                             int(v) if col in ("id", "voxels") else str(v))
                self.table.setItem(i, j, item)
        self.table.setSortingEnabled(True)
        self.current = -1

    def conflict_at(self, row: int) -> int:
        return int(self.table.item(row, 0).data(Qt.ItemDataRole.DisplayRole))

    def step(self, delta: int) -> None:
        """Next (+1) / Previous (-1) in the table's current order."""
        n = self.table.rowCount()
        if n:
            self.jump((self.current + delta) % n if self.current >= 0 else
                      (0 if delta > 0 else n - 1))

    def jump(self, row: int) -> None:
        """Move the dims and the camera to the conflict of table row ``row``."""
        if not 0 <= row < self.table.rowCount():
            return
        self.current = row
        self.table.selectRow(row)
        cid = self.conflict_at(row)
        r = self.rows[cid]
        centroid, lo, hi = (vector(r.get(k, "")) for k in ("centroid", "bbox_min", "bbox_max"))
        if not centroid:
            self._say(f"conflict {cid} has no voxels left (hidden by another one)")
            return
        layer = self.conflicts_layer()
        scale = list(layer.scale[-len(centroid):]) if layer is not None else [1.0] * len(
            centroid)
        focus(self.viewer, centroid, [max(16.0 * k, h - low + k)
                                      for k, low, h in zip(scale, lo, hi, strict=True)])
        self.take_from.clear()
        self.take_from.addItems(str(r.get("annotators", "")).split())
        self._say(f"conflict {cid} ({row + 1} of {self.table.rowCount()}): {r.get('kind')}, "
                  f"{r.get('voxels')} voxels, {r.get('annotators')}")
        self.signals.jumped.emit(cid)

    # -- merging ---------------------------------------------------------------------------
    def merge(self) -> None:
        """Merge in a worker; the activity dock shows it; the label layers are then renewed."""
        from napari.qt.threading import create_worker
        from napari.utils import progress

        url = self.store_url()
        if url is None:
            self._say("open a store first (File ▸ Open, or drop it)", error=True)
            return
        if self.worker is not None:
            return
        self.merge_button.setEnabled(False)
        mode = self.mode.currentText()
        self._say(f"merging the annotators of {url} ({mode})…")
        self._bar = progress(total=0, desc=f"merging ({mode})")  # made on the Qt thread
        self.worker = create_worker(merge_and_open, url, mode=mode, _start_thread=False,
                                    _ignore_errors=True)
        self.report = None
        self.worker.yielded.connect(self._advance)
        self.worker.aborted.connect(lambda: self._say("merge cancelled: the consensus and "
                                                      "conflicts are incomplete (not listed); "
                                                      "Merge again to make them"))
        self.cancel_button.setEnabled(True)
        self.worker.returned.connect(self._merged)
        self.worker.errored.connect(lambda e: self._say(f"merge failed: {e}", error=True))
        self.worker.finished.connect(self._merge_done)
        self.worker.start()

    def _advance(self, step) -> None:
        """A shard of the merge is done: the activity dock's bar follows."""
        bar = self._bar
        if bar is None:
            return
        if bar.total != step.total:
            bar.total = step.total
        bar.set_description(f"merging: {step.stage}")
        bar.update(step.done - bar.n)

    def cancel(self) -> None:
        """Stop the merge after the shard it is on."""
        if self.worker is not None:
            self.cancel_button.setEnabled(False)
            self.worker.quit()

    def _merged(self, result) -> None:
        """The store's label layers show the new merge: the ones open already get the new
        levels, tables and visibility (keeping their colours and settings), new ones are
        added, and the conflicts go on top."""
        from napari.layers import Layer

        report, tuples = result
        prefix = f"{self.store_url().rstrip('/')}/labels/"
        open_ = {la.name: la for la in self.viewer.layers
                 if (_store_url(la) or "").startswith(prefix)}
        for data, kwargs, kind in tuples:
            layer = open_.get(kwargs["name"])
            if layer is None:
                self.viewer.add_layer(Layer.create(data, kwargs, kind))
                continue
            layer.metadata = kwargs["metadata"]
            layer.data = data
            if "features" in kwargs:
                layer.features = kwargs["features"]
            layer.visible = kwargs.get("visible", True)
        top = self.conflicts_layer()
        if top is not None:
            self.viewer.layers.move(self.viewer.layers.index(top), len(self.viewer.layers))
        self.report = report
        self.load()
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(report.conflict_kinds.items()))
        self._say(f"merged {len(report.inputs)} annotators in {report.seconds:.1f} s: "
                  f"{report.conflicts} conflicts ({kinds or 'none'})")

    def _merge_done(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self.worker = self._bar = None
        self.merge_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.signals.merged.emit(self.report)

    # -- resolving -------------------------------------------------------------------------
    def _voxel_box(self, r) -> tuple[slice, ...]:
        layer = self.conflicts_layer()
        lo, hi = vector(r["bbox_min"]), vector(r["bbox_max"])
        scale, translate = layer.scale[-len(lo):], layer.translate[-len(lo):]
        return tuple(slice(round((a - t) / s), round((b - t) / s) + 1)
                     for a, b, s, t in zip(lo, hi, scale, translate, strict=True))

    def open_in_annotate(self) -> None:
        """Check the current conflict's box of ``consensus`` out in the Annotate widget."""
        from .annotate.view import region_text
        from .annotate.widget import NUMBERS, AnnotateWidget

        if self.current < 0:
            self._say("pick a conflict first (Next, or a click in the table)")
            return
        # the one docked already, whether from Layers ▸ Annotate or the Plugins menu
        widget = next((w for w in self.viewer.window.dock_widgets.values()
                       if isinstance(w, AnnotateWidget)), None)
        if widget is None:
            widget = AnnotateWidget(self.viewer)
            self.viewer.window.add_dock_widget(widget, name="Annotate", area="right")
        url = self.store_url()
        image = next((la for la in self.viewer.layers if _store_url(la) == url), None)
        if image is None:
            self._say("the store's image is not open: open the store to edit its consensus",
                      error=True)
            return
        widget.image.value = image
        widget.label_image.reset_choices()
        widget.label_image.value = "consensus"
        widget.source.value = NUMBERS
        widget.region.value = region_text(self._voxel_box(self.rows[self.conflict_at(
            self.current)]))
        if self.annotator.text().strip():
            widget.annotator.value = self.annotator.text().strip()
        widget.start_edit()

    def fill_value(self) -> None:
        """The value the chosen annotator has at the current conflict's centroid."""
        name = self.take_from.currentText()
        layer = next((la for la in self.viewer.layers if la.name == name and _role(la)), None)
        if layer is None or self.current < 0:
            return
        r = self.rows[self.conflict_at(self.current)]
        c = vector(r["centroid"])
        voxel = tuple(int((v - t) // s) for v, s, t in zip(
            c, layer.scale[-len(c):], layer.translate[-len(c):], strict=True))
        data = layer.data[0] if layer.multiscale else layer.data
        self.value.setValue(int(data[voxel]))

    def record_value(self) -> None:
        """Record the resolution (logged; re-applied by every later merge)."""
        from .. import annotations as ann

        if self.current < 0:
            self._say("pick a conflict first (Next, or a click in the table)")
            return
        cid = self.conflict_at(self.current)
        try:
            entry = ann.resolve(self.store_url(), cid, value=self.value.value(),
                                by=self.annotator.text().strip() or None)
        except Exception as e:  # shown to the user; the table stays as it is
            self._say(f"cannot record the resolution: {e}", error=True)
            return
        self._say(f"conflict {cid} → {entry['value']} recorded by {entry['by']}: Merge again "
                  "to see it in the consensus")


def open_conflict_walker(viewer: napari.viewer.Viewer) -> None:
    """Layers ▸ Annotate ▸ Walk the conflicts…: dock the walker (one per viewer)."""
    if "Conflict walker" in viewer.window.dock_widgets:
        return
    viewer.window.add_dock_widget(ConflictWalker(viewer), name="Conflict walker", area="right")
