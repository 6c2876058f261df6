package host

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/exec"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// rewriteWat: "fill" (argument: one byte v) writes v at the start of every
// 4 KiB page of its 1 MiB heap but page 0, 255 pages: each fill commits
// over all of them. Its composite query "cq" (argument: a canister id)
// calls that canister's "get" with an empty Candid argument, and answers,
// from its callback, the byte of page 1 its snapshot holds.
const rewriteWat = `
(module
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_data_append" (func $call_data_append (param i32 i32)))
  (import "ic0" "call_perform" (func $call_perform (result i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 16)
  (table 1 funcref)
  (elem (i32.const 0) $answer)
  (data (i32.const 100) "get")
  (data (i32.const 120) "DIDL\00\00")
  (func $answer (param i32) (call $append (i32.const 4096) (i32.const 1)) (call $reply))
  (func (export "canister_composite_query cq")
    (call $arg_copy (i32.const 200) (i32.const 0) (call $arg_size))
    (call $call_new (i32.const 200) (call $arg_size) (i32.const 100) (i32.const 3)
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
    (call $call_data_append (i32.const 120) (i32.const 6))
    (if (call $call_perform) (then unreachable)))
  (func (export "canister_update fill")
    (local $p i32)
    (call $arg_copy (i32.const 300) (i32.const 0) (i32.const 1))
    (local.set $p (i32.const 4096))
    (loop $l
      (i32.store8 (local.get $p) (i32.load8_u (i32.const 300)))
      (br_if $l (i32.lt_u (local.tee $p (i32.add (local.get $p) (i32.const 4096))) (i32.const 1048576))))
    (call $reply)))`

// rewritePages is how many of its pages with data each fill overwrites.
const rewritePages = 255

// stage holds the executions it is given until released, and hands each
// to the test as it arrives: the test knows where every query is without
// sleeping.
type stage struct {
	arrived chan *exec.Request
	release chan struct{}
}

func newStage(n int) *stage {
	return &stage{arrived: make(chan *exec.Request, n), release: make(chan struct{})}
}

func (s *stage) open() {
	select {
	case <-s.release:
	default:
		close(s.release)
	}
}

// next waits for the next execution held.
func (s *stage) next(t *testing.T, what string) *exec.Request {
	t.Helper()
	select {
	case req := <-s.arrived:
		return req
	case <-time.After(time.Minute):
		t.Fatalf("%s never started", what)
		return nil
	}
}

// stagedExec holds each execution at the stage pick gives it (nil: none).
type stagedExec struct {
	exec.Executor
	pick func(id string, in *sysapi.Input) *stage
}

func (x *stagedExec) Execute(ctx context.Context, id string, req *exec.Request) (*sysapi.Output, error) {
	if s := x.pick(id, req.Input); s != nil {
		s.arrived <- req
		select {
		case <-s.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return x.Executor.Execute(ctx, id, req)
}

// laidBytes is what a frame's memories lay over their images: the pages
// its clones hold (its own writes, and the copies commits gave it).
func laidBytes(req *exec.Request) uint64 {
	var n uint64
	for _, m := range []state.Memory{req.Heap, req.Input.Stable} {
		if pm, ok := m.(*state.PageMap); ok {
			if k, ok := pm.LaidPages(); ok {
				n += k * state.PageSize
			}
		}
	}
	return n
}

// frameAnswer is what x's composite query answered.
type frameAnswer struct {
	data []byte
	err  error
}

// queryFrame runs x's composite query "cq" calling y, and sends its answer.
func (f *fixture) queryFrame(x, y principal.Principal, answers chan<- frameAnswer) {
	r, err := f.node.Query(context.Background(), Message{Canister: x, Method: "cq", Arg: y.Bytes(), Caller: user})
	if err != nil {
		answers <- frameAnswer{err: err}
		return
	}
	answers <- frameAnswer{data: r.Data}
}

// frameCopyFixture is a node of the given execution memory (in pages) with
// rewriteWat's canister x, filled once, and a real canister y (counter.wasm)
// whose query "get" x's composite queries call.
func frameCopyFixture(t *testing.T, mode string, budget uint64) (f *fixture, x, y principal.Principal) {
	t.Helper()
	cfg := testConfig(t, mode)
	cfg.Fees.GiBStoragePerSecond = 0
	cfg.ExecutionMemory = budget * state.PageSize
	f = openFixture(t, cfg)
	x = f.install(mustWat(t, rewriteWat), nil)
	y = f.install(module(t, corpusDir, "counter"), noArgs)
	f.update(x, "fill", []byte{1})
	return f, x, y
}

// Found by audit: a commit that overwrites pages a live composite query
// frame shares gives the frame a copy of each old page, and those copies
// were not counted in the node's execution memory (limits.execution_memory)
// at all. A canister's own updates multiply them by its live frames: here
// four frames of x, each taken after one more update, are held at their
// callee (a real canister) while x's updates rewrite its heap; each frame
// then keeps its own 255 copies (its generation's pages), 4 MiB in all,
// while the query graphs held 16 KiB (their own writes) of the budget. Any
// number of frames, any size of heap: without bound, and outside the
// budget. Each frame's copies are now charged to its graph as the commit
// makes them, until the frame ends: what the frames lay over their images
// when their callbacks run is all counted.
func TestFrameCopiesCounted(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			const frames = 4
			f, x, y := frameCopyFixture(t, mode, 4096) // 16 MiB: room for every copy
			callee, callback := newStage(frames), newStage(frames)
			t.Cleanup(func() { callee.open(); callback.open() }) // before the node closes
			f.node.exec = &stagedExec{Executor: f.node.exec, pick: func(id string, in *sysapi.Input) *stage {
				switch {
				case id == y.String() && in.Context == sysapi.CtxNonReplicatedQuery:
					return callee
				case id == x.String() && in.Context == sysapi.CtxCompositeReply:
					return callback
				}
				return nil
			}}

			answers := make(chan frameAnswer, frames)
			for k := range frames {
				go f.queryFrame(x, y, answers)
				callee.next(t, "the callee of query "+string(rune('1'+k)))
				// Its frame is a clone of x's heap now; x's update rewrites it.
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				_, err := f.node.Update(ctx, Message{Canister: x, Method: "fill", Arg: []byte{byte(2 + k)}, Caller: user})
				cancel()
				if err != nil {
					t.Fatalf("update %d of x while its composite queries wait: %v", k+1, err)
				}
			}
			callee.open()
			var laid uint64
			for k := range frames {
				laid += laidBytes(callback.next(t, "callback "+string(rune('1'+k))))
			}
			// All four callbacks are held, on their frames: what the graphs
			// hold of the execution memory now is what their frames keep.
			used, queries, total := f.node.pages.inUse()
			t.Logf("%s: %d frames lay %d bytes over x's image; query graphs hold %d bytes of the execution memory (%d used of %d)",
				mode, frames, laid, queries, used, total)
			if min := uint64(frames * rewritePages * state.PageSize); laid < min {
				t.Fatalf("the frames lay %d bytes, want at least the copies of %d pages each (%d)", laid, rewritePages, min)
			}
			if queries < laid {
				t.Fatalf("the frames keep %d bytes of copies and their own pages, but their query graphs are charged only %d bytes of the execution memory", laid, queries)
			}
			callback.open()
			for range frames {
				a := <-answers
				if a.err != nil {
					t.Fatalf("a composite query with room for its frame: %v", a.err)
				}
				if len(a.data) != 1 || a.data[0] == 0 || a.data[0] > frames {
					t.Fatalf("a callback read %x from page 1, want what its snapshot held (1 to %d)", a.data, frames)
				}
			}
			f.idleMemory() // every copy's charge given back with its frame
		})
	}
}

// The copies a commit makes for frames that have no room in the execution
// memory: the commit must neither wait nor fail for a query (updates go
// first), so the frame is not given them but revoked (it drops what it
// held at once), and its query fails with SYS_TRANSIENT, retryable, at its
// next step; what it was charged for them is given back as it drops them.
// Four frames of x need 4 × 255 pages of copies from x's one update; the
// queries may hold 512 pages (half the execution memory of 4 MiB). The
// update commits without waiting; the copies the frames hold stay within
// what they are charged; the queries whose frames were revoked answer
// SYS_TRANSIENT without running their callbacks, at most one (255 pages)
// answers from its snapshot; everything is given back, and the next query
// of x answers.
func TestFrameCopiesWithoutRoomEndQueries(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			const frames = 4
			f, x, y := frameCopyFixture(t, mode, 1024)
			cx, err := f.node.get(context.Background(), x)
			if err != nil {
				t.Fatal(err)
			}
			callee := newStage(frames)
			t.Cleanup(callee.open)
			var callbacks atomic.Int64
			f.node.exec = &stagedExec{Executor: f.node.exec, pick: func(id string, in *sysapi.Input) *stage {
				switch {
				case id == y.String() && in.Context == sysapi.CtxNonReplicatedQuery:
					return callee
				case id == x.String() && in.Context == sysapi.CtxCompositeReply:
					callbacks.Add(1)
				}
				return nil
			}}
			answers := make(chan frameAnswer, frames)
			for k := range frames {
				go f.queryFrame(x, y, answers)
				callee.next(t, "the callee of query "+string(rune('1'+k)))
			}
			f.node.pages.mu.Lock()
			waits := f.node.pages.waits
			f.node.pages.mu.Unlock()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if _, err := f.node.Update(ctx, Message{Canister: x, Method: "fill", Arg: []byte{2}, Caller: user}); err != nil {
				t.Fatalf("x's update while its composite queries hold frames: %v", err)
			}
			f.node.pages.mu.Lock()
			waited := f.node.pages.waits - waits
			f.node.pages.mu.Unlock()
			if waited != 0 {
				t.Fatalf("the update waited for execution memory %d times", waited)
			}
			copies := cx.heap.CopiedBytes() + cx.stable.CopiedBytes()
			_, queries, total := f.node.pages.inUse()
			t.Logf("%s: after the commit, frames hold %d bytes of copies; query graphs hold %d bytes of %d (at most %d at once)",
				mode, copies, queries, total, f.node.pages.peakBytes())
			if copies > queries {
				t.Fatalf("the frames hold %d bytes of copies, their query graphs are charged %d", copies, queries)
			}
			if queries > total/2 || f.node.pages.peakBytes() > total {
				t.Fatalf("query graphs hold %d bytes (the budget at most %d at once) of %d", queries, f.node.pages.peakBytes(), total)
			}
			callee.open()
			var answered int64
			for range frames {
				a := <-answers
				var rej *Reject
				switch {
				case a.err == nil && len(a.data) == 1 && a.data[0] == 1:
					answered++ // its frame kept its snapshot, charged
				case errors.As(a.err, &rej) && rej.Code == SysTransient && strings.Contains(rej.Message, "limits.execution_memory"):
				default:
					t.Fatalf("want the snapshot's byte 1 or SYS_TRANSIENT for the frame's copies, got %x %v", a.data, a.err)
				}
			}
			// A revoked frame gives its copies' bytes back at once, so one
			// frame's 255 pages may fit after the others are revoked; two
			// never do.
			if answered > 1 {
				t.Fatalf("%d queries answered: their frames kept %d bytes of copies in the queries' %d", answered, answered*rewritePages*state.PageSize, total/2)
			}
			if n := callbacks.Load(); n != answered {
				t.Fatalf("%d callbacks ran, %d queries answered: callbacks ran on frames that could not keep their snapshot", n, answered)
			}
			f.idleMemory()
			f.node.exec = f.node.exec.(*stagedExec).Executor
			r, err := f.node.Query(context.Background(), Message{Canister: x, Method: "cq", Arg: y.Bytes(), Caller: user})
			if err != nil || len(r.Data) != 1 || r.Data[0] != 2 {
				t.Fatalf("the next composite query of x: %v %v", r, err)
			}
			f.idleMemory()
		})
	}
}
