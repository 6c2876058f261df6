package candid

import (
	"bytes"
	"math/big"
	"runtime"
	"strings"
	"testing"
)

// allocated returns the bytes f allocates.
func allocated(f func()) uint64 {
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	f()
	runtime.ReadMemStats(&m1)
	return m1.TotalAlloc - m0.TotalAlloc
}

// vecVecNull is the audit's bomb: a vec of n vecs of m nulls, about 3n
// bytes on the wire and 16nm bytes of interfaces decoded.
func vecVecNull(n, m uint64) []byte {
	b := appendUleb([]byte("DIDL\x02\x6d\x7f\x6d\x00\x01\x01"), n)
	for range n {
		b = appendUleb(b, m)
	}
	return b
}

// A message whose values have no size on the wire but a size in memory (a
// vec of vecs of null: 3 MiB that decoded to 490 MB) runs out of the
// memory budget, which is in proportion to the message, before it
// allocates more than that; a custom budget is honoured; and large
// ordinary messages (a 2 MiB blob, a vec of records, a vec of small nats)
// decode within the default one.
func TestDecodeMemoryBounded(t *testing.T) {
	bomb := vecVecNull(1<<20, 1<<20)
	budget := uint64(DefaultBaseMemory + DefaultMemoryPerByte*len(bomb))
	for _, d := range []*Decoder{{}, {MemoryPerByte: 8}} {
		var err error
		got := allocated(func() { _, err = d.Decode(bomb) })
		if err == nil || !strings.Contains(err.Error(), "memory limit") {
			t.Fatalf("bomb: %v", err)
		}
		t.Logf("bomb of %d bytes (MemoryPerByte %d): %v; %d MiB allocated", len(bomb), d.MemoryPerByte, err, got>>20)
		// The budget and the work of the type table and error: twice
		// leaves room for garbage the runtime counts.
		if got > 2*budget {
			t.Fatalf("bomb allocated %d MiB, budget %d MiB", got>>20, budget>>20)
		}
	}

	blob := appendUleb([]byte("DIDL\x01\x6d\x7b\x01\x00"), 2<<20)
	blob = append(blob, bytes.Repeat([]byte{7}, 2<<20)...)
	records := mustTypes(t, "(vec record { id : nat64; name : text; balance : nat; active : bool; tags : vec text })")
	var rs Vec
	for i := range 20_000 {
		rs = append(rs, Record{
			{ID: Hash("id"), Value: Nat64(i)}, {ID: Hash("name"), Value: Text("account-" + strings.Repeat("x", i%32))},
			{ID: Hash("balance"), Value: Nat{big.NewInt(int64(i) * 1_000_003)}}, {ID: Hash("active"), Value: Bool(i%2 == 0)},
			{ID: Hash("tags"), Value: Vec{Text("a"), Text("bb")}},
		})
	}
	recMsg, err := EncodeArgs(Args{Types: records, Values: []Value{rs}})
	if err != nil {
		t.Fatal(err)
	}
	nats := make(Vec, 1<<20)
	for i := range nats {
		nats[i] = Nat{big.NewInt(int64(i % 100))}
	}
	natMsg, err := EncodeArgs(Args{Types: mustTypes(t, "(vec nat)"), Values: []Value{nats}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		msg   []byte
		types []*Type
	}{
		{"blob of 2 MiB", blob, mustTypes(t, "(blob)")},
		{"vec of 20000 records", recMsg, records},
		{"vec of 1 Mi small nats", natMsg, mustTypes(t, "(vec nat)")},
	} {
		var err error
		got := allocated(func() { _, err = DecodeAs(c.msg, c.types) })
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		t.Logf("%s (%d bytes): %d KiB allocated", c.name, len(c.msg), got>>10)
	}
}
