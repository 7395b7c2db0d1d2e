# Developer entry points; CI runs `bash scripts/test.sh` (via .ci/run), same as `make test`.
PYTHON ?= python3

.PHONY: install format lint mypy imports test unit integration coverage demo bench image

install:  ## install redis-server (if missing) and coreexec editable with dev extras
	bash scripts/setup.sh

format:  ## rewrite files: ruff's import sorting and formatter
	$(PYTHON) -m ruff check --select I --fix .
	$(PYTHON) -m ruff format .

lint:  ## ruff lint and format check, import boundaries
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	lint-imports --no-cache

mypy:  ## strict type check of coreexec, celery_app, workers
	$(PYTHON) -m mypy

imports:  ## only the import boundary contract
	lint-imports --no-cache

test:  ## everything CI runs
	bash scripts/test.sh

unit:  ## fast tests only
	$(PYTHON) -m pytest -m unit

integration:  ## tests with real redis-server and celery workers
	$(PYTHON) -m pytest -m integration

coverage:  ## tests with a coverage report of the three packages
	$(PYTHON) -m pytest --cov=coreexec --cov=celery_app --cov=workers --cov-report=term-missing:skip-covered

image:  ## the worker image from wheels (base image by debootstrap, no registry)
	bash scripts/worker_image.sh

demo:  ## run the example job
	bash scripts/demo.sh

bench:  ## benchmarks (not tests)
	$(PYTHON) -m bench
