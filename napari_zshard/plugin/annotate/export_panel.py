"""Export, in the Annotate widget: ``edit.commit_steps`` in a napari worker, its progress in the
activity dock, Cancel only while the core says nothing has been written, then the summary.

Painting goes on meanwhile: the commit works on a snapshot of the edits, taken by the core."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from magicgui.widgets import Container, Label, LineEdit, PushButton


def export_steps(edit, message: str, cancel: threading.Event):
    """The worker: ``edit.commit_steps``, stopped only while the core says nothing has been
    written yet (``cancellable``). Progress goes to the Qt thread (``yielded``)."""
    steps = edit.commit_steps(message)
    try:
        while True:
            try:
                step = next(steps)
            except StopIteration as done:
                return done.value
            yield step
            if cancel.is_set() and step.cancellable:
                return None  # closing the steps below aborts with nothing written
    finally:
        steps.close()  # no-op once done; after an error the core leaves a repairable intent


def summary_text(report) -> str:
    return (f"{report.voxels_written} voxels, {report.shards_written} shards, "
            f"{report.bytes_written} bytes written; {len(report.conflicts)} conflicts")


class ExportPanel(Container):
    """Message, Export, Cancel export, summary. ``applied(report)`` runs once a commit is in
    (the widget refreshes its layers); ``finished(report)`` last, with None when the export
    was cancelled or failed."""

    def __init__(self, *, say: Callable[..., None], applied: Callable[[Any], None],
                 finished: Callable[[Any], None]):
        super().__init__(labels=True)
        self._say, self._applied, self._finished = say, applied, finished
        self.message = LineEdit(label="export message", value="")
        self.export_button = PushButton(text="Export", enabled=False)
        self.cancel_button = PushButton(text="Cancel export", enabled=False)
        self.summary = Label(value="")
        self.extend([self.message, self.export_button, self.cancel_button, self.summary])
        self.cancel_button.changed.connect(self.cancel)
        self.edit: Any = None
        self.report: Any = None
        self.worker: Any = None
        self._cancel = threading.Event()
        self._cancellable = False
        self._bar: Any = None  # the activity dock's progress bar of the running export
        self._step: Any = None  # the latest CommitProgress
        self._in_progress = False

    def start(self, edit, where: str) -> None:
        """Commit ``edit`` in a worker thread."""
        from napari.qt.threading import create_worker

        if edit is None or self.worker is not None:
            return
        self.edit, self.report = edit, None
        self._cancel.clear()
        self._cancellable = False
        self.worker = create_worker(export_steps, edit, self.message.value, self._cancel,
                                    _start_thread=False, _ignore_errors=True)
        self.worker.yielded.connect(self._progress)
        self.worker.returned.connect(self._returned)
        self.worker.errored.connect(self._failed)
        self.worker.finished.connect(self._done)
        self.export_button.enabled = False
        self._say(f"exporting into {where}…")
        self.worker.start()

    def _progress(self, step) -> None:
        """On the Qt thread: the activity-dock bar, and Cancel only while it can cancel.

        napari's progress bar processes Qt events when it changes, so later steps (and the
        end of the export) can arrive while this runs: only the outermost call works, always
        on the latest step, and nothing is enabled once the worker is gone."""
        self._step = step
        if self._in_progress:
            return
        self._in_progress = True
        try:
            while True:
                step = self._step
                self._cancellable = self.worker is not None and bool(step.cancellable)
                self.cancel_button.enabled = self._cancellable and not self._cancel.is_set()
                self._update_bar(step)
                if self._step is step:
                    break
        finally:
            self._in_progress = False

    def _update_bar(self, step) -> None:
        from napari.utils import progress

        if self._bar is None and self.worker is not None:
            self._bar = progress(total=step.total, desc=f"exporting {self.edit.labels_name}")
        if self._bar is not None:
            self._bar.total = step.total
        if self._bar is not None:
            self._bar.update(step.done - self._bar.n)

    def cancel(self) -> None:
        if self.worker is not None and self._cancellable:
            self._cancel.set()
            self.cancel_button.enabled = False
            self._say("cancelling the export…")

    def _returned(self, report) -> None:
        self.report = report
        if report is None:
            self._say("export cancelled: nothing was written")
            return
        self.summary.value = summary_text(report)
        self._applied(report)
        self._say(f"exported {report.commit_id}")

    def _failed(self, error: Exception) -> None:
        self.report = None
        self._say(f"export failed: {error}", error=True)

    def _done(self) -> None:
        """Last of the worker's signals: the panel is ready again, then ``finished``."""
        if self._bar is not None:
            self._bar.close()
        self.worker = self._bar = None
        self.cancel_button.enabled = self._cancellable = False
        self.export_button.enabled = self.edit is not None
        self._finished(self.report)
