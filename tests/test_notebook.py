"""The example notebook runs top to bottom in a real Jupyter kernel, napari cells included, so it
never rots: ``%gui qt`` runs Qt's event loop inside the kernel, ``nz.view_path`` opens a viewer
(under Xvfb here) and the notebook keeps a screenshot of its canvas, which must show the data."""

import base64
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
from first_picture import describe_picture

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytestmark = pytest.mark.gui

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "open_sharded_volume.ipynb"


@contextmanager
def nudging(kernel_manager, every: float = 1.0):
    """Send the kernel a ``kernel_info`` request every second from a second client.

    With ``%gui qt``, ipykernel runs Qt's event loop between cells and leaves it when its shell
    socket signals a message; a request that lands while the kernel switches between the two
    loops is not signalled, and the kernel sits in Qt's loop until the next message
    (ipykernel issue 559, "Run All" with ``%gui qt``; seen here: 1 run in 3, in the
    nbscreenshot cell). In a notebook the next cell a user runs is that message; here it is a
    kernel_info request.
    """
    from jupyter_client import BlockingKernelClient

    # its own session: one shared with nbclient's client would see each IOPub message first
    # and make that client reject it as a replay (jupyter_client keeps a digest history)
    client = BlockingKernelClient()
    client.load_connection_info(kernel_manager.get_connection_info())
    client.start_channels(iopub=False, stdin=False, hb=False, control=False)
    stop = threading.Event()

    def nudge():
        while not stop.wait(every):
            client.kernel_info()

    thread = threading.Thread(target=nudge, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        client.stop_channels()


@pytest.mark.timeout(400)
def test_example_notebook_executes_with_napari(tmp_path, sample_cache, monkeypatch):
    monkeypatch.setenv("NAPARI_ZSHARD_CACHE", str(sample_cache))  # the kernel inherits it
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert any("%gui qt" in c.source and "view_path" in c.source for c in nb.cells)
    # A cell that hangs (a modal dialog, an event loop that never returns) fails after 120 s,
    # and after 240 s the kernel prints where each of its threads stands.
    watchdog = nbformat.v4.new_code_cell(
        "import faulthandler, sys\nfaulthandler.dump_traceback_later(240, file=sys.__stderr__)")
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    with client.setup_kernel(), nudging(client.km):
        client.execute_cell(watchdog, 0)
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)

    code = [c for c in nb.cells if c.cell_type == "code"]
    text = "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                     for cell in code for o in cell.get("outputs", []))
    assert "(128, 512, 512)" in text          # level 0 shape
    assert "chunks_decoded" in text
    assert "('cells', 'Image')" in text and "'Labels')" in text  # the viewer's layers
    pngs = [o["data"]["image/png"] for cell in code for o in cell.get("outputs", [])
            if "image/png" in o.get("data", {})]
    assert len(pngs) == 1, "the nbscreenshot cell shows no picture"
    picture = describe_picture(base64.b64decode(pngs[0]))
    assert picture.lit > 0.3, picture  # the image, not a black canvas
    assert picture.grey_levels > 16, picture  # an image, not a flat fill
    assert picture.coloured > 0.005, picture  # and the labels on top of it
