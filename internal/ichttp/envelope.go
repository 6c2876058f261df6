package ichttp

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"reflect"
	"time"
	"unicode/utf8"

	"github.com/fxamacker/cbor/v2"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// Bounds of what a request may be. An envelope is parsed before anything
// is known about its sender, so everything it can make the node allocate
// is capped: the body, CBOR nesting, array and map sizes.
const (
	// MaxBody bounds a request body (the IC takes ingress messages up to
	// 2 MiB of argument; the envelope adds keys and signatures).
	MaxBody = 3 << 20
	// maxNesting allows read_state's paths (envelope, content, paths,
	// path, label) with room for delegations, no more.
	maxNesting    = 16
	maxArrayElems = 1024
	maxMapPairs   = 64

	// maxIngressTTL and maxClockDrift are the IC's: an expiry may be at
	// most 5 minutes ahead, with 30 seconds of drift either way.
	maxIngressTTL = 5 * time.Minute
	maxClockDrift = 30 * time.Second
)

// selfDescribeTag marks CBOR documents (the IC writes and accepts it).
const selfDescribeTag = 55799

var decMode = func() cbor.DecMode {
	dm, err := cbor.DecOptions{
		MaxNestedLevels:  maxNesting,
		MaxArrayElements: maxArrayElems,
		MaxMapPairs:      maxMapPairs,
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		DefaultMapType:   reflect.TypeOf(map[string]any(nil)),
		IndefLength:      cbor.IndefLengthForbidden,
		UTF8:             cbor.UTF8RejectInvalid,
	}.DecMode()
	if err != nil {
		panic(err) // constant options
	}
	return dm
}()

// requestError is a request refused before anything ran: the status and
// a message for the client.
type requestError struct {
	status int
	msg    string
}

func (e *requestError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &requestError{status: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

func forbidden(format string, args ...any) error {
	return &requestError{status: http.StatusForbidden, msg: fmt.Sprintf(format, args...)}
}

// Request is an authenticated request's content.
type Request struct {
	ID            [32]byte
	Type          string // "call", "query" or "read_state"
	Sender        principal.Principal
	IngressExpiry uint64 // nanoseconds since 1970
	Nonce         []byte
	// call and query
	CanisterID principal.Principal
	MethodName string
	Arg        []byte
	// read_state
	Paths [][][]byte
	// Targets are the canisters the sender's delegations allow the
	// request to address (the intersection of their targets); nil: any.
	Targets map[string]bool
}

// MayAddress reports whether the request's delegations allow it to
// address canister p.
func (req *Request) MayAddress(p principal.Principal) bool {
	return req.Targets == nil || req.Targets[string(p.Bytes())]
}

// readBody reads at most MaxBody bytes. A body that does not arrive in
// time (the server paces bodies with read deadlines) is a 408.
func readBody(r io.Reader) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxBody+1))
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return nil, &requestError{status: http.StatusRequestTimeout, msg: "request body not received in time"}
	}
	if err != nil {
		return nil, badRequest("read request body: %v", err)
	}
	if len(b) > MaxBody {
		return nil, &requestError{status: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("request body larger than %d bytes", MaxBody)}
	}
	return b, nil
}

// ParseEnvelope decodes and authenticates a request envelope: the content's
// fields, its request id, the ingress expiry against now, and the sender
// (anonymous, or the self-authenticating principal of an Ed25519 key that
// signed the request id). wantType is the request type the endpoint takes.
func ParseEnvelope(body []byte, wantType string, now time.Time) (*Request, error) {
	return ParseEnvelopeWith(body, wantType, now, nil)
}

// ParseEnvelopeWith is ParseEnvelope on a node whose root key is rootKey
// (DER): canister signatures (canistersig.go) are verified against it; with
// a nil rootKey they are refused.
func ParseEnvelopeWith(body []byte, wantType string, now time.Time, rootKey []byte) (*Request, error) {
	if err := countItems(body, maxItems); err != nil {
		return nil, badRequest("Could not parse body as read request: %v", err)
	}
	var top any
	if err := decMode.Unmarshal(body, &top); err != nil {
		return nil, badRequest("Could not parse body as read request: %v", err)
	}
	if t, ok := top.(cbor.Tag); ok && t.Number == selfDescribeTag {
		top = t.Content
	}
	env, ok := top.(map[string]any)
	if !ok {
		return nil, badRequest("Could not parse body as read request: the envelope is not a map")
	}
	content, ok := env["content"].(map[string]any)
	if !ok {
		return nil, badRequest("Could not parse body as read request: missing or malformed field content")
	}
	for k := range env {
		switch k {
		case "content", "sender_pubkey", "sender_sig", "sender_delegation":
		default:
			return nil, badRequest("Could not parse body as read request: unknown envelope field %q", clip(k))
		}
	}
	id, err := RequestID(content)
	if err != nil {
		return nil, badRequest("Could not parse body as read request: %v", err)
	}
	req := &Request{ID: id}
	if err := req.fill(content, wantType); err != nil {
		return nil, err
	}
	if err := checkExpiry(req.IngressExpiry, now); err != nil {
		return nil, err
	}
	if err := authenticate(req, env, now, rootKey); err != nil {
		return nil, err
	}
	return req, nil
}

func (req *Request) fill(c map[string]any, wantType string) error {
	text := func(k string) (string, error) {
		s, ok := c[k].(string)
		if !ok {
			return "", badRequest("Could not parse body as read request: field %s must be text", k)
		}
		return s, nil
	}
	blob := func(k string, optional bool) ([]byte, error) {
		v, present := c[k]
		if !present && optional {
			return nil, nil
		}
		b, ok := v.([]byte)
		if !ok {
			return nil, badRequest("Could not parse body as read request: field %s must be a blob", k)
		}
		return b, nil
	}
	princ := func(k string) (principal.Principal, error) {
		b, err := blob(k, false)
		if err != nil {
			return principal.Principal{}, err
		}
		p, err := principal.FromBytes(b)
		if err != nil {
			return principal.Principal{}, badRequest("Could not parse body as read request: field %s: %v", k, err)
		}
		return p, nil
	}
	var err error
	if req.Type, err = text("request_type"); err != nil {
		return err
	}
	if req.Type != wantType {
		return badRequest("Could not parse body as read request: request_type is %q, this endpoint takes %q", clip(req.Type), wantType)
	}
	if req.Sender, err = princ("sender"); err != nil {
		return err
	}
	exp, ok := c["ingress_expiry"].(uint64)
	if !ok {
		return badRequest("Could not parse body as read request: field ingress_expiry must be a natural number")
	}
	req.IngressExpiry = exp
	if req.Nonce, err = blob("nonce", true); err != nil {
		return err
	}
	switch req.Type {
	case "call", "query":
		if req.CanisterID, err = princ("canister_id"); err != nil {
			return err
		}
		if req.MethodName, err = text("method_name"); err != nil {
			return err
		}
		if req.Arg, err = blob("arg", false); err != nil {
			return err
		}
	case "read_state":
		ps, ok := c["paths"].([]any)
		if !ok {
			return badRequest("Could not parse body as read request: field paths must be an array of paths")
		}
		for _, p := range ps {
			labels, ok := p.([]any)
			if !ok {
				return badRequest("Could not parse body as read request: a path must be an array of blobs")
			}
			path := make([][]byte, 0, len(labels))
			for _, l := range labels {
				b, ok := l.([]byte)
				if !ok {
					return badRequest("Could not parse body as read request: a path label must be a blob")
				}
				path = append(path, b)
			}
			req.Paths = append(req.Paths, path)
		}
	}
	return nil
}

// checkExpiry applies the IC's window: not in the past, at most 5 minutes
// ahead, 30 seconds of drift allowed either way.
func checkExpiry(exp uint64, now time.Time) error {
	n := uint64(now.UnixNano())
	lo := n - uint64(maxClockDrift)
	hi := n + uint64(maxIngressTTL+maxClockDrift)
	if exp < lo || exp > hi {
		return badRequest("Invalid request expiry: Specified ingress_expiry not within expected range: Minimum allowed expiry: %s, Maximum allowed expiry: %s, Provided expiry: %s",
			nanosText(lo), nanosText(hi), nanosText(exp))
	}
	return nil
}

func nanosText(ns uint64) string {
	return time.Unix(0, int64(min(ns, 1<<63-1))).UTC().Format("2006-01-02 15:04:05.999999999 UTC")
}

// ed25519DERPrefix is the DER header of an Ed25519 public key
// (SubjectPublicKeyInfo, OID 1.3.101.112).
var ed25519DERPrefix = []byte{0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00}

// requestDomain separates request signatures from any other signature
// made with the same key.
const requestDomain = "\x0Aic-request"

// Limits of delegation chains, the IC's.
const (
	maxDelegations = 20
	maxTargets     = 1000
)

// delegationDomain separates the signatures of delegations.
const delegationDomain = "\x1Aic-request-auth-delegation"

func authenticate(req *Request, env map[string]any, now time.Time, rootKey []byte) error {
	pk, hasPK := env["sender_pubkey"]
	sig, hasSig := env["sender_sig"]
	if req.Sender.IsAnonymous() {
		if hasPK || hasSig || env["sender_delegation"] != nil {
			return forbidden("Request %x is not authorized: an anonymous request must not carry a sender_pubkey, sender_sig or sender_delegation", req.ID)
		}
		return nil
	}
	if !hasPK || !hasSig {
		return forbidden("Request %x is not authorized: sender %s is not anonymous, so the request needs sender_pubkey and sender_sig", req.ID, req.Sender)
	}
	der, ok1 := pk.([]byte)
	sg, ok2 := sig.([]byte)
	if !ok1 || !ok2 {
		return badRequest("Could not parse body as read request: sender_pubkey and sender_sig must be blobs")
	}
	if !principal.SelfAuthenticating(der).Equal(req.Sender) {
		return forbidden("Request %x is not authorized: sender %s is not the principal of the given sender_pubkey (%s)", req.ID, req.Sender, principal.SelfAuthenticating(der))
	}
	signer, err := senderKey(der, rootKey)
	if err != nil {
		return forbidden("Request %x is not authorized: sender_pubkey %v", req.ID, err)
	}
	// A delegation chain hands the right to sign from the sender's key
	// to another, each link signed by the key before it.
	if d, ok := env["sender_delegation"]; ok {
		if signer, err = followDelegations(req, signer, d, now, rootKey); err != nil {
			return err
		}
	}
	msg := append([]byte(requestDomain), req.ID[:]...)
	if !signer(msg, sg) {
		return forbidden("Request %x is not authorized: invalid signature: the signature does not verify against the sender's (or the last delegated) key", req.ID)
	}
	return nil
}

// verifier checks a signature of msg by one key.
type verifier func(msg, sig []byte) bool

// senderKey reads a DER public key of a kind this node verifies: Ed25519,
// or ECDSA on P-256 or secp256k1 (signatures r‖s over SHA-256, as the IC
// takes them), or a canister signature key (canistersig.go).
func senderKey(der, rootKey []byte) (verifier, error) {
	if len(der) == len(ed25519DERPrefix)+ed25519.PublicKeySize && string(der[:len(ed25519DERPrefix)]) == string(ed25519DERPrefix) {
		pub := ed25519.PublicKey(der[len(ed25519DERPrefix):])
		return func(msg, sig []byte) bool {
			return len(sig) == ed25519.SignatureSize && ed25519.Verify(pub, msg, sig)
		}, nil
	}
	if len(der) <= 128 {
		if k, err := x509.ParsePKIXPublicKey(der); err == nil {
			if ek, ok := k.(*ecdsa.PublicKey); ok && ek.Curve == elliptic.P256() {
				return func(msg, sig []byte) bool {
					if len(sig) != 64 {
						return false
					}
					h := sha256.Sum256(msg)
					r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
					return ecdsa.Verify(ek, h[:], r, s)
				}, nil
			}
		}
	}
	if v, ok, err := secp256k1Key(der); ok {
		return v, err
	}
	if v, ok, err := canisterSigKey(der, rootKey); ok {
		return v, err
	}
	return nil, errors.New("is not a DER Ed25519 or ECDSA P-256 key, nor an ECDSA secp256k1 or canister signature key (the key types this node verifies)")
}

// followDelegations checks a chain: each delegation is signed by the key
// before it, has not expired, and if it names targets, names the canister
// called. It returns the last delegated key.
func followDelegations(req *Request, signer verifier, v any, at time.Time, rootKey []byte) (verifier, error) {
	chain, ok := v.([]any)
	if !ok {
		return nil, badRequest("Could not parse body as read request: sender_delegation must be an array")
	}
	if len(chain) > maxDelegations {
		return nil, forbidden("Request %x is not authorized: more than %d delegations", req.ID, maxDelegations)
	}
	now := uint64(at.UnixNano())
	for i, link := range chain {
		sd, ok := link.(map[string]any)
		d, ok2 := sd["delegation"].(map[string]any)
		sig, ok3 := sd["signature"].([]byte)
		if !ok || !ok2 || !ok3 {
			return nil, badRequest("Could not parse body as read request: delegation %d must be {delegation, signature}", i)
		}
		pub, ok := d["pubkey"].([]byte)
		exp, ok2 := d["expiration"].(uint64)
		if !ok || !ok2 {
			return nil, badRequest("Could not parse body as read request: delegation %d needs pubkey and expiration", i)
		}
		// The expiry is checked before the signature, which may be costly
		// (a canister signature is a BLS pairing).
		if exp < now {
			return nil, forbidden("Request %x is not authorized: delegation %d expired at %s", req.ID, i, nanosText(exp))
		}
		h, err := hashMap(d)
		if err != nil {
			return nil, badRequest("Could not parse body as read request: delegation %d: %v", i, err)
		}
		if !signer(append([]byte(delegationDomain), h[:]...), sig) {
			return nil, forbidden("Request %x is not authorized: invalid delegation %d: its signature does not verify against the key it delegates from", req.ID, i)
		}
		if t, ok := d["targets"]; ok {
			ts, ok := t.([]any)
			if !ok || len(ts) > maxTargets {
				return nil, badRequest("Could not parse body as read request: delegation %d: targets must be an array of at most %d principals", i, maxTargets)
			}
			// The request may address only canisters every delegation
			// names: read_state's are checked by the handler, which knows
			// which canisters its paths are about.
			set := make(map[string]bool, len(ts))
			for _, x := range ts {
				b, ok := x.([]byte)
				if !ok {
					return nil, badRequest("Could not parse body as read request: delegation %d: a target must be a blob", i)
				}
				if req.Targets == nil || req.Targets[string(b)] {
					set[string(b)] = true
				}
			}
			req.Targets = set
			if req.Type != "read_state" && !req.MayAddress(req.CanisterID) {
				return nil, forbidden("Request %x is not authorized: canister %s is not among the targets of delegation %d", req.ID, req.CanisterID, i)
			}
		}
		if signer, err = senderKey(pub, rootKey); err != nil {
			return nil, forbidden("Request %x is not authorized: delegation %d's pubkey %v", req.ID, i, err)
		}
	}
	return signer, nil
}

// clip shortens a string from a request for an error message: the client
// knows what it sent, and a 3 MiB field name is not worth echoing.
func clip(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return s[:runeCut(s, max)] + "…"
}

// runeCut is n (n < len(s)), or less if s[n] is inside a UTF-8 character:
// the start of that character (a cut through it would put invalid UTF-8 in
// a message). Bytes that are not part of a valid character are cut at n.
func runeCut(s string, n int) int {
	for i := n; i >= 0 && i > n-utf8.UTFMax; i-- {
		if utf8.RuneStart(s[i]) {
			if _, size := utf8.DecodeRuneInString(s[i:]); i < n && i+size > n {
				return i
			}
			return n
		}
	}
	return n
}

// asRequestError returns e's status and message, or 500 for other errors.
func asRequestError(err error) (int, string) {
	var re *requestError
	if errors.As(err, &re) {
		return re.status, re.msg
	}
	return http.StatusInternalServerError, err.Error()
}
