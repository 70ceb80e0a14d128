# The two commands: `make demo` and `make test`. Each installs missing Debian packages, configures
# and builds (CUDA when nvcc is present), then runs. Build tree: $(BUILD) (default ./build).
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all deps configure build test demo gpu-stage clean

all: build

deps:
	@scripts/install-deps.sh

configure: deps
	@cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS) > $(BUILD).configure.log 2>&1 \
	  || { cat $(BUILD).configure.log; exit 1; }
	@grep -E "^-- stavid" $(BUILD).configure.log || true

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

test: build
	@tools/tokenizer/fetch_llama3.sh $(BUILD)/tokenizer/llama3
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

demo: build
	@scripts/demo.sh $(BUILD)

# Copies what a device run needs that the GPU machine lacks into .deps/ (see docs/gpu.md).
gpu-stage:
	@scripts/stage-gpu-deps.sh

clean:
	rm -rf $(BUILD) $(BUILD).configure.log
