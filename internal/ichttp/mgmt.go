package ichttp

import (
	"github.com/cordon-dev/cordon/pkg/candid"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// mgmtTarget is the canister a management canister call is about: the
// canister_id field of its argument record, as the spec derives the
// effective canister id. ok is false for methods without one (creating a
// canister, raw_rand) and for arguments that do not decode, which the
// management canister itself then rejects.
func mgmtTarget(arg []byte) (principal.Principal, bool) {
	args, err := candid.Decode(arg)
	if err != nil || len(args.Values) == 0 {
		return principal.Principal{}, false
	}
	rec, ok := args.Values[0].(candid.Record)
	if !ok {
		return principal.Principal{}, false
	}
	want := candid.Hash("canister_id")
	for _, f := range rec {
		if f.ID == want {
			if p, ok := f.Value.(candid.Principal); ok {
				return p.Principal, true
			}
		}
	}
	return principal.Principal{}, false
}
