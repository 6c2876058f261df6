package host

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
	"weak"

	"github.com/cordon-dev/cordon/pkg/candid"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// paddedIDArg is a management argument about id whose record carries a
// blob of pad bytes more (Candid subtyping lets a caller send more
// fields), so that a call holds pad bytes for as long as it runs.
func paddedIDArg(t *testing.T, id principal.Principal, pad int) []byte {
	t.Helper()
	text := fmt.Sprintf(`(record { canister_id = principal "%s"; pad = blob "%s" })`, id, strings.Repeat(`\00`, pad))
	a, err := candid.ParseArgs(text)
	if err != nil {
		t.Fatal(err)
	}
	b, err := candid.EncodeArgs(a)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Management calls from users used to run in a goroutine each, holding
// their argument, with no bound on how many were in progress: a controller
// could pile up stop_canister calls on a canister that cannot stop (a call
// it made is never answered), with large arguments, and anyone could add
// calls that wait for a busy canister before they are refused. Now those
// in progress are bounded per canister they are about and per node, in
// number and bytes; the rest are refused at once with SYS_TRANSIENT, other
// canisters are served, and Close answers the stops still waiting
// instead of waiting for them.
func TestManagementCallsBounded(t *testing.T) {
	const pad = 256 << 10
	f := queueFixture(t, "inprocess", func(c *Config) {
		c.Messages.MgmtCalls = 4
		c.Messages.MgmtCallBytes = 2*pad + 4<<10 // two padded calls and small ones
		c.Messages.NodeMgmtCalls = 6
		c.Messages.NodeMgmtCallBytes = 3*pad + 8<<10
	})
	f.node.drainAfter = time.Hour // Close must not get past the stops by giving up on them
	ctx := context.Background()
	wasm := mustWat(t, relayCallWat)
	a, a2, b, other := f.install(wasm, nil), f.install(wasm, nil), f.install(wasm, nil), f.install(wasm, nil)

	// b is busy (the test holds its lock, as a long execution does), so
	// the calls a and a2 make to it stay unanswered and neither can stop.
	cb := f.loaded(b)
	cb.mu.Lock()
	locked := true
	defer func() {
		if locked {
			cb.mu.Unlock()
		}
	}()
	f.update(a, "forward", relayCallArg(b, "take", noArgs))
	f.update(a2, "forward", relayCallArg(b, "take", noArgs))

	mgmt := func(method string, arg []byte) <-chan error {
		done := make(chan error, 1)
		go func() {
			_, err := f.node.Update(ctx, Message{Canister: principal.Management(), Method: method, Arg: arg, Caller: user})
			done <- err
		}()
		return done
	}
	answer := func(ch <-chan error) error {
		t.Helper()
		select {
		case err := <-ch:
			return err
		case <-time.After(2 * time.Minute): // a bound on a stuck test
			t.Fatal("no answer")
			return nil
		}
	}
	refused := func(ch <-chan error, want string) {
		t.Helper()
		if rej := f.reject(answer(ch)); rej.Code != SysTransient || !strings.Contains(rej.Message, want) {
			t.Fatalf("want a refusal (%s): %v", want, rej)
		}
	}
	var pending []<-chan error
	stop := func(id principal.Principal, padding int) {
		t.Helper()
		about, _ := f.node.mgmtCalls.load(id)
		arg := encodeTyped(t, "stop_canister", idArg(id))
		if padding > 0 {
			arg = paddedIDArg(t, id, padding)
		}
		pending = append(pending, mgmt("stop_canister", arg))
		waitFor(t, time.Minute, func() bool { now, _ := f.node.mgmtCalls.load(id); return now.calls == about.calls+1 })
	}

	// The bound per canister: bytes, then number.
	stop(a, pad)
	stop(a, pad)
	if st := metaOf(f.loaded(a)).Status; st != "stopping" {
		t.Fatalf("a is %q, want stopping", st)
	}
	refused(mgmt("stop_canister", paddedIDArg(t, a, pad)), "about canister "+a.String())
	stop(a, 0)
	stop(a, 0)
	refused(mgmt("stop_canister", encodeTyped(t, "stop_canister", idArg(a))), "about canister "+a.String())
	refused(mgmt("canister_status", encodeTyped(t, "canister_status", idArg(a))), "about canister "+a.String())
	// Management calls about another canister go on.
	if err := answer(mgmt("canister_status", encodeTyped(t, "canister_status", idArg(other)))); err != nil {
		t.Fatalf("canister_status of another canister: %v", err)
	}

	// The node's bound: bytes, then number.
	stop(a2, pad)
	refused(mgmt("stop_canister", paddedIDArg(t, a2, pad)), "on the node")
	stop(a2, 0)
	before := runtime.NumGoroutine()
	const flood = 200
	var wg sync.WaitGroup
	errs := make(chan error, flood)
	for i := range flood {
		id := []principal.Principal{a2, other, b}[i%3]
		method := []string{"stop_canister", "canister_status", "start_canister", "update_settings"}[i%4]
		text := idArg(id)
		if method == "update_settings" {
			text = fmt.Sprintf(`(record { canister_id = principal "%s"; settings = record {} })`, id)
		}
		arg := encodeTyped(t, method, text)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := f.node.Update(ctx, Message{Canister: principal.Management(), Method: method, Arg: arg, Caller: user})
			errs <- err
		}()
	}
	for range flood {
		select {
		case err := <-errs:
			if rej := f.reject(err); rej.Code != SysTransient || !strings.Contains(rej.Message, "on the node") {
				t.Fatalf("flood: %v", rej)
			}
		case <-time.After(2 * time.Minute):
			t.Fatal("a management call of the flood was not refused")
		}
	}
	wg.Wait()
	if after := runtime.NumGoroutine(); after > before+10 {
		t.Fatalf("%d goroutines after a refused flood of %d, %d before", after, flood, before)
	}
	aboutA, node := f.node.mgmtCalls.load(a)
	if aboutA.calls != 4 || node.calls != 6 || node.bytes > f.node.cfg.Messages.NodeMgmtCallBytes {
		t.Fatalf("in progress: %+v about a, %+v on the node", aboutA, node)
	}
	// Ordinary ingress of other canisters is served.
	f.update(other, "take", noArgs)

	// Close answers the stops still waiting, while b is still busy.
	closed := make(chan error, 1)
	go func() { closed <- f.node.Close() }()
	reopened := false
	t.Cleanup(func() { // before the fixture's Close, after b is unlocked
		if !reopened {
			<-closed
			f.open()
		}
	})
	for _, ch := range pending {
		refused(ch, "shutting down")
	}
	waitFor(t, time.Minute, func() bool { _, node = f.node.mgmtCalls.load(a); return node.calls == 0 })
	cb.mu.Unlock()
	locked = false
	if err := answer(closed); err != nil {
		t.Fatal(err)
	}
	f.open() // for the fixture's Close
	reopened = true
}

// holdWat's hold calls "take" on the canister its argument starts with
// (callee length, callee; the rest is ballast) and never replies itself:
// its call context stays open until that call is answered.
const holdWat = `
(module
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_perform" (func $perform (result i32)))
  (memory 1)
  (table 2 funcref)
  (elem (i32.const 0) $on_reply $on_reject)
  (data (i32.const 100) "take")
  (func (export "canister_update hold")
    (call $arg_copy (i32.const 1000) (i32.const 0) (i32.const 1))
    (call $arg_copy (i32.const 1001) (i32.const 1) (i32.load8_u (i32.const 1000)))
    (call $call_new (i32.const 1001) (i32.load8_u (i32.const 1000)) (i32.const 100) (i32.const 4)
      (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 0))
    (if (call $perform) (then unreachable)))
  (func $on_reply (param i32))
  (func $on_reject (param i32))
)`

// An ingress message's argument counts against the ingress queue's bounds
// only while it is queued; once the message has run, nothing may keep it.
// Update kept it (through its deferred status write) for as long as the
// call stayed open awaiting the calls it made, which a canister can make
// last: each of ~500 open calls per canister held up to 2 MiB.
func TestIngressArgumentNotHeldByOpenCall(t *testing.T) {
	f := queueFixture(t, "inprocess", nil)
	ctx := context.Background()
	holder := f.install(mustWat(t, holdWat), nil)
	b := f.install(mustWat(t, relayCallWat), nil)
	cb := f.loaded(b)
	cb.mu.Lock() // b busy: the holder's call to it stays unanswered
	defer cb.mu.Unlock()

	const calls = 8
	var weaks []weak.Pointer[byte]
	for range calls {
		arg := append([]byte{byte(len(b.Bytes()))}, b.Bytes()...)
		arg = append(arg, make([]byte, 1<<20)...)
		weaks = append(weaks, weak.Make(&arg[0]))
		go f.node.Update(ctx, Message{Canister: holder, Method: "hold", Arg: arg, Caller: user}) //nolint:errcheck
	}
	ch := f.loaded(holder)
	waitFor(t, time.Minute, func() bool {
		ch.mu.RLock()
		defer ch.mu.RUnlock()
		return len(ch.contexts) == calls
	})
	runtime.GC()
	runtime.GC()
	held := 0
	for _, w := range weaks {
		if w.Value() != nil {
			held++
		}
	}
	if held > 0 {
		t.Fatalf("%d of %d arguments of calls that ran are still held while the calls are open", held, calls)
	}
}

// A management call about a canister used to be counted among the calls
// in progress about it (and an install to wait for its lock) before its
// caller was checked: while the canister was busy, anyone could fill its
// bound with calls refused only once it was free, and lock its
// controllers out meanwhile. Now a caller its controllers do not let make
// the call is refused at once, without counting or waiting, and a
// controller's call is admitted and served.
func TestManagementNonControllerFloodDoesNotLockOutControllers(t *testing.T) {
	const bound = 2
	f := queueFixture(t, "inprocess", func(c *Config) { c.Messages.MgmtCalls = bound })
	wasm := mustWat(t, mgmtSeqWat)
	x := f.install(wasm, nil)
	attacker := principal.SelfAuthenticating([]byte("not a controller"))

	// x is busy (the test holds its lock, as a long execution does).
	cx := f.loaded(x)
	cx.mu.Lock()
	locked := true
	defer func() {
		if locked {
			cx.mu.Unlock()
		}
	}()
	call := func(ctx context.Context, caller principal.Principal, method, arg string) <-chan error {
		done := make(chan error, 1)
		go func() {
			_, err := f.node.Update(ctx, Message{Canister: principal.Management(), Method: method, Arg: encodeTyped(t, method, arg), Caller: caller})
			done <- err
		}()
		return done
	}
	var blob strings.Builder
	for _, b := range wasm {
		fmt.Fprintf(&blob, `\%02x`, b)
	}
	flood := []string{
		"install_code", fmt.Sprintf(`(record { mode = variant { reinstall }; canister_id = principal "%s"; wasm_module = blob "%s"; arg = blob "" })`, x, blob.String()),
		"update_settings", fmt.Sprintf(`(record { canister_id = principal "%s"; settings = record { controllers = opt vec { principal "%s" } } })`, x, attacker),
		"stop_canister", idArg(x),
		"uninstall_code", idArg(x),
		"delete_canister", idArg(x),
		"canister_status", idArg(x),
		"upload_chunk", fmt.Sprintf(`(record { canister_id = principal "%s"; chunk = blob "x" })`, x),
	}
	// Answered at once: the bound lets a refused call wait no longer.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var floods []<-chan error
	for range bound + 1 {
		for i := 0; i < len(flood); i += 2 {
			floods = append(floods, call(ctx, attacker, flood[i], flood[i+1]))
		}
	}
	for i, ch := range floods {
		err := <-ch
		if r, ok := errors.AsType[*Reject](err); !ok || r.Code != CanisterError || !strings.Contains(r.Message, "Only controllers") {
			t.Fatalf("flood call %d (%s) by a non-controller about a busy canister: %v, want refused at once as not a controller", i, flood[2*(i%(len(flood)/2))], err)
		}
	}
	if about, _ := f.node.mgmtCalls.load(x); about.calls != 0 {
		t.Fatalf("%d refused calls still counted about x", about.calls)
	}

	// x's controller is admitted (it waits for x), and served once x is free.
	done := call(context.Background(), user, "update_settings", freezingArg(x, 777))
	deadline := time.Now().Add(time.Minute)
	for about, _ := f.node.mgmtCalls.load(x); about.calls != 1; about, _ = f.node.mgmtCalls.load(x) {
		select {
		case err := <-done:
			t.Fatalf("the controller's call about x ended before x was free: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the controller's call was never admitted")
		}
		time.Sleep(time.Millisecond)
	}
	cx.mu.Unlock()
	locked = false
	if err := <-done; err != nil {
		t.Fatalf("the controller's update_settings: %v", err)
	}
	if st := f.status(x); st.FreezingThreshold != 777 || len(st.Controllers) != 1 || st.Controllers[0] != user.String() {
		t.Fatalf("x: freezing threshold %d, controllers %v", st.FreezingThreshold, st.Controllers)
	}
}
