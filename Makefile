# Two entry points (see README): `make demo` runs the main job, `make test` runs the tests.
# Both set up what a fresh Debian machine lacks: system libraries for a headless napari
# (Xvfb, Mesa OpenGL, the Qt xcb plugins) and a virtual environment with the package.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEBS := xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 \
        libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 \
        libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

VENV06 := .venv-napari06
.PHONY: demo test system venv bench lint typecheck test-napari06

system:
	@dpkg -s $(DEBS) >/dev/null 2>&1 || { \
	  echo "installing system packages: $(DEBS)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(DEBS) >/dev/null; }

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Pinned to the versions the suite last passed with (pip's resolver otherwise backtracks for
# many minutes over this many packages); refresh with `pip freeze > .ci/constraints.txt`.
venv: $(BIN)/python
	$(BIN)/pip install -q -c .ci/constraints.txt -e '.[test]'

# Opens napari on the generated sample. Without a display (or with SCREENSHOT=file.png) it
# runs under Xvfb, saves what the canvas shows and exits.
SCREENSHOT ?=
demo: system venv
	$(BIN)/zshard demo
	@if [ -n "$(SCREENSHOT)" ] || [ -z "$$DISPLAY" ]; then \
	  shot="$(or $(SCREENSHOT),zshard-sample.png)"; \
	  xvfb-run -a -s "-screen 0 1280x1024x24" $(BIN)/zshard view --screenshot "$$shot"; \
	else $(BIN)/zshard view; fi

# mypy checks the napari-free core; what it covers and how: [tool.mypy] in pyproject.toml.
lint: venv
	$(BIN)/ruff check napari_zshard tests bench
	$(BIN)/npe2 validate napari-zshard --imports
	$(BIN)/mypy

typecheck: venv
	$(BIN)/mypy

# napari 0.6.x still has napari.view_path: prove once, in a small second environment, that
# `napari.view_path(url, plugin="napari-zshard")` works there.
$(VENV06)/bin/python:
	$(PY) -m venv $(VENV06)
	$(VENV06)/bin/pip install -q --upgrade pip
	$(VENV06)/bin/pip install -q 'napari[pyqt6]==0.6.6' -e .

test-napari06: system $(VENV06)/bin/python
	xvfb-run -a $(VENV06)/bin/python .ci/check_napari06.py

test: system venv lint test-napari06
	xvfb-run -a -s "-screen 0 1280x1024x24" $(BIN)/pytest -q

bench: system venv
	$(BIN)/pip install -q psutil
	$(BIN)/python bench/bench_read.py
