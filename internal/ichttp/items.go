package ichttp

import "github.com/cordon-dev/cordon/internal/cborlimit"

// Bounds of the CBOR a request carries, checked by cborlimit before it is
// decoded. The decoder's limits are per array, per map and per level;
// together they would still let a 3 MiB body of one-byte items become
// millions of decoded values.
//
// maxItems bounds an envelope. A real envelope has a few dozen items (blobs
// are one item whatever their size); read_state's paths a few hundred.
//
// maxCertItems bounds each CBOR value a byte string of the envelope holds
// and that the node decodes on its own: a canister signature (a map of a
// certificate and a tree), the certificate inside it and the tree. A real
// certificate is a tree pruned to the paths it certifies (three items a
// node at most), a 48-byte signature and an optional delegation (two
// blobs): a few hundred items; Internet Identity's signature trees a few
// dozen.
const (
	maxItems     = 4096
	maxCertItems = 4096
)

// countItems checks an envelope's count and nesting (maxNesting, the
// decoder's) before it is decoded.
func countItems(b []byte, max int) error {
	return cborlimit.Check(b, max, maxNesting)
}
