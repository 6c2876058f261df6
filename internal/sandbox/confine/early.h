// Shared between early.c and the Go side of package confine.
#ifndef CORDON_EARLY_H
#define CORDON_EARLY_H
#include <stddef.h>
#include <stdint.h>

#define CORDON_MARKER "__cordon_sandbox__"
#define CORDON_PROBE_MARKER "__cordon_probe__"
#define CORDON_SPAWNER_MARKER "__cordon_spawner__"
#define CORDON_CONFIG_VERSION 2
#define CORDON_GO_BYTE 'G'
#define CORDON_EXIT_SETUP 121
// Starts the one packet a sandbox sends on fd 3 when its confinement fails:
// "cordon-failed <layer bit, hex> <errno> <step>" (package confine,
// ParseFailure). Layer bit 0: a step of no layer.
#define CORDON_FAILED_PREFIX "cordon-failed"
#define CORDON_UNPRIVILEGED_ID 65534

// Layers applied by the child (bits of the configuration argument).
#define CORDON_L_PDEATHSIG (1ULL << 0)
#define CORDON_L_FDS (1ULL << 1)
#define CORDON_L_PIVOT (1ULL << 2)
#define CORDON_L_UTS (1ULL << 3)
#define CORDON_L_CGROUPNS (1ULL << 4)
#define CORDON_L_RLIMITS (1ULL << 5)
#define CORDON_L_CAPS (1ULL << 6)
#define CORDON_L_NNP (1ULL << 7)
#define CORDON_L_LANDLOCK (1ULL << 8)
#define CORDON_L_SECCOMP (1ULL << 9)
#define CORDON_L_SETUID (1ULL << 10)
// Not applied by early.c: the host planned the W^X layer, which the worker
// completes (PR_SET_MDWE) once its module is loaded, and must not skip.
#define CORDON_L_WX (1ULL << 11)
// The sandbox raises its own oom_score_adj to CORDON_OOM_SCORE_ADJ, so that
// under memory pressure the kernel's OOM killer picks a sandbox, not the host.
#define CORDON_L_OOM (1ULL << 12)
#define CORDON_OOM_SCORE_ADJ 1000

int cordon_early_state(void);
uint64_t cordon_early_applied(void);
int cordon_early_landlock_abi(void);
int cordon_early_nfiles(void);
// The sandbox's /proc/self/pagemap, opened before the empty root, or -1.
int cordon_early_pagemap(void);
const char *cordon_early_error(void);

// Installs the seccomp filter (len instructions at filter, a struct
// sock_filter array) on every thread, then sends msg with the new listener
// fd over sock, with all signals blocked on the calling thread in between.
// Returns 0, or -errno with *stage 1 (seccomp) or 2 (sendmsg).
int cordon_seal_and_report(int sock, const void *filter, unsigned short len,
                           const void *msg, size_t msglen, int *stage);
#endif
