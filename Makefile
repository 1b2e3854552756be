# The two commands of the README:
#   make book   set up .venv (exact pins) and build the HTML book into _build/html
#   make test   set up .venv and run every check: ruff, unit tests, nbval over every chapter, book build -W
#   make lab    set up .venv and open the chapter notebooks in JupyterLab
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.birl-installed
JOBS   ?= 2
# One thread per notebook kernel / test worker (nbval's kernels inherit the environment): with
# JOBS workers on a small machine, a second OpenMP/BLAS thread per process only competes.
ONE_THREAD = OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
# nbval, with round-off (numbers printed below 1e-12) masked on both sides: see tests/nbval_sanitize.cfg
NBVAL = --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg
# make test builds the book from the committed outputs that nbval has just checked, with this copy of
# _config.yml whose execute_notebooks is 'off': each notebook is executed once, not twice.
NOEXEC_CONFIG = _build/_config_noexec.yml

.PHONY: setup book lab test lint unit notebooks chapter build build-noexec browser-test constraints clean student

$(STAMP): requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

setup: $(STAMP)

build: setup
	$(BIN)/jupyter-book build . -W -n --keep-going
	@echo ""
	@echo "The book is at $(CURDIR)/_build/html/index.html"

book: build

# The book from the committed notebook outputs, executing nothing (used by make test, after nbval).
build-noexec: setup
	@mkdir -p $(dir $(NOEXEC_CONFIG))
	$(BIN)/python -c "import os, yaml; c = yaml.safe_load(open('_config.yml')); \
	  c['execute']['execute_notebooks'] = 'off'; ext = c['sphinx'].get('local_extensions', {}); \
	  ext.update((k, os.path.abspath(v)) for k, v in ext.items()); \
	  yaml.safe_dump(c, open('$(NOEXEC_CONFIG)', 'w'))"
	$(BIN)/jupyter-book build . -W -n --keep-going --config $(NOEXEC_CONFIG)

# The student edition of the chapters, to hand out: solution dropdowns and solution cells removed,
# exercise cells left as their (failing) first attempts, outputs cleared; then each notebook is run
# in a fresh kernel to check that it still executes through its exercises (tools/student_edition.py).
# student/ is a sibling of chapters/ (chapters read ../results/) and is ignored by git.
STUDENT_DIR ?= student
student: setup
	$(ONE_THREAD) $(BIN)/python tools/student_edition.py $(STUDENT_DIR)

# Run the chapters locally in JupyterLab, with the project's kernel (the .venv Python, birl_lite installed).
# (--allow-root only when run as root, e.g. in a container.)
lab: setup
	$(BIN)/jupyter lab chapters/ $(if $(filter 0,$(shell id -u)),--allow-root)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Unit tests and nbval over every chapter notebook, in one pytest run (one notebook per worker).
unit: setup
	$(ONE_THREAD) $(BIN)/python -m pytest -n $(JOBS) --dist loadfile tests

notebooks: setup
	$(ONE_THREAD) $(BIN)/python -m pytest -n $(JOBS) --dist loadfile $(NBVAL) chapters

# Open every page of _build/html in headless Chromium (Debian's package, installed if missing),
# offline: links, images, rendered equations; screenshots in _build/screenshots.
browser-test: setup
	@command -v chromium >/dev/null 2>&1 || apt-get install -y -q chromium >/dev/null \
	  || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null) \
	  || (echo "browser-test needs Chromium: apt-get install chromium (as root)"; exit 1)
	$(BIN)/python tools/browser_check.py

# One chapter's notebook and the unit tests of its modules, e.g.  make chapter CH=03
chapter: setup
	$(ONE_THREAD) $(BIN)/python -m pytest $(NBVAL) -m ch$(CH) tests chapters

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(ONE_THREAD) $(BIN)/python -m pytest -n $(JOBS) --dist loadfile $(NBVAL) tests chapters
	$(MAKE) build-noexec
	$(MAKE) browser-test

constraints:
	rm -rf /tmp/birl-freeze && $(PYTHON) -m venv /tmp/birl-freeze
	/tmp/birl-freeze/bin/python -m pip install --quiet -r requirements.txt
	( echo "# Frozen transitive dependency set (pip freeze of a fresh venv built from requirements.txt)."; \
	  echo "# Regenerate with: make constraints"; \
	  /tmp/birl-freeze/bin/python -m pip freeze | sed -e 's/^torch==2.13.0+cpu$$/torch==2.13.0/' ) > constraints.txt

clean:
	rm -rf _build
