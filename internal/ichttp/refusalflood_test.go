package ichttp

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// Refusals stay out of the status table, whoever sends them: a flood of
// calls to no canister from a few self-made principals (free: a key pair
// each, nothing runs, no canister pays) must not fill the table and turn
// every other caller's call into a 503 until the flood expires.
func TestRefusalFloodFromFewSendersLeavesRoom(t *testing.T) {
	key, err := LoadOrCreateRootKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	h := New(nil, key, nil, nil)
	clock := time.Now()
	h.now = func() time.Time { return clock }
	exp := uint64(clock.Add(4 * time.Minute).UnixNano())
	next := 0
	call := func(sender principal.Principal, refused bool) error {
		var id [32]byte
		binary.BigEndian.PutUint64(id[:], uint64(next))
		next++
		fresh, _, err := h.begin(&Request{ID: id, IngressExpiry: exp, Sender: sender, CanisterID: principal.CanisterID(1)})
		if err != nil {
			return err
		}
		if !fresh {
			t.Fatalf("call %d known already", next-1)
		}
		st := &requestStatus{Status: "replied", Reply: []byte("DIDL\x00\x00")}
		if refused {
			st = &requestStatus{Status: "rejected", RejectCode: uint64(host.DestinationInvalid), RejectMessage: "Canister not found"}
		}
		h.finish(id, st)
		return nil
	}
	// Five principals, each refused until its share is a 429.
	for s := range 5 {
		sender := principal.SelfAuthenticating([]byte{0xa7, byte(s)})
		for k := 0; k < maxRefused+maxStatusesPerSender; k++ {
			if call(sender, true) != nil {
				break
			}
		}
	}
	honest := principal.SelfAuthenticating([]byte{0x01})
	if err := call(honest, false); err != nil {
		t.Fatalf("after refusals from 5 senders (%d statuses in the table, %d kept apart), an honest call: %v",
			h.tableLocked(), h.nRefused, err)
	}
}
