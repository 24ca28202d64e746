"""``python -m napari_zshard.cli``: the same as the ``zshard`` command."""

import sys

from .zshard import main

sys.exit(main())
