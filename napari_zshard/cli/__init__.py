"""The ``zshard`` command line: :mod:`.zshard` parses it and runs one of the commands in its
sibling modules (``survey``: info, fsck; ``write``: convert, reshard; ``annotations``,
``annotations_merge``; ``demo``); :mod:`.output` holds what they share. napari is imported only
by ``zshard view``, through :mod:`napari_zshard.plugin.viewer`, when it runs."""

from .zshard import main

__all__ = ["main"]
