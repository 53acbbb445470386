/*
 * fpucheck: does this process's SSE register state survive what happens
 * between its instructions (Xen vCPU switches, Linux task switches)?
 * Run in the rig's dom0 by rig/dom0/stress.sh (docs/testing.md, "dom0
 * userland corruption: root cause"); built on the host with
 * `gcc -static -O2` by rig/stress.py.
 *
 * usage: fpucheck xrstor|yield|sleep SECONDS
 *
 *   xrstor  Each round: integer-only work (so that a Xen vCPU switch most
 *           likely lands where no FPU/SSE instruction has run since), then
 *           XRSTOR of an XSAVE area whose XMM0-15 hold this round's
 *           pattern, then MOVDQU reads of XMM0-15, compared with the
 *           pattern. XRSTOR must raise #NM when CR0.TS is set (Intel SDM
 *           vol. 2, XRSTOR, "#NM If CR0.TS[bit 3] = 1"; AMD APM the same),
 *           so that Xen's lazy FPU switching loads this vCPU's state first.
 *           If XRSTOR runs without #NM while Xen has TS set, the first
 *           MOVDQU takes the #NM, Xen restores the vCPU's saved state over
 *           what XRSTOR loaded, and the read-back is stale.
 *   yield   Each round: MOVDQU writes of the pattern to XMM0-15, an
 *           integer-only spin, sched_yield(), MOVDQU reads, compare (all in
 *           one asm block, so nothing else touches the registers). The
 *           kernel saves and restores user state with XSAVEOPT/XRSTOR on
 *           task switches, so this is the end-to-end check with several
 *           copies running.
 *   sleep   The same with nanosleep(200 us) in place of sched_yield(): the
 *           vCPU goes idle and wakes, maybe on the other physical CPU, and
 *           the kernel restores this task's state with XRSTOR on the way
 *           back to user mode.
 *
 * The pattern of register r in round i of process p is
 *   lo = 0xf0c0000000000000 | p << 32 | i << 4 | r,  hi = ~lo
 * so a wrong value says whose state it was (pid, round) when it is one.
 *
 * Prints one line
 *   FPUCHECK mode=M pid=P secs=S rounds=N bad=B
 * and for the first few bad rounds
 *   FPUCHECK-BAD mode=M pid=P round=I reg=R got=HI:LO is=<pid,round,reg or foreign>
 * Exit status 0 (bad rounds are data, not an error), 2 on bad usage.
 * Without XSAVE (no CR4.OSXSAVE) the xrstor mode checks nothing and says
 * so (rounds=0 no-OSXSAVE).
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NREG 16

struct xmm {
	uint64_t lo, hi;
};

/* Standard-format XSAVE area: legacy region (512), header (64). */
static unsigned char area[4096] __attribute__((aligned(64)));

static uint64_t pattern(long pid, uint64_t round, int reg)
{
	return 0xf0c0000000000000ull | ((uint64_t)pid & 0xffff) << 32 |
	       (round & 0xfffffff) << 4 | (uint64_t)reg;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void describe(uint64_t lo, char *out, size_t n)
{
	if ((lo & 0xffff000000000000ull) == 0xf0c0000000000000ull)
		snprintf(out, n, "pid%llu,round%llu,reg%llu",
			 (unsigned long long)(lo >> 32 & 0xffff),
			 (unsigned long long)(lo >> 4 & 0xfffffff),
			 (unsigned long long)(lo & 0xf));
	else
		snprintf(out, n, "foreign");
}

static void read_xmm(struct xmm *r)
{
	__asm__ volatile(
		"movdqu %%xmm0, 0(%0)\n\t"
		"movdqu %%xmm1, 16(%0)\n\t"
		"movdqu %%xmm2, 32(%0)\n\t"
		"movdqu %%xmm3, 48(%0)\n\t"
		"movdqu %%xmm4, 64(%0)\n\t"
		"movdqu %%xmm5, 80(%0)\n\t"
		"movdqu %%xmm6, 96(%0)\n\t"
		"movdqu %%xmm7, 112(%0)\n\t"
		"movdqu %%xmm8, 128(%0)\n\t"
		"movdqu %%xmm9, 144(%0)\n\t"
		"movdqu %%xmm10, 160(%0)\n\t"
		"movdqu %%xmm11, 176(%0)\n\t"
		"movdqu %%xmm12, 192(%0)\n\t"
		"movdqu %%xmm13, 208(%0)\n\t"
		"movdqu %%xmm14, 224(%0)\n\t"
		"movdqu %%xmm15, 240(%0)\n\t"
		:
		: "r"(r)
		: "memory");
}

static const struct timespec nap = {0, 200000};

/* Writes w to XMM0-15, spins, makes system call nr (sched_yield or
 * nanosleep(&nap)), reads XMM0-15 into r. */
static void write_syscall_read(const struct xmm *w, struct xmm *r, long nr)
{
	long rax = nr;
	__asm__ volatile(
		"movdqu 0(%1), %%xmm0\n\t"
		"movdqu 16(%1), %%xmm1\n\t"
		"movdqu 32(%1), %%xmm2\n\t"
		"movdqu 48(%1), %%xmm3\n\t"
		"movdqu 64(%1), %%xmm4\n\t"
		"movdqu 80(%1), %%xmm5\n\t"
		"movdqu 96(%1), %%xmm6\n\t"
		"movdqu 112(%1), %%xmm7\n\t"
		"movdqu 128(%1), %%xmm8\n\t"
		"movdqu 144(%1), %%xmm9\n\t"
		"movdqu 160(%1), %%xmm10\n\t"
		"movdqu 176(%1), %%xmm11\n\t"
		"movdqu 192(%1), %%xmm12\n\t"
		"movdqu 208(%1), %%xmm13\n\t"
		"movdqu 224(%1), %%xmm14\n\t"
		"movdqu 240(%1), %%xmm15\n\t"
		"mov $2000, %%r8d\n"
		"1:\n\t"
		"dec %%r8d\n\t"
		"jnz 1b\n\t"
		"syscall\n\t"
		"movdqu %%xmm0, 0(%2)\n\t"
		"movdqu %%xmm1, 16(%2)\n\t"
		"movdqu %%xmm2, 32(%2)\n\t"
		"movdqu %%xmm3, 48(%2)\n\t"
		"movdqu %%xmm4, 64(%2)\n\t"
		"movdqu %%xmm5, 80(%2)\n\t"
		"movdqu %%xmm6, 96(%2)\n\t"
		"movdqu %%xmm7, 112(%2)\n\t"
		"movdqu %%xmm8, 128(%2)\n\t"
		"movdqu %%xmm9, 144(%2)\n\t"
		"movdqu %%xmm10, 160(%2)\n\t"
		"movdqu %%xmm11, 176(%2)\n\t"
		"movdqu %%xmm12, 192(%2)\n\t"
		"movdqu %%xmm13, 208(%2)\n\t"
		"movdqu %%xmm14, 224(%2)\n\t"
		"movdqu %%xmm15, 240(%2)\n\t"
		: "+a"(rax)
		: "r"(w), "r"(r), "D"(&nap), "S"(0)
		: "rcx", "r8", "r11", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5",
		  "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14",
		  "xmm15");
}

/* Integer-only busy work the compiler cannot drop or vectorise. */
static uint64_t spin(uint64_t x, int n)
{
	for (int k = 0; k < n; k++) {
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		__asm__ volatile("" : "+r"(x));
	}
	return x;
}

int main(int argc, char **argv)
{
	if (argc != 3 || (strcmp(argv[1], "xrstor") && strcmp(argv[1], "yield") &&
			  strcmp(argv[1], "sleep"))) {
		fprintf(stderr, "usage: fpucheck xrstor|yield|sleep SECONDS\n");
		return 2;
	}
	const char *mode = argv[1];
	double secs = atof(argv[2]);
	long pid = getpid();
	unsigned a, b, c, d;
	int xrstor = !strcmp(mode, "xrstor");
	__cpuid(1, a, b, c, d);
	if (xrstor && !(c & (1u << 27))) {
		/* No XSAVE (e.g. QEMU -cpu max,-xsave): nothing to check here. */
		printf("FPUCHECK mode=%s pid=%ld secs=0 rounds=0 bad=0 no-OSXSAVE\n", mode, pid);
		return 0;
	}
	if (xrstor) {
		/* A valid area to start from: the current state (x87 and SSE). */
		__asm__ volatile("xsave (%0)" : : "r"(area), "a"(3), "d"(0) : "memory");
		memset(area + 512, 0, 64);
		area[512] = 3; /* XSTATE_BV: x87 | SSE, standard format */
	}
	struct xmm want[NREG], got[NREG];
	uint64_t rounds = 0, bad = 0, sink = 1;
	double end = now() + secs;
	while (now() < end) {
		for (int j = 0; j < 64; j++) {
			rounds++;
			for (int r = 0; r < NREG; r++) {
				want[r].lo = pattern(pid, rounds, r);
				want[r].hi = ~want[r].lo;
			}
			if (xrstor) {
				memcpy(area + 160, want, sizeof want);
				sink = spin(sink, 2000);
				__asm__ volatile("xrstor (%0)" : : "r"(area), "a"(2), "d"(0)
						 : "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4",
						   "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
						   "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
				read_xmm(got);
			} else {
				write_syscall_read(want, got,
						   strcmp(mode, "yield") ? 35 /* SYS_nanosleep */
									 : 24 /* SYS_sched_yield */);
			}
			int wrong = -1;
			for (int r = 0; r < NREG && wrong < 0; r++)
				if (got[r].lo != want[r].lo || got[r].hi != want[r].hi)
					wrong = r;
			if (wrong >= 0) {
				bad++;
				if (bad <= 5) {
					char is[64];
					describe(got[wrong].lo, is, sizeof is);
					printf("FPUCHECK-BAD mode=%s pid=%ld round=%llu reg=%d "
					       "got=%016llx:%016llx is=%s\n",
					       mode, pid, (unsigned long long)rounds, wrong,
					       (unsigned long long)got[wrong].hi,
					       (unsigned long long)got[wrong].lo, is);
					fflush(stdout);
				}
			}
		}
	}
	printf("FPUCHECK mode=%s pid=%ld secs=%g rounds=%llu bad=%llu%s\n", mode, pid, secs,
	       (unsigned long long)rounds, (unsigned long long)bad, sink ? "" : " ");
	return 0;
}
