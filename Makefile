# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: setup demo test lint bench tables hear-check

setup: $(STAMP)

# requirements-lock.txt: the exact versions CI tests (every package, hearbaseline included), installed as they are
$(STAMP): requirements-lock.txt
	python3 -m venv .venv
	.venv/bin/pip install --disable-pip-version-check -q --no-deps -r requirements-lock.txt 2>&1 | grep -v "is ignored: it is neither" || true
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

# The HEAR validator in its own venv (docs/hear.md): hearvalidator 2021.0.6 declares Python < 3.9 (hence --ignore-requires-python,
# for it alone, with --no-deps) and imports TensorFlow (tensorflow-cpu); torch and numpy are .venv's, reached by
# a .pth file, so TensorFlow is the only large download (about 1.5 GB). Not part of `make test`.
HEAR_STAMP := .venv-hear/.installed

$(HEAR_STAMP): $(STAMP)
	python3 -m venv .venv-hear
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
		"$$(.venv-hear/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/_base_venv.pth"
	.venv-hear/bin/pip install --disable-pip-version-check -q tensorflow-cpu==2.21.0 2>&1 | grep -v "is ignored: it is neither" || true
	.venv-hear/bin/pip install --disable-pip-version-check -q --no-deps --ignore-requires-python hearvalidator==2021.0.6 2>&1 | grep -v "is ignored: it is neither" || true
	TF_CPP_MIN_LOG_LEVEL=3 .venv-hear/bin/python -c "import tensorflow, torch, hearvalidator; print('tensorflow', tensorflow.__version__, 'torch', torch.__version__)"
	touch $(HEAR_STAMP)

# the installed module (pip install ., no deps: torch and numpy are .venv's), again whenever its file changes
HEAR_MODULE := .venv-hear/.module-installed

$(HEAR_MODULE): $(HEAR_STAMP) audio_ssl_repro.py pyproject.toml
	.venv-hear/bin/pip install --disable-pip-version-check -q --no-deps . 2>&1 | grep -v "is ignored: it is neither" || true
	touch $(HEAR_MODULE)

hear-check: $(HEAR_MODULE)
	$(PY) hear_check.py
