package host

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// turnVictimWat records the order its messages run in: "work" spins a
// bounded number of instructions, then appends its 4-byte argument, a tag,
// to a log in memory; "log" returns the tags in the order they ran.
const turnVictimWat = `
(module
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory (export "memory") 1)
  ;; [0]: how many tags; [16…]: the tags.
  (func (export "canister_update work")
    (local $i i32) (local $n i32)
    (loop $spin
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $spin (i32.lt_u (local.get $i) (i32.const 20000))))
    (local.set $n (i32.load (i32.const 0)))
    (call $arg_copy (i32.add (i32.const 16) (i32.mul (local.get $n) (i32.const 4))) (i32.const 0) (i32.const 4))
    (i32.store (i32.const 0) (i32.add (local.get $n) (i32.const 1)))
    (call $reply))
  (func (export "canister_query log")
    (call $append (i32.const 16) (i32.mul (i32.load (i32.const 0)) (i32.const 4)))
    (call $reply))
)`

// turnAttackerWat is the attacker: "attack" (argument: a count, a base
// tag, the victim's id) calls the victim's "work" that many times in one
// message, the i-th with tag base+i, and replies with how many calls
// call_perform accepted; "answered" counts the responses.
const turnAttackerWat = `
(module
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_data_append" (func $data (param i32 i32)))
  (import "ic0" "call_perform" (func $perform (result i32)))
  (memory (export "memory") 1)
  (table (export "table") 1 funcref)
  (elem (i32.const 0) $answer)
  (global $answered (mut i64) (i64.const 0))
  (data (i32.const 100) "work")
  (func (export "canister_update attack")
    (local $size i32) (local $i i32) (local $ok i32)
    (local.set $size (call $arg_size))
    (call $arg_copy (i32.const 200) (i32.const 0) (local.get $size))
    (block $end
      (loop $l
        (br_if $end (i32.ge_u (local.get $i) (i32.load (i32.const 200))))
        (call $call_new (i32.const 208) (i32.sub (local.get $size) (i32.const 8)) (i32.const 100) (i32.const 4)
          (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
        (i32.store (i32.const 400) (i32.add (i32.load (i32.const 204)) (local.get $i)))
        (call $data (i32.const 400) (i32.const 4))
        (if (i32.eqz (call $perform)) (then (local.set $ok (i32.add (local.get $ok) (i32.const 1)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $l)))
    (i32.store (i32.const 400) (local.get $ok))
    (call $append (i32.const 400) (i32.const 4))
    (call $reply))
  (func $answer (param i32) (global.set $answered (i64.add (global.get $answered) (i64.const 1))))
  (func (export "canister_query answered")
    (i64.store (i32.const 400) (global.get $answered))
    (call $append (i32.const 400) (i32.const 8))
    (call $reply))
)`

// Attacker canisters, each within its pair's queue capacity, fill a
// victim's queue with slow calls while the victim is busy (the test holds
// its lock, as an execution does, so every count is exact); then a user's
// ingress message arrives. It must run after at most the message already
// taken and one message of each attacker, not after all of them, and each
// attacker's calls must still run in the order they were sent.
func TestIngressTakesTurnsWithCallingCanisters(t *testing.T) {
	t.Parallel()
	const attackers, calls = 6, 100
	const userTag = 0xffff_ffff
	f := queueFixture(t, "inprocess", nil)
	ctx := context.Background()
	victim := f.install(mustWat(t, turnVictimWat), nil)
	ids := make([]principal.Principal, attackers)
	for i := range ids {
		ids[i] = f.install(mustWat(t, turnAttackerWat), nil)
	}
	c := f.loaded(victim)
	queued := func() (n, ingress int, draining bool) {
		c.qmu.Lock()
		defer c.qmu.Unlock()
		return c.queue.len(), c.ingress, c.draining
	}

	c.mu.Lock() // the victim's long execution
	locked := true
	defer func() {
		if locked {
			c.mu.Unlock()
		}
	}()
	for i, a := range ids {
		arg := binary.LittleEndian.AppendUint32(nil, calls)
		arg = binary.LittleEndian.AppendUint32(arg, uint32(i)<<16)
		arg = append(arg, victim.Bytes()...)
		if got := binary.LittleEndian.Uint32(f.update(a, "attack", arg)); got != calls {
			t.Fatalf("attacker %d: %d calls accepted, want %d", i, got, calls)
		}
		if i == 0 {
			// The drain goroutine takes the first call and waits for the
			// lock: wait for that, so the queue's content below is exact.
			waitFor(t, time.Minute, func() bool { n, _, d := queued(); return d && n == calls-1 })
		}
	}
	if n, _, _ := queued(); n != attackers*calls-1 {
		t.Fatalf("%d calls wait, want %d", n, attackers*calls-1)
	}
	done := make(chan error, 1)
	go func() {
		_, err := f.node.Update(ctx, Message{Canister: victim, Method: "work", Arg: binary.LittleEndian.AppendUint32(nil, userTag), Caller: user})
		done <- err
	}()
	waitFor(t, time.Minute, func() bool { _, in, _ := queued(); return in == 1 })
	c.mu.Unlock()
	locked = false
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the user's message: %v", err)
		}
	case <-time.After(5 * time.Minute): // a bound on a stuck test, not a performance assertion
		t.Fatal("the user's message never ran")
	}
	f.quiesce()

	raw := f.query(victim, "log", nil)
	tags := make([]uint32, len(raw)/4)
	for i := range tags {
		tags[i] = binary.LittleEndian.Uint32(raw[4*i:])
	}
	if len(tags) != attackers*calls+1 {
		t.Fatalf("the victim ran %d messages, want %d", len(tags), attackers*calls+1)
	}
	before := slices.Index(tags, userTag)
	t.Logf("the user's message ran after %d of %d attacker calls (%d attackers)", before, attackers*calls, attackers)
	// The call already taken, then one turn: one call of each attacker.
	if before > 1+attackers {
		t.Fatalf("the user's message ran after %d attacker calls, want at most %d (one per source)", before, 1+attackers)
	}
	// Each attacker's calls ran in the order it sent them.
	next := make([]uint32, attackers)
	for _, tag := range tags {
		if tag == userTag {
			continue
		}
		i, seq := tag>>16, tag&0xffff
		if i >= attackers || seq != next[i] {
			t.Fatalf("call %d of attacker %d ran when its call %d was due: %v", seq, i, next[i], tags)
		}
		next[i]++
	}
	for i, a := range ids {
		if got := binary.LittleEndian.Uint64(f.query(a, "answered", nil)); got != calls {
			t.Fatalf("attacker %d got %d responses, want %d", i, got, calls)
		}
	}
	f.checkCallsReleased(append(ids, victim)...)
}

// The queue's order: one source's messages in arrival order; sources
// taking turns; a source that was idle joining the current round rather
// than the end of the others' backlog; arrival order when nothing is
// backlogged; a response in the lane of the canister that sent it; a
// system task before every message queued after it.
func TestInputQueueTurns(t *testing.T) {
	t.Parallel()
	a, b := principal.CanisterID(1), principal.CanisterID(2)
	u := principal.SelfAuthenticating([]byte("user"))
	req := func(from principal.Principal, tag string) *message {
		return &message{kind: kindRequest, caller: from, method: tag}
	}
	ing := func(tag string) *message { return &message{kind: kindRequest, ingress: true, caller: u, method: tag} }
	resp := func(from principal.Principal, tag string) *message {
		return &message{kind: kindResponse, from: from, reject: &Reject{Message: tag}}
	}
	name := func(m *message) string {
		if m.kind == kindResponse {
			return m.reject.Message
		}
		switch m.kind {
		case kindTimer:
			return "timer"
		case kindLowMemory:
			return "hook"
		}
		return m.method
	}
	take := func(q *inputQueue, n int) string {
		var s []string
		for range n {
			s = append(s, name(q.pop()))
		}
		return fmt.Sprint(s)
	}
	var q inputQueue
	if q.pop() != nil || q.len() != 0 {
		t.Fatal("an empty queue gave a message")
	}
	// No backlog: arrival order.
	q.push(req(a, "a1"))
	q.push(ing("u1"))
	q.push(&message{kind: kindTimer})
	q.push(req(b, "b1"))
	if got := take(&q, 4); got != "[a1 u1 timer b1]" {
		t.Fatalf("without a backlog: %s", got)
	}
	// a's backlog; b and the user arrive after it and take turns with it.
	for i := range 4 {
		q.push(req(a, fmt.Sprint("a", i)))
	}
	if got := take(&q, 1); got != "[a0]" {
		t.Fatalf("first: %s", got)
	}
	q.push(req(b, "b0"))
	q.push(resp(b, "rb0")) // b's answer to a call: after b's request
	q.push(ing("u0"))
	q.push(resp(a, "ra0")) // a's answer: after a's requests
	if q.len() != 7 {
		t.Fatalf("len %d, want 7", q.len())
	}
	if got := take(&q, 7); got != "[a1 b0 u0 a2 rb0 a3 ra0]" {
		t.Fatalf("turns: %s", got)
	}
	// System tasks each have a lane: one waiting does not hold back
	// another behind a message queued after it.
	for i := range 3 {
		q.push(req(a, fmt.Sprint("x", i)))
	}
	take(&q, 1)
	q.push(&message{kind: kindTimer})
	q.push(&message{kind: kindLowMemory})
	q.push(ing("u1"))
	if got := take(&q, 5); got != "[x1 timer hook u1 x2]" {
		t.Fatalf("system tasks: %s", got)
	}
	if q.pop() != nil || q.len() != 0 || len(q.lanes) != 0 || len(q.ready) != 0 {
		t.Fatalf("drained queue holds %d messages, %d lanes", q.len(), len(q.lanes))
	}
}
