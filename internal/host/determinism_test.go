package host

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// The determinism guard. A fixed script of corpus messages runs on a fresh
// node; every step's instruction count and reply, and every canister's state
// hash, balance and memory sizes, must equal testdata/determinism.golden.
// Anything that changes metering or state (a wasmtime upgrade that changes
// fuel accounting, a new fee, a different heap layout) fails here until the
// golden file is regenerated on purpose:
//
//	go test ./internal/host -run TestDeterminism -update
//
// and the commit that changes the golden file says why in its message.
//
// The script runs three times on fresh nodes: in-process twice and sandboxed
// once; all three records must be identical (the design requires
// bit-identical state in both isolation modes), and the first is compared
// with the golden file.
//
// Time: ic0.time is the only wall-clock input of an execution (the storage
// fee, which also depends on time, is off here). No canister in
// the script reads it (none of their sources uses Time, and timer/heartbeat
// canisters are left out); the runs happen at different wall-clock times, so
// a time leak fails the comparison between runs rather than making the golden
// comparison flaky.
var updateGolden = flag.Bool("update", false, "rewrite testdata/determinism.golden (say why in the commit message)")

const goldenPath = "testdata/determinism.golden"

// detUpdateLimit is the update instruction limit of the script's node (the
// other limits and the fees are DefaultConfig's, but for the storage fee):
// low, so `spin` is short.
const detUpdateLimit = 300_000_000

// detStep is one line of the record.
type detStep struct {
	Canister     string `json:"canister"`
	Call         string `json:"call"`
	Arg          string `json:"arg,omitempty"`
	Instructions uint64 `json:"instructions"`
	Reply        string `json:"reply,omitempty"`
	Reject       string `json:"reject,omitempty"`
}

// detCanister is a canister's state at a checkpoint of the script.
type detCanister struct {
	At           string `json:"at"`
	Canister     string `json:"canister"`
	ID           string `json:"id"`
	ModuleHash   string `json:"module_hash"`
	StateHash    string `json:"state_hash"`
	Balance      string `json:"cycles"`
	Instructions uint64 `json:"instructions"`
	HeapBytes    uint64 `json:"heap_bytes"`
	StableBytes  uint64 `json:"stable_bytes"`
}

type detRecord struct {
	Steps     []detStep
	Canisters []detCanister
}

// detCall is one message of the script.
type detCall struct {
	canister string
	kind     string // install, upgrade, update, query, restart
	method   string
	arg      []byte
}

func detScript() []detCall {
	u := func(c, m string, a []byte) detCall { return detCall{c, "update", m, a} }
	q := func(c, m string, a []byte) detCall { return detCall{c, "query", m, a} }
	in := func(c string) detCall { return detCall{c, "install", "", noArgs} }
	up := func(c string) detCall { return detCall{c, "upgrade", "", noArgs} }
	data := bytes.Repeat([]byte("cordon"), 20000) // 120 000 bytes: spans two 64 KiB pages
	var s []detCall
	for _, c := range []string{"counter", "counter64"} {
		s = append(s, in(c), u(c, "inc", noArgs), u(c, "inc", noArgs), u(c, "add", natArg(5)),
			q(c, "get", noArgs), q(c, "greet", textArg("Bob")), up(c), u(c, "inc", noArgs))
	}
	for _, c := range []string{"kv", "kv64"} {
		s = append(s, in(c), u(c, "put", twoTextArg("a", "1")), u(c, "put", twoTextArg("b", "2")),
			u(c, "put", twoTextArg("c", strings.Repeat("x", 20))),
			u(c, "put", twoTextArg("big", strings.Repeat("x", 5000))), // certified data > 32 bytes: traps
			q(c, "get", textArg("a")),
			q(c, "get", textArg("zz")), q(c, "size", noArgs), u(c, "delete", textArg("b")),
			q(c, "keys", noArgs), up(c), q(c, "size", noArgs))
	}
	for _, c := range []string{"compute", "compute64"} {
		s = append(s, in(c), q(c, "primes", natArg(1000)), q(c, "fib", natArg(20)))
	}
	s = append(s, q("compute", "hash", natArg(1000)))
	s = append(s, u("compute", "spin", noArgs)) // traps at the update limit
	for _, c := range []string{"stable", "stable64"} {
		s = append(s, in(c), u(c, "append", blobArg(data)), u(c, "append", blobArg([]byte("tail"))),
			q(c, "usedBytes", noArgs), q(c, "read", readArg(6, 12)), q(c, "pages", noArgs), up(c),
			q(c, "read", readArg(uint64(len(data)), 4)))
	}
	s = append(s, in("memory"), u("memory", "grow", natArg(4)), u("memory", "touch", natPairArg(0, 16)),
		u("memory", "touch", natPairArg(3, 100)), q("memory", "chunkCount", noArgs), q("memory", "checksum", natArg(0)),
		q("memory", "checksum", natArg(3)))
	for _, c := range []string{"traps", "traps64"} {
		s = append(s, in(c), u(c, "setThenTrap", natArg(5)), u(c, "assertFalse", noArgs),
			u(c, "outOfBounds", natArg(10)), u(c, "divZero", natArg(0)), q(c, "get", noArgs))
	}
	s = append(s, u("traps", "deepRecursion", natArg(1000)), q("traps", "get", noArgs))
	s = append(s, detCall{kind: "restart"},
		u("counter", "inc", noArgs), q("counter64", "get", noArgs), q("kv", "get", textArg("a")),
		u("kv64", "put", twoTextArg("d", "4")), q("stable", "usedBytes", noArgs), u("stable64", "append", blobArg([]byte("more"))),
		q("memory", "checksum", natArg(0)), u("traps", "setThenTrap", natArg(6)))
	return s
}

func detModule(t *testing.T, name string) []byte {
	if strings.HasSuffix(name, "64") {
		return module(t, examplesDir, name)
	}
	return module(t, corpusDir, name)
}

func shortBytes(b []byte) string {
	if len(b) <= 64 {
		return hex.EncodeToString(b)
	}
	sum := sha256.Sum256(b)
	return fmt.Sprintf("%d bytes, sha256 %x", len(b), sum)
}

// runDeterminismScript runs the script on a fresh node in the given
// isolation mode ("inprocess" or "sandbox") and records it.
func runDeterminismScript(t *testing.T, isolation string) detRecord {
	cfg := testConfig(t, isolation)
	cfg.UpdateInstructions = detUpdateLimit // `spin` stops here
	// The storage fee depends on the time that passes, which differs from
	// run to run; it has its own tests (memory_test.go).
	cfg.Fees.GiBStoragePerSecond = 0
	f := openFixture(t, cfg)
	ctx := context.Background()
	ids := map[string]principal.Principal{}
	var order []string
	var rec detRecord

	snapshot := func(at string) []detCanister {
		var out []detCanister
		for _, name := range order {
			st, err := f.node.Status(ctx, ids[name])
			if err != nil {
				t.Fatalf("status of %s: %v", name, err)
			}
			out = append(out, detCanister{At: at, Canister: name, ID: st.ID, ModuleHash: st.ModuleHash,
				StateHash: st.StateHash, Balance: st.Balance.String(), Instructions: st.Instructions,
				HeapBytes: st.HeapBytes, StableBytes: st.StableBytes})
		}
		return out
	}

	for _, c := range detScript() {
		step := detStep{Canister: c.canister, Call: strings.TrimSpace(c.kind + " " + c.method)}
		if c.kind != "restart" && c.kind != "install" && c.kind != "upgrade" {
			step.Arg = shortBytes(c.arg)
		}
		switch c.kind {
		case "restart":
			before := snapshot("before restart")
			f.restart()
			after := snapshot("after restart")
			for i := range before {
				if before[i].StateHash != after[i].StateHash {
					t.Errorf("%s: state hash changed across a restart: %s before, %s after",
						before[i].Canister, before[i].StateHash, after[i].StateHash)
				}
			}
			rec.Canisters = append(rec.Canisters, before...)
		case "install":
			ids[c.canister] = f.install(detModule(t, c.canister), c.arg)
			order = append(order, c.canister)
			st, err := f.node.Status(ctx, ids[c.canister])
			if err != nil {
				t.Fatal(err)
			}
			step.Instructions = st.Instructions
		case "upgrade":
			res, err := f.node.Install(ctx, ids[c.canister], InstallOptions{Mode: ModeUpgrade,
				Wasm: detModule(t, c.canister), Arg: c.arg, Caller: user, KeepEOPByDefault: true})
			if err != nil {
				t.Fatalf("upgrade %s: %v", c.canister, err)
			}
			step.Instructions = res.Instructions
		case "update", "query":
			id := ids[c.canister]
			st0, err := f.node.Status(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			msg := Message{Canister: id, Method: c.method, Arg: c.arg, Caller: user}
			var r *Reply
			if c.kind == "update" {
				r, err = f.node.Update(ctx, msg)
			} else {
				r, err = f.node.Query(ctx, msg)
			}
			var rej *Reject
			switch {
			case err == nil:
				step.Instructions = r.Instructions
				step.Reply = shortBytes(r.Data)
			case errors.As(err, &rej):
				// The code only: reject messages carry engine backtraces
				// whose wording is not part of the determinism contract.
				step.Reject = rej.Code.String()
				if c.kind == "update" { // a trapped update is still charged
					st1, err := f.node.Status(ctx, id)
					if err != nil {
						t.Fatal(err)
					}
					step.Instructions = st1.Instructions - st0.Instructions
				}
			default:
				t.Fatalf("%s %s.%s: %v", c.kind, c.canister, c.method, err)
			}
		}
		rec.Steps = append(rec.Steps, step)
	}
	rec.Canisters = append(rec.Canisters, snapshot("end")...)
	return rec
}

// encode writes the record one entry per line, so a diff of the golden file
// names the step that changed.
func (r detRecord) encode() []byte {
	var b bytes.Buffer
	b.WriteString("{\n\"comment\": \"Golden instruction counts and state hashes; see internal/host/determinism_test.go. Regenerate only with `go test ./internal/host -run TestDeterminism -update`, and say why in the commit message.\",\n\"steps\": [\n")
	for i, s := range r.Steps {
		line, _ := json.Marshal(s)
		b.Write(line)
		if i < len(r.Steps)-1 {
			b.WriteByte(',')
		}
		b.WriteByte('\n')
	}
	b.WriteString("],\n\"canisters\": [\n")
	for i, c := range r.Canisters {
		line, _ := json.Marshal(c)
		b.Write(line)
		if i < len(r.Canisters)-1 {
			b.WriteByte(',')
		}
		b.WriteByte('\n')
	}
	b.WriteString("]\n}\n")
	return b.Bytes()
}

func decodeRecord(data []byte) (detRecord, error) {
	var file struct {
		Comment   string        `json:"comment"`
		Steps     []detStep     `json:"steps"`
		Canisters []detCanister `json:"canisters"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&file); err != nil {
		return detRecord{}, err
	}
	return detRecord{Steps: file.Steps, Canisters: file.Canisters}, nil
}

// diffRecords lists every difference, by step and by canister, empty if none.
func diffRecords(want, got detRecord) []string {
	var d []string
	field := func(what string, w, g any) {
		if w != g {
			d = append(d, fmt.Sprintf("%s: golden %v, now %v", what, w, g))
		}
	}
	n := max(len(want.Steps), len(got.Steps))
	for i := range n {
		switch {
		case i >= len(want.Steps):
			d = append(d, fmt.Sprintf("step %d %s %s: not in the golden file", i, got.Steps[i].Canister, got.Steps[i].Call))
		case i >= len(got.Steps):
			d = append(d, fmt.Sprintf("step %d %s %s: in the golden file, not run now", i, want.Steps[i].Canister, want.Steps[i].Call))
		default:
			w, g := want.Steps[i], got.Steps[i]
			name := fmt.Sprintf("step %d %s %s", i, w.Canister, w.Call)
			if w.Canister != g.Canister || w.Call != g.Call || w.Arg != g.Arg {
				d = append(d, fmt.Sprintf("%s: the script changed (now %s %s %s)", name, g.Canister, g.Call, g.Arg))
				continue
			}
			field(name+" instructions", w.Instructions, g.Instructions)
			field(name+" reply", w.Reply, g.Reply)
			field(name+" reject", w.Reject, g.Reject)
		}
	}
	n = max(len(want.Canisters), len(got.Canisters))
	for i := range n {
		switch {
		case i >= len(want.Canisters):
			d = append(d, fmt.Sprintf("canister %s (%s): not in the golden file", got.Canisters[i].Canister, got.Canisters[i].At))
		case i >= len(got.Canisters):
			d = append(d, fmt.Sprintf("canister %s (%s): in the golden file, not recorded now", want.Canisters[i].Canister, want.Canisters[i].At))
		default:
			w, g := want.Canisters[i], got.Canisters[i]
			name := fmt.Sprintf("canister %s (%s)", w.Canister, w.At)
			if w.Canister != g.Canister || w.At != g.At {
				d = append(d, fmt.Sprintf("%s: the script changed (now %s, %s)", name, g.Canister, g.At))
				continue
			}
			field(name+" id", w.ID, g.ID)
			field(name+" module hash", w.ModuleHash, g.ModuleHash)
			field(name+" state hash", w.StateHash, g.StateHash)
			field(name+" cycles", w.Balance, g.Balance)
			field(name+" instructions", w.Instructions, g.Instructions)
			field(name+" heap bytes", w.HeapBytes, g.HeapBytes)
			field(name+" stable bytes", w.StableBytes, g.StableBytes)
		}
	}
	return d
}

func TestDeterminism(t *testing.T) {
	// Not t.Parallel: a long test. Its in-process and sandboxed runs go
	// together before the parallel tests start, rather than trailing them.
	var first, sandboxed detRecord
	t.Run("runs", func(t *testing.T) { // returns when both have
		t.Run("inprocess", func(t *testing.T) {
			t.Parallel()
			first = runDeterminismScript(t, "inprocess")
			if t.Failed() {
				return
			}
			// A second run on a fresh node, later in wall-clock time:
			// anything time-dependent or otherwise nondeterministic shows
			// up here.
			second := runDeterminismScript(t, "inprocess")
			if d := diffRecords(first, second); len(d) > 0 {
				t.Fatalf("two runs of the same script differ (nondeterminism, e.g. a canister that stores ic0.time):\n  %s",
					strings.Join(d, "\n  "))
			}
		})
		t.Run("sandbox", func(t *testing.T) {
			t.Parallel()
			sandboxed = runDeterminismScript(t, "sandbox")
		})
	})
	if t.Failed() {
		return
	}
	// Both isolation modes must give bit-identical results.
	if d := diffRecords(first, sandboxed); len(d) > 0 {
		t.Fatalf("in-process (golden side) and sandboxed runs of the same script differ:\n  %s", strings.Join(d, "\n  "))
	}

	got := first.encode()
	path := filepath.FromSlash(goldenPath)
	if *updateGolden {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s: say why it changed in the commit message", path)
		return
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (create it with `go test ./internal/host -run TestDeterminism -update`)", err)
	}
	want, err := decodeRecord(data)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if d := diffRecords(want, first); len(d) > 0 {
		t.Fatalf("metering or state differs from %s (%d differences):\n  %s\n\n"+
			"If the change is intended (for example a wasmtime upgrade that changes fuel accounting), regenerate with\n"+
			"  go test ./internal/host -run TestDeterminism -update\n"+
			"and write why in the commit message.", path, len(d), strings.Join(d, "\n  "))
	}
	if !bytes.Equal(data, got) { // same values, different layout: keep the file canonical
		t.Fatalf("%s is not in canonical form; regenerate with -update", path)
	}
}
