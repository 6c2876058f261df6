package host

import (
	"bytes"
	"fmt"
	"sync"
	"time"

	"github.com/cordon-dev/cordon/internal/certify"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// Certifier is the node's root of trust for canisters: the IC root key
// ic0.root_key_copy gives (DER), and the certificates of their certified
// data that ic0.data_certificate_copy gives in queries. certify.RootKey is
// one; the node never sees the secret key behind it.
type Certifier interface {
	DER() []byte
	// CertifyCanister signs a certificate whose tree holds /time and
	// /canister/<id>/certified_data.
	CertifyCanister(id, certifiedData []byte, timeNanos uint64) ([]byte, error)
}

// openCertifier is the configured certifier, or the root key in the
// node's home: the same <home>/ic_root_key `cordon serve`'s IC HTTP
// interface signs with, so a client that trusts one trusts the other.
func openCertifier(cfg Config) (Certifier, error) {
	if cfg.Certifier != nil {
		return cfg.Certifier, nil
	}
	k, err := certify.LoadOrCreateRootKey(cfg.Home)
	if err != nil {
		return nil, fmt.Errorf("host: root key: %w", err)
	}
	return k, nil
}

// dataCertMaxAge is how long a canister's data certificate is reused while
// its certified data stays the same. The IC certifies its state every
// round; clients check that a certificate's time is recent (the HTTP
// gateway's response verification allows five minutes), so an unchanged
// certificate is signed again at this age rather than kept forever.
const dataCertMaxAge = time.Minute

// dataCert caches one canister's data certificate: signed once per change
// of its committed certified data (or per dataCertMaxAge), not per query,
// so queries pay a comparison, not a BLS signature. Queries run
// concurrently under the canister's read lock, hence its own mutex.
type dataCert struct {
	mu   sync.Mutex
	data []byte // the certified data the certificate holds
	at   uint64 // its time (ns)
	cert []byte
}

// dataCertificate is the certificate a query on c gets: its committed
// certified data at a recent time. The caller holds c.mu (read or write).
func (n *Node) dataCertificate(c *canister) ([]byte, error) {
	now := uint64(n.clock().UnixNano())
	d := &c.cert
	d.mu.Lock()
	defer d.mu.Unlock()
	data := c.meta.CertifiedData
	if data == nil {
		data = []byte{} // a fresh canister's certified data is the empty blob
	}
	if d.cert != nil && bytes.Equal(d.data, data) && now >= d.at && now-d.at < uint64(dataCertMaxAge) {
		return d.cert, nil
	}
	cert, err := n.certifier.CertifyCanister(c.id.Bytes(), data, now)
	if err != nil {
		return nil, n.internalReject(SysTransient, "certify the data of canister "+c.id.String(), err)
	}
	if len(cert) > sysapi.MaxDataCertificate {
		return nil, rejectf(SysTransient, "the data certificate of canister %s has %d bytes, more than %d", c.id, len(cert), sysapi.MaxDataCertificate)
	}
	d.data, d.at, d.cert = bytes.Clone(data), now, cert
	return cert, nil
}
