package engine

import (
	"bytes"
	"syscall"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// BenchmarkRunQuery measures one query (the counter's get) on a committed
// heap, in this process: instantiate, restore heap and globals, run, tear
// down. What it costs in CPU is what a sandbox spends per query.
//
//	go test ./internal/engine -run '^$' -bench RunQuery -benchtime 2000x
func BenchmarkRunQuery(b *testing.B) {
	e, err := New(DefaultConfig())
	if err != nil {
		b.Fatal(err)
	}
	m, err := e.Compile(corpus(b, "counter"), DefaultModuleLimits())
	if err != nil {
		b.Fatal(err)
	}
	empty := []byte("DIDL\x00\x00")
	stable := state.NewPageMap(0)
	in := testInput(sysapi.CtxInit, "canister_init", empty, m)
	in.Stable = stable
	out, err := e.Run(&Request{Module: m, Input: in, RunStart: true})
	if err != nil || out.Trapped {
		b.Fatalf("init: %v %+v", err, out)
	}
	heap := state.NewPageMap(0)
	if err := heap.Apply(out.Heap); err != nil {
		b.Fatal(err)
	}
	globals := out.Globals
	in = testInput(sysapi.CtxUpdate, "canister_update inc", empty, m)
	in.Stable = stable
	if out, err = e.Run(&Request{Module: m, Input: in, Heap: heap, Globals: globals}); err != nil || out.Trapped {
		b.Fatalf("inc: %v %+v", err, out)
	}
	if err := heap.Apply(out.Heap); err != nil {
		b.Fatal(err)
	}
	globals = out.Globals
	want := []byte("DIDL\x00\x01\x7d\x01")
	cpu0 := processCPU(b)
	for b.Loop() {
		in := testInput(sysapi.CtxNonReplicatedQuery, "canister_query get", empty, m)
		in.Stable = stable
		out, err := e.Run(&Request{Module: m, Input: in, Heap: heap, Globals: globals})
		if err != nil || out.Trapped || !bytes.Equal(out.Reply, want) {
			b.Fatalf("get: %v %+v", err, out)
		}
	}
	b.ReportMetric(float64((processCPU(b)-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
}

// processCPU is the CPU time (user and system) this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkFib runs the corpus compute canister's fib(25) query metered
// (instrumentation) and unmetered, each message on a fresh instance, to
// show what metering costs on call-bound code.
//
//	go test ./internal/engine -run '^$' -bench Fib -count 3
func BenchmarkFib(b *testing.B) {
	arg := []byte("DIDL\x00\x01\x7d\x19") // fib(25)
	for _, tc := range []struct {
		name string
		off  bool
	}{{"metered", false}, {"unmetered", true}} {
		b.Run(tc.name, func(b *testing.B) {
			cfg := DefaultConfig()
			cfg.DisableFuel = tc.off
			e, err := New(cfg)
			if err != nil {
				b.Fatal(err)
			}
			m, err := e.Compile(corpus(b, "compute"), DefaultModuleLimits())
			if err != nil {
				b.Fatal(err)
			}
			stable := state.NewPageMap(0)
			in := testInput(sysapi.CtxInit, "canister_init", []byte("DIDL\x00\x00"), m)
			in.Stable = stable
			out, err := e.Run(&Request{Module: m, Input: in, RunStart: true})
			if err != nil || out.Trapped {
				b.Fatalf("install: %v %+v", err, out)
			}
			heap := state.NewPageMap(0)
			if err := heap.Apply(out.Heap); err != nil {
				b.Fatal(err)
			}
			globals := out.Globals
			var instr uint64
			for b.Loop() {
				in := testInput(sysapi.CtxNonReplicatedQuery, "canister_query fib", arg, m)
				in.Stable = stable
				out, err := e.Run(&Request{Module: m, Input: in, Heap: heap, Globals: globals})
				if err != nil || out.Trapped {
					b.Fatalf("fib: %v %+v", err, out)
				}
				instr = out.Instructions
			}
			b.ReportMetric(float64(instr), "instr/op")
		})
	}
}
