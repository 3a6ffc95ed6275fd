# Two commands for a fresh machine:  `make demo`  and  `make test`.
# Each creates .venv/ (once) and installs the package with pinned versions from constraints.txt.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
HASH   := $(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-10)
STAMP  := $(VENV)/.installed-$(HASH)
OUT    ?= demo_output

.PHONY: demo test test-extras bench docs docs-figures clean docs-inventories

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -q --disable-pip-version-check -c constraints.txt -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	BIODATACENTRIC_PROGRESS=1 $(BIN)/python -m biodatacentric demo --out $(OUT)

# runs every test, the slow ones (marked "slow": examples, demo, torchrun) included, and says how long it took
test: $(STAMP)
	@start=$$(date +%s); $(BIN)/python -m pytest -q --durations=5; rc=$$?; \
	echo "make test: $$(( $$(date +%s) - start )) s in all (pytest exit status $$rc)"; exit $$rc

# the optional extras (OME-Zarr, napari contributions, bioimage.io, faiss), pinned, in a venv of their
# own so that `make test` keeps checking the core without them; runs only tests/extras/.
# napari itself (Qt) is not installed: its plugin is tested through npe2 and plain functions.
XVENV  := .venv-extras
XSTAMP := $(XVENV)/.installed-$(HASH)
$(XSTAMP): pyproject.toml constraints.txt
	test -x $(XVENV)/bin/python || $(PYTHON) -m venv $(XVENV)
	$(XVENV)/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[extras-test]"
	rm -f $(XVENV)/.installed-*
	touch $@

test-extras: $(XSTAMP)
	$(XVENV)/bin/python -m pytest -q -p no:cacheprovider tests/extras

bench: $(STAMP)
	$(PIP) install -q --disable-pip-version-check -c constraints.txt -e ".[bench]"
	$(BIN)/python benchmarks/run_all.py

docs: $(STAMP)
	$(PIP) install -q --disable-pip-version-check -c constraints.txt -e ".[docs]"
	$(BIN)/python -m sphinx -b html -q -W --keep-going docs docs/_build/html

# the offline copies of the intersphinx inventories (docs/_inventories/README.md), from Debian
DOC_INV_PKGS := python3.11-doc python-scipy-doc python-sklearn-doc python-skimage-doc
docs-inventories:
	rm -rf .inv-tmp && mkdir -p .inv-tmp && cd .inv-tmp && apt-get download $(DOC_INV_PKGS)
	cd .inv-tmp && for f in *.deb; do dpkg-deb -x $$f x; done
	cp .inv-tmp/x/usr/share/doc/python3.11/html/objects.inv docs/_inventories/python.inv
	cp .inv-tmp/x/usr/share/doc/python-scipy-doc/html/objects.inv docs/_inventories/scipy.inv
	cp .inv-tmp/x/usr/share/doc/python-sklearn-doc/html/objects.inv docs/_inventories/sklearn.inv
	cp .inv-tmp/x/usr/share/doc/python-skimage-doc/html/objects.inv docs/_inventories/skimage.inv
	rm -rf .inv-tmp

# the pictures of the user guide: the demo's figures, regenerated from the bundled sample
DOC_FIGURES := mae_reconstruction core_set_montage embedding_map critical_patches quality_scatter m0_vs_m1
docs-figures: $(STAMP)
	rm -rf .docs-figures-tmp
	$(BIN)/python -m biodatacentric demo --out .docs-figures-tmp
	mkdir -p docs/figures
	for f in $(DOC_FIGURES); do cp .docs-figures-tmp/$$f.png docs/figures/; done
	rm -rf .docs-figures-tmp

clean:
	rm -rf $(VENV) $(XVENV) $(OUT) .pytest_cache
