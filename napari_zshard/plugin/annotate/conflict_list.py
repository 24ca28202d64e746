"""The conflicts of an export, in the Annotate widget: one row per conflict (how many voxels,
where, ours and theirs, whose), a click moves the view there, Keep mine / Take theirs settle
the selected ones (all of them when none is selected) through ``edit.resolve``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from magicgui.widgets import Container, PushButton, Select

from .view import focus, world_of


def conflict_text(c) -> str:
    where = ", ".join(str(round(v)) for v in c.centroid)
    who = c.their_annotator or "someone"
    return f"{c.voxels} voxels near ({where}): mine {c.ours}, {who}'s {c.theirs}"


class ConflictList(Container):
    """``show(edit)`` lists ``edit.pending_conflicts``; ``say`` reports to the widget's status;
    ``resolved`` runs after a resolution (the edit layer refreshes: "theirs" changed it)."""

    def __init__(self, viewer, *, say: Callable[[str], None], resolved: Callable[[], None]):
        super().__init__(labels=False)
        self.viewer = viewer
        self._say, self._resolved = say, resolved
        self.edit: Any = None
        self.conflicts: list = []
        self.rows = Select(label="conflicts", choices=[])
        self.keep_mine = PushButton(text="Keep mine", enabled=False)
        self.take_theirs = PushButton(text="Take theirs", enabled=False)
        self.extend([self.rows, Container(widgets=[self.keep_mine, self.take_theirs],
                                          layout="horizontal", labels=False)])
        self.rows.native.itemClicked.connect(lambda item: self.jump_to(self.rows.native.row(item)))
        self.keep_mine.changed.connect(lambda: self.resolve("mine"))
        self.take_theirs.changed.connect(lambda: self.resolve("theirs"))

    def show(self, edit) -> None:
        self.edit = edit
        self.conflicts = list(edit.pending_conflicts) if edit is not None else []
        self.rows.choices = [(conflict_text(c), i) for i, c in enumerate(self.conflicts)]
        self.keep_mine.enabled = self.take_theirs.enabled = bool(self.conflicts)

    def jump_to(self, index: int) -> None:
        """Move the dims and the camera to a conflict (its centroid, its box in view)."""
        if not 0 <= index < len(self.conflicts):
            return
        c, edit = self.conflicts[index], self.edit
        world = world_of(c.centroid, region=edit.region, scale=edit.scale,
                         translate=edit.translate)
        focus(self.viewer, world, [max(16.0, (b.stop - b.start) * k)
                                   for b, k in zip(c.bbox, edit.scale, strict=True)])
        self._say(f"conflict {index + 1}: {conflict_text(c)}")

    def resolve(self, keep: str) -> None:
        """Keep mine / take theirs for the selected conflicts (all of them when none is)."""
        chosen = [self.conflicts[i] for i in self.rows.value] or list(self.conflicts)
        if not chosen:
            return
        self.edit.resolve(chosen, keep=keep)
        self._resolved()
        self.show(self.edit)
        done = "kept mine" if keep == "mine" else "took theirs"
        self._say(f"{len(chosen)} conflicts resolved ({done}): Export to record it")
