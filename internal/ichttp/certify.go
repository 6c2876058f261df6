// Package ichttp serves the Internet Computer's HTTP interface (the
// interface spec's /api/v2 and /api/v3 endpoints) so that real IC clients
// such as @dfinity/agent talk to a cordon node: CBOR envelopes, request ids,
// sender authentication, certificates signed by the node's BLS root key.
package ichttp

import "github.com/cordon-dev/cordon/internal/certify"

// The certification core (root key, hash trees, certificates) is
// internal/certify, shared with the node, which certifies canisters' data
// for ic0.data_certificate_copy with the same key.
type (
	RootKey = certify.RootKey
	Tree    = certify.Tree
)

// RootKeyFile is the node's BLS12-381 root key in <home>.
const RootKeyFile = certify.RootKeyFile

const stateRootDomain = certify.StateRootDomain

var (
	LoadOrCreateRootKey = certify.LoadOrCreateRootKey
	PublicKeyFromDER    = certify.PublicKeyFromDER
	Leaf                = certify.Leaf
	Labeled             = certify.Labeled
	Fork                = certify.Fork
	Pruned              = certify.Pruned
)

func emptyTree() *Tree { return certify.Empty() }

// node makes the labeled children of one tree node (certify.Node).
type node map[string]*Tree

func (n node) tree() *Tree { return certify.Node(n).Tree() }
