# moat: build, run and test. `make help` lists the targets.
#
# Everything uses Debian's Rust 1.96 (rustc-web/cargo-web, with the standard
# library source for -Zbuild-std), installed by scripts/install-deps.sh;
# a rustup toolchain earlier on PATH is deliberately bypassed.

SHELL := /bin/bash
export PATH := /usr/bin:/usr/sbin:/bin:/sbin:$(PATH)
export RUSTC := /usr/bin/rustc
export RUSTDOC := /usr/bin/rustdoc
CARGO := /usr/bin/cargo
TARGET_DIR ?= target
export CARGO_TARGET_DIR := $(abspath $(TARGET_DIR))

# Service images: each becomes target/images/<arch>/<name>, one ELF that
# Xen boots as a PV or as a PVH guest.
# The packages that build them (netdemo's package also builds blkdemo;
# firewall-vm builds the image `firewall`, vpn-vm the image `vpn`; `hostile`
# is a test image: a client whose vifs attack their backend).
IMAGES := selftest netdemo blkdemo netbridge firewall vpn hostile
IMAGE_PACKAGES := selftest netdemo netbridge firewall-vm vpn-vm hostile
AMD64 := x86_64-unknown-none
ARM32 := armv7a-none-eabihf
IMAGE_DIR_ARM32 := $(CARGO_TARGET_DIR)/images/arm32
BUILD_STD := -Zbuild-std=core,alloc -Zbuild-std-features=compiler-builtins-mem
IMAGE_DIR := $(CARGO_TARGET_DIR)/images/amd64
# The firewall as a Qubes kernel directory (docs/qubes.md, "Deploying on
# Qubes"): copied as is to dom0's /var/lib/qubes/vm-kernels/moat-firewall/.
QUBES_KERNEL_DIR := $(CARGO_TARGET_DIR)/images/qubes/moat-firewall
# The rig's Qubes-shaped dom0 (rig/qubes-dom0): a static binary, since the
# rig's dom0 has no compiler.
HOST := x86_64-unknown-linux-gnu
QUBES_DOM0 := $(CARGO_TARGET_DIR)/$(HOST)/release/moat-qubes-dom0
# The firewall's type in test-qubes: pv by default, because on the rig (TCG,
# emulated nested SVM) a PVH vchan client, the QubesDB link, has hung the
# emulated machine (docs/qubes.md, "Runs"); Qubes itself runs it PVH
# (QUBES_TYPE=pvh).
QUBES_TYPE ?= pv
TEST_QUBES = python3 rig/test_qubes.py --type $(QUBES_TYPE) --kernel-dir $(QUBES_KERNEL_DIR) --dom0-tool $(QUBES_DOM0) --timeout 900
# Reproducible images (docs/testing.md, "Reproducible images"): the paths of
# the checkout, the target directory, CARGO_HOME and the standard library
# source (-Zbuild-std) are remapped, and each image records its commit and
# toolchain in its .moat.build section (kernel::buildinfo).
REMAP = $(CURDIR)=/moat $(CARGO_TARGET_DIR)=/moat/target $(or $(CARGO_HOME),$(HOME)/.cargo)=/cargo \
  $(shell $(RUSTC) --print sysroot)/lib/rustlib/src/rust=/rustc/$(shell $(RUSTC) -vV | sed -n 's/^commit-hash: //p')
REMAP_FLAGS = [$(foreach m,$(REMAP),"--remap-path-prefix=$(m)",)]
REPRO = --config 'target.$(AMD64).rustflags=$(REMAP_FLAGS)' --config 'target.$(ARM32).rustflags=$(REMAP_FLAGS)'
BUILD_ENV = MOAT_BUILD_COMMIT=$(shell git rev-parse -q --verify HEAD 2>/dev/null || echo unknown)$(shell git rev-parse -q --verify HEAD >/dev/null 2>&1 && [ -n "$$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && echo -dirty) \
  MOAT_BUILD_RUSTC='$(shell $(RUSTC) -V)' MOAT_BUILD_CARGO='$(shell $(CARGO) -V)'

.PHONY: help deps images tcb run run-selftest run-arm32 test test-host test-xen test-long fuzz fuzz-long lint fmt bench bench-firewall bench-wg bench-net rig-stress test-vpn test-vchan reproduce test-reproduce clean

help:
	@echo "make run     the firewall VM on Xen in QEMU with a Linux client behind it: a guided demo, then a dom0 shell"
	@echo "make run-selftest  boot Xen in QEMU, start the selftest image with xl create, show its console"
	@echo "make run-arm32  the selftest on the arm32 rig (Xen armhf in qemu-system-arm)"
	@echo "make test    everything: format, lint, host tests (incl. ABI check), images, real-Xen tests"
	@echo "make images  build every service image to $(IMAGE_DIR)/<name>"
	@echo "make reproduce  build the images in two clean clones of HEAD and compare them byte for byte"
	@echo "make test-syslog  remote syslog on the rig: netdemo over TCP (octet-counted RFC 5424), the firewall over UDP, to listeners in dom0 (not in make test)"
	@echo "make tcb     the trusted code base of each image: linked source lines by crate and layer, unsafe blocks, an SVG each (docs/tcb.md)"
	@echo "make bench   benchmarks (printed, never asserted)"
	@echo "make fuzz    each fuzz target for FUZZ_SMOKE_SECONDS (default 10; a smoke run, in make test)"
	@echo "make fuzz-long  each fuzz target for FUZZ_SECONDS (default 3600)"
	@echo "make test-long  the long real-Xen transfers: 1 GiB each way through netfront (not in make test)"
	@echo "make test-vpn  the VPN VM on the rig, both types: a Linux client behind it, dom0's kernel WireGuard as the peer, leak check (make test runs pv only)"
	@echo "make bench-vpn-vm  moat's VPN VM beside a Linux kernel-WireGuard gateway domU on the rig: the moat/Linux table (printed)"
	@echo "make test-firewall-cycles  1000 attach/detach cycles of a client vif behind the firewall VM, resources compared (not in make test)"
	@echo "make rig-stress  the dom0 userland stress of docs/testing.md, lazy vs eager FPU (printed)"
	@echo "make bench-wg  WireGuard throughput/handshakes, ours beside boringtun (printed)"
	@echo "make bench-net  netdemo/netbridge beside a Linux domU on the rig: the moat/Linux table (printed)"
	@echo "make test-vchan  vchan against dom0's libxenvchan on the rig, moat as server and client (not in make test)"
	@echo "make test-qubes  the firewall as a Qubes sys-firewall against a Qubes-shaped dom0 on the rig (in make test-xen)"
	@echo "make test-netdemo-reconnects  1000 dom0 netback restarts under netdemo's netfront, grant and frame counts compared (not in make test)"

deps:
	@scripts/install-deps.sh

# vchan (qubes::vchan) against dom0's libxenvchan (vchan-socket-proxy) on
# the rig: moat as server and as client, PV and PVH, 64 MiB each way per
# case with an md5 in dom0 (docs/qubes.md); then the firewall as a Qubes
# qube (firewall.qubes=on) against a replayed QubesDB and a qrexec call.
# Not in make test yet.
test-vchan: deps
	$(BUILD_ENV) RUSTC_BOOTSTRAP=1 $(CARGO) build --release $(BUILD_STD) $(REPRO) --target $(AMD64) -p vchantest -p firewall-vm
	@mkdir -p $(IMAGE_DIR)
	cp $(CARGO_TARGET_DIR)/$(AMD64)/release/vchantest $(IMAGE_DIR)/vchantest
	cp $(CARGO_TARGET_DIR)/$(AMD64)/release/firewall $(IMAGE_DIR)/firewall
	python3 rig/test_vchan.py --image $(IMAGE_DIR)/vchantest --types pv,pvh --mib 64 --firewall $(IMAGE_DIR)/firewall --timeout 2700

# 1000 reconnections of netdemo's netfront (dom0's xen-netback restarted):
# free frames, grant references and event channels flat (issue 14 item 1,
# docs/drivers.md "Grant ownership"). Not in make test (about 1 h).
test-netdemo-reconnects: images
	python3 rig/test_netdemo_reconnects.py --image $(IMAGE_DIR)/netdemo --type pv --cycles 1000 --budget 36000 --timeout 40000

images: deps
	$(BUILD_ENV) RUSTC_BOOTSTRAP=1 $(CARGO) build --release $(BUILD_STD) $(REPRO) --target $(AMD64) $(addprefix -p ,$(IMAGE_PACKAGES))
	@mkdir -p $(IMAGE_DIR)
	@for i in $(IMAGES); do cp $(CARGO_TARGET_DIR)/$(AMD64)/release/$$i $(IMAGE_DIR)/$$i; \
	  echo "image: $(IMAGE_DIR)/$$i ($$(stat -c %s $(IMAGE_DIR)/$$i) bytes)"; done
	@mkdir -p $(QUBES_KERNEL_DIR)
	cp $(IMAGE_DIR)/firewall $(QUBES_KERNEL_DIR)/vmlinuz
	gzip -n9 </dev/null >$(QUBES_KERNEL_DIR)/initramfs
	printf '' >$(QUBES_KERNEL_DIR)/default-kernelopts-common.txt
	printf 'firewall.qubes=on\n' >$(QUBES_KERNEL_DIR)/default-kernelopts-nopci.txt
	@echo "qubes: $(QUBES_KERNEL_DIR)/ (vmlinuz, initramfs, default-kernelopts-common.txt, default-kernelopts-nopci.txt)"
	$(BUILD_ENV) RUSTC_BOOTSTRAP=1 $(CARGO) build --release $(BUILD_STD) $(REPRO) --target $(ARM32) $(addprefix -p ,$(IMAGE_PACKAGES))
	@mkdir -p $(IMAGE_DIR_ARM32)
	@for i in $(IMAGES); do python3 arm32/zimage.py $(CARGO_TARGET_DIR)/$(ARM32)/release/$$i $(IMAGE_DIR_ARM32)/$$i; \
	  echo "image: $(IMAGE_DIR_ARM32)/$$i ($$(stat -c %s $(IMAGE_DIR_ARM32)/$$i) bytes)"; done

# The trusted code base of each image (docs/tcb.md): the images' twins
# built with line-table debug info into $(TCB_DIR) (same sources, flags and
# path remapping; the shipped images are not touched), their DWARF line
# tables read by scripts/tcb.py: linked source lines by crate and layer,
# unsafe blocks, image sizes, a report and one SVG per image in
# $(TCB_DIR)/report. Not in make test (two more builds of every image).
TCB_DIR := $(CARGO_TARGET_DIR)/tcb
TCB_BUILD = CARGO_TARGET_DIR=$(TCB_DIR) $(BUILD_ENV) RUSTC_BOOTSTRAP=1 $(CARGO) build --release $(BUILD_STD) $(REPRO) \
  --config 'profile.release.debug="line-tables-only"' $(addprefix -p ,$(IMAGE_PACKAGES))
tcb: images
	$(TCB_BUILD) --target $(AMD64)
	$(TCB_BUILD) --target $(ARM32)
	python3 scripts/tcb.py --out $(TCB_DIR)/report $(foreach m,$(REMAP),--remap $(m)) \
	  --arch amd64:$(TCB_DIR)/$(AMD64)/release:$(IMAGE_DIR) --arch arm32:$(TCB_DIR)/$(ARM32)/release:$(IMAGE_DIR_ARM32):$(CARGO_TARGET_DIR)/$(ARM32)/release $(IMAGES)

# Remote syslog on the rig (docs/syslog.md): netdemo (PV) with
# syslog=tcp:10.99.0.1:601, busybox nc in dom0 as the listener, the stream
# checked as octet-counted RFC 5424 messages, then the listener killed and
# netdemo pinged; the firewall (PVH) with syslog=udp:10.99.0.1:5514 to a
# small UDP listener in dom0 (rig/dom0/udp_sink.c). About 2.5 min; not in
# make test.
test-syslog: images
	python3 rig/test_syslog.py --image $(IMAGE_DIR)/netdemo --firewall $(IMAGE_DIR)/firewall --timeout 600

# Two clean clones of HEAD, in different directories, each built with
# make images; every image compared byte for byte (docs/testing.md,
# "Reproducible images"). Exit 1 on any difference.
reproduce: deps
	python3 scripts/reproduce.py

# make test's form: the images make test built stand for the first build,
# one clean clone is built beside them (skipped, said so, when the checkout
# has uncommitted changes).
test-reproduce: images
	python3 scripts/reproduce.py --reuse-target $(CARGO_TARGET_DIR)

# The firewall VM, a Linux client behind it and servers in dom0: a guided
# demo (rig/run_firewall.py), then, on a terminal, a shell in dom0.
run: images
	python3 rig/run_firewall.py --image $(IMAGE_DIR)/firewall --log $(CARGO_TARGET_DIR)/run-firewall.log

run-selftest: images
	python3 rig/xenrig.py --guest $(IMAGE_DIR)/selftest:selftest \
	  --guest configs/selftest-pv.cfg:selftest-pv.cfg --guest configs/selftest-pvh.cfg:selftest-pvh.cfg \
	  --script scripts/run-guest.sh --timeout 600

fmt: deps
	$(CARGO) fmt --all -- --check

lint: deps
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTC_BOOTSTRAP=1 $(CARGO) clippy --release $(BUILD_STD) --target $(AMD64) $(addprefix -p ,$(IMAGE_PACKAGES)) -- -D warnings
	RUSTC_BOOTSTRAP=1 $(CARGO) clippy --release $(BUILD_STD) --target $(ARM32) -p arm32 $(addprefix -p ,$(IMAGE_PACKAGES)) -- -D warnings

test-host: deps
	$(CARGO) test --workspace
	python3 rig/test_rig_unit.py
	python3 scripts/test_tcb.py
	python3 rig/test_rig_cases.py
	python3 arm32/test_zimage.py
	python3 rig/test_bench_firewall_vm_unit.py
	python3 rig/test_vpn_unit.py

# The rig's Qubes-shaped dom0 (rig/qubes-dom0), linked statically for the
# rig's dom0.
.PHONY: qubes-dom0 test-qubes
qubes-dom0: deps
	$(CARGO) build --release -p qubes-dom0 --target $(HOST) --config 'target.$(HOST).rustflags=["-C","target-feature=+crt-static"]'

# The firewall as a Qubes sys-firewall (issue 13 item 6, docs/qubes.md):
# started from the Qubes kernel directory as qubesd starts a qube, dom0's
# QubesDB and qrexec daemons, two Linux clients, a rule reload, qrexec
# calls, qvm-shutdown's xl shutdown. One rig boot.
test-qubes: images qubes-dom0
	$(TEST_QUBES)

test-xen: images qubes-dom0
	python3 rig/test_selftest.py --image $(IMAGE_DIR)/selftest --types pv,pvh --timeout 1500
	python3 rig/test_linux_domu_unit.py   # needs the rig cache, which the line above fetched
	python3 rig/test_run_firewall_unit.py   # make run's demo, without QEMU (its busybox parts need the rig cache)
	python3 rig/test_netdemo.py --image $(IMAGE_DIR)/netdemo --types pv,pvh --mib 64 --pvh-mib 16 --pings 1000 --bridge 16 --linux-bridged --timeout 2400
	python3 rig/test_blkdemo.py --image $(IMAGE_DIR)/blkdemo --types pv,pvh --mib 64 --timeout 1500
	python3 rig/test_firewall.py --image $(IMAGE_DIR)/firewall --types pv,pvh --detach --hostile pv --hostile-uplink pv --timeout 1800   # about 5 min quiet (docs/firewall.md)
	python3 rig/test_vpn.py --image $(IMAGE_DIR)/vpn --types pv --blob-mib 1 --timeout 900   # fail-closed checks, PV only (docs/vpn.md "On the rig": a PVH triple fault)
	python3 rig/test_qubes_unit.py   # test_qubes's entries, dom0 script and verdict, without QEMU
	$(TEST_QUBES)
	python3 rig/test_arm32.py --selftest $(IMAGE_DIR_ARM32)/selftest --netdemo $(IMAGE_DIR_ARM32)/netdemo --blkdemo $(IMAGE_DIR_ARM32)/blkdemo --firewall $(IMAGE_DIR_ARM32)/firewall --timeout 1500

# The long transfers, kept out of make test for its time budget
# (docs/testing.md): 1 GiB each way between dom0 and netdemo (PV).
test-long: images
	python3 rig/test_netdemo.py --image $(IMAGE_DIR)/netdemo --types pv --mib 1024 --pings 1000 --timeout 3600

# Clients come and go (issue 12 item 3, docs/firewall.md): 1000 xl
# network-attach/-detach cycles of a Linux client's second vif behind the
# firewall VM, its resources: lines compared, then its uplink detached and
# attached. Hours: 26.5 s per cycle measured on a loaded machine (load 11).
test-firewall-cycles: images
	python3 rig/test_firewall_cycles.py --image $(IMAGE_DIR)/firewall --type pvh --cycles 1000 --budget 36000 --timeout 40000

# The VPN gateway VM on the rig (issue 15, docs/vpn.md): a Linux client
# behind it, dom0's kernel WireGuard as the peer, a capture of dom0's
# bridge as the leak check, MSS, DNS, IPv6, the peer down for 30 s, the VM
# restarted under the running client, a bad configuration; pv reads the
# file from a disk, pvh from xenstore. make test's test-xen runs the pv
# type alone (a PVH triple fault under QEMU's emulated SVM, docs/vpn.md).
test-vpn: images
	python3 rig/test_vpn.py --image $(IMAGE_DIR)/vpn --types pv,pvh --timeout 2400

# The dom0 userland stress of docs/testing.md ("dom0 userland corruption:
# root cause"): 20 boots with Xen's lazy FPU switching of PV vCPUs, each
# beside one with eager switching under the same load (about 40 minutes;
# printed, never asserted). STRESS_ARGS adds options, e.g. --cpu max,-xsave.
rig-stress: images
	python3 rig/stress.py --image $(IMAGE_DIR)/selftest --boots 20 --mode both --parallel 2 $(STRESS_ARGS)

# netdemo, netbridge and a Debian Linux PV domU side by side on the rig:
# Linux netfront through our netback, domU->domU through netbridge, 64-byte
# UDP floods, and the moat/Linux table (printed, never asserted). Not in
# `make test` yet: its runs still meet rig-side crashes (see docs/testing.md).
bench-net: images
	python3 rig/test_netdemo.py --image $(IMAGE_DIR)/netdemo --types pv,pvh --mib 16 --pings 1000 --bridge 16 --linux --timeout 2400

# moat's firewall VM beside a Debian Linux firewall domU with Qubes' nftables
# rules, same topology, one rig boot: iperf3 TCP/UDP, CPU, start, memory=
# (printed, never asserted; docs/firewall.md "Benchmark").
bench-firewall-vm: images
	python3 rig/bench_firewall_vm.py --image $(IMAGE_DIR)/firewall --timeout 5400

# moat's VPN VM beside a Debian Linux domU running kernel WireGuard as the
# gateway, same topology, one rig boot: iperf3 TCP/UDP through the tunnel,
# CPU, start, memory= (printed, never asserted; docs/vpn.md "Benchmark").
.PHONY: bench-vpn-vm
bench-vpn-vm: images
	python3 rig/bench_vpn_vm.py --image $(IMAGE_DIR)/vpn --timeout 5400

# The selftest image as a Xen arm32 guest in the arm32 rig, console shown.
run-arm32: images
	printf 'MOAT_CFG=selftest-arm32.cfg MOAT_NAME=selftest-arm32 sh /guest/run-guest.sh\n' > $(CARGO_TARGET_DIR)/run-arm32.sh
	python3 rig/xenrig.py --arch arm32 --guest $(IMAGE_DIR_ARM32)/selftest:selftest --guest configs/selftest-arm32.cfg:selftest-arm32.cfg \
	  --guest scripts/run-guest.sh:run-guest.sh --script $(CARGO_TARGET_DIR)/run-arm32.sh --timeout 600

# Every fuzz target (fuzz/run.sh lists them) built once, then run for
# FUZZ_SMOKE_SECONDS each in make test and FUZZ_SECONDS each in fuzz-long
# (one target: `bash fuzz/run.sh SECONDS TARGET`).
FUZZ_SMOKE_SECONDS ?= 10
FUZZ_SECONDS ?= 3600
fuzz: deps
	CARGO_TARGET_DIR=$(CARGO_TARGET_DIR)/fuzz bash fuzz/run.sh $(FUZZ_SMOKE_SECONDS)

fuzz-long: deps
	CARGO_TARGET_DIR=$(CARGO_TARGET_DIR)/fuzz bash fuzz/run.sh $(FUZZ_SECONDS)

test: fmt lint test-host fuzz test-xen test-reproduce

bench: images bench-firewall bench-wg
	python3 rig/bench_boot.py --image $(IMAGE_DIR)/selftest
	python3 rig/bench_arm32.py --arm32-image $(IMAGE_DIR_ARM32)/selftest --amd64-image $(IMAGE_DIR)/selftest
	python3 rig/test_blkdemo.py --image $(IMAGE_DIR)/blkdemo --types pv,pvh --mib 64 --bench --timeout 1500

# Our WireGuard beside boringtun, one process pinned to one CPU (printed).
bench-wg: deps
	$(CARGO) build --release -p wireguard --example bench
	$(CARGO_TARGET_DIR)/release/examples/bench

bench-firewall: deps
	$(CARGO) build --release -p hosted
	bash services/hosted/bench/run.sh $(CARGO_TARGET_DIR)/release/hosted-firewall

clean:
	$(CARGO) clean
