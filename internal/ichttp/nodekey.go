package ichttp

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"path/filepath"

	"github.com/cordon-dev/cordon/internal/homedir"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// NodeKeyFile is the node's Ed25519 key in <home> (its 32-byte seed, mode
// 0600): it signs query responses, and the root key certifies it under
// subnet/<subnet id>/node/<node id>/public_key.
const NodeKeyFile = "ic_node_key"

// NodeKey signs query responses.
type NodeKey struct {
	priv ed25519.PrivateKey
	der  []byte
	id   principal.Principal
}

// ID is the node's id: the self-authenticating principal of its key.
func (k *NodeKey) ID() principal.Principal { return k.id }

// LoadOrCreateNodeKey reads <home>/ic_node_key, making it (0600, durably,
// complete or not at all: homedir.ReadOrCreateSecret) the first time.
func LoadOrCreateNodeKey(home string) (*NodeKey, error) {
	path := filepath.Join(home, NodeKeyFile)
	// Whoever reads or chose it can sign query answers as this node.
	seed, _, err := homedir.ReadOrCreateSecret(home, NodeKeyFile, func() ([]byte, error) {
		seed := make([]byte, ed25519.SeedSize)
		if _, err := rand.Read(seed); err != nil {
			return nil, fmt.Errorf("node key entropy: %w", err)
		}
		return seed, nil
	})
	if err != nil {
		return nil, fmt.Errorf("node key: %w", err)
	}
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("%s is not an Ed25519 seed (%d bytes); remove it to make a new one", path, len(seed))
	}
	priv := ed25519.NewKeyFromSeed(seed)
	der := append(append([]byte{}, ed25519DERPrefix...), priv.Public().(ed25519.PublicKey)...)
	return &NodeKey{priv: priv, der: der, id: principal.SelfAuthenticating(der)}, nil
}

// responseDomain separates the node's query response signatures.
const responseDomain = "\x0Bic-response"

// signQuery signs a query response map (without signatures) for the
// request id, returning the signatures field.
func (k *NodeKey) signQuery(resp map[string]any, requestID [32]byte, now uint64) ([]any, error) {
	m := make(map[string]any, len(resp)+2)
	for f, v := range resp {
		m[f] = v
	}
	m["timestamp"] = now
	m["request_id"] = requestID[:]
	h, err := hashMap(m)
	if err != nil {
		return nil, err
	}
	sig := ed25519.Sign(k.priv, append([]byte(responseDomain), h[:]...))
	return []any{map[string]any{"timestamp": now, "signature": sig, "identity": k.id.Bytes()}}, nil
}
