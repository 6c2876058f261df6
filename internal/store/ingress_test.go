package store

import (
	"testing"
)

func ingressOf(t *testing.T, s *Store) map[string]string {
	t.Helper()
	m := map[string]string{}
	if err := s.Ingress(func(k, v []byte) error { m[string(k)] = string(v); return nil }); err != nil {
		t.Fatal(err)
	}
	return m
}

// Ingress records commit with the canister change they ride on, or not at
// all; they survive a reopen; a nil value deletes; bad records fail the
// whole commit.
func TestIngressRecords(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	ch := onePage([]byte{1}, 1, 0, 1)
	ch.Ingress = []IngressRecord{{Key: []byte("rid-1"), Value: []byte("replied")}}
	if err := s.Commit(ch); err != nil {
		t.Fatal(err)
	}
	// A request that fails (a page without data panics) stores neither
	// its canister change nor its status.
	boom := onePage([]byte{1}, 2, 0, 2)
	boom.Heap.Delta.Pages[0].Data = nil
	boom.Ingress = []IngressRecord{{Key: []byte("rid-2"), Value: []byte("replied")}}
	func() {
		defer func() { _ = recover() }()
		_ = s.Commit(boom)
	}()
	bad := onePage([]byte{1}, 2, 0, 2)
	bad.Ingress = []IngressRecord{{Key: []byte("rid-3"), Value: []byte("x")}, {Key: make([]byte, maxIngressKey+1), Value: []byte("x")}}
	if err := s.Commit(bad); err == nil {
		t.Fatal("an oversized ingress key was stored")
	}
	if err := s.PutIngress(IngressRecord{Key: []byte("rid-4"), Value: []byte("rejected")}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, dir)
	defer s.Close()
	got := ingressOf(t, s)
	if len(got) != 2 || got["rid-1"] != "replied" || got["rid-4"] != "rejected" {
		t.Fatalf("after reopen: %v", got)
	}
	c, err := s.Load([]byte{1})
	if err != nil || c.Meta.Version != 1 {
		t.Fatalf("canister after the failed commits: %v %v", c, err)
	}
	if err := s.PutIngress(IngressRecord{Key: []byte("rid-1")}); err != nil {
		t.Fatal(err)
	}
	if got := ingressOf(t, s); len(got) != 1 || got["rid-4"] != "rejected" {
		t.Fatalf("after a delete: %v", got)
	}
}
