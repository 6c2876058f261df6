package ichttp

import (
	"bytes"
	"runtime"
	"testing"

	"github.com/cordon-dev/cordon/pkg/candid"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// mgmtTarget reads only the canister an argument names: a field before it
// built to expand (a vec of vecs of null, which decoded to 1.2 GB per 3 MiB)
// is read without being kept, and an argument of large ordinary data still
// gives its target.
func TestMgmtTargetDecodesOnlyTheTarget(t *testing.T) {
	target := principal.SelfAuthenticating([]byte("target"))
	id := candid.Hash("canister_id")
	// record { 0 : vec vec null; canister_id : principal }
	bomb := []byte("DIDL\x03\x6d\x7f\x6d\x00\x6c\x02\x00\x01")
	bomb = append(append(bomb, leb128(uint64(id))...), 0x68, 0x01, 0x02)
	bomb = append(bomb, leb128(1<<20)...)
	for range 1 << 20 {
		bomb = append(bomb, leb128(1<<20)...)
	}
	bomb = append(append(bomb, 1, byte(len(target.Bytes()))), target.Bytes()...)

	types, err := candid.ParseTypes("(record { canister_id : principal; arg : blob })")
	if err != nil {
		t.Fatal(err)
	}
	legit, err := candid.EncodeArgs(candid.Args{Types: types, Values: []candid.Value{candid.Record{
		{ID: id, Value: candid.Principal{Principal: target}}, {ID: candid.Hash("arg"), Value: candid.Blob(bytes.Repeat([]byte{1}, 2<<20))},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		arg  []byte
		ok   bool
	}{{"bomb", bomb, false}, {"2 MiB argument", legit, true}} {
		var m0, m1 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m0)
		p, ok := mgmtTarget("canister_status", c.arg)
		runtime.ReadMemStats(&m1)
		alloc := m1.TotalAlloc - m0.TotalAlloc
		t.Logf("%s (%d bytes): ok=%v, %d KiB allocated", c.name, len(c.arg), ok, alloc>>10)
		if ok != c.ok || ok && !p.Equal(target) {
			t.Fatalf("%s: target %s, %v", c.name, p, ok)
		}
		if alloc > 4<<20 {
			t.Fatalf("%s: %d MiB allocated to find the target", c.name, alloc>>20)
		}
	}
}
