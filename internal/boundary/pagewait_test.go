package boundary

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/state"
)

// testPages makes n pages of a memory, indices 0..n-1.
func testPages(n int) []state.DirtyPage {
	pages := make([]state.DirtyPage, n)
	for i := range pages {
		pages[i] = state.DirtyPage{Index: uint64(i), Data: page(byte(i))}
	}
	return pages
}

// The host's reader counts against an answer's pages only the time it is
// blocked with nothing to read: a host that takes far longer than the
// budget to file the packets of a peer that sends them promptly does not
// run it out, and what it waited stays below it.
func TestPageWaitCountsOnlyTheHostsWaiting(t *testing.T) {
	host, peer := pair(t)
	const packets = 10
	pages := testPages(packets * PagesPerPacket)
	sent := make(chan error, 1)
	go func() { sent <- peer.SendPages(1, HeapMemory, pages) }()
	const budget = 200 * time.Millisecond
	w := &PageWait{AfterPacket: func() { time.Sleep(budget / 2) }} // 5 budgets in all
	w.Arm(budget, nil)
	got := 0
	if err := host.recvPages(1, HeapMemory, uint64(len(pages)), uint64(len(pages)), w, func(state.DirtyPage) error { got++; return nil }); err != nil {
		t.Fatalf("pages sent promptly to a slow host (waited %s of %s): %v", w.Waited(), budget, err)
	}
	if got != len(pages) {
		t.Fatalf("%d pages received, %d sent", got, len(pages))
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
}

// Pages that stop coming end the read once the host's waits add up to the
// budget, as a timeout.
func TestPageWaitEndsAStall(t *testing.T) {
	host, peer := pair(t)
	pages := testPages(2 * PagesPerPacket)
	if err := peer.SendPages(1, HeapMemory, pages[:PagesPerPacket]); err != nil { // half of them, then nothing
		t.Fatal(err)
	}
	const budget = 300 * time.Millisecond
	w := &PageWait{}
	w.Arm(budget, nil)
	err := host.recvPages(1, HeapMemory, uint64(len(pages)), uint64(len(pages)), w, func(state.DirtyPage) error { return nil })
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("a stall: want a timeout, got %v", err)
	}
	if w.Waited() < budget {
		t.Errorf("the read ended after %s of waiting, its budget is %s", w.Waited(), budget)
	}
}

// An exchange given up (its context ended: exchange sets a deadline in the
// past) ends a wait for pages at once, however much of its budget is left,
// whether it ends before the read begins or while it waits: a deadline
// the reader sets never undoes the one that stops it.
func TestPageWaitEndsWhenStopped(t *testing.T) {
	host, _ := pair(t)
	ctx, cancel := context.WithCancel(context.Background())
	stop := context.AfterFunc(ctx, func() { _ = host.Raw().SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	w := &PageWait{}
	w.Arm(time.Hour, func() bool { return ctx.Err() != nil })
	go cancel()
	done := make(chan error, 1)
	go func() {
		done <- host.recvPages(1, HeapMemory, 1, 1, w, func(state.DirtyPage) error { return nil })
	}()
	select {
	case err := <-done:
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("a stopped wait: want a timeout, got %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("a stopped wait for pages did not end")
	}
}
