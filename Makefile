# Two commands on a fresh machine (see README.md):
#   make analyze   set up .venv and analyse the sample chest CT (lung1) with the bundled model
#   make test      set up .venv and run the whole test suite
.PHONY: setup analyze test benchmark

setup:
	bash scripts/setup_env.sh

analyze: setup
	.venv/bin/chestctmtl analyze "$$(.venv/bin/python -c 'from ChestCTMTLLib.sample_data import sample_path; print(sample_path())')" --output out --mrb

test: setup
	.venv/bin/python -m pytest -q

benchmark: setup
	.venv/bin/python benchmarks/benchmark_analyze.py
