package host

import (
	"context"
	"encoding/binary"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/sysapi"
)

// countWat counts its "noop" executions (each accepts 1000 of the cycles it
// is sent) and reports them with "count".
const countWat = `
(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_cycles_accept128" (func $accept (param i64 i64 i32)))
  (memory (export "memory") 1)
  (global $n (mut i64) (i64.const 0))
  (func (export "canister_update noop")
    (global.set $n (i64.add (global.get $n) (i64.const 1)))
    (call $accept (i64.const 0) (i64.const 1000) (i32.const 0))
    (call $reply))
  (func (export "canister_query count")
    (i64.store (i32.const 0) (global.get $n))
    (call $append (i32.const 0) (i32.const 8))
    (call $reply)))`

// fwdWat's "fwd" calls "noop" on the canister its argument names, with
// 1_000_000 cycles attached, and answers as the callee did.
const fwdWat = `
(module
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reject" (func $reject (param i32 i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_cycles_add128" (func $add (param i64 i64)))
  (import "ic0" "call_perform" (func $perform (result i32)))
  (memory (export "memory") 1)
  (table (export "table") 2 funcref)
  (elem (i32.const 0) $on_reply $on_reject)
  (data (i32.const 100) "noop")
  (data (i32.const 120) "callee rejected")
  (func (export "canister_update fwd")
    (local $n i32)
    (local.set $n (call $arg_size))
    (call $arg_copy (i32.const 1000) (i32.const 0) (local.get $n))
    (call $call_new (i32.const 1000) (local.get $n) (i32.const 100) (i32.const 4)
      (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 0))
    (call $add (i64.const 0) (i64.const 1000000))
    (if (call $perform) (then (call $reject (i32.const 120) (i32.const 15)))))
  (func $on_reply (param i32) (call $reply))
  (func $on_reject (param i32) (call $reject (i32.const 120) (i32.const 15))))`

// A node closes while a canister is busy and a long queue waits behind
// it: user calls and calls from another canister (with cycles attached).
// Close lets the running message finish and runs none of the queued ones:
// each is answered with SYS_TRANSIENT, the calling canister's refund is
// credited and its users answered without its callbacks running, and after
// a restart the cycles are all there. The busy execution is the test
// holding the canister's lock, so what is queued is exact.
func TestCloseAbandonsQueuedMessages(t *testing.T) {
	t.Parallel()
	const direct, forwarded = 30, 20
	for _, iso := range []string{"inprocess", "sandbox"} {
		t.Run(iso, func(t *testing.T) {
			f := queueFixture(t, iso, nil)
			ctx := context.Background()
			callee := f.install(mustWat(t, countWat), nil)
			caller := f.install(mustWat(t, fwdWat), nil)
			f.update(callee, "noop", nil) // its sandbox is up
			c, err := f.node.get(ctx, callee)
			if err != nil {
				t.Fatal(err)
			}
			c.mu.Lock() // the callee's long execution
			locked := true
			defer func() {
				if locked {
					c.mu.Unlock()
				}
			}()
			results := make(chan error, 1+direct+forwarded)
			send := func(id, method string, arg []byte) {
				target := callee
				if id == "caller" {
					target = caller
				}
				_, err := f.node.Update(ctx, Message{Canister: target, Method: method, Arg: arg, Caller: user})
				results <- err
			}
			queued := func() (n int, taken bool) {
				c.qmu.Lock()
				defer c.qmu.Unlock()
				return c.queue.len(), c.draining
			}
			go send("callee", "noop", nil) // taken by the drain goroutine, which waits for the lock
			for n, taken := queued(); !taken || n != 0; n, taken = queued() {
				runtime.Gosched()
			}
			for range direct {
				go send("callee", "noop", nil)
			}
			for range forwarded {
				go send("caller", "fwd", callee.Bytes())
			}
			for n, _ := queued(); n != direct+forwarded; n, _ = queued() {
				runtime.Gosched()
			}

			closed := make(chan error, 1)
			go func() { closed <- f.node.Close() }()
			for !f.node.closing() {
				runtime.Gosched()
			}
			c.mu.Unlock()
			locked = false
			select {
			case err := <-closed:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(2 * time.Minute): // a bound on a stuck test
				t.Fatal("Close did not return")
			}
			ran := 0
			for range 1 + direct + forwarded {
				err := <-results
				if err == nil {
					ran++
					continue
				}
				if rej := f.reject(err); rej.Code != SysTransient || !strings.Contains(rej.Message, "shutting down") {
					t.Fatalf("queued message: %v", err)
				}
			}
			if ran != 1 {
				t.Fatalf("%d messages ran after Close began, want the one already taken", ran)
			}

			f.open()
			if n := binary.LittleEndian.Uint64(f.query(callee, "count", nil)); n != 2 {
				t.Fatalf("the callee ran noop %d times, want 2", n)
			}
			f.checkConservation()
			f.update(caller, "fwd", callee.Bytes()) // both work again
			f.checkConservation()
		})
	}
}

// An execution still running when the drain timeout passes is given up:
// Close returns, the user is answered, and nothing of it is committed.
func TestCloseGivesUpRunningMessage(t *testing.T) {
	t.Parallel()
	f := queueFixture(t, "sandbox", func(c *Config) { c.UpdateInstructions = 40_000_000_000 })
	slow := f.install(mustWat(t, fanWat), nil)
	f.update(slow, "noop", nil)
	f.node.drainAfter = 0 // whatever runs is given up at once
	// spin is running once its execution reached the executor: the drain
	// goroutine is past the point where a message not yet started is
	// abandoned. (Waiting for the canister's lock instead raced: the lock
	// may be held by other work while the popped message has not started,
	// and Close then abandons it: CI saw "the node is shutting down".)
	started := newGate()
	started.open() // signalled, not held
	f.node.exec = &gatedExec{Executor: f.node.exec, hold: func(_ string, in *sysapi.Input) *gate {
		if in.Context == sysapi.CtxUpdate {
			return started
		}
		return nil
	}}
	done := make(chan error, 1)
	go func() {
		_, err := f.node.Update(context.Background(), Message{Canister: slow, Method: "spin", Caller: user})
		done <- err
	}()
	started.await(t, "spin")
	closed := make(chan error, 1)
	go func() { closed <- f.node.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Minute): // a bound on a stuck test, not on the margin
		t.Fatal("Close did not return")
	}
	// Given up, not run out of instructions.
	if err := <-done; err == nil || !strings.Contains(err.Error(), context.Canceled.Error()) {
		t.Fatalf("spin: %v", err)
	}
	f.open()
	f.checkConservation()
}

// Close is idempotent: a second call, or two at once, returned nothing but
// a panic (close of the closed done channel) before. Every call returns
// once the node is closed, with the first call's result.
func TestCloseTwice(t *testing.T) {
	t.Parallel()
	f := newFixture(t) // its cleanup closes the node once more
	id := f.install(mustWat(t, countWat), nil)
	f.update(id, "noop", nil)
	closeOnce := func() (err error) {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("Close panicked: %v", p)
			}
		}()
		return f.node.Close()
	}
	errs := make(chan error, 2)
	for range 2 {
		go func() { errs <- closeOnce() }()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if err := closeOnce(); err != nil {
		t.Fatal(err)
	}
	// Still closed: a message is refused, nothing runs.
	if _, err := f.node.Update(context.Background(), Message{Canister: id, Method: "noop", Caller: user}); err == nil {
		t.Fatal("a closed node ran a message")
	}
}
