package ichttp

import (
	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// mgmtTarget is the canister a management canister call is about
// (host.ManagementTarget): the spec's effective canister id of the call.
func mgmtTarget(method string, arg []byte) (principal.Principal, bool) {
	return host.ManagementTarget(method, arg)
}
