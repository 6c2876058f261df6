package ichttp

import (
	"github.com/cordon-dev/cordon/pkg/candid"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// mgmtTarget is the canister a management canister call is about: the
// canister_id field of its argument record, as the spec derives the
// effective canister id, or install_chunked_code's target_canister (as the
// IC and its agents take it). ok is false for methods without one
// (creating a canister, raw_rand) and for arguments that do not decode,
// which the management canister itself then rejects.
//
// Only that field is decoded (the fields before it are read, not kept):
// the management canister decodes the whole argument once, with its own
// bounds, when it runs the call.
func mgmtTarget(method string, arg []byte) (principal.Principal, bool) {
	want := candid.Hash("canister_id")
	if method == "install_chunked_code" {
		want = candid.Hash("target_canister")
	}
	v, _, ok, err := (&candid.Decoder{}).Field(arg, want)
	if err != nil || !ok {
		return principal.Principal{}, false
	}
	p, ok := v.(candid.Principal)
	return p.Principal, ok
}
