package host

import (
	"context"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/pkg/candid"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// newFeelessFixture is a node in the given isolation mode whose executions,
// compilation and memory cost nothing, with a smaller install instruction
// limit (so a spinning hook ends soon), and then what tweaks change.
func newFeelessFixture(t *testing.T, isolation string, tweaks ...func(*Config)) *fixture {
	cfg := testConfig(t, isolation)
	cfg.UpdateInstructions = 4_000_000_000
	cfg.InstallInstructions = 3_000_000_000
	cfg.Fees.UpdateExecution, cfg.Fees.PerInstruction = 0, 0
	cfg.Fees.IngressReception, cfg.Fees.IngressPerByte = 0, 0
	cfg.Fees.Call, cfg.Fees.CallPerByte = 0, 0
	cfg.Fees.GiBStoragePerSecond = 0
	cfg.Fees.CompilePerByte = 0
	for _, tweak := range tweaks {
		tweak(&cfg)
	}
	return openFixture(t, cfg)
}

// withCustomSection appends a custom section to a module.
func withCustomSection(wasm []byte, name string, payload []byte) []byte {
	body := append(leb(uint64(len(name))), name...)
	body = append(body, payload...)
	out := append(append([]byte(nil), wasm...), 0)
	out = append(out, leb(uint64(len(body)))...)
	return append(out, body...)
}

// eopSection marks a module as using enhanced orthogonal persistence.
const eopSection = "icp:private enhanced-orthogonal-persistence"

func eopWat(t testing.TB, src string) []byte {
	return withCustomSection(mustWat(t, src), eopSection, nil)
}

// upgradeArg is install_code's argument for mode upgrade with the given
// upgrade options record.
func upgradeArg(t testing.TB, id principal.Principal, wasm []byte, opts candid.Record) []byte {
	t.Helper()
	b, err := candid.EncodeArgs(candid.Args{Types: mustArgTypes(t, "install_code"), Values: []candid.Value{sortRecord(candid.Record{
		{ID: candid.Hash("mode"), Value: candid.Variant{ID: candid.Hash("upgrade"), Value: candid.Opt{Value: sortRecord(opts)}}},
		{ID: candid.Hash("canister_id"), Value: candid.Principal{Principal: id}},
		{ID: candid.Hash("wasm_module"), Value: candid.Blob(wasm)},
		{ID: candid.Hash("arg"), Value: candid.Blob(nil)},
		{ID: candid.Hash("sender_canister_version"), Value: candid.Opt{}},
	})}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// upgradeOpts is an upgrade options record: persistence "" omits
// wasm_memory_persistence, skip nil omits skip_pre_upgrade.
func upgradeOpts(persistence string, skip *bool) candid.Record {
	r := candid.Record{{ID: candid.Hash("wasm_memory_persistence"), Value: candid.Opt{}}, {ID: candid.Hash("skip_pre_upgrade"), Value: candid.Opt{}}}
	if persistence != "" {
		r[0].Value = candid.Opt{Value: candid.Variant{ID: candid.Hash(persistence), Value: candid.Null{}}}
	}
	if skip != nil {
		r[1].Value = candid.Opt{Value: candid.Bool(*skip)}
	}
	return r
}

// mgmtUpgrade upgrades id through the management canister's install_code.
func (f *fixture) mgmtUpgrade(id principal.Principal, wasm []byte, opts candid.Record) error {
	_, err := f.node.Update(context.Background(), Message{Canister: principal.Management(), Method: "install_code",
		Arg: upgradeArg(f.t, id, wasm, opts), Caller: user})
	return err
}

// Upgrading a canister that uses enhanced orthogonal persistence without
// wasm_memory_persistence is refused, as on the IC: replacing its heap
// would lose its whole state. Through install_code and Install alike.
func TestUpgradeOfEOPCanisterNeedsPersistenceOption(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	id := f.install(module(t, examplesDir, "counter64"), noArgs)
	eq(t, "add", f.update(id, "add", natArg(41)), natReply(41))
	before, mem := f.status(id), f.memoryHash(id)
	const want = "Missing upgrade option: Enhanced orthogonal persistence requires the `wasm_memory_persistence` upgrade option."
	_, err := f.node.Install(context.Background(), id, InstallOptions{Mode: ModeUpgrade, Wasm: module(t, corpusDir, "counter"), Arg: noArgs, Caller: user})
	if r := f.reject(err); r.Code != CanisterError || r.Message != want {
		t.Fatalf("upgrade without the option: %v", r)
	}
	if err := f.mgmtUpgrade(id, module(t, examplesDir, "counter64"), upgradeOpts("", nil)); err == nil || f.reject(err).Message != want {
		t.Fatalf("install_code without the option: %v", err)
	}
	// The refusals cost the module's preparation (as on the IC), and
	// changed nothing else.
	if st := f.status(id); st.ModuleHash != before.ModuleHash || st.Version != before.Version || f.memoryHash(id) != mem {
		t.Fatalf("a refused upgrade changed the canister: module %s, version %d", st.ModuleHash, st.Version)
	}
	eq(t, "get after the refused upgrades", f.query(id, "get", noArgs), natReply(41))
	// Kept as asked: the counter goes on.
	if err := f.mgmtUpgrade(id, module(t, examplesDir, "counter64"), upgradeOpts("keep", nil)); err != nil {
		t.Fatal(err)
	}
	eq(t, "get after keep", f.query(id, "get", noArgs), natReply(41))
}

// With the option omitted the heap is replaced unless the OLD module uses
// EOP: a new module that uses it does not start from a classical module's
// heap.
func TestUpgradeWithoutOptionReplacesHeap(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	id := f.install(mustWat(t, `(module (memory 1) (data (i32.const 100) "old-secret"))`), nil)
	peek := eopWat(t, `(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (memory 1)
  (func (export "canister_query peek") (call $append (i32.const 100) (i32.const 10)) (call $reply)))`)
	if _, err := f.node.Install(context.Background(), id, InstallOptions{Mode: ModeUpgrade, Wasm: peek, Arg: noArgs, Caller: user}); err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	if got := f.query(id, "peek", nil); string(got) != string(make([]byte, 10)) {
		t.Fatalf("the new module starts from the old module's heap (%q); with the option omitted the heap is replaced", got)
	}
}

// wasm_memory_persistence = keep needs a new module that uses EOP, and a
// kept heap needs a memory of the same index type in the new module: each
// is refused with a clean CANISTER_ERROR in both modes, before anything
// runs, and the canister is as it was.
func TestKeepHeapValidation(t *testing.T) {
	t.Parallel()
	const (
		noEOP   = "Invalid upgrade option: The `wasm_memory_persistence: opt Keep` upgrade option requires that the new canister module supports enhanced orthogonal persistence."
		noMem   = "Invalid upgrade option: The `wasm_memory_persistence: opt Keep` upgrade option keeps the Wasm memory, and the new canister module declares none."
		to64    = "Invalid upgrade option: The `wasm_memory_persistence: opt Keep` upgrade option keeps a 32-bit Wasm memory, and the new canister module declares a 64-bit one."
		to32    = "Invalid upgrade option: The `wasm_memory_persistence: opt Keep` upgrade option keeps a 64-bit Wasm memory, and the new canister module declares a 32-bit one."
		old32   = `(module (memory 3) (data (i32.const 0) "secret-of-old") (func (export "canister_pre_upgrade") unreachable))`
		old64   = `(module (memory i64 3) (data (i64.const 0) "secret-of-old") (func (export "canister_pre_upgrade") unreachable))`
		update  = `(func (export "canister_update x"))`
		plain32 = `(module (memory 1) ` + update + `)`
		plain64 = `(module (memory i64 1) ` + update + `)`
		none    = `(module ` + update + `)`
	)
	cases := []struct {
		name      string
		old, new  string
		newEOP    bool
		wantError string
	}{
		{"plain 32-bit", old32, plain32, false, noEOP},
		{"plain memory64", old32, plain64, false, noEOP},
		{"EOP without memory", old32, none, true, noMem},
		{"EOP 32 to 64", old32, plain64, true, to64},
		{"EOP 64 to 32", old64, plain32, true, to32},
	}
	for _, mode := range []string{"inprocess", "sandbox"} {
		for _, c := range cases {
			t.Run(mode+"/"+c.name, func(t *testing.T) {
				f := newFeelessFixture(t, mode)
				id := f.install(eopWat(t, c.old), nil)
				before, mem := f.status(id), f.memoryHash(id)
				wasm := mustWat(t, c.new)
				if c.newEOP {
					wasm = eopWat(t, c.new)
				}
				keep := true
				// pre_upgrade traps: the refusal comes before it runs.
				_, err := f.node.Install(context.Background(), id, InstallOptions{Mode: ModeUpgrade, Wasm: wasm, Caller: user, KeepHeap: &keep})
				if r := f.reject(err); r.Code != CanisterError || r.Message != c.wantError {
					t.Fatalf("got %v, want CANISTER_ERROR %q", r, c.wantError)
				}
				if st := f.status(id); st.ModuleHash != before.ModuleHash || st.StateHash != before.StateHash || f.memoryHash(id) != mem || st.HeapBytes != 3*65536 {
					t.Fatalf("a refused upgrade changed the canister: module %s, heap %d bytes", st.ModuleHash, st.HeapBytes)
				}
			})
		}
	}
}

// Cordon's own CLI and HTTP API ask, when not told, for what dfx asks:
// keep when the installed module uses EOP, replace otherwise. A new module
// without EOP is then refused, not given an empty heap.
func TestKeepEOPByDefault(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	byDefault := func(id principal.Principal, wasm []byte) error {
		_, err := f.node.Install(ctx, id, InstallOptions{Mode: ModeUpgrade, Wasm: wasm, Arg: noArgs, Caller: user, KeepEOPByDefault: true})
		return err
	}
	id := f.install(module(t, examplesDir, "counter64"), noArgs)
	eq(t, "add", f.update(id, "add", natArg(7)), natReply(7))
	if err := byDefault(id, module(t, examplesDir, "counter64")); err != nil {
		t.Fatal(err)
	}
	eq(t, "get after the default upgrade", f.query(id, "get", noArgs), natReply(7))
	err := byDefault(id, module(t, corpusDir, "counter"))
	if r := f.reject(err); r.Code != CanisterError || !strings.HasPrefix(r.Message, "Invalid upgrade option:") {
		t.Fatalf("EOP to classical by default: %v", r)
	}
	// Classical to EOP: replaced, as the old module does not use EOP.
	classical := f.install(mustWat(t, `(module (memory 1) (data (i32.const 100) "old-secret"))`), nil)
	peek := eopWat(t, `(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (memory 1)
  (func (export "canister_query peek") (call $append (i32.const 100) (i32.const 10)) (call $reply)))`)
	if err := byDefault(classical, peek); err != nil {
		t.Fatal(err)
	}
	eq(t, "classical heap replaced", f.query(classical, "peek", nil), make([]byte, 10))
}

// skipPreUpgradeWat's pre_upgrade writes stable memory and then traps: an
// upgrade that runs it fails, one that skips it keeps stable memory as it
// was.
const skipPreUpgradeWat = `(module
  (import "ic0" "trap" (func $trap (param i32 i32)))
  (import "ic0" "stable64_grow" (func $sgrow (param i64) (result i64)))
  (memory 1)
  (func (export "canister_pre_upgrade")
    (drop (call $sgrow (i64.const 1)))
    (call $trap (i32.const 0) (i32.const 0))))`

// skip_pre_upgrade = opt true skips the old module's pre_upgrade, the way
// out for a canister whose pre_upgrade traps; through install_code,
// Install and install_chunked_code.
func TestSkipPreUpgrade(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	skip, noSkip := true, false
	for _, path := range []string{"install_code", "Install", "install_chunked_code"} {
		t.Run(path, func(t *testing.T) {
			id := f.install(mustWat(t, skipPreUpgradeWat), nil)
			next := mustWat(t, `(module (memory 1) (func (export "canister_update x")))`)
			upgrade := func(s bool) error {
				switch path {
				case "install_code":
					return f.mgmtUpgrade(id, next, upgradeOpts("", &s))
				case "Install":
					_, err := f.node.Install(ctx, id, InstallOptions{Mode: ModeUpgrade, Wasm: next, Caller: user, SkipPreUpgrade: s})
					return err
				}
				hash, err := f.node.UploadChunk(ctx, id, user, next)
				if err != nil {
					t.Fatal(err)
				}
				_, err = f.node.InstallChunked(ctx, InstallChunkedOptions{Mode: ModeUpgrade, Target: id, Hashes: [][]byte{hash},
					ModuleHash: hash, Caller: user, SkipPreUpgrade: s})
				return err
			}
			if err := upgrade(noSkip); err == nil || !strings.Contains(err.Error(), "pre_upgrade trapped") {
				t.Fatalf("upgrade running pre_upgrade: %v", err)
			}
			if err := upgrade(skip); err != nil {
				t.Fatalf("upgrade with skip_pre_upgrade: %v", err)
			}
			if st := f.status(id); st.StableBytes != 0 || len(st.Updates) != 1 {
				t.Fatalf("after the upgrade: stable %d bytes, updates %v", st.StableBytes, st.Updates)
			}
		})
	}
}
