"""Plugins ▸ Annotate (also File ▸ IO utilities and Layers ▸ Annotate): check out a region of a
label image, paint it in an editable Labels layer, export what changed into the store.

The same core as a notebook (:mod:`napari_zshard.annotations`): ``checkout`` gives an Edit whose
``data`` napari paints into and whose ``scale``/``translate`` place it over the image; Export
runs ``edit.commit_steps`` in a worker (activity-dock progress, Cancel while nothing is written,
painting goes on), then lists the conflicts, each a click away, with "keep mine"/"take theirs".
Points and Shapes layers export and re-open too (:mod:`.geometry_panel`).

Inside the region the read-only multiscale labels are blanked (:func:`masked_levels`) rather
than hidden by an overlay or opacity: label 0 is transparent, so without the blanking an erased
voxel would show the stored label underneath; an opaque overlay would hide the image too.
"""

from __future__ import annotations

import getpass
import json
import logging
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    ComboBox,
    Container,
    Label,
    LineEdit,
    PushButton,
    RadioButtons,
    SpinBox,
)
from qtpy.QtCore import QObject, Signal

from .conflict_list import ConflictList
from .export_panel import ExportPanel
from .geometry_panel import GeometryPanel
from .view import (
    MAX_EDIT_3D_BYTES,
    MAX_EDIT_VOXELS,
    RegionError,
    check_region_size,
    fits_3d,
    masked_levels,
    parse_region,
    region_text,
    shapes_region,
    view_region,
)

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

FIELD_OF_VIEW, SHAPES, NUMBERS = "field of view", "rectangle in a Shapes layer", "numbers"
NEW_LABELS = "(new label image)"
#: each annotator labels into a label image of their own, merged later (Conflict walker)
OWN_LABELS = "(my own label image)"


def _settings_file():
    from ...store.config import config_path

    return config_path().with_name("annotate.json")


def remembered_annotator() -> str:
    """The name given last time (``annotate.json`` beside the storage config), else the OS
    user: who you are is asked once, not on every edit."""
    try:
        name = json.loads(_settings_file().read_text()).get("annotator")
    except (OSError, ValueError, AttributeError):
        name = None
    if isinstance(name, str) and name.strip():
        return name
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (getpass raises various errors)
        return ""


def remember_annotator(name: str) -> None:
    path = _settings_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"annotator": name}))
    except OSError:  # a read-only home must not stop the edit
        log.debug("cannot remember the annotator in %s", path, exc_info=True)


def _openable(url: str) -> str:
    """What ``viewer.open`` takes: a local path for ``file://`` URLs (napari checks it)."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(url)
    return unquote(parsed.path) if parsed.scheme == "file" else url


def _store_url(layer) -> str | None:
    return (getattr(layer, "metadata", None) or {}).get("napari_zshard", {}).get("url")


class AnnotateSignals(QObject):
    """Emitted on the Qt thread once a checkout or an export has been applied to the viewer."""

    checked_out = Signal(object)  # the Edit
    exported = Signal(object)  # the CommitReport; None when cancelled or failed
    geometry_exported = Signal(object)  # the GeometryReport; None when failed


class AnnotateWidget(Container):
    """The form; Edit region, New label, Export/Cancel, the conflicts and their resolution."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self.viewer = viewer
        self.signals = AnnotateSignals()
        self.image = ComboBox(label="image", choices=self._image_choices)
        self.label_image = ComboBox(label="label image", choices=self._label_choices)
        self.new_name = LineEdit(label="new label image name", value="annotations")
        self.annotator = LineEdit(label="annotator", value=remembered_annotator())
        self.source = RadioButtons(label="region from", choices=[FIELD_OF_VIEW, SHAPES, NUMBERS],
                                   value=FIELD_OF_VIEW)
        self.shapes = ComboBox(label="shapes layer", choices=self._shapes_choices)
        self.depth = SpinBox(label="z planes", value=16, min=1, max=4096)
        self.region = LineEdit(label="region (z0:z1, y0:y1, x0:x1)")
        self.edit_button = PushButton(text="Edit region")
        self.new_label_button = PushButton(text="New label id (M)", enabled=False)
        self.status = Label(value="")
        self.exporter = ExportPanel(say=self._say, applied=self._exported,
                                    finished=self._export_finished)
        self.export_button = self.exporter.export_button
        self.cancel_button = self.exporter.cancel_button
        self.summary = self.exporter.summary
        self.conflicts = ConflictList(viewer, say=self._say, resolved=self._refresh_edit)
        self.close_button = PushButton(text="Close edit (drops what is not exported)",
                                       enabled=False)
        self.geometry = GeometryPanel(viewer, url=self._image_url,
                                      annotator=lambda: self.annotator.value.strip(),
                                      say=self._say,
                                      done=self.signals.geometry_exported.emit)
        self.extend([self.image, self.label_image, self.new_name, self.annotator, self.source,
                     self.shapes, self.depth, self.region, self.edit_button, self.status,
                     self.new_label_button, self.exporter, self.conflicts, self.close_button,
                     self.geometry])
        self.edit: Any = None
        self.layer: Any = None  # the editable Labels layer
        self.stored_layer: Any = None  # the read-only labels of the store, masked meanwhile
        self._stored_levels: Any = None
        self._hidden_for_3d = False
        self.image.changed.connect(lambda _: self.label_image.reset_choices())
        self.label_image.changed.connect(self._label_changed)
        self.source.changed.connect(self._source_changed)
        self.edit_button.changed.connect(self.start_edit)
        self.new_label_button.changed.connect(lambda: self.new_label())
        self.export_button.changed.connect(self.export)
        self.close_button.changed.connect(self.close_edit)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(lambda _: self.reset_choices())
        viewer.dims.events.ndisplay.connect(self._ndisplay_changed)
        active = viewer.layers.selection.active
        if active is not None and active in [v for _, v in self._image_choices()]:
            self.image.value = active
        self._label_changed()
        self._source_changed()

    # -- the form --------------------------------------------------------------------------
    def _image_choices(self, _widget=None) -> list[tuple[str, Any]]:
        from napari.layers import Image

        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, Image) and _store_url(layer)]

    def _image_url(self) -> str | None:
        return _store_url(self.image.value) if self.image.value is not None else None

    def _label_choices(self, _widget=None) -> list[str]:
        from ...annotations import label_images

        layer = self.image.value if hasattr(self, "image") else None
        names: list[str] = []
        if layer is not None:
            try:
                names = list(label_images(_store_url(layer)))
            except Exception as e:  # the form still offers a new label image
                log.debug("cannot list the label images of %s: %s", _store_url(layer), e)
        return [*names, OWN_LABELS, NEW_LABELS]

    def _shapes_choices(self, _widget=None) -> list[tuple[str, Any]]:
        from napari.layers import Shapes

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Shapes)]

    def _label_changed(self, *_) -> None:
        self.new_name.visible = self.label_image.value == NEW_LABELS

    def _source_changed(self, *_) -> None:
        self.shapes.visible = self.source.value == SHAPES
        self.depth.visible = self.source.value != NUMBERS

    def _say(self, text: str, *, error: bool = False) -> None:
        from napari.utils.notifications import show_error

        self.status.value = text
        if error:
            show_error(f"Annotate: {text}")

    def chosen_region(self) -> tuple[slice, ...]:
        """The region the form describes now (the field of view is read at this moment)."""
        layer = self.image.value
        if layer is None:
            raise RegionError("open an image from a store first (File ▸ Open, or drop it)")
        if self.source.value == FIELD_OF_VIEW:
            region = view_region(self.viewer, layer, depth=self.depth.value)
        elif self.source.value == SHAPES:
            if self.shapes.value is None:
                raise RegionError("add a Shapes layer and draw a rectangle over the part to edit")
            region = shapes_region(self.viewer, layer, self.shapes.value, depth=self.depth.value)
        else:
            region = parse_region(self.region.value, layer.level_shapes[0]
                                  if layer.multiscale else layer.data.shape)
        self.region.value = region_text(region)
        check_region_size(region, max_voxels=MAX_EDIT_VOXELS)
        return region

    # -- edit region -----------------------------------------------------------------------
    def start_edit(self) -> None:
        """Check the region out in a worker; :meth:`_checked_out` places the layer."""
        from napari.qt.threading import create_worker

        from ... import annotations as ann

        if self.edit is not None:
            self._say("an edit is open: export it, or close it, before editing another region")
            return
        try:
            region = self.chosen_region()
            annotator = self.annotator.value.strip()
            if not annotator:
                raise RegionError("say who you are (annotator): it is recorded with every export")
            own = self.label_image.value == OWN_LABELS
            create = self.label_image.value == NEW_LABELS
            name = (ann.annotator_slug(annotator) if own else
                    self.new_name.value.strip() if create else self.label_image.value)
            if not name:
                raise RegionError("give the new label image a name")
        except (RegionError, ValueError) as e:
            self._say(str(e), error=True)
            return
        remember_annotator(annotator)
        url = _store_url(self.image.value)
        self._say(f"checking out {name} {region_text(region)}…")
        self.edit_button.enabled = False
        worker = create_worker(ann.checkout, url, labels=name, region=region, own=own,
                               annotator=annotator, create=create, max_voxels=MAX_EDIT_VOXELS,
                               _start_thread=False, _ignore_errors=True)
        worker.returned.connect(self._checked_out)
        worker.errored.connect(lambda e: self._say(f"checkout failed: {e}", error=True))
        worker.finished.connect(lambda: setattr(self.edit_button, "enabled", self.edit is None))
        worker.start()

    def _checked_out(self, edit) -> None:
        self.edit = edit
        self.stored_layer = self._find_stored_layer()
        if self.stored_layer is not None:
            self._mask_stored(edit.region)
        kwargs: dict[str, Any] = {}
        if self.stored_layer is not None:
            kwargs["colormap"] = self.stored_layer.colormap
        name = f"{edit.labels_name} (editing {region_text(edit.region)})"
        self.layer = self.viewer.add_labels(
            edit.data, name=name, scale=edit.scale, translate=edit.translate,
            multiscale=False, **kwargs)
        self.layer.bind_key("m", self.new_label, overwrite=True)  # napari's needs numpy data
        self.layer.mode = "paint"
        for button in (self.new_label_button, self.export_button, self.close_button):
            button.enabled = True
        self._ndisplay_changed()
        self._say(f"editing {edit.labels_name} {region_text(edit.region)} as {edit.annotator}: "
                  "paint, then Export")
        self.signals.checked_out.emit(edit)

    def _labels_url(self) -> str:
        return f"{self.edit.image_url.rstrip('/')}/labels/{self.edit.labels_name}"

    def _find_stored_layer(self):
        from napari.layers import Labels

        want = self._labels_url().rstrip("/")
        for layer in self.viewer.layers:
            url = _store_url(layer)
            if isinstance(layer, Labels) and url and url.rstrip("/") == want:
                return layer
        return None

    def _mask_stored(self, region) -> None:
        layer = self.stored_layer
        self._stored_levels = list(layer.data) if layer.multiscale else layer.data
        levels = self._stored_levels if layer.multiscale else [layer.data]
        masked = masked_levels(levels, region)
        layer.data = masked if layer.multiscale else masked[0]

    def _unmask_stored(self) -> None:
        if self.stored_layer is not None and self._stored_levels is not None:
            self.stored_layer.data = self._stored_levels
        self.stored_layer = self._stored_levels = None

    def new_label(self, layer=None) -> int:
        """The next id of the annotator's reserved block, made the layer's selected label."""
        label = int(self.edit.new_label_id())
        self.layer.selected_label = label
        self.status.value = f"new label {label}"
        return label

    def _ndisplay_changed(self, *_) -> None:
        """3D view renders the whole region at once: only when it fits the memory budget."""
        if self.layer is None:
            return
        if self.viewer.dims.ndisplay == 3 and not fits_3d(
                self.edit.data.shape, self.edit.data.dtype, budget=MAX_EDIT_3D_BYTES):
            self.layer.visible, self._hidden_for_3d = False, True
            self._say(f"the region {region_text(self.edit.region)} is too large to show in 3D "
                      "view (it would be rendered whole): it is hidden until you go back to 2D; "
                      "edit a smaller region to paint in 3D", error=True)
        elif self._hidden_for_3d:
            self.layer.visible, self._hidden_for_3d = True, False

    # -- export ----------------------------------------------------------------------------
    @property
    def worker(self):
        """The running export's worker, else None."""
        return self.exporter.worker

    def export(self) -> None:
        self.exporter.start(self.edit, self._labels_url())

    def _exported(self, report) -> None:
        """A commit is in: its conflicts listed, every layer showing the new store state."""
        self.conflicts.show(self.edit)
        self._refresh_edit()  # colleagues' changes were pulled into the region
        if self.stored_layer is None:  # a new label image: show it, masked like the others
            self.viewer.open(_openable(self._labels_url()), plugin="napari-zshard")
            self.stored_layer = self._find_stored_layer()
            if self.stored_layer is not None:
                self._mask_stored(self.edit.region)
                self.viewer.layers.move(self.viewer.layers.index(self.stored_layer),
                                        self.viewer.layers.index(self.layer))
        else:
            self.stored_layer.refresh()

    def _export_finished(self, report) -> None:
        self.exporter.export_button.enabled = self.edit is not None
        self.signals.exported.emit(report)

    def _refresh_edit(self) -> None:
        if self.layer is not None:
            self.layer.refresh()

    # -- closing ---------------------------------------------------------------------------
    def close_edit(self) -> None:
        """Drop the edit (what was not exported is lost) and unmask the stored labels."""
        if self.worker is not None:
            self._say("an export is running: wait for it to finish")
            return
        if self.layer is not None and self.layer in self.viewer.layers:
            self.viewer.layers.remove(self.layer)
        self._unmask_stored()
        self.edit = self.layer = None
        self._hidden_for_3d = False
        self.conflicts.show(None)
        for button in (self.new_label_button, self.export_button, self.close_button):
            button.enabled = False
        self.edit_button.enabled = True
        self._say("edit closed")


def open_annotate_widget(viewer: napari.viewer.Viewer) -> None:
    """File ▸ IO utilities / Layers ▸ Annotate ▸ Annotate a region…: dock the widget."""
    if "Annotate" in viewer.window.dock_widgets:  # one form per viewer
        return
    viewer.window.add_dock_widget(AnnotateWidget(viewer), name="Annotate", area="right")
