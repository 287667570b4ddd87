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
        test lint tensorboard clean distclean
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

train: $(STAMP) ## train the default run (the article's 10-layer sigmoid MLP) on digits
	$(BIN)/python -m gradwatch.train $(ARGS)

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

# Gradient clipping demo (configs/experiment/exploding.yaml): the same net without and with clipping.
train-exploding: $(STAMP) ## a badly initialized 20-layer ReLU net + SGD: gradients explode, loss turns NaN
	$(BIN)/python -m gradwatch.train experiment=exploding $(ARGS)

train-clipped: $(STAMP) ## the same net with norm clipping (trainer.gradient_clip_val=1.0): it trains
	$(BIN)/python -m gradwatch.train experiment=exploding trainer.gradient_clip_val=1.0 $(ARGS)

test: $(STAMP) ## run the test suite (offline, CPU)
	$(BIN)/python -m pytest

lint: $(STAMP) ## ruff check
	$(BIN)/ruff check .

tensorboard: $(STAMP) ## serve the logs on http://127.0.0.1:$(PORT)
	$(BIN)/tensorboard --logdir $(LOG_DIR) --host 127.0.0.1 --port $(PORT)

clean: ## delete logs and caches (keeps .venv)
	rm -rf $(LOG_DIR) outputs multirun lightning_logs wandb .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

distclean: clean ## also delete .venv
	rm -rf $(VENV)
