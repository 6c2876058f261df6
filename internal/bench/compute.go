package bench

import (
	"bytes"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// v8Shim runs a query of a canister module in node (see the file).
//
//go:embed v8/run.js
var v8Shim []byte

// engineCanister runs one canister directly on an engine, as the host would
// (install, then queries on the committed state), without a node.
type engineCanister struct {
	e       *engine.Engine
	m       *engine.Module
	heap    *state.PageMap
	globals []state.Global
}

func engineInput(ctx sysapi.Context, entry string, arg []byte, m *engine.Module, instr uint64) *sysapi.Input {
	return &sysapi.Input{
		Context: ctx, Entry: entry, Arg: arg, Memory64: m.Info.Memory64,
		CanisterID: []byte{0, 0, 0, 0, 0, 0, 0, 0, 1, 1}, Caller: user.Bytes(),
		Status: sysapi.StatusRunning, Time: uint64(time.Now().UnixNano()),
		Limits: sysapi.Limits{Instructions: instr, HeapBytes: 4 << 30, StableBytes: 1 << 30, ReplyBytes: 2 << 20,
			CallArgBytes: 2 << 20, MaxOutgoing: 100, DebugPrintBytes: 16 << 10, MaxLogLines: 100},
		Stable: state.NewPageMap(0),
	}
}

func newEngineCanister(cfg engine.Config, wasm []byte) (*engineCanister, error) {
	e, err := engine.New(cfg)
	if err != nil {
		return nil, err
	}
	m, err := e.Compile(wasm, engine.DefaultModuleLimits())
	if err != nil {
		return nil, err
	}
	out, err := e.Run(&engine.Request{Module: m, RunStart: true,
		Input: engineInput(sysapi.CtxInit, "canister_init", noArgs, m, 300_000_000_000)})
	if err != nil {
		return nil, err
	}
	if out.Trapped {
		return nil, fmt.Errorf("canister_init trapped: %s", out.TrapMessage)
	}
	heap := state.NewPageMap(0)
	if err := heap.Apply(out.Heap); err != nil {
		return nil, err
	}
	return &engineCanister{e: e, m: m, heap: heap, globals: out.Globals}, nil
}

func (c *engineCanister) query(method string, arg []byte) (*sysapi.Output, error) {
	out, err := c.e.Run(&engine.Request{Module: c.m, Heap: c.heap, Globals: c.globals,
		Input: engineInput(sysapi.CtxNonReplicatedQuery, "canister_query "+method, arg, c.m, 5_000_000_000)})
	if err != nil {
		return nil, err
	}
	if out.Trapped {
		return nil, fmt.Errorf("%s trapped: %s", method, out.TrapMessage)
	}
	return out, nil
}

type v8Result struct {
	TimesNS  []float64 `json:"times_ns"`
	ReplyHex string    `json:"reply_hex"`
}

// runV8 runs the shim: warm untimed calls, then runs timed ones.
func (e *env) runV8(nodeBin, shim string, arg []byte, warm, runs int) ([]float64, []byte, error) {
	cmd := exec.CommandContext(e.ctx, nodeBin, shim, filepath.Join(e.opt.Corpus, "compute.wasm"), "fib",
		hex.EncodeToString(arg), fmt.Sprint(warm), fmt.Sprint(runs))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var res v8Result
	if err == nil {
		err = json.Unmarshal(out, &res)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("node failed: %v: %s", err, lastLine(stderr.String()))
	}
	s := make([]float64, len(res.TimesNS))
	for i, ns := range res.TimesNS {
		s[i] = ns / 1e9
	}
	reply, _ := hex.DecodeString(res.ReplyHex)
	return s, reply, nil
}

func (e *env) computeSection() error {
	ctx := e.ctx
	const sec = "compute"
	fibN := uint64(e.runs(25, 30))
	arg := natArg(fibN)
	batches, perBatch := e.runs(1, 3), 5
	name := func(what string) string { return fmt.Sprintf("fib(%d): %s", fibN, what) }
	figV8 := name("V8 (node), warm")
	figOff := name("wasmtime, fuel off (no metering)")
	figOn := name("wasmtime, metered")

	nodeBin, err := exec.LookPath("node")
	if err != nil {
		nodeBin = ""
		e.rep.Skip(sec, figV8, "node is not installed (apt-get install nodejs)")
	}
	shim := filepath.Join(e.tmp, "run.js")
	if err := os.WriteFile(shim, v8Shim, 0o644); err != nil {
		return err
	}
	// The engine directly, fuel off and on.
	eng := map[bool]*engineCanister{}
	for _, fuel := range []bool{false, true} {
		cfg := engine.DefaultConfig()
		cfg.DisableFuel = !fuel
		if eng[fuel], err = newEngineCanister(cfg, e.compute); err != nil {
			return fmt.Errorf("engine (fuel %v): %w", fuel, err)
		}
	}
	// Through a node, both modes.
	nodes, closeAll, err := e.bothNodes(nil)
	if err != nil {
		return err
	}
	defer closeAll()
	ids := map[string]principal.Principal{}
	for _, iso := range modes {
		if ids[iso], err = nodes[iso].install(ctx, e.compute); err != nil {
			return fmt.Errorf("%s: %w", iso, err)
		}
	}

	var instr uint64
	var reply, v8Reply []byte
	variants := []struct {
		name string
		run  func() error
	}{
		{figOff, func() error { _, err := eng[false].query("fib", arg); return err }},
		{figOn, func() error {
			out, err := eng[true].query("fib", arg)
			if err == nil {
				instr, reply = out.Instructions, out.Reply
			}
			return err
		}},
		{"inprocess", func() error { _, err := nodes["inprocess"].query(ctx, ids["inprocess"], "fib", arg); return err }},
		{"sandbox", func() error { _, err := nodes["sandbox"].query(ctx, ids["sandbox"], "fib", arg); return err }},
	}
	samples := map[string][]float64{}
	for _, v := range variants { // warm-up
		for i := 0; i < 2; i++ {
			if err := v.run(); err != nil {
				return fmt.Errorf("%s: %w", v.name, err)
			}
		}
	}
	// Batches of V8 runs (one node process each) alternate with rounds of
	// every cordon variant in turn, so load from elsewhere spreads over all.
	for b := 0; b < batches; b++ {
		if nodeBin != "" {
			s, r, err := e.runV8(nodeBin, shim, arg, 5, perBatch)
			if err != nil {
				e.rep.Skip(sec, figV8, err.Error())
				nodeBin = ""
			} else {
				samples[figV8] = append(samples[figV8], s...)
				v8Reply = r
			}
		}
		for i := 0; i < perBatch; i++ {
			for _, v := range variants {
				if err := ctx.Err(); err != nil {
					return err
				}
				t0 := time.Now()
				if err := v.run(); err != nil {
					return fmt.Errorf("%s: %w", v.name, err)
				}
				samples[v.name] = append(samples[v.name], time.Since(t0).Seconds())
			}
		}
	}
	if len(samples[figV8]) > 0 {
		e.rep.Add(&Figure{Section: sec, Name: figV8, Samples: samples[figV8]})
		version, _ := exec.Command(nodeBin, "--version").Output()
		e.rep.Note(sec, "V8: node %s, `node internal/bench/v8/run.js compute.wasm fib %s 5 %d`, %d times (5 untimed "+
			"warm-up calls each, so V8's optimizing tier has compiled `fib`), alternating with rounds of the "+
			"cordon figures.", strings.TrimSpace(string(version)), hex.EncodeToString(arg), perBatch, batches)
	}
	e.rep.Add(&Figure{Section: sec, Name: figOff, Samples: samples[figOff], Baseline: figV8})
	e.rep.Add(&Figure{Section: sec, Name: figOn, Samples: samples[figOn], Baseline: figV8})
	e.rep.Add(&Figure{Section: sec, Name: name("metering overhead, metered vs fuel off"), Samples: samples[figOn], Baseline: figOff})
	rate := make([]float64, len(samples[figOn]))
	for i, t := range samples[figOn] {
		rate[i] = float64(instr) / t / 1e6
	}
	e.rep.Add(&Figure{Section: sec, Name: name("metered speed, wasmtime"), Unit: Rate, Label: "M instr/s", Samples: rate, Alone: true})
	for _, iso := range modes {
		e.rep.Add(&Figure{Section: sec, Name: name("query through a node, " + modeName(iso)), Samples: samples[iso], Baseline: figV8})
	}
	if v8Reply != nil && !bytes.Equal(v8Reply, reply) {
		e.rep.Note(sec, "**V8's reply (%x) differs from cordon's (%x).**", v8Reply, reply)
	}
	e.rep.Note(sec, "fib(%d) executes %d metered instructions. Metering is instrumentation (an instruction counter "+
		"the module updates), not wasmtime fuel; \"fuel off\" compiles without it (`engine.Config.DisableFuel`, an "+
		"option only this suite sets): no instruction limit and no instruction count.", fibN, instr)
	return nil
}
