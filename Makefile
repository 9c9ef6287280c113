# Two entry points: `make demo` and `make test`. Each creates or updates .venv by itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint mutation clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/harmon figure2 --preset mini

# Test files are spread over one process per core (at most 4); a file's tests stay in one process.
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(min(4, len(os.sched_getaffinity(0))))")

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .

# Mutation testing of the functions whose numbers the results depend on (config: [tool.mutmut] in pyproject.toml).
MUTATION_TARGETS := 'harmon.utils.schedules.*' 'harmon.train.trainer.*lr_factor*' \
	'harmon.train.trainer.*set_trainable*' 'harmon.train.trainer.*build_optimizer*' 'harmon.train.trainer.*EMA*' \
	'harmon.train.objectives.*ScaleGrad*' 'harmon.train.objectives.*scale_grad*' 'harmon.train.objectives.*group_of*' \
	'harmon.train.objectives.*module_groups*' 'harmon.train.objectives.*no_weight_decay*' \
	'harmon.train.run_checkpoints.*read_checkpoint*' 'harmon.train.run_checkpoints.*load_part*' \
	'harmon.checkpoints.*load_file*' 'harmon.checkpoints.*read_torch*' 'harmon.checkpoints.*unwrap_state*' \
	'harmon.checkpoints.*tensors_only*' 'harmon.mar.*MaskedDecoding*' 'harmon.mar.*mask_schedule*' \
	'harmon.shapesworld.scene.*relation*' 'encoders.base.*Encoder*pool*' 'probe.cam.*compute_cams*' \
	'probe.cam.*run_grad_cam*'

mutation: $(STAMP)
	$(BIN)/python -m pip install --quiet 'mutmut>=3.8,<4'
	rm -rf mutants
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/mutmut run --max-children 2 $(MUTATION_TARGETS)
	$(BIN)/mutmut results

clean:
	rm -rf $(VENV) runs .pytest_cache mutants
