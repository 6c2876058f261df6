package engine

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"
	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/faultinject"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// hostLimitChild names the environment variable that makes
// TestHostAddressSpaceExhaustionIsNotATrap its own child.
const hostLimitChild = "CORDON_TEST_ENGINE_AS_CHILD"

// When the host cannot reserve an instance's address space (here: the
// process's RLIMIT_AS is nearly used up) the canister did nothing wrong.
// Run must return ErrHostMemory, which the host reports as its own failure
// (SYS_TRANSIENT) with the canister's state unchanged, never a trap that
// would be the canister's answer. The limit is set in a child process: it would starve the test
// binary.
func TestHostAddressSpaceExhaustionIsNotATrap(t *testing.T) {
	if os.Getenv(hostLimitChild) == "1" {
		hostLimitChildMain()
		return
	}
	out, err := faultinject.Child("TestHostAddressSpaceExhaustionIsNotATrap", hostLimitChild+"=1").Output()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	s := string(out)
	if !strings.Contains(s, "RESULT host memory:") {
		t.Fatalf("want the run to fail as the host's memory failure (ErrHostMemory), child said:\n%s", s)
	}
	if !strings.Contains(s, "FITS ok") {
		t.Fatalf("the child's control run did not succeed:\n%s", s)
	}
	t.Log(s)
}

// hostLimitChildMain compiles a module, then lowers RLIMIT_AS to what the
// process uses plus 1 GiB (less than the 4 GiB an instance reserves) and
// runs it. It prints what Run said; the parent judges.
func hostLimitChildMain() {
	e, err := New(DefaultConfig())
	if err != nil {
		fmt.Println("RESULT setup:", err)
		return
	}
	wasm, err := wasmtime.Wat2Wasm(`(module (memory 1) (func (export "canister_init")))`)
	if err != nil {
		fmt.Println("RESULT setup:", err)
		return
	}
	m, err := e.Compile(wasm, DefaultModuleLimits())
	if err != nil {
		fmt.Println("RESULT setup:", err)
		return
	}
	run := func() (*sysapi.Output, error) {
		in := testInput(sysapi.CtxInit, "canister_init", []byte("DIDL\x00\x00"), m)
		return e.Run(&Request{Module: m, Input: in, RunStart: true})
	}
	// Control: with no limit the same run succeeds.
	if out, err := run(); err != nil || out.Trapped {
		fmt.Printf("FITS failed: %v %+v\n", err, out)
		return
	}
	fmt.Println("FITS ok")
	used, err := vmSize()
	if err != nil {
		fmt.Println("RESULT setup:", err)
		return
	}
	lim := used + 1<<30
	if err := unix.Setrlimit(unix.RLIMIT_AS, &unix.Rlimit{Cur: lim, Max: lim}); err != nil {
		fmt.Println("RESULT setup:", err)
		return
	}
	out, err := run()
	switch {
	case errors.Is(err, ErrHostMemory):
		fmt.Println("RESULT host memory:", err)
	case err != nil:
		fmt.Println("RESULT error:", err)
	case out.Trapped:
		fmt.Println("RESULT trapped:", out.TrapMessage)
	default:
		fmt.Println("RESULT ran")
	}
}

// vmSize returns the process's address space in bytes (/proc/self/status).
func vmSize() (uint64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[0] == "VmSize:" && f[2] == "kB" {
			kb, err := strconv.ParseUint(f[1], 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmSize in /proc/self/status")
}

// The other side of the line: a limit the canister itself exceeds at
// instantiation (a memory or table minimum above what it is allowed) is
// its trap, with a message free of wasmtime's backtrace.
func TestCanisterLimitAtInstantiationTraps(t *testing.T) {
	e, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, decl := range []string{
		"(memory 1025)", // 64 MiB + 64 KiB, above the 64 MiB heap limit below
		"(memory 1) (table 10000001 funcref)",
	} {
		wasm, err := wasmtime.Wat2Wasm(`(module ` + decl + ` (func (export "canister_init")))`)
		if err != nil {
			t.Fatal(err)
		}
		m, err := e.Compile(wasm, DefaultModuleLimits())
		if err != nil {
			t.Fatalf("%s: %v", decl, err)
		}
		in := testInput(sysapi.CtxInit, "canister_init", []byte("DIDL\x00\x00"), m)
		in.Limits.HeapBytes = 64 << 20
		out, err := e.Run(&Request{Module: m, Input: in, RunStart: true})
		if err != nil {
			t.Fatalf("%s: a host error, want the canister's trap: %v", decl, err)
		}
		if !out.Trapped || !strings.HasPrefix(out.TrapMessage, "Canister trapped during instantiation: ") {
			t.Fatalf("%s: want an instantiation trap, got %+v", decl, out)
		}
		if strings.Contains(out.TrapMessage, "backtrace") || strings.Contains(out.TrapMessage, "os error") {
			t.Fatalf("%s: trap message %q", decl, out.TrapMessage)
		}
		t.Logf("%s: %s", decl, out.TrapMessage)
	}
}
