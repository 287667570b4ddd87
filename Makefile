# gradwatch: `make help` lists the targets. Every target sets up .venv itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=
LOG_DIR ?= logs
PORT   ?= 6006

.DEFAULT_GOAL := help
.PHONY: help install train train-sigmoid train-tanh train-relu train-batchnorm train-residual \
        test lint tensorboard clean distclean bench
.PHONY: train-exploding train-clipped

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'
	@echo "  Pass Hydra overrides with ARGS, e.g. make train ARGS=\"model.net.depth=20 trainer.max_epochs=5\""

# Re-installs whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "gradwatch needs Python >= 3.10, found " + sys.version.split()[0]'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar off -e ".[dev]"
	touch $@

install: $(STAMP) ## create .venv and install gradwatch with its dev tools

# The default run is the article's sigmoid net, unless ARGS names another experiment.
train: $(STAMP) ## train the default run (the article's 10-layer sigmoid MLP) on digits
	$(BIN)/python -m gradwatch.train $(if $(findstring experiment=,$(ARGS)),,experiment=sigmoid) $(ARGS)

train-sigmoid: $(STAMP) ## the article's DeepSigmoidNet: watch the gradients vanish
	$(BIN)/python -m gradwatch.train experiment=sigmoid $(ARGS)

train-tanh: $(STAMP) ## tanh + Xavier init
	$(BIN)/python -m gradwatch.train experiment=tanh $(ARGS)

train-relu: $(STAMP) ## the article's DeepReLUNet: ReLU + He init
	$(BIN)/python -m gradwatch.train experiment=relu $(ARGS)

train-batchnorm: $(STAMP) ## ReLU + He init + BatchNorm
	$(BIN)/python -m gradwatch.train experiment=batchnorm $(ARGS)

train-residual: $(STAMP) ## the article's ModernDeepNetwork: 20 residual blocks
	$(BIN)/python -m gradwatch.train experiment=residual $(ARGS)

# -- real image data (issue 4): MNIST / Fashion-MNIST / CIFAR-10 and the article's CNN --
.PHONY: train-seed-mnist train-resnet-cnn train-plain-cnn
train-seed-mnist: $(STAMP) ## the article's exact MNIST run (downloads MNIST); writes gradient_norms_training.png
	$(BIN)/python -m gradwatch.train experiment=seed_mnist $(ARGS)

train-resnet-cnn: $(STAMP) ## the article's ResidualBlock CNN (digits offline; ARGS="data=cifar10" for CIFAR-10)
	$(BIN)/python -m gradwatch.train experiment=resnet_cnn $(ARGS)

train-plain-cnn: $(STAMP) ## the same CNN without skips, to compare with train-resnet-cnn
	$(BIN)/python -m gradwatch.train experiment=plain_cnn $(ARGS)

# Gradient clipping demo (configs/experiment/exploding.yaml): the same net without and with clipping.
train-exploding: $(STAMP) ## a badly initialized 20-layer ReLU net + SGD: gradients explode, loss turns NaN
	$(BIN)/python -m gradwatch.train experiment=exploding $(ARGS)

train-clipped: $(STAMP) ## the same net with norm clipping (trainer.gradient_clip_val=1.0): it trains
	$(BIN)/python -m gradwatch.train experiment=exploding trainer.gradient_clip_val=1.0 $(ARGS)

# The browser tests (tests/browser.py) need Debian's chromium: installed here when missing and
# apt-get is usable (as root, or through passwordless sudo); otherwise those tests skip, saying why.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
APT  := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get -qq -o Dpkg::Use-Pty=0
test: $(STAMP) ## run the test suite (offline, CPU); installs chromium for the browser tests when missing
	@command -v chromium >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || { \
		echo "installing chromium for the browser tests (apt-get install chromium)"; \
		$(APT) install -y chromium >/dev/null 2>&1 || \
		{ $(APT) update >/dev/null 2>&1 && $(APT) install -y chromium >/dev/null 2>&1; } || \
		echo "could not install chromium: the browser tests will skip"; }
	$(BIN)/python -m pytest

# Mutation testing (issue 16): not part of `make test`; run it before a release of the modules
# it covers (scripts/mutation.py lists them with their tests). MUTATION_ARGS="verdict --again" etc.
.PHONY: mutation
MUTATION_ARGS ?=
mutation: $(STAMP) ## mutation testing (mutmut, 2 workers): score per module, survivors (about 25 min: see README)
	$(BIN)/python scripts/mutation.py $(MUTATION_ARGS)

lint: $(STAMP) ## ruff check
	$(BIN)/ruff check .

tensorboard: $(STAMP) ## serve the logs on http://127.0.0.1:$(PORT)
	$(BIN)/tensorboard --logdir $(LOG_DIR) --host 127.0.0.1 --port $(PORT)

# -- sweeps and the comparison report (issue 5) --
# The grid lives in configs/sweep/$(SWEEP).yaml. The report runs even when a job failed (it
# lists the failures); the target then exits with the sweep's status.
.PHONY: sweep report theory
SWEEP ?= small
RUN   ?=
sweep: $(STAMP) ## multirun: the article's networks x depths in parallel, then the report (SWEEP=small|full|deep)
	$(BIN)/python -m gradwatch.train sweep=$(SWEEP) paths.log_dir=$(LOG_DIR) $(ARGS); status=$$?; \
		$(BIN)/python -m gradwatch.report --log-dir $(LOG_DIR) && exit $$status

report: $(STAMP) ## tables, figures and claims of the newest multirun (or RUN=dir) into <dir>/report/
	$(BIN)/python -m gradwatch.report $(if $(RUN),$(RUN),--log-dir $(LOG_DIR))

theory: $(STAMP) ## the article's numpy demos, corrected: figures into logs/theory/
	$(BIN)/python -m gradwatch.report.theory --out $(LOG_DIR)/theory

# Benchmarks: BENCH_ARGS="--quick --repeats 1 --groups training" picks a subset.
BENCH_ARGS ?=
bench: $(STAMP) ## benchmark table (steps/s vs a plain PyTorch loop, sweep speedup) into logs/bench/
	$(BIN)/python -m scripts.bench --out $(LOG_DIR)/bench $(BENCH_ARGS)

clean: ## delete logs and caches (keeps .venv)
	rm -rf $(LOG_DIR) outputs multirun lightning_logs wandb .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

distclean: clean ## also delete .venv
	rm -rf $(VENV)
