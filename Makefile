# The two commands a new user runs: `make demo` and `make test`. Both install what they need.
BUILD_DIR ?= build
JOBS ?= 2
CMAKE_FLAGS ?= -DCMAKE_BUILD_TYPE=RelWithDebInfo
# Seconds per libFuzzer harness in `make test` (docs/fuzzing.md); `make fuzz FUZZ_SECONDS=300`
# runs them longer.
FUZZ_SECONDS ?= 10

.PHONY: deps build demo test fuzz bench frontier clean

deps:
	./scripts/install-deps.sh

build: deps
	cmake -S . -B $(BUILD_DIR) -G Ninja $(CMAKE_FLAGS)
	cmake --build $(BUILD_DIR) -j $(JOBS)

# The demo needs the four programs only, not the test binaries.
demo: deps
	cmake -S . -B $(BUILD_DIR) -G Ninja $(CMAKE_FLAGS)
	cmake --build $(BUILD_DIR) -j $(JOBS) --target saegrid saegrid-train saegrid-coordinator saegrid-worker
	./scripts/demo.sh $(BUILD_DIR)

test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) --timeout 900
	./scripts/fuzz.sh --seconds $(FUZZ_SECONDS) --build-dir $(BUILD_DIR)-fuzz --jobs $(JOBS)

# The parsers' libFuzzer harnesses alone (clang; their own build directory, no LibTorch).
fuzz: deps
	./scripts/fuzz.sh --seconds $(FUZZ_SECONDS) --build-dir $(BUILD_DIR)-fuzz --jobs $(JOBS)

bench: build
	./$(BUILD_DIR)/bench/step_bench
	./$(BUILD_DIR)/bench/shard_bench
	./$(BUILD_DIR)/bench/lm_bench
	./$(BUILD_DIR)/bench/toy_eval_bench

# The sparsity frontier of the five architectures on the toy data: trains 15 SAEs (about 25
# minutes on 2 cores) and writes the table and figures of docs/frontier.md.
frontier: deps
	cmake -S . -B $(BUILD_DIR) -G Ninja $(CMAKE_FLAGS)
	cmake --build $(BUILD_DIR) -j $(JOBS) --target frontier_bench
	./$(BUILD_DIR)/bench/frontier_bench --docs-dir docs --output-dir out/frontier

clean:
	rm -rf $(BUILD_DIR) $(BUILD_DIR)-fuzz out
