# flashbox build. Out-of-tree objects under $(BUILD)/, automatic header dependencies.
# `make help` lists the targets.

BUILD    ?= build
CC       ?= cc
OPT      ?= -O2
SAN_FLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
# The sanitizer pass skips the heavy variants (tests/harness.h, test_heavy_variant): their
# host code runs in lighter tests there, and all of them run in `make test`. 0 runs them too.
SAN_SKIP_HEAVY ?= 1

CFLAGS_BASE = -std=c11 -Wall -Wextra -Werror -g -D_GNU_SOURCE -pthread -I. -I$(BUILD)
CFLAGS     ?= $(OPT)
ALL_CFLAGS  = $(CFLAGS_BASE) $(CFLAGS) -MMD -MP
PKGS        = openssl jansson libpcre2-8 libmicrohttpd libsystemd libdrm liburing vulkan
# The packages' flags are read from files that the deps step writes after installing them,
# not computed when make parses this file: on a fresh machine pkg-config and the -dev
# packages do not exist yet at parse time. Recursive `=` defers the read to each recipe,
# and every recipe that compiles or links runs after $(DEPS_OK).
PKG_CFLAGS  = $(shell cat $(BUILD)/pkg.cflags 2>/dev/null)
PKG_LIBS    = $(shell cat $(BUILD)/pkg.libs 2>/dev/null)
LDLIBS      = $(PKG_LIBS) -lm -pthread

# Library code: every module folder except the program's entry point.
LIB_SRC  := $(wildcard common/*.c engine/*.c engine/*/*.c board/*.c update/*.c tools/*.c) \
            $(filter-out firmware/main.c,$(wildcard firmware/*.c))
MAIN_SRC := firmware/main.c
TEST_SRC := $(wildcard tests/*.c)
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
SHADERS  := $(wildcard shaders/*.comp)

LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
MAIN_OBJ := $(MAIN_SRC:%.c=$(BUILD)/%.o)
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/%.o)
SPV      := $(SHADERS:shaders/%.comp=$(BUILD)/shaders/%.spv)
DEPS_OK  := $(BUILD)/.deps-ok

FLASHBOX := $(BUILD)/flashbox
TESTBIN  := $(BUILD)/flashbox-test

.PHONY: all test run soak sanitize fuzz clean help deps check-ci check-small gpu-pack gpu-check fresh-check

all: $(FLASHBOX) $(TESTBIN)

help:
	@echo "make            build $(FLASHBOX) and the test runner"
	@echo "make test       run every test (ends with 'N passed, N failed')"
	@echo "make run        build, make the default model, start the daemon, answer one request"
	@echo "make sanitize   build with ASan+UBSan into build-san/ and run the tests there"
	@echo "                (heavy variants skipped, each naming the lighter test that runs its code; SAN_SKIP_HEAVY=0 runs them)"
	@echo "make soak       SOAK_SECONDS=N (120) of mixed load and a hot reload on the tiny model; fails on a 5xx or growing RSS/fds/threads"
	@echo "make fresh-check  the README's two set-up commands in a fresh debootstrapped Debian 12 root (root; about 15 minutes)"
	@echo "make check-small  on the 500 MB small model: paged-expert logits equal full residency, Vulkan prefill equals the reference (minutes)"
	@echo "make gpu-check  on a machine with a GPU: board, the tests and the benches there, into gpu-check/ (minutes)"
	@echo "make gpu-pack   the binaries, their libraries and the fixtures in gpu-pack/, for a GPU machine without the packages"
	@echo "make fuzz       build the libFuzzer targets into $(BUILD)/fuzz/ (FUZZ_SECONDS=N runs each)"
	@echo "make deps       install the Debian packages (root; apt-get update once)"
	@echo "make clean      remove $(BUILD)/ and build-san/"
	@echo "TEST=pattern    run only the tests whose name contains pattern"

deps: $(DEPS_OK)
$(DEPS_OK): scripts/deps.sh Makefile
	@mkdir -p $(@D)
	@sh scripts/deps.sh
	@pkg-config --cflags $(PKGS) > $(BUILD)/pkg.cflags.tmp
	@pkg-config --libs $(PKGS) > $(BUILD)/pkg.libs.tmp
	@mv $(BUILD)/pkg.cflags.tmp $(BUILD)/pkg.cflags
	@mv $(BUILD)/pkg.libs.tmp $(BUILD)/pkg.libs
	@touch $@

$(BUILD)/%.o: %.c | $(DEPS_OK)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(PKG_CFLAGS) -c $< -o $@

# Shaders: GLSL -> SPIR-V (validated) -> one generated C table linked into the engine.
$(BUILD)/shaders/%.spv: shaders/%.comp $(wildcard shaders/*.h shaders/*.glsl) | $(DEPS_OK)
	@mkdir -p $(@D)
	glslangValidator --quiet --target-env vulkan1.1 -Ishaders -o $@ $<
	spirv-val --target-env vulkan1.1 $@

$(BUILD)/shaders/spirv_table.c: $(SPV) scripts/embed-spirv.sh
	@mkdir -p $(@D)
	sh scripts/embed-spirv.sh $@ $(SPV)

$(BUILD)/shaders/spirv_table.o: $(BUILD)/shaders/spirv_table.c
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/libflashbox.a: $(LIB_OBJ) $(BUILD)/shaders/spirv_table.o
	@rm -f $@
	ar rcs $@ $^

$(FLASHBOX): $(MAIN_OBJ) $(BUILD)/libflashbox.a
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS)

$(TESTBIN): $(TEST_OBJ) $(BUILD)/libflashbox.a
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS)

test: all
	FLASHBOX=$(FLASHBOX) $(TESTBIN) $(TEST)

run: $(FLASHBOX)
	sh scripts/run-demo.sh $(FLASHBOX)

soak: $(FLASHBOX)
	SOAK_SECONDS=$(or $(SOAK_SECONDS),120) bash scripts/soak.sh $(FLASHBOX)

# Not built on anything here: it copies the source into a fresh root and builds there.
fresh-check:
	sh scripts/fresh-check.sh

check-small: $(FLASHBOX)
	sh scripts/check-small.sh $(FLASHBOX)

gpu-check: all
	FLASHBOX=$(FLASHBOX) FLASHBOX_TEST=$(TESTBIN) sh scripts/gpu-check.sh gpu-check

gpu-pack: all
	FLASHBOX=$(FLASHBOX) FLASHBOX_TEST=$(TESTBIN) sh scripts/gpu-pack.sh gpu-pack

sanitize:
	$(MAKE) BUILD=build-san CC=clang OPT="-O1 $(SAN_FLAGS)" all
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 FLASHBOX_TEST_TIME_SCALE=4 \
	  FLASHBOX_TEST_SKIP_HEAVY=$(SAN_SKIP_HEAVY) FLASHBOX=build-san/flashbox build-san/flashbox-test $(TEST)

# libFuzzer targets: each tests/fuzz/fuzz_X.c links against the library built with clang.
FUZZ_BUILD := $(BUILD)/fuzz
fuzz: $(DEPS_OK)
	$(MAKE) BUILD=$(FUZZ_BUILD)/obj CC=clang \
	  OPT="-O1 -fsanitize=fuzzer-no-link,address,undefined" $(FUZZ_BUILD)/obj/libflashbox.a
	@for f in $(FUZZ_SRC); do \
	  n=$$(basename $$f .c); \
	  echo "fuzz: $$n"; \
	  clang $(CFLAGS_BASE) -I$(FUZZ_BUILD)/obj -O1 -fsanitize=fuzzer,address,undefined $$f \
	    $(FUZZ_BUILD)/obj/libflashbox.a $(LDLIBS) -o $(FUZZ_BUILD)/$$n || exit 1; \
	done
	@if [ -n "$(FUZZ_SECONDS)" ]; then for f in $(FUZZ_SRC); do \
	  n=$$(basename $$f .c); mkdir -p $(FUZZ_BUILD)/corpus/$$n; \
	  $(FUZZ_BUILD)/$$n -max_total_time=$(FUZZ_SECONDS) $(FUZZ_BUILD)/corpus/$$n tests/fuzz/seeds/$$n 2>&1 | tail -n 3 || exit 1; \
	done; fi

clean:
	rm -rf $(BUILD) build-san

-include $(LIB_OBJ:.o=.d) $(MAIN_OBJ:.o=.d) $(TEST_OBJ:.o=.d)
