package sysapi

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/pkg/principal"
)

type flatMemory []byte

func (m flatMemory) Bytes() []byte { return m }

type countMeter struct{ used, limit uint64 }

func (m *countMeter) Charge(n uint64) error {
	if m.used+n > m.limit {
		m.used = m.limit
		return ErrInstructionLimit
	}
	m.used += n
	return nil
}
func (m *countMeter) Used() uint64 { return m.used }

func newExec(ctx Context) (*Execution, flatMemory, *countMeter) {
	mem := make(flatMemory, 65536)
	meter := &countMeter{limit: 1 << 30}
	in := &Input{
		Context: ctx, Arg: []byte("hello"), Caller: []byte{4}, CanisterID: []byte{1, 2, 3},
		Balance: cycles.New(1000), CyclesAvailable: cycles.New(300), Status: StatusRunning,
		Limits: Limits{Instructions: 1 << 30, HeapBytes: 1 << 20, StableBytes: 2 * state.WasmPageSize,
			ReplyBytes: 16, CallArgBytes: 16, MaxOutgoing: 1, DebugPrintBytes: 8, MaxLogLines: 2},
		Stable: state.NewPageMap(0),
	}
	return NewExecution(in, mem, meter), mem, meter
}

func call(t *testing.T, e *Execution, name string, args ...uint64) (uint64, error) {
	t.Helper()
	s, ok := Lookup(name, false)
	if !ok {
		t.Fatalf("no import %s", name)
	}
	return e.Call(s, args)
}

func TestAvailability(t *testing.T) {
	// msg_reply is not allowed in init, and the trap names the call and context.
	e, _, _ := newExec(CtxInit)
	_, err := call(t, e, "msg_reply")
	var tr *Trap
	if !errors.As(err, &tr) || !strings.Contains(tr.Message, "ic0.msg_reply") || !strings.Contains(tr.Message, "init") {
		t.Fatalf("msg_reply in init: %v", err)
	}
	// Every import is callable somewhere and never in start unless "s".
	for _, s := range Imports {
		if s.Allowed == 0 {
			t.Errorf("%s allowed nowhere", s.Name)
		}
		if len(s.Results) > 1 {
			t.Errorf("%s has %d results", s.Name, len(s.Results))
		}
	}
	if s, _ := Lookup("stable_read", true); s != nil {
		t.Fatal("32-bit-only import offered to a 64-bit canister")
	}
	if _, ok := Lookup("stable64_read", true); !ok {
		t.Fatal("stable64_read missing for 64-bit")
	}
}

func TestReplyAndLimits(t *testing.T) {
	e, mem, _ := newExec(CtxUpdate)
	copy(mem[100:], "abcdefghijklmnopqrstuvwxyz")
	if _, err := call(t, e, "msg_reply_data_append", 100, 10); err != nil {
		t.Fatal(err)
	}
	if _, err := call(t, e, "msg_reply_data_append", 100, 10); err == nil {
		t.Fatal("reply over the limit accepted")
	}
	if _, err := call(t, e, "msg_reply_data_append", 65530, 10); err == nil {
		t.Fatal("read past the heap accepted")
	}
	if _, err := call(t, e, "msg_reply"); err != nil {
		t.Fatal(err)
	}
	if _, err := call(t, e, "msg_reject", 100, 2); err == nil {
		t.Fatal("reject after reply accepted")
	}
	out := e.Finish(nil)
	if out.Response != Replied || string(out.Reply) != "abcdefghij" {
		t.Fatalf("output %+v", out)
	}
}

func TestArgCopyBounds(t *testing.T) {
	e, mem, _ := newExec(CtxUpdate)
	if _, err := call(t, e, "msg_arg_data_copy", 0, 1, 4); err != nil {
		t.Fatal(err)
	}
	if string(mem[:4]) != "ello" {
		t.Fatalf("copied %q", mem[:4])
	}
	for _, a := range [][3]uint64{{0, 3, 3}, {65535, 0, 2}, {0, 1<<32 - 1, 2}} {
		if _, err := call(t, e, "msg_arg_data_copy", a[0], a[1], a[2]); err == nil {
			t.Errorf("copy %v accepted", a)
		}
	}
}

func TestCyclesNeverMinted(t *testing.T) {
	e, mem, _ := newExec(CtxUpdate)
	// Accept more than available: only what is available is accepted.
	if _, err := call(t, e, "msg_cycles_accept128", 0, 1_000_000, 0); err != nil {
		t.Fatal(err)
	}
	if got := LittleEndianU64(mem[0:8]); got != 300 {
		t.Fatalf("accepted %d, want 300", got)
	}
	if _, err := call(t, e, "msg_cycles_accept128", 0, 5, 0); err != nil || LittleEndianU64(mem[0:8]) != 0 {
		t.Fatal("accepted twice")
	}
	// Attaching more than the balance traps.
	copy(mem[200:], []byte{1, 2, 3})
	if _, err := call(t, e, "call_new", 200, 3, 200, 1, 0, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := call(t, e, "call_cycles_add128", 0, 1301); err == nil {
		t.Fatal("attached more than the balance")
	}
	if _, err := call(t, e, "call_cycles_add128", 0, 1300); err != nil {
		t.Fatal(err)
	}
	if r, _ := call(t, e, "call_perform"); r != 0 {
		t.Fatalf("call_perform = %d", r)
	}
	out := e.Finish(nil)
	if out.CyclesAccepted != cycles.New(300) || out.CyclesSent != cycles.New(1300) {
		t.Fatalf("accepted %s sent %s", out.CyclesAccepted, out.CyclesSent)
	}
}

func TestStableMemory(t *testing.T) {
	e, mem, _ := newExec(CtxUpdate)
	if r, _ := call(t, e, "stable64_grow", 1); r != 0 {
		t.Fatalf("grow = %d", r)
	}
	if r, _ := call(t, e, "stable64_grow", 5); r != ^uint64(0) {
		t.Fatalf("grow past the limit = %d, want -1", r)
	}
	copy(mem[10:], "stable!")
	if _, err := call(t, e, "stable64_write", 65530, 10, 6); err != nil {
		t.Fatal(err)
	}
	if _, err := call(t, e, "stable64_write", 65531, 10, 6); err == nil {
		t.Fatal("write past stable memory accepted")
	}
	if _, err := call(t, e, "stable64_read", 100, 65530, 6); err != nil || string(mem[100:106]) != "stable" {
		t.Fatalf("read back %q %v", mem[100:106], err)
	}
	out := e.Finish(nil)
	if out.Stable.Size != state.WasmPageSize || len(out.Stable.Pages) != 1 || out.Stable.Pages[0].Index != 15 {
		t.Fatalf("stable delta %+v", out.Stable)
	}
}

func TestTrapDiscardsEverything(t *testing.T) {
	e, mem, _ := newExec(CtxUpdate)
	copy(mem, "xy")
	call(t, e, "certified_data_set", 0, 2)
	call(t, e, "debug_print", 0, 2)
	_, err := call(t, e, "trap", 0, 2)
	out := e.Finish(err)
	if !out.Trapped || !strings.Contains(out.TrapMessage, "xy") || out.CertifiedDataSet || len(out.Logs) != 1 {
		t.Fatalf("trap output %+v", out)
	}
	if _, err := call(t, e, "certified_data_set", 0, 33); err == nil {
		t.Fatal("33 bytes of certified data accepted")
	}
}

func TestInstructionLimit(t *testing.T) {
	e, _, meter := newExec(CtxUpdate)
	meter.limit = 30
	if _, err := call(t, e, "msg_reply_data_append", 0, 16); err != ErrInstructionLimit {
		t.Fatalf("got %v", err)
	}
	if meter.Used() != 30 {
		t.Fatalf("used %d", meter.Used())
	}
}

// No canister mints cycles, not even one whose id is the Cycles Minting
// Canister's on the IC (a node's fifth canister has it): the call traps
// with the replica's message and the live balance stays as it was.
func TestMintCyclesNeverMints(t *testing.T) {
	cmc := principal.MustFromText("rkp4c-7iaaa-aaaaa-aaaca-cai")
	for _, id := range [][]byte{{1, 2, 3}, cmc.Bytes()} {
		for _, mint := range []struct {
			name string
			args []uint64
		}{{"mint_cycles128", []uint64{0, 1 << 40, 0}}, {"mint_cycles128", []uint64{^uint64(0), ^uint64(0), 0}}, {"mint_cycles", []uint64{1 << 40}}} {
			for _, memory64 := range []bool{false, true} {
				e, mem, _ := newExec(CtxUpdate)
				e.in.CanisterID, e.in.Memory64 = id, memory64
				s, ok := Lookup(mint.name, memory64)
				if !ok {
					t.Fatalf("ic0.%s missing for memory64=%v", mint.name, memory64)
				}
				_, err := e.Call(s, mint.args)
				var tr *Trap
				if !errors.As(err, &tr) || !strings.Contains(tr.Message, "ic0."+mint.name+" cannot be executed on non Cycles Minting Canister") {
					t.Fatalf("%s by %x: %v", mint.name, id, err)
				}
				if _, err := call(t, e, "canister_cycle_balance128", 0); err != nil {
					t.Fatal(err)
				}
				if got := binary.LittleEndian.Uint64(mem[0:]); got != 1000 || binary.LittleEndian.Uint64(mem[8:]) != 0 {
					t.Fatalf("%s changed the live balance to %d", mint.name, got)
				}
				if out := e.Finish(err); !out.Trapped || !out.CyclesAccepted.IsZero() || !out.CyclesBurned.IsZero() {
					t.Fatalf("%s output %+v", mint.name, out)
				}
			}
		}
	}
	// Not in a query or in init, like the specification's mint_cycles.
	for _, ctx := range []Context{CtxInit, CtxNonReplicatedQuery, CtxReplicatedQuery, CtxCleanup, CtxStart} {
		e, _, _ := newExec(ctx)
		_, err := call(t, e, "mint_cycles128", 0, 1, 0)
		if err == nil || !strings.Contains(err.Error(), "cannot be executed in") {
			t.Fatalf("mint_cycles128 in %s: %v", ctx, err)
		}
	}
}

// root_key_* copy the root key in replicated contexts and trap in
// non-replicated ones and where the node has none; data_certificate_* give
// the certificate only where the host put one.
func TestRootKeyAndDataCertificate(t *testing.T) {
	key := []byte("0\x81\x82 a DER root key")
	e, mem, _ := newExec(CtxUpdate)
	e.in.RootKey = key
	if n, err := call(t, e, "root_key_size"); err != nil || n != uint64(len(key)) {
		t.Fatalf("root_key_size: %d %v", n, err)
	}
	if _, err := call(t, e, "root_key_copy", 100, 2, uint64(len(key))-2); err != nil || string(mem[100:100+len(key)-2]) != string(key[2:]) {
		t.Fatalf("root_key_copy: %v %q", err, mem[100:100+len(key)])
	}
	if _, err := call(t, e, "root_key_copy", 100, 1, uint64(len(key))); err == nil {
		t.Fatal("root_key_copy past the key's end")
	}
	if p, _ := call(t, e, "data_certificate_present"); p != 0 {
		t.Fatal("a certificate in an update")
	}
	e, _, _ = newExec(CtxUpdate)
	if _, err := call(t, e, "root_key_size"); err == nil || !strings.Contains(err.Error(), "no IC root key") {
		t.Fatalf("root_key_size without a key: %v", err)
	}
	for _, ctx := range []Context{CtxNonReplicatedQuery, CtxCompositeQuery, CtxInspect} {
		e, _, _ = newExec(ctx)
		e.in.RootKey = key
		if _, err := call(t, e, "root_key_size"); err == nil {
			t.Fatalf("root_key_size in %v", ctx)
		}
	}
	cert := []byte("\xd9\xd9\xf7 a certificate")
	e, mem, _ = newExec(CtxNonReplicatedQuery)
	e.in.DataCertificate = cert
	if p, _ := call(t, e, "data_certificate_present"); p != 1 {
		t.Fatal("certificate not present")
	}
	if n, _ := call(t, e, "data_certificate_size"); n != uint64(len(cert)) {
		t.Fatalf("data_certificate_size %d", n)
	}
	if _, err := call(t, e, "data_certificate_copy", 200, 0, uint64(len(cert))); err != nil || string(mem[200:200+len(cert)]) != string(cert) {
		t.Fatalf("data_certificate_copy: %v", err)
	}
	e, _, _ = newExec(CtxNonReplicatedQuery)
	if _, err := call(t, e, "data_certificate_size"); err == nil {
		t.Fatal("data_certificate_size without a certificate")
	}
}

// A callback of a call context that was already answered (or of a system
// task, which has nobody to answer) cannot answer it again: msg_reply,
// msg_reject and msg_reply_data_append trap, as on the IC, and nothing of
// the callback's output survives the trap.
func TestAnsweredContextCannotAnswerAgain(t *testing.T) {
	for _, ctx := range []Context{CtxReply, CtxReject} {
		for _, tc := range []struct {
			name string
			args []uint64
		}{
			{"msg_reply", nil},
			{"msg_reject", []uint64{100, 2}},
			{"msg_reply_data_append", []uint64{100, 2}},
		} {
			e, mem, _ := newExec(ctx)
			e.in.Responded = true
			e = NewExecution(e.in, mem, &countMeter{limit: 1 << 30})
			copy(mem[100:], "no")
			_, err := call(t, e, tc.name, tc.args...)
			var tr *Trap
			if !errors.As(err, &tr) || !strings.Contains(tr.Message, "ic0."+tc.name) || !strings.Contains(tr.Message, "already replied") {
				t.Fatalf("%s in a %s of an answered call: %v", tc.name, ctx, err)
			}
			if out := e.Finish(err); !out.Trapped || out.Response != NoResponse || out.Reply != nil {
				t.Fatalf("%s in a %s of an answered call: output %+v", tc.name, ctx, out)
			}
		}
		// The same callback of an open call context may answer.
		e, _, _ := newExec(ctx)
		if _, err := call(t, e, "msg_reply"); err != nil {
			t.Fatalf("msg_reply in a %s of an open call: %v", ctx, err)
		}
	}
}
