# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: setup demo test lint bench tables

setup: $(STAMP)

$(STAMP): requirements.txt requirements-hear.txt
	python3 -m venv .venv
	.venv/bin/pip install --disable-pip-version-check -q -r requirements.txt 2>&1 | grep -v "is ignored: it is neither" || true
	.venv/bin/pip install --disable-pip-version-check -q --no-deps -r requirements-hear.txt 2>&1 | grep -v "is ignored: it is neither" || true
	$(PY) -c "import torch, torchvision, torchaudio, soundfile, hearbaseline; print('torch', torch.__version__)"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

lint: $(STAMP)
	.venv/bin/ruff check .

demo: $(STAMP)
	$(PY) demo.py

bench: $(STAMP)
	$(PY) bench.py preprocess

tables: $(STAMP)
	$(PY) results/make_tables.py
