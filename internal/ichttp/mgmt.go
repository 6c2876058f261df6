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
func mgmtTarget(method string, arg []byte) (principal.Principal, bool) {
	args, err := candid.Decode(arg)
	if err != nil || len(args.Values) == 0 {
		return principal.Principal{}, false
	}
	rec, ok := args.Values[0].(candid.Record)
	if !ok {
		return principal.Principal{}, false
	}
	want := candid.Hash("canister_id")
	if method == "install_chunked_code" {
		want = candid.Hash("target_canister")
	}
	for _, f := range rec {
		if f.ID == want {
			if p, ok := f.Value.(candid.Principal); ok {
				return p.Principal, true
			}
		}
	}
	return principal.Principal{}, false
}
