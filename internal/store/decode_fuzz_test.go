package store

import (
	"encoding/json"
	"runtime"
	"testing"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/state"
)

// maxFuzzValue bounds a fuzz input: a stored value the decoders are given
// whole, small enough for many inputs a second.
const maxFuzzValue = 4 << 10

// allocatedBy is how many bytes fn allocates (TotalAlloc: what a decoder
// sized from a length it read would ask for, even if it failed).
func allocatedBy(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// allocBound is what decoding n bytes may allocate: a few times the input
// (a decoded value's Go form is larger than its bytes) and a constant for
// the decoder itself; a length read from the input and trusted would go
// far past it.
func allocBound(n int) uint64 { return 8*uint64(n) + 64<<10 }

// FuzzStoredValues: the store's values are read back from its file, which
// a broken disk or another program may have changed. Their decoders
// (globals, cycles amounts, canister metadata, the deleted canisters'
// ledger) never panic, never allocate beyond a bound of the value's size,
// and what decodes encodes back to something that decodes the same.
func FuzzStoredValues(f *testing.F) {
	f.Add(uint8(0), encodeGlobals([]state.Global{{Type: 1, Bits: 7}, {Type: 2, Bits: 1 << 40}}))
	f.Add(uint8(0), []byte{0xff, 0xff, 0xff, 0xff})
	f.Add(uint8(1), encodeAmount(cycles.Amount{Hi: 1, Lo: 2}))
	meta, _ := json.Marshal(Meta{ID: "rwlgt-iiaaa-aaaaa-aaaaa-cai", Status: "running", Balance: cycles.Amount{Lo: 5}})
	f.Add(uint8(2), meta)
	f.Add(uint8(2), []byte(`{"balance":"340282366920938463463374607431768211456","cycles_reserved":"-1"}`))
	ledger, _ := json.Marshal(&DeletedCycles{Minted: cycles.Amount{Hi: 3}, Burned: cycles.Amount{Lo: 4}})
	f.Add(uint8(3), ledger)
	f.Fuzz(func(t *testing.T, which uint8, v []byte) {
		if len(v) > maxFuzzValue {
			return
		}
		var err error
		var again func() error
		n := allocatedBy(func() {
			switch which % 4 {
			case 0:
				var gs []state.Global
				if gs, err = decodeGlobals(v); err == nil {
					again = func() error {
						back, err := decodeGlobals(encodeGlobals(gs))
						if err == nil && len(back) != len(gs) {
							t.Fatalf("globals: %d decoded, %d after a round trip", len(gs), len(back))
						}
						return err
					}
				}
			case 1:
				var a cycles.Amount
				if a, err = decodeAmount(v); err == nil {
					again = func() error {
						b, err := decodeAmount(encodeAmount(a))
						if err == nil && b != a {
							t.Fatalf("amount %v, %v after a round trip", a, b)
						}
						return err
					}
				}
			case 2:
				var m Meta
				if err = json.Unmarshal(v, &m); err == nil {
					again = func() error {
						raw, err := json.Marshal(&m)
						if err != nil {
							return err
						}
						var back Meta
						return json.Unmarshal(raw, &back)
					}
				}
			case 3:
				var l DeletedCycles
				if err = json.Unmarshal(v, &l); err == nil {
					again = func() error {
						raw, err := json.Marshal(&l)
						if err != nil {
							return err
						}
						var back DeletedCycles
						if err := json.Unmarshal(raw, &back); err != nil {
							return err
						}
						if back.Minted != l.Minted || back.Burned != l.Burned {
							t.Fatalf("ledger %+v, %+v after a round trip", l, back)
						}
						return nil
					}
				}
			}
		})
		if n > allocBound(len(v)) {
			t.Fatalf("decoding %d bytes (kind %d) allocated %d bytes", len(v), which%4, n)
		}
		if again != nil {
			if err := again(); err != nil {
				t.Fatalf("kind %d: what decoded does not decode after a round trip: %v", which%4, err)
			}
		}
	})
}
