"""The "Save as sharded zarr…" dock widget: the same save as File ▸ Save Layers, but in the
background, with a progress bar in napari's activity dock and a working Cancel."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    Label,
    LineEdit,
    PushButton,
    Select,
    SpinBox,
)

from ..multiscale.write import WriteOptions

if TYPE_CHECKING:
    import napari


def parse_shape(text: str, what: str) -> tuple[int, ...] | None:
    """``"auto"``/empty → None; ``"64, 64, 64"`` → (64, 64, 64); anything else: a clear error."""
    text = text.strip().lower()
    if text in ("", "auto"):
        return None
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{what} must be 'auto' or integers like 64,64,64, not {text!r}") \
            from None
    if not shape or any(v <= 0 for v in shape):
        raise ValueError(f"{what} must be positive integers, not {text!r}")
    return shape


class LocationEdit(Container):
    """A path or URL, kept as the text typed (``pathlib`` would turn ``s3://b/x.zarr`` into
    ``s3:/b/x.zarr``), with a Browse… button that picks a local path.

    ``mode``: ``"save"`` asks for a new name, ``"folder"`` for an existing folder (a store);
    ``on_chosen``: called after Browse… filled the field in.
    """

    def __init__(self, *, label: str, value: str = "", mode: str = "save",
                 on_chosen: Callable[[], None] | None = None):
        self.text = LineEdit(value=value)
        self.browse = PushButton(text="Browse…")
        super().__init__(layout="horizontal", labels=False, label=label,
                         widgets=[self.text, self.browse])
        self.margins = (0, 0, 0, 0)
        self.mode = mode
        self.on_chosen = on_chosen
        self.browse.changed.connect(self.choose)

    @property
    def value(self) -> str:
        return self.text.value.strip()

    @value.setter
    def value(self, value: str | os.PathLike) -> None:
        self.text.value = os.fspath(value)

    def choose(self) -> None:
        """Browse the local file system (a URL in the field starts the dialog nowhere)."""
        from qtpy.QtWidgets import QFileDialog

        start = "" if "://" in self.value else self.value
        if self.mode == "folder":
            chosen = QFileDialog.getExistingDirectory(self.native, self.label, start)
        else:
            chosen, _ = QFileDialog.getSaveFileName(self.native, self.label, start,
                                                    "Zarr store (*.zarr)")
        if chosen:
            self.value = chosen
            if self.on_chosen is not None:
                self.on_chosen()


class SaveShardedWidget(Container):
    """Pick layers, a target and options; save in a background thread; cancel any time."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self.viewer = viewer
        self.layer_select = Select(label="layers", choices=self._layer_choices)
        self.target = LocationEdit(label="save as (path or URL)")
        self.target.text.tooltip = ("a local path (Browse…), or an s3://, gs:// or file:// URL; "
                                    "storage options come from the configuration for its prefix")
        self.chunks = LineEdit(label="chunk shape", value="auto")
        self.shards = LineEdit(label="shard shape", value="auto")
        self.compressor = ComboBox(label="codec", choices=["zstd", "blosc", "gzip", "none"],
                                   value="zstd")
        self.method = ComboBox(label="pyramid (images)",
                               choices=["mean", "max", "min", "nearest"], value="mean")
        self.levels = SpinBox(label="levels (0 = auto)", min=0, max=16, value=0)
        self.overwrite = CheckBox(label="overwrite", value=False)
        self.save_button = PushButton(text="Save")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self.extend([self.layer_select, self.target, self.chunks, self.shards, self.compressor,
                     self.method, self.levels, self.overwrite, self.save_button,
                     self.cancel_button, self.status])
        self.save_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        viewer.layers.events.inserted.connect(self.layer_select.reset_choices)
        viewer.layers.events.removed.connect(self.layer_select.reset_choices)
        self.worker = None
        self._steps = None  # the running save (a generator): closed when the worker ends
        self._bar = None  # its progress bar in the activity dock
        self.saved: list[str] = []

    def _layer_choices(self, _widget=None):
        return [(layer.name, layer) for layer in self.viewer.layers
                if type(layer).__name__ in ("Image", "Labels")]

    def options(self) -> WriteOptions:
        levels = self.levels.value or None
        return WriteOptions(chunks=parse_shape(self.chunks.value, "chunk shape"),
                            shards=parse_shape(self.shards.value, "shard shape"),
                            compressor=self.compressor.value, levels=levels,
                            overwrite=self.overwrite.value)

    def start(self) -> None:
        """Validate the form, then save in a worker thread."""
        from napari.qt.threading import create_worker
        from napari.utils import progress
        from napari.utils.notifications import show_error

        from .writer import save_steps

        layers = list(self.layer_select.value) or [
            layer for _, layer in self._layer_choices()][:1]
        if not layers:
            show_error("Save as sharded zarr: there is no image or labels layer to save")
            return
        if not self.target.value or self.target.value == ".":
            show_error("Save as sharded zarr: choose where to save")
            return
        try:
            tuples = [layer.as_layer_data_tuple() for layer in layers]
            target, steps = save_steps(self.target.value, tuples, self.options(),
                                       image_method=self.method.value)
        except Exception as e:  # the form's values are wrong: say so, save nothing
            show_error(f"Save as sharded zarr: {e}")
            return
        self._steps = steps
        self.worker = create_worker(self._run, steps, target, _start_thread=False)
        self.worker.yielded.connect(self._progress)
        self.worker.returned.connect(self._done)
        self.worker.errored.connect(self._failed)
        self.worker.finished.connect(self._finished)
        self.save_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = f"saving {target}…"
        # The activity dock builds a bar (a widget) when a progress object is created: create
        # it here, on the Qt thread (from the worker thread, Qt refused the bar its parent and
        # it stayed in the dock), and before the first step (the dock processes events while
        # building it, which would deliver steps into a half-made bar).
        self._bar = progress(total=0, desc=f"saving {target}")
        self.worker.start()

    @staticmethod
    def _run(steps, target):
        """The worker: drive the save, yielding its progress; stop when asked."""
        try:
            yield from steps
        finally:
            steps.close()  # a cancel ends here: the save cleans up what it started
        return target

    def _progress(self, step) -> None:
        """Feed napari's activity dock from the Qt thread (see :meth:`start`)."""
        bar = self._bar  # updating the bar processes events: the save may finish meanwhile
        if bar is None:
            return
        if bar.total != step.total:
            bar.total = step.total
        bar.update(step.done - bar.n)
        bar.set_description(f"saving {step.message}")

    def cancel(self) -> None:
        if self.worker is not None:
            self.status.value = "cancelling…"
            self.worker.quit()

    def _done(self, target: str) -> None:
        from napari.utils.notifications import show_info

        if target is None:
            return
        self.saved.append(target)
        self.status.value = f"saved {target}"
        show_info(f"Saved {target}")

    def _failed(self, error: Exception) -> None:
        from napari.utils.notifications import show_error

        self.status.value = f"failed: {error}"
        show_error(f"Save as sharded zarr failed: {error}")

    def _finished(self) -> None:
        # napari's worker stops iterating on quit but never closes the generator: close the
        # save here so a cancelled save cleans up now (in-flight shard tasks finish first,
        # at most a few shards), not whenever the worker is garbage collected.
        if self._steps is not None:
            self._steps.close()
            self._steps = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.status.value.startswith("cancelling"):
            self.status.value = "cancelled: nothing was saved"
        self.save_button.enabled = True
        self.cancel_button.enabled = False
        self.worker = None


def open_save_widget(viewer: napari.viewer.Viewer) -> None:
    """File ▸ IO utilities ▸ Save as sharded zarr…: dock the save widget."""
    viewer.window.add_dock_widget(SaveShardedWidget(viewer), name="Save as sharded zarr",
                                  area="right")
