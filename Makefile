# ai-ml-pipeline: every target runs the pixi task of the same name (pixi.toml),
# through `pixi run` when pixi is on PATH, else through uv (installed with pip if missing).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PIXI := $(shell command -v pixi 2>/dev/null)
UV = $(if $(shell command -v uv 2>/dev/null),uv,python3 -m uv)

ifdef PIXI
TASK := pixi run
else
TASK = $(UV) run --locked python scripts/tasks.py
endif

.PHONY: help install ensure-uv validate validate-cuda download-models fetch-samples test lint \
	format run-pose-analyzer run-gpu-optimizer run-all stop-all status gpu-top dev-session bench clean \
	monitoring-up monitoring-down

help: ## list the targets (colour only on a terminal)
	@if [ -t 1 ]; then c='\033[36m'; r='\033[0m'; else c=''; r=''; fi; \
	awk -v c="$$c" -v r="$$r" 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %s%-18s%s %s\n", c, $$1, r, $$2}' $(MAKEFILE_LIST)
	@echo "  runner: $(if $(PIXI),pixi ($(PIXI)),uv)"

ensure-uv:
ifndef PIXI
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || \
		{ echo "uv not found: installing it with pip"; python3 -m pip install --quiet uv; }
endif

install: ensure-uv ## install the locked environment (both packages editable, dev tools)
ifdef PIXI
	pixi install
else
	$(UV) sync --locked
endif

validate: ensure-uv ## check Python, torch, CUDA, GPUs, packages, RAM, disk (GPU checks skipped without one)
	$(TASK) validate

validate-cuda: ensure-uv ## as validate, and fail without a usable CUDA GPU
	$(TASK) validate-cuda

download-models: ensure-uv ## provision the pose models into models/ (idempotent)
	$(TASK) download-models

fetch-samples: ensure-uv ## fetch the Pose2Sim demo videos into data/samples/
	$(TASK) fetch-samples

test: ensure-uv ## run the test suite (the README's test command)
	$(TASK) test

lint: ensure-uv ## ruff lint, ruff format check, mypy
	$(TASK) lint

format: ensure-uv ## format and auto-fix the code
	$(TASK) format

run-pose-analyzer: ensure-uv ## run pose_analyzer in the foreground on :8001
	$(TASK) run-pose-analyzer

run-gpu-optimizer: ensure-uv ## run gpu_optimizer in the foreground on :8002
	$(TASK) run-gpu-optimizer

run-all: install ## install if needed, provision models, start both services in the background
	$(TASK) run-all

stop-all: ensure-uv ## stop the services started by run-all
	$(TASK) stop-all

status: ensure-uv ## show whether the services run
	$(TASK) status

monitoring-up: ensure-uv ## start Prometheus + Grafana (docker compose), else a local Prometheus on :9090
	$(TASK) monitoring-up

monitoring-down: ensure-uv ## stop what monitoring-up started
	$(TASK) monitoring-down

dev-session: ensure-uv ## tmux session with windows pose_analyzer, gpu_optimizer, monitor
	$(TASK) dev-session

gpu-top: ensure-uv ## terminal GPU monitor (NVML)
	$(TASK) gpu-top

bench: ensure-uv ## run the benchmarks and record results in bench/results/
	$(TASK) bench

clean: ensure-uv ## remove caches, logs and test artifacts (keeps models and data)
	$(TASK) clean
