"""The napari plugin: everything that imports napari, Qt or magicgui, and nothing else does.

The npe2 manifest (``napari_zshard/napari.yaml``) names these modules: the reader and writer,
the sample data, the menu commands and the dock widgets. Each turns napari's objects into calls
of the napari-free library (``multiscale``, ``reshard``, ``annotations`` ...) and back; none
holds logic the CLI or a notebook would need. Nothing is imported here, so napari loads only
the contribution it calls.
"""
