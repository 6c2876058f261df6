package ichttp

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync"
	"testing"
	"time"
	"weak"

	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// fill puts n finished calls of senders[i%len(senders)] into h's table,
// expiring at exp; ids from first on.
func fill(t *testing.T, h *Handler, first, n int, exp uint64, senders ...principal.Principal) {
	t.Helper()
	for i := first; i < first+n; i++ {
		var id [32]byte
		binary.BigEndian.PutUint64(id[:], uint64(i))
		req := &Request{ID: id, IngressExpiry: exp, Sender: senders[i%len(senders)], CanisterID: principal.CanisterID(1)}
		if fresh, _, err := h.begin(req); !fresh || err != nil {
			t.Fatalf("fill %d: %v %v", i, fresh, err)
		}
		h.finish(id, &requestStatus{Status: "replied", Reply: []byte("DIDL\x00\x00")})
	}
}

// The request-status table is node-wide: 100 000 anonymous calls to a
// method that does not exist (a status was made before the canister was
// even looked up) filled it and every IC call from anyone was a 503 for
// ten minutes. Now a call refused before anything ran keeps its status
// outside the table (among the last maxRefused such), one sender holds at
// most maxStatusesPerSender of the table, and a full table gives up its
// done statuses, oldest first.
func TestStatusTableNotLockedByOneSender(t *testing.T) {
	node, id, home := counterNode(t)
	key := testRootKey(t, home)
	srv := httptest.NewServer(New(node, key, testNodeKey(t, home), slog.New(slog.NewTextHandler(io.Discard, nil))))
	defer srv.Close()
	h := srv.Config.Handler.(*Handler)
	base := srv.URL + "/api/v2/canister/" + id.String()
	call := func(c map[string]any, who *identity) int {
		t.Helper()
		code, b := post(t, base+"/call", envelope(t, c, who))
		if code != http.StatusAccepted && code != http.StatusTooManyRequests && code != http.StatusServiceUnavailable {
			t.Fatalf("call: %d %s", code, b)
		}
		return code
	}
	attacker, other := newIdentity(t), newIdentity(t)

	// The attacker holds all but one place of the table, spread over
	// senders (one sender alone may not).
	others := make([]principal.Principal, 8)
	for i := range others {
		others[i] = principal.SelfAuthenticating([]byte{0xee, byte(i)})
	}
	fill(t, h, 0, maxStatuses-1, uint64(time.Now().Add(4*time.Minute).UnixNano()), others...)

	// Calls to a method that does not exist: answered (202, status
	// rejected, readable), holding no place of the table.
	now := time.Now()
	for i := range 3 {
		c := content("call", principal.Anonymous(), id, "nope", now, byte(i))
		if code := call(c, nil); code != http.StatusAccepted {
			t.Fatalf("refused call: %d", code)
		}
		rid, _ := RequestID(c)
		if s, _, code, _ := h.RequestStatus(rid); s != "rejected" || code != uint64(host.DestinationInvalid) {
			t.Fatalf("refused call's status %s %d", s, code)
		}
	}
	// So the last place is still there for a call that runs.
	if code := call(content("call", other.p, id, "inc", now, 10), &other); code != http.StatusAccepted {
		t.Fatalf("a call after refused ones filled nothing: %d", code)
	}

	// One sender may hold only maxStatusesPerSender: the attacker's next
	// call is 429 once it holds them, anyone else's goes on.
	h2 := New(nil, key, nil, nil)
	fill(t, h2, 0, maxStatusesPerSender, uint64(time.Now().Add(4*time.Minute).UnixNano()), attacker.p)
	var rid [32]byte
	rid[0] = 1
	if _, _, err := h2.begin(&Request{ID: rid, IngressExpiry: uint64(time.Now().Add(time.Minute).UnixNano()), Sender: attacker.p}); err == nil {
		t.Fatal("a sender beyond its quota was admitted")
	} else if st, _ := asRequestError(err); st != http.StatusTooManyRequests {
		t.Fatalf("a sender beyond its quota: %v", err)
	}
	rid[0] = 2
	if fresh, _, err := h2.begin(&Request{ID: rid, IngressExpiry: uint64(time.Now().Add(time.Minute).UnixNano()), Sender: other.p}); !fresh || err != nil {
		t.Fatalf("another sender beside a full quota: %v %v", fresh, err)
	}
}

// A flood of refused calls rotates through maxRefused statuses and never
// touches the table.
func TestRefusedStatusesBounded(t *testing.T) {
	key, err := LoadOrCreateRootKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	h := New(nil, key, nil, nil)
	exp := uint64(time.Now().Add(4 * time.Minute).UnixNano())
	const n = maxRefused + 5000
	for i := range n {
		var id [32]byte
		binary.BigEndian.PutUint64(id[:], uint64(i))
		if fresh, _, err := h.begin(&Request{ID: id, IngressExpiry: exp, Sender: principal.Anonymous()}); !fresh || err != nil {
			t.Fatalf("refused call %d: %v %v", i, fresh, err)
		}
		h.finish(id, &requestStatus{Status: "rejected", RejectCode: uint64(host.DestinationInvalid), RejectMessage: "no such method"})
	}
	if len(h.statuses) != maxRefused || h.tableLocked() != 0 || len(h.held) != 0 {
		t.Fatalf("%d statuses (%d in the table, %d senders holding) after %d refused calls", len(h.statuses), h.tableLocked(), len(h.held), n)
	}
	if len(h.due) > 2*maxRefused {
		t.Fatalf("due keeps %d ids for %d statuses", len(h.due), len(h.statuses))
	}
	var last [32]byte
	binary.BigEndian.PutUint64(last[:], n-1)
	if s, _, _, _ := h.RequestStatus(last); s != "rejected" {
		t.Fatalf("the newest refused call's status: %s", s)
	}
}

// A full table whose oldest statuses are past their expiry ("done") gives
// them up, oldest first, instead of refusing every call until they are
// forgotten (doneTTL later).
func TestFullTableEvictsDone(t *testing.T) {
	key, err := LoadOrCreateRootKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	h := New(nil, key, nil, nil)
	clock := time.Now()
	h.now = func() time.Time { return clock }
	senders := make([]principal.Principal, 8)
	for i := range senders {
		senders[i] = principal.SelfAuthenticating([]byte{byte(i)})
	}
	fill(t, h, 0, maxStatuses/2, uint64(clock.Add(time.Minute).UnixNano()), senders...)
	fill(t, h, maxStatuses/2, maxStatuses/2, uint64(clock.Add(4*time.Minute).UnixNano()), senders...)
	clock = clock.Add(2 * time.Minute) // the first half is done, not yet forgotten
	mk := func(i int) *Request {
		var id [32]byte
		binary.BigEndian.PutUint64(id[:], uint64(i))
		return &Request{ID: id, IngressExpiry: uint64(clock.Add(time.Minute).UnixNano()), Sender: senders[0]}
	}
	if fresh, _, err := h.begin(mk(maxStatuses)); !fresh || err != nil {
		t.Fatalf("a call when the table is full of done statuses: %v %v", fresh, err)
	}
	if s, _, _, _ := h.RequestStatus(mk(0).ID); s != "unknown" {
		t.Fatalf("oldest done status: %s, want evicted", s)
	}
	if s, _, _, _ := h.RequestStatus(mk(1).ID); s != "done" {
		t.Fatalf("next done status: %s, want kept", s)
	}
	if s, _, _, _ := h.RequestStatus(mk(maxStatuses - 1).ID); s != "replied" {
		t.Fatalf("a status within its expiry: %s", s)
	}
}

// A call stuck processing (its status kept up to maxCallWait past its
// expiry) was the oldest entry of the one arrival order that pruning
// walked, so no status after it became done or evictable: one stuck call
// and a full table refused every call for ten minutes. Now each status is
// done at its own end, whatever is before it.
func TestStuckCallDoesNotHoldEviction(t *testing.T) {
	key, err := LoadOrCreateRootKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	h := New(nil, key, nil, nil)
	clock := time.Now()
	h.now = func() time.Time { return clock }
	senders := make([]principal.Principal, 8)
	for i := range senders {
		senders[i] = principal.SelfAuthenticating([]byte{byte(i)})
	}
	mk := func(i int, exp time.Time) *Request {
		var id [32]byte
		binary.BigEndian.PutUint64(id[:], uint64(i))
		return &Request{ID: id, IngressExpiry: uint64(exp.UnixNano()), Sender: senders[i%len(senders)], CanisterID: principal.CanisterID(1)}
	}
	// First a call that never ends, then one replied with a long expiry,
	// then the rest of the table, replied, expiring sooner.
	stuck := mk(0, clock.Add(time.Minute))
	if fresh, _, err := h.begin(stuck); !fresh || err != nil {
		t.Fatalf("stuck call: %v %v", fresh, err)
	}
	long := mk(1, clock.Add(5*time.Minute))
	if fresh, _, err := h.begin(long); !fresh || err != nil {
		t.Fatalf("long call: %v %v", fresh, err)
	}
	h.finish(long.ID, &requestStatus{Status: "replied", Reply: []byte("DIDL\x00\x00")})
	fill(t, h, 2, maxStatuses-2, uint64(clock.Add(time.Minute).UnixNano()), senders...)

	clock = clock.Add(2 * time.Minute) // the stuck call is within maxCallWait, the long one within its expiry
	if fresh, _, err := h.begin(mk(maxStatuses, clock.Add(time.Minute))); !fresh || err != nil {
		t.Fatalf("a call behind a stuck one and a full table of done statuses: %v %v", fresh, err)
	}
	if s, _, _, _ := h.RequestStatus(mk(2, clock).ID); s != "unknown" {
		t.Fatalf("oldest done status behind the stuck call: %s, want evicted", s)
	}
	if s, _, _, _ := h.RequestStatus(mk(3, clock).ID); s != "done" {
		t.Fatalf("next done status: %s, want kept", s)
	}
	if s, _, _, _ := h.RequestStatus(stuck.ID); s != "processing" {
		t.Fatalf("stuck call's status: %s", s)
	}
	if s, _, _, _ := h.RequestStatus(long.ID); s != "replied" {
		t.Fatalf("a status within its expiry, before done ones: %s", s)
	}
	if fresh, _, err := h.begin(stuck); fresh || err == nil {
		t.Fatalf("replay of the stuck call past its expiry: %v %v", fresh, err)
	}

	// When the stuck call ends, past its expiry, it is done at the next
	// pruning and evictable like the others.
	h.finish(stuck.ID, &requestStatus{Status: "replied", Reply: []byte("DIDL\x00\x00")})
	h.mu.Lock()
	h.pruneLocked()
	h.mu.Unlock()
	if s, _, _, _ := h.RequestStatus(stuck.ID); s != "done" {
		t.Fatalf("a stuck call ended late: %s, want done", s)
	}
	if len(h.due) > 2*len(h.statuses)+1024 {
		t.Fatalf("due keeps %d entries for %d statuses", len(h.due), len(h.statuses))
	}
}

// openCallNode is a node whose calls run and then stay open (awaiting the
// calls they made): it keeps each call's status hook, as host.Node keeps
// it with the call context, and nothing else of the message.
type openCallNode struct {
	mu       sync.Mutex
	statuses []*host.IngressStatus
	started  chan struct{}
	release  chan struct{}
}

func (o *openCallNode) Update(ctx context.Context, msg host.Message) (*host.Reply, error) {
	o.mu.Lock()
	o.statuses = append(o.statuses, msg.Status)
	o.mu.Unlock()
	o.started <- struct{}{}
	select {
	case <-o.release:
		return &host.Reply{}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
func (o *openCallNode) Query(context.Context, host.Message) (*host.Reply, error) {
	return nil, errors.New("no queries")
}
func (o *openCallNode) Status(context.Context, principal.Principal) (*host.Status, error) {
	return nil, errors.New("no status")
}
func (o *openCallNode) IngressStatuses(func(key, value []byte) error) error { return nil }
func (o *openCallNode) PutIngressStatuses([]store.IngressRecord) error      { return nil }

// A call accepted over the interface is waited for (up to maxCallWait)
// while it stays open: its goroutine, and the status hook the node keeps,
// used to keep the whole request, its argument of up to 2 MiB with it,
// long after the node had run the message and let go of the argument.
func TestOpenCallHoldsNoArgument(t *testing.T) {
	key, err := LoadOrCreateRootKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	node := &openCallNode{started: make(chan struct{}), release: make(chan struct{})}
	defer close(node.release)
	h := New(node, key, nil, nil)
	const calls = 8
	var weaks []weak.Pointer[byte]
	for i := range calls {
		var id [32]byte
		id[0] = byte(i)
		req := &Request{ID: id, Type: "call", IngressExpiry: uint64(time.Now().Add(time.Minute).UnixNano()), Sender: principal.Anonymous(),
			CanisterID: principal.CanisterID(1), MethodName: "hold", Arg: make([]byte, 1<<20)}
		weaks = append(weaks, weak.Make(&req.Arg[0]))
		ctx, cancel := context.WithCancel(context.Background())
		go func() { <-node.started; cancel() }() // the client leaves once the call runs
		if err := h.run(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.GC()
	held := 0
	for _, w := range weaks {
		if w.Value() != nil {
			held++
		}
	}
	if held > 0 {
		t.Fatalf("%d of %d arguments of open calls are still held", held, calls)
	}
}

// parse checks a request's expiry, then begin looks its id up: a status is
// forgotten once its expiry (with the drift) has passed, a refusal's at
// once, so a replay that passed parse at the end of its window, with
// another call's pruning between, found no status and ran again. begin
// checks the expiry again, under the table's lock.
func TestReplayPastItsExpiryDoesNotRunAgain(t *testing.T) {
	key, err := LoadOrCreateRootKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	h := New(nil, key, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	clock := time.Now()
	h.now = func() time.Time { return clock }
	req := &Request{ID: [32]byte{7}, IngressExpiry: uint64(clock.Add(time.Minute).UnixNano()), Sender: principal.Anonymous(), CanisterID: principal.CanisterID(1)}
	if fresh, _, err := h.begin(req); !fresh || err != nil {
		t.Fatalf("begin: %v %v", fresh, err)
	}
	h.finish(req.ID, &requestStatus{Status: "rejected", RejectCode: uint64(host.DestinationInvalid), RejectMessage: "no such method"})

	// A replay passes parse at the last instant of its window…
	last := clock.Add(time.Minute + maxClockDrift)
	if err := checkExpiry(req.IngressExpiry, last); err != nil {
		t.Fatalf("parse at the end of the window: %v", err)
	}
	// …and reaches begin just after, once another call's pruning has
	// forgotten the refusal.
	clock = last.Add(time.Millisecond)
	other := &Request{ID: [32]byte{8}, IngressExpiry: uint64(clock.Add(time.Minute).UnixNano()), Sender: principal.Anonymous(), CanisterID: principal.CanisterID(1)}
	if fresh, _, err := h.begin(other); !fresh || err != nil {
		t.Fatalf("another call: %v %v", fresh, err)
	}
	if s, _, _, _ := h.RequestStatus(req.ID); s != "unknown" {
		t.Fatalf("the refusal's status past its expiry: %s, want forgotten", s)
	}
	fresh, _, err := h.begin(req)
	if fresh {
		t.Fatal("a replay that passed parse ran again once its status was forgotten")
	}
	if st, _ := asRequestError(err); st != http.StatusBadRequest {
		t.Fatalf("replay past its expiry: %v, want a 400", err)
	}
}
