// Package confine is the sandbox side of cordon's confinement. Importing it
// links in a C constructor (early.c) that, in a process started by
// sandbox.Start, applies every layer but seccomp before the Go runtime starts
// its first extra thread; Enter then installs the seccomp filter on every
// thread and hands over the IPC socket. In any other process the constructor
// does nothing. See package sandbox for the whole sequence.
package confine

/*
#include <stdlib.h>
#include "early.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Marker is argv[1] of a sandbox process. The shipped binary enters
// sandbox mode only when it sees it; the C constructor confines only then.
const Marker = C.CORDON_MARKER

// ProbeMarker makes the C constructor exit(0) at once: the host starts
// /proc/self/exe with it in new namespaces to learn whether it may create them.
const ProbeMarker = C.CORDON_PROBE_MARKER

// SpawnerMarker is argv[1] of the sandbox spawner (package sandbox); the C
// constructor closes every descriptor above 4 of it before Go starts.
const SpawnerMarker = C.CORDON_SPAWNER_MARKER

// Protocol constants shared with the host (package sandbox).
const (
	ConfigVersion = C.CORDON_CONFIG_VERSION
	// GoByte is the one-byte packet the host sends on fd 3 once the process
	// is in its cgroup; early confinement waits for it.
	GoByte = C.CORDON_GO_BYTE
	// ExitSetup is the exit code of a sandbox whose confinement failed.
	ExitSetup = C.CORDON_EXIT_SETUP
	// UnprivilegedID is the uid and gid of the sandbox, inside its user
	// namespace and (when the host is root) outside it too.
	UnprivilegedID = C.CORDON_UNPRIVILEGED_ID
	// ReadyPrefix starts the packet the sandbox sends when confined.
	ReadyPrefix = "cordon-ready"
	// FailedPrefix starts the packet it sends instead when a step of its
	// confinement failed (ParseFailure).
	FailedPrefix = C.CORDON_FAILED_PREFIX
	// MaxReady bounds the size of either packet.
	MaxReady = 256
	// OOMScoreAdj is the oom_score_adj every sandbox gives itself (LOOM):
	// the most, so that the kernel's OOM killer takes sandboxes first.
	OOMScoreAdj = C.CORDON_OOM_SCORE_ADJ
)

// Layer bits: what the host asks the child to apply, and what the child
// reports as applied.
const (
	LPdeathsig = uint64(C.CORDON_L_PDEATHSIG) // re-set PR_SET_PDEATHSIG
	LFds       = uint64(C.CORDON_L_FDS)       // close everything but 2, 3, 4..
	LPivot     = uint64(C.CORDON_L_PIVOT)     // empty tmpfs root via pivot_root
	LUTS       = uint64(C.CORDON_L_UTS)       // hostname "cordon"
	LCgroupNS  = uint64(C.CORDON_L_CGROUPNS)  // unshare(CLONE_NEWCGROUP) once in the cgroup
	LRlimits   = uint64(C.CORDON_L_RLIMITS)   // setrlimit
	LCaps      = uint64(C.CORDON_L_CAPS)      // drop all capabilities, lock securebits
	LNNP       = uint64(C.CORDON_L_NNP)       // PR_SET_NO_NEW_PRIVS
	LLandlock  = uint64(C.CORDON_L_LANDLOCK)  // Landlock domain without rights
	LSeccomp   = uint64(C.CORDON_L_SECCOMP)   // seccomp allowlist (Enter)
	LSetuid    = uint64(C.CORDON_L_SETUID)    // switch to UnprivilegedID (no user namespace)
	// LWX is not applied at start: it tells a canister worker that the host
	// planned the W^X layer, so ForbidNewCode failing must end the sandbox.
	LWX = uint64(C.CORDON_L_WX)
	// LOOM: raise its own oom_score_adj to OOMScoreAdj before the empty root.
	LOOM = uint64(C.CORDON_L_OOM)
	// LLearn is for tests only: the seccomp filter sends every system call to
	// the host, which records it and lets it continue. The host decides
	// whether to continue; the sandbox cannot force it.
	LLearn = uint64(1) << 62
)

// Config is what the host tells the child. It travels as argv[2], which the
// C constructor parses before the Go runtime exists.
type Config struct {
	Layers uint64 // L* bits to apply
	Files  int    // number of fds passed at 4, 5, ...
	NoFile uint64 // RLIMIT_NOFILE
	AS     uint64 // RLIMIT_AS in bytes, 0 = unlimited
	NProc  uint64 // RLIMIT_NPROC, 0 = unlimited
	FSize  uint64 // RLIMIT_FSIZE in bytes (only memfds are writable; wasmtime sizes its memory images with them)
	// Data is RLIMIT_DATA in bytes, 0 = unlimited: the bound on memory
	// when there is no memory cgroup. It counts writable private mappings
	// (reservations count once made writable), not shared ones.
	Data uint64
}

// Arg encodes c for argv[2].
func (c Config) Arg() string {
	return fmt.Sprintf("%d:%#x:%d:%d:%d:%d:%d:%d", ConfigVersion, c.Layers, c.Files, c.NoFile, c.AS, c.NProc, c.FSize, c.Data)
}

// IsSandbox reports whether this process was started by sandbox.Start.
func IsSandbox() bool { return len(os.Args) >= 3 && os.Args[1] == Marker }

var (
	enterMu   sync.Mutex
	entered   bool
	enteredWX bool // the host planned the W^X layer (LWX)
)

// WXPlanned reports whether the host planned the W^X layer for this
// sandbox: ForbidNewCode failing then must end it, not be logged and
// passed over. Call it after Enter.
func WXPlanned() bool {
	enterMu.Lock()
	defer enterMu.Unlock()
	return enteredWX
}

// Pagemap returns the sandbox's /proc/self/pagemap, which the C
// constructor opened before entering the empty root, or nil (not a
// sandbox, or the kernel has no pagemap). Call it after Enter.
func Pagemap() *os.File {
	pagemapOnce.Do(func() {
		if fd := int(C.cordon_early_pagemap()); fd >= 0 && C.cordon_early_state() == 1 {
			pagemapFile = os.NewFile(uintptr(fd), "pagemap")
		}
	})
	return pagemapFile
}

var (
	pagemapOnce sync.Once
	pagemapFile *os.File
)

// Enter completes confinement and returns the IPC socket (fd 3), the files
// the host passed (fd 4, 5, ...) and Spec.Args. The C constructor has already
// applied every layer but seccomp before the Go runtime started; Enter closes
// the placeholder fds 0 and 1, installs the seccomp filter on every thread
// (TSYNC), hands its notification fd to the host and reports ready. Call it
// first, before reading any byte from the socket. It may be called once.
func Enter() (conn *net.UnixConn, files []*os.File, args []string, err error) {
	enterMu.Lock()
	defer enterMu.Unlock()
	if !IsSandbox() {
		return nil, nil, nil, errors.New("confine: not a sandbox process")
	}
	if entered {
		return nil, nil, nil, errors.New("confine: Enter called twice")
	}
	entered = true
	if st := C.cordon_early_state(); st != 1 {
		return nil, nil, nil, fmt.Errorf("confine: early confinement did not run (state %d): is the C constructor linked in?", int(st))
	}
	var cfg Config
	if cfg, err = parseConfig(os.Args[2]); err != nil {
		return nil, nil, nil, err
	}
	if int(C.cordon_early_nfiles()) != cfg.Files {
		return nil, nil, nil, errors.New("confine: configuration mismatch")
	}
	enteredWX = cfg.Layers&LWX != 0
	f := os.NewFile(3, "ipc")
	c, err := net.FileConn(f)
	_ = f.Close()
	if err != nil {
		return nil, nil, nil, fmt.Errorf("confine: IPC socket: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		_ = c.Close()
		return nil, nil, nil, errors.New("confine: fd 3 is not a unix socket")
	}
	for i := 0; i < cfg.Files; i++ {
		files = append(files, os.NewFile(uintptr(4+i), "fd"+strconv.Itoa(4+i)))
	}
	// The placeholders the Go runtime needed at start; closed only now so
	// that the socket's dup and the netpoller did not land on 0 and 1.
	_ = unix.Close(0)
	_ = unix.Close(1)

	applied := uint64(C.cordon_early_applied())
	if cfg.Layers&LSeccomp == 0 {
		msg := fmt.Sprintf("%s %#x %d", ReadyPrefix, applied, int(C.cordon_early_landlock_abi()))
		if _, _, err = uc.WriteMsgUnix([]byte(msg), nil, nil); err != nil {
			return nil, nil, nil, reportFailed(uc, err)
		}
		return uc, files, os.Args[3:], nil
	}
	filter, err := BuildFilterPagemap(uint32(os.Getpid()), int(C.cordon_early_pagemap()), cfg.Layers&LLearn != 0)
	if err != nil {
		sendFailure(uc, LSeccomp, "build filter: "+err.Error(), err)
		_ = uc.Close()
		return nil, nil, nil, fmt.Errorf("confine: seccomp: %w", err)
	}
	msg := fmt.Sprintf("%s %#x %d", ReadyPrefix, applied|LSeccomp, int(C.cordon_early_landlock_abi()))
	if err := sealAndReport(uc, filter, msg); err != nil {
		if errors.Is(err, errSeccomp) {
			// Not installed: this thread is as it was, and may still send.
			sendFailure(uc, LSeccomp, "load filter", err)
			_ = uc.Close()
			return nil, nil, nil, fmt.Errorf("confine: %w", err)
		}
		return nil, nil, nil, reportFailed(uc, err)
	}
	return uc, files, os.Args[3:], nil
}

// reportFailed closes the socket after the ready packet could not be sent.
// It says why on the log pipe first: the host kills the sandbox as soon as
// it sees the hang-up, and would not learn why (e.g. ETOOMANYREFS when its
// host user has too many descriptors in flight).
func reportFailed(uc *net.UnixConn, err error) error {
	fmt.Fprintf(os.Stderr, "cordon-sandbox: report ready: %v\n", err)
	_ = uc.Close()
	return fmt.Errorf("confine: report ready: %w", err)
}

var errSeccomp = errors.New("seccomp")

// sendFailure sends the failure packet (see ParseFailure) for a step of
// layer (an L* bit, 0 for none) that failed with err, best effort: the
// host falls back on the exit code and the log line.
func sendFailure(uc *net.UnixConn, layer uint64, step string, err error) {
	var errno unix.Errno
	if !errors.As(err, &errno) {
		errno = 0
	}
	_, _, _ = uc.WriteMsgUnix([]byte(FormatFailure(layer, step, errno)), nil, nil)
}

// FormatFailure encodes the failure packet, as early.c's die does: the
// step is cut to what fits in MaxReady and to printable ASCII.
func FormatFailure(layer uint64, step string, errno unix.Errno) string {
	head := fmt.Sprintf("%s %#x %d ", FailedPrefix, layer, int(errno))
	b := []byte(step)
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			b[i] = '?'
		}
	}
	if len(head)+len(b) > MaxReady {
		b = b[:MaxReady-len(head)]
	}
	return head + string(b)
}

// Failure is what a sandbox reports when a step of its confinement failed.
type Failure struct {
	Layer uint64 // the L* bit of the layer the step belongs to; 0: none
	Errno unix.Errno
	Step  string // printable ASCII, at most MaxReady bytes
}

// childLayers are the bits a failure may name: the layers the sandbox
// applies itself.
const childLayers = LPdeathsig | LFds | LPivot | LUTS | LCgroupNS | LRlimits | LCaps | LNNP | LLandlock | LSeccomp | LOOM

// maxErrno bounds the errno a failure may carry (the kernel's are below
// 4096, MAX_ERRNO).
const maxErrno = 4095

// IsFailure reports whether a packet from the sandbox is a failure report
// rather than the ready packet.
func IsFailure(b []byte) bool {
	return len(b) > len(FailedPrefix) && string(b[:len(FailedPrefix)]) == FailedPrefix && b[len(FailedPrefix)] == ' '
}

// ParseFailure decodes a failure packet, "cordon-failed <layer bit> <errno>
// <step>" (hostile input: the host calls it on bytes from the sandbox). It
// accepts at most one bit, of a layer the sandbox applies itself, an errno
// below 4096, and a step of printable ASCII.
func ParseFailure(b []byte) (Failure, error) {
	if len(b) > MaxReady {
		return Failure{}, errors.New("failure packet too long")
	}
	if !IsFailure(b) {
		return Failure{}, errors.New("malformed failure packet")
	}
	f := strings.SplitN(string(b[len(FailedPrefix)+1:]), " ", 3)
	if len(f) != 3 {
		return Failure{}, errors.New("malformed failure packet")
	}
	layer, err := strconv.ParseUint(f[0], 0, 64)
	if err != nil || layer&^childLayers != 0 || layer&(layer-1) != 0 {
		return Failure{}, fmt.Errorf("failure packet: bad layer %q", clip(f[0]))
	}
	errno, err := strconv.ParseUint(f[1], 10, 16)
	if err != nil || errno > maxErrno {
		return Failure{}, fmt.Errorf("failure packet: bad errno %q", clip(f[1]))
	}
	step := f[2]
	for i := 0; i < len(step); i++ {
		if step[i] < 0x20 || step[i] > 0x7e {
			return Failure{}, errors.New("failure packet: step not printable ASCII")
		}
	}
	if step == "" {
		return Failure{}, errors.New("failure packet: no step")
	}
	return Failure{Layer: layer, Errno: unix.Errno(errno), Step: step}, nil
}

// clip shows at most 16 bytes of a bad field, quoted by the caller.
func clip(s string) string {
	if len(s) > 16 {
		return s[:16] + "..."
	}
	return s
}

// sealAndReport installs filter on every thread and sends msg with the
// listener fd over uc, in C with signals blocked (see early.c for why).
func sealAndReport(uc *net.UnixConn, filter []unix.SockFilter, msg string) error {
	if len(filter) == 0 || len(filter) > unix.BPF_MAXINSNS {
		return fmt.Errorf("%w: bad filter length %d", errSeccomp, len(filter))
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	cmsg := C.CBytes([]byte(msg))
	defer C.free(cmsg)
	cfilter := C.CBytes(unsafe.Slice((*byte)(unsafe.Pointer(&filter[0])), len(filter)*int(unsafe.Sizeof(filter[0]))))
	defer C.free(cfilter)
	var ret, stage C.int
	if err := rc.Control(func(fd uintptr) {
		ret = C.cordon_seal_and_report(C.int(fd), cfilter, C.ushort(len(filter)), cmsg, C.size_t(len(msg)), &stage)
	}); err != nil {
		return err
	}
	if ret == 0 {
		return nil
	}
	errno := unix.Errno(-ret)
	if stage == 1 {
		return fmt.Errorf("%w: %w", errSeccomp, errno)
	}
	return errno
}

func parseConfig(s string) (Config, error) {
	var c Config
	p := strings.Split(s, ":")
	if len(p) != 8 {
		return c, errors.New("confine: bad configuration")
	}
	var v [8]uint64
	for i, x := range p {
		n, err := strconv.ParseUint(x, 0, 64)
		if err != nil {
			return c, errors.New("confine: bad configuration")
		}
		v[i] = n
	}
	if v[0] != ConfigVersion || v[2] > 1000 {
		return c, errors.New("confine: bad configuration")
	}
	return Config{Layers: v[1], Files: int(v[2]), NoFile: v[3], AS: v[4], NProc: v[5], FSize: v[6], Data: v[7]}, nil
}

// ParseReady decodes the ready packet (hostile input: the host calls it on
// bytes from the sandbox). It returns the applied layer bits and the Landlock
// ABI version the child saw.
func ParseReady(b []byte) (applied uint64, landlockABI int, err error) {
	if len(b) > MaxReady {
		return 0, 0, errors.New("ready packet too long")
	}
	f := strings.Fields(string(b))
	if len(f) != 3 || f[0] != ReadyPrefix {
		return 0, 0, errors.New("malformed ready packet")
	}
	if applied, err = strconv.ParseUint(f[1], 0, 64); err != nil {
		return 0, 0, errors.New("malformed ready packet")
	}
	abi, err := strconv.ParseUint(f[2], 10, 8)
	if err != nil {
		return 0, 0, errors.New("malformed ready packet")
	}
	return applied, int(abi), nil
}
