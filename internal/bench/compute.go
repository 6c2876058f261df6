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

func (e *env) computeSection() error {
	ctx := e.ctx
	const sec = "compute"
	fibN := uint64(e.runs(25, 30))
	arg := natArg(fibN)
	runs := e.runs(5, 15)
	name := func(what string) string { return fmt.Sprintf("fib(%d): %s", fibN, what) }
	figV8 := name("V8 (node), warm")
	figOff := name("wasmtime, fuel off (no metering)")
	figOn := name("wasmtime, metered")

	// V8.
	var v8Reply []byte
	if nodeBin, err := exec.LookPath("node"); err != nil {
		e.rep.Skip(sec, figV8, "node is not installed (apt-get install nodejs)")
	} else {
		shim := filepath.Join(e.tmp, "run.js")
		if err := os.WriteFile(shim, v8Shim, 0o644); err != nil {
			return err
		}
		wasmPath := filepath.Join(e.opt.Corpus, "compute.wasm")
		cmd := exec.CommandContext(ctx, nodeBin, shim, wasmPath, "fib", hex.EncodeToString(arg), "5", fmt.Sprint(runs))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		var res v8Result
		if err == nil {
			err = json.Unmarshal(out, &res)
		}
		if err != nil {
			e.rep.Skip(sec, figV8, fmt.Sprintf("node failed: %v: %s", err, lastLine(stderr.String())))
		} else {
			s := make([]float64, len(res.TimesNS))
			for i, ns := range res.TimesNS {
				s[i] = ns / 1e9
			}
			v8Reply, _ = hex.DecodeString(res.ReplyHex)
			e.rep.Add(&Figure{Section: sec, Name: figV8, Samples: s})
			version, _ := exec.Command(nodeBin, "--version").Output()
			e.rep.Note(sec, "V8: node %s, `node internal/bench/v8/run.js compute.wasm fib %s 5 %d` (5 untimed warm-up calls, "+
				"so V8's optimizing tier has compiled `fib`).", strings.TrimSpace(string(version)), hex.EncodeToString(arg), runs)
		}
	}

	// The engine, fuel off and on.
	var instr uint64
	var reply []byte
	for _, fuel := range []bool{false, true} {
		cfg := engine.DefaultConfig()
		cfg.DisableFuel = !fuel
		c, err := newEngineCanister(cfg, e.compute)
		if err != nil {
			return fmt.Errorf("engine (fuel %v): %w", fuel, err)
		}
		s, err := timeN(ctx, 2, runs, func(int) error {
			out, err := c.query("fib", arg)
			if err == nil && fuel {
				instr, reply = out.Instructions, out.Reply
			}
			return err
		})
		if err != nil {
			return err
		}
		if fuel {
			e.rep.Add(&Figure{Section: sec, Name: figOn, Samples: s, Baseline: figV8})
			e.rep.Add(&Figure{Section: sec, Name: name("metering overhead, metered vs fuel off"), Samples: s, Baseline: figOff})
			rate := make([]float64, len(s))
			for i, t := range s {
				rate[i] = float64(instr) / t / 1e6
			}
			e.rep.Add(&Figure{Section: sec, Name: name("metered speed, wasmtime"), Unit: Rate, Label: "M instr/s", Samples: rate, Alone: true})
		} else {
			e.rep.Add(&Figure{Section: sec, Name: figOff, Samples: s, Baseline: figV8})
		}
	}
	if v8Reply != nil && !bytes.Equal(v8Reply, reply) {
		e.rep.Note(sec, "**V8's reply (%x) differs from cordon's (%x).**", v8Reply, reply)
	}

	// Through a node, both modes.
	for _, iso := range modes {
		nd, err := e.openNode(iso, nil)
		if err != nil {
			return err
		}
		err = func() error {
			defer nd.close()
			id, err := nd.install(ctx, e.compute)
			if err != nil {
				return err
			}
			s, err := timeN(ctx, 2, runs, func(int) error { _, err := nd.query(ctx, id, "fib", arg); return err })
			if err != nil {
				return err
			}
			e.rep.Add(&Figure{Section: sec, Name: name("query through a node, " + modeName(iso)), Samples: s, Baseline: figV8})
			return nil
		}()
		if err != nil {
			return fmt.Errorf("%s: %w", iso, err)
		}
	}
	e.rep.Note(sec, "fib(%d) executes %d metered instructions. Fuel off is an engine option only this suite sets "+
		"(`engine.Config.DisableFuel`): without fuel there is no instruction limit and no instruction count.", fibN, instr)
	return nil
}
