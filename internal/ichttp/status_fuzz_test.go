package ichttp

import (
	"bytes"
	"runtime"
	"testing"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// FuzzDecodeStatus: the request statuses the interface loads at start are
// read from the store's file, which a broken disk or another program may
// have changed. decodeStatus never panics, allocates at most a bound of
// the record's size (the CBOR decoder checks a declared length against
// the bytes there), and what it accepts is stored again as what it reads.
func FuzzDecodeStatus(f *testing.F) {
	f.Add(encodeStatus(&requestStatus{Status: "replied", Expiry: 1, Reply: []byte("DIDL\x00\x00"), Sender: principal.Anonymous(), Canister: principal.CanisterID(1)}))
	f.Add(encodeStatus(&requestStatus{Status: "rejected", RejectCode: 4, RejectMessage: "no", Sender: principal.Anonymous(), Canister: principal.Management()}))
	f.Add(encodeStatus(&requestStatus{Status: statusExecuting, Expiry: 5, Sender: principal.Anonymous()}))
	f.Add([]byte{0xa1, 0x05, 0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}) // a reply claiming 2^64-1 bytes
	f.Add([]byte{0xa1, 0x05, 0x5f, 0x41, 0x00, 0xff})                               // an indefinite-length reply
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 4<<10 {
			return
		}
		var st *requestStatus
		var err error
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		st, err = decodeStatus(b)
		runtime.ReadMemStats(&after)
		if n := after.TotalAlloc - before.TotalAlloc; n > 8*uint64(len(b))+64<<10 {
			t.Fatalf("decoding %d bytes allocated %d bytes", len(b), n)
		}
		if err != nil {
			return
		}
		back, err := decodeStatus(encodeStatus(st))
		if err != nil {
			t.Fatalf("a status it read (%+v) does not read again: %v", st, err)
		}
		if back.Status != st.Status || back.Expiry != st.Expiry || !back.Sender.Equal(st.Sender) || !back.Canister.Equal(st.Canister) ||
			!bytes.Equal(back.Reply, st.Reply) || back.RejectCode != st.RejectCode || back.RejectMessage != st.RejectMessage {
			t.Fatalf("stored again, %+v reads as %+v", st, back)
		}
	})
}
