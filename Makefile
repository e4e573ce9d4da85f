# diffvqa: `make demo` runs the main job, `make test` runs the tests. Each installs first.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
PIP   := $(PY) -m pip
STAMP := $(VENV)/.diffvqa-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONHASHSEED := 0

.PHONY: install _install demo test export

# Reinstall only when pyproject.toml's content changes (a hash, not its mtime: nbdev rewrites the file unchanged),
# so a second `make install` does nothing. --no-compile: modules are byte-compiled when first imported, not all at install.
install:
	@want=$$(sha256sum pyproject.toml | cut -d' ' -f1); \
	if [ -x $(PY) ] && [ "$$(cat $(STAMP) 2>/dev/null)" = "$$want" ]; then echo "make install: up to date"; \
	else $(MAKE) --no-print-directory _install && echo "$$want" > $(STAMP); fi

# -qq: pip prints errors only (it still fails loudly); -q let setuptools' editable-install banner through, a notice
# a user would have to learn to ignore.
_install:
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -qq --upgrade pip
	$(PIP) install -qq --no-compile "torch==2.14.1" "torchvision==0.29.1"
	$(PIP) install -qq --no-compile -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null

demo: install
	$(VENV)/bin/diffvqa demo --out demo_out

test: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/test.sh

export: install
	$(VENV)/bin/nbdev-export
	$(VENV)/bin/nbdev-clean
