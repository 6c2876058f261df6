package ichttp

import (
	"crypto/ed25519"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/cordon-dev/cordon/pkg/candid"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// signedWith is an envelope of content c from root's principal, signed by
// who at the end of chain.
func signedWith(t *testing.T, c map[string]any, root, who identity, chain []any) []byte {
	t.Helper()
	rid, err := RequestID(c)
	if err != nil {
		t.Fatal(err)
	}
	b, err := cbor.Marshal(map[string]any{"content": c, "sender_pubkey": root.der, "sender_delegation": chain,
		"sender_sig": ed25519.Sign(who.priv, append([]byte(requestDomain), rid[:]...))})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// An expired delegation is refused before its signature is verified (a
// canister signature costs a BLS pairing): an expired link with a forged
// signature is refused as expired.
func TestDelegationExpiryBeforeSignature(t *testing.T) {
	now := time.Now()
	root, session, stranger := newIdentity(t), newIdentity(t), newIdentity(t)
	c := callContent(root.p, now)
	body := signedWith(t, c, root, session, []any{delegate(t, stranger, session, now.Add(-time.Second), nil)})
	_, err := ParseEnvelope(body, "call", now)
	if st, msg := asRequestError(err); err == nil || st != 403 || !strings.Contains(msg, "delegation 0 expired") {
		t.Fatalf("expired link with a forged signature: %v, want 403 naming the expiry", err)
	}
}

// Delegation targets of a call to the management canister are checked
// against the call's canister_id, aaaaa-aa, as the interface spec's
// submission rule says (E.content.canister_id ∈ verify_envelope(E, …)),
// not against the canister its argument names: a delegation restricted to
// canister X does not let its holder stop or reinstall X through aaaaa-aa.
func TestDelegationTargetsOfManagementCalls(t *testing.T) {
	now := time.Now()
	root, session := newIdentity(t), newIdentity(t)
	x := principal.CanisterID(7)
	arg, err := candid.EncodeArgs(candid.Args{
		Types:  []*candid.Type{candid.RecordOf(candid.NamedField("canister_id", candid.Prim(candid.KindPrincipal)))},
		Values: []candid.Value{candid.Record{{ID: candid.Hash("canister_id"), Value: candid.Principal{Principal: x}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	c := callContent(root.p, now)
	c["canister_id"] = []byte{} // aaaaa-aa: the empty blob
	c["method_name"] = "stop_canister"
	c["arg"] = arg
	if got, ok := mgmtTarget("stop_canister", arg); !ok || !got.Equal(x) {
		t.Fatalf("the call's effective canister: %v %v", got, ok)
	}
	later := now.Add(time.Hour)
	onlyX := signedWith(t, c, root, session, []any{delegate(t, root, session, later, []any{x.Bytes()})})
	if _, err := ParseEnvelope(onlyX, "call", now); err == nil || !strings.Contains(err.Error(), "not among the targets") {
		t.Fatalf("a management call about X under a delegation to X only: %v, want refused", err)
	}
	mgmt := signedWith(t, c, root, session, []any{delegate(t, root, session, later, []any{[]byte{}})})
	if _, err := ParseEnvelope(mgmt, "call", now); err != nil {
		t.Fatalf("a management call under a delegation to aaaaa-aa: %v", err)
	}
}
