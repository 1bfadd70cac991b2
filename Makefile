# aisp — see README.md. Chapter targets live in ch16/Makefile (make -C ch16 help).
PY ?= python3

.PHONY: install test compare bench hw clean

install:
	$(PY) -m pip install torch==2.13.0 -e ".[test]"

test:
	$(PY) -m pytest -q

compare:
	$(PY) ch16/compare.py --profile none

bench:
	$(PY) -m cli.aisp bench run --targets ch16 --profile minimal

hw:
	$(PY) -m cli.aisp hw

clean:
	rm -rf artifacts
