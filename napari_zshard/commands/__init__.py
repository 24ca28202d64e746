"""The ``zshard`` commands; :mod:`napari_zshard.cli` parses the command line and runs them."""
