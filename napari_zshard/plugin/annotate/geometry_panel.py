"""Points and Shapes layers in the Annotate widget: export one into the image's store (only what
changed since it was opened or last exported, with who and when), and open the stored ones as
layers with their ``features`` — :mod:`napari_zshard.annotations.geometry` underneath.

A layer remembers what it was loaded from (``metadata["zshard_geometry"]``, the stored
:class:`Geometry`) and its objects carry their stable ids in ``features["zshard_id"]``: that is
what lets the next export say "moved", "deleted" or "someone else changed it" rather than
"new"."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from magicgui.widgets import ComboBox, Container, PushButton

META_KEY = "zshard_geometry"


def _features(layer) -> dict[str, list]:
    table = layer.features
    return {str(c): table[c].tolist() for c in table.columns}


def export_layer(url: str, *, kind: str, name: str, data: Any, shape_types, features, base,
                 scale, translate, annotator: str):
    """The worker: export, then read back what the store now holds (the next base)."""
    from ...annotations.geometry import export_geometry, load_geometry

    report = export_geometry(url, name=name, kind=kind, data=data, annotator=annotator,
                             shape_types=shape_types, features=features, base=base,
                             scale=scale, translate=translate)
    return report, load_geometry(url, name=name)


def geometry_layer_data(geometry) -> tuple[Any, dict[str, Any], str]:
    """A stored geometry layer as a napari layer data tuple."""
    kwargs: dict[str, Any] = {"name": geometry.name, "features": geometry.features,
                              "scale": geometry.scale, "translate": geometry.translate,
                              "metadata": {META_KEY: geometry}}
    if geometry.kind == "shapes":
        kwargs["shape_type"] = geometry.shape_types
    return geometry.data, kwargs, geometry.kind


class GeometryPanel(Container):
    """Export the chosen Points/Shapes layer; open the stored ones. ``url()`` and
    ``annotator()`` come from the widget's form; ``done(report)`` runs after each export
    (None when it failed)."""

    def __init__(self, viewer, *, url: Callable[[], str | None], annotator: Callable[[], str],
                 say: Callable[..., None], done: Callable[[Any], None]):
        super().__init__(labels=True)
        self.viewer = viewer
        self._url, self._annotator, self._say, self._done = url, annotator, say, done
        self.layer = ComboBox(label="points/shapes layer", choices=self._choices)
        self.export_button = PushButton(text="Export points/shapes layer")
        self.open_button = PushButton(text="Open stored points/shapes")
        self.extend([self.layer, self.export_button, self.open_button])
        self.export_button.changed.connect(self.export)
        self.open_button.changed.connect(self.open_stored)
        self.worker: Any = None
        self.report: Any = None

    def _choices(self, _widget=None) -> list[tuple[str, Any]]:
        from napari.layers import Points, Shapes

        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, Points | Shapes)]

    def export(self) -> None:
        from napari.layers import Shapes
        from napari.qt.threading import create_worker

        layer, url = self.layer.value, self._url()
        if layer is None or url is None:
            self._say("choose an image of a store and a Points or Shapes layer", error=True)
            return
        if self.worker is not None:
            return
        shapes = isinstance(layer, Shapes)
        self.worker = create_worker(
            export_layer, url, kind="shapes" if shapes else "points", name=layer.name,
            data=list(layer.data) if shapes else layer.data,
            shape_types=list(layer.shape_type) if shapes else None,
            features=_features(layer), base=layer.metadata.get(META_KEY),
            scale=tuple(layer.scale), translate=tuple(layer.translate),
            annotator=self._annotator(), _start_thread=False, _ignore_errors=True)
        self.worker.returned.connect(lambda result: self._exported(layer, *result))
        self.worker.errored.connect(lambda e: self._say(f"export of {layer.name} failed: {e}",
                                                        error=True))
        self.worker.finished.connect(self._finished)
        self.report = None
        self._say(f"exporting {layer.name}…")
        self.worker.start()

    def _exported(self, layer, report, stored) -> None:
        self.report = report
        features = layer.features.copy()
        features["zshard_id"] = report.ids
        layer.features = features
        layer.metadata[META_KEY] = stored
        conflicts = "; ".join(f"{c.zshard_id} {c.reason}" for c in report.conflicts)
        self._say(f"{layer.name}: {report.added} added, {report.modified} modified, "
                  f"{report.deleted} deleted" + (f"; kept theirs: {conflicts}" if conflicts
                                                 else ""))

    def _finished(self) -> None:
        self.worker = None
        self._done(self.report)

    def open_stored(self) -> None:
        """Every stored geometry layer of the image, as a layer (one already open is
        reloaded in place of the old one)."""
        from ...annotations.geometry import geometry_layers, load_geometry

        url = self._url()
        if url is None:
            self._say("choose an image of a store first", error=True)
            return
        names = geometry_layers(url)
        for name in names:
            data, kwargs, kind = geometry_layer_data(load_geometry(url, name=name))
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            getattr(self.viewer, f"add_{kind}")(data, **kwargs)
        self._say(f"opened {len(names)} stored points/shapes layers" if names else
                  "this image has no stored points or shapes")
