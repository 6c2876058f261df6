package host

import (
	"bytes"
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/certify"
	"github.com/cordon-dev/cordon/internal/sysapi"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// certWat reads the System API's certification calls. Queries answer a
// byte (data_certificate_present) and the certificate if present; "via" is
// a composite query calling its own "cert" whose callback (table 0, not
// exported) appends the callee's answer and its own present flag.
const certWat = `
(module
  (import "ic0" "msg_arg_data_size" (func $arg_size (result %I)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param %I %I %I)))
  (import "ic0" "msg_reply_data_append" (func $append (param %I %I)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "certified_data_set" (func $cd_set (param %I %I)))
  (import "ic0" "data_certificate_present" (func $present (result i32)))
  (import "ic0" "data_certificate_size" (func $cert_size (result %I)))
  (import "ic0" "data_certificate_copy" (func $cert_copy (param %I %I %I)))
  (import "ic0" "root_key_size" (func $rk_size (result %I)))
  (import "ic0" "root_key_copy" (func $rk_copy (param %I %I %I)))
  (import "ic0" "canister_self_size" (func $self_size (result %I)))
  (import "ic0" "canister_self_copy" (func $self_copy (param %I %I %I)))
  (import "ic0" "call_new" (func $call_new (param %I %I %I %I %I %I %I %I)))
  (import "ic0" "call_perform" (func $call_perform (result i32)))
  (memory %I 1)
  (table %I 2 funcref)
  (elem (%I.const 1) $on_reply)
  (data (%I.const 100) "cert")
  (func $reply_cert
    (local $n %I)
    (i32.store8 (%I.const 300) (call $present))
    (call $append (%I.const 300) (%I.const 1))
    (if (call $present) (then
      (local.set $n (call $cert_size))
      (call $cert_copy (%I.const 4096) (%I.const 0) (local.get $n))
      (call $append (%I.const 4096) (local.get $n))))
    (call $reply))
  (func $reply_root_key
    (local $n %I)
    (local.set $n (call $rk_size))
    (call $rk_copy (%I.const 2048) (%I.const 0) (local.get $n))
    (call $append (%I.const 2048) (local.get $n))
    (call $reply))
  (func (export "canister_init")
    (%I.store (%I.const 200) (call $rk_size)))
  (func (export "canister_update set")
    (local $n %I)
    (local.set $n (call $arg_size))
    (call $arg_copy (%I.const 0) (%I.const 0) (local.get $n))
    (call $cd_set (%I.const 0) (local.get $n))
    (call $reply))
  (func (export "canister_query cert") (call $reply_cert))
  (func (export "canister_update cert_update") (call $reply_cert))
  (func (export "canister_composite_query ccert") (call $reply_cert))
  (func (export "canister_update root_key") (call $reply_root_key))
  (func (export "canister_query root_key_q") (call $reply_root_key))
  (func (export "canister_query init_seen")
    (call $append (%I.const 200) (%I.const 1))
    (call $reply))
  (func $on_reply (param $env %I)
    (local $n %I)
    (local.set $n (call $arg_size))
    (call $arg_copy (%I.const 8192) (%I.const 0) (local.get $n))
    (call $append (%I.const 8192) (local.get $n))
    (i32.store8 (%I.const 300) (call $present))
    (call $append (%I.const 300) (%I.const 1))
    (call $reply))
  (func (export "canister_composite_query via")
    (local $n %I)
    (local.set $n (call $self_size))
    (call $self_copy (%I.const 0) (%I.const 0) (local.get $n))
    (call $call_new (%I.const 0) (local.get $n) (%I.const 100) (%I.const 4)
      (%I.const 1) (%I.const 0) (%I.const 1) (%I.const 0))
    (if (call $call_perform) (then unreachable)))
)`

func certModule(t testing.TB, memory64 bool) []byte {
	src := strings.ReplaceAll(certWat, "%I", "i64")
	if !memory64 {
		src = strings.ReplaceAll(certWat, "%I", "i32")
		src = strings.ReplaceAll(src, "(memory i32 1)", "(memory 1)")
		src = strings.ReplaceAll(src, "(table i32 2 funcref)", "(table 2 funcref)")
	}
	return mustWat(t, src)
}

// testClock is a settable node clock.
type testClock struct{ ns atomic.Int64 }

func (c *testClock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *testClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// forIsolationsWith is forIsolations with a configuration hook.
func forIsolationsWith(t *testing.T, conf func(*Config), test func(t *testing.T, f *fixture)) {
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			cfg := testConfig(t, mode)
			conf(&cfg)
			f := openFixture(t, cfg)
			test(t, f)
		})
	}
}

// verifyDataCert checks a query's answer as a client of the canister
// would: present, signed by the node's root key, for this canister's
// certified data, at the time expected; it returns the certificate.
func verifyDataCert(t *testing.T, rootKey []byte, answer []byte, id principal.Principal, data []byte, at time.Time) []byte {
	t.Helper()
	if len(answer) < 2 || answer[0] != 1 {
		t.Fatalf("no data certificate in the query (%x)", answer)
	}
	cert := answer[1:]
	tree, err := certify.Verify(rootKey, cert)
	if err != nil {
		t.Fatal(err)
	}
	got, ok := tree.Lookup([]byte("canister"), id.Bytes(), []byte("certified_data"))
	if !ok || !bytes.Equal(got, data) {
		t.Fatalf("certified_data %q (%v), want %q", got, ok, data)
	}
	tm, _ := tree.Lookup([]byte("time"))
	ns, err := certify.ReadLEB128(tm)
	if err != nil || ns != uint64(at.UnixNano()) {
		t.Fatalf("certificate time %d (%v), want %d", ns, err, at.UnixNano())
	}
	return cert
}

// ic0.data_certificate_* give a query on the query call's target a
// certificate of its committed certified data, signed by the node's root
// key (the one in its home), signed once per change of the data (or once
// it is dataCertMaxAge old), never in updates, replicated queries, queries
// a composite query calls, or callbacks; ic0.root_key_* give that key's DER
// in replicated contexts and trap in queries. Both widths, both modes.
func TestDataCertificateAndRootKey(t *testing.T) {
	t.Parallel()
	for _, memory64 := range []bool{false, true} {
		t.Run(width(memory64), func(t *testing.T) {
			clock := &testClock{}
			clock.ns.Store(time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC).UnixNano())
			forIsolationsWith(t, func(c *Config) { c.Clock = clock.now }, func(t *testing.T, f *fixture) {
				key, err := certify.LoadOrCreateRootKey(f.home)
				if err != nil {
					t.Fatal(err)
				}
				wasm := certModule(t, memory64)
				a, b := f.install(wasm, nil), f.install(wasm, nil)

				eq(t, "root key seen by init", f.query(a, "init_seen", nil), []byte{byte(len(key.DER()))})
				eq(t, "root_key_copy in an update", f.update(a, "root_key", nil), key.DER())
				_, err = f.node.Query(context.Background(), Message{Canister: a, Method: "root_key_q", Caller: user})
				if r := f.reject(err); r.Code != CanisterError || !strings.Contains(r.Message, "ic0.root_key_size") {
					t.Fatalf("root_key_size in a query: %v", r)
				}

				// A fresh canister's certified data is empty.
				t0 := clock.now()
				verifyDataCert(t, key.DER(), f.query(a, "cert", nil), a, []byte{}, t0)
				clock.advance(time.Second)
				f.update(a, "set", []byte("hello"))
				f.update(b, "set", []byte("other"))
				t1 := clock.now()
				c1 := verifyDataCert(t, key.DER(), f.query(a, "cert", nil), a, []byte("hello"), t1)
				// Signed per committed state, not per query.
				clock.advance(time.Second)
				c2 := verifyDataCert(t, key.DER(), f.query(a, "cert", nil), a, []byte("hello"), t1)
				if !bytes.Equal(c1, c2) {
					t.Fatal("an unchanged certified data was certified again")
				}
				// A composite query on the target gets one too.
				verifyDataCert(t, key.DER(), f.query(a, "ccert", nil), a, []byte("hello"), t1)
				// Each canister's certificate holds its own data only.
				tb := verifyDataCert(t, key.DER(), f.query(b, "cert", nil), b, []byte("other"), clock.now())
				if tree, _ := certify.Verify(key.DER(), tb); tree.Subtree([]byte("canister"), a.Bytes()) != nil {
					t.Fatal("b's certificate shows a's state")
				}
				// A change of the data, and age, make a new certificate.
				f.update(a, "set", []byte("world"))
				t2 := clock.now()
				verifyDataCert(t, key.DER(), f.query(a, "cert", nil), a, []byte("world"), t2)
				clock.advance(dataCertMaxAge)
				verifyDataCert(t, key.DER(), f.query(a, "cert", nil), a, []byte("world"), clock.now())

				// No certificate where the spec gives none.
				eq(t, "in an update", f.update(a, "cert_update", nil), []byte{0})
				eq(t, "in a query called as an update", f.update(a, "cert", nil), []byte{0})
				eq(t, "in a query a composite query calls, and its callback", f.query(a, "via", nil), []byte{0, 0})
			})
		})
	}
}

// hugeCertifier answers with a certificate beyond what an execution may be
// given: the query fails, nothing reaches the canister, the node goes on.
type hugeCertifier struct{}

func (hugeCertifier) DER() []byte { return []byte("0 a short key") }
func (hugeCertifier) CertifyCanister(id, data []byte, at uint64) ([]byte, error) {
	return make([]byte, sysapi.MaxDataCertificate+1), nil
}

func TestDataCertificateBounded(t *testing.T) {
	t.Parallel()
	forIsolationsWith(t, func(c *Config) { c.Certifier = hugeCertifier{} }, func(t *testing.T, f *fixture) {
		id := f.install(certModule(t, false), nil)
		_, err := f.node.Query(context.Background(), Message{Canister: id, Method: "cert", Caller: user})
		if r := f.reject(err); r.Code != SysTransient || !strings.Contains(r.Message, "data certificate") {
			t.Fatalf("oversized certificate: %v", r)
		}
		eq(t, "root key", f.update(id, "root_key", nil), []byte("0 a short key"))
		eq(t, "after", f.update(id, "cert_update", nil), []byte{0})
	})
}

// BenchmarkQueryDataCertificate: a query that copies its data certificate
// out and replies with it, in each isolation mode. The certificate is
// signed once (the certified data does not change), so this is the cost of
// carrying it into the execution, not of signing.
func BenchmarkQueryDataCertificate(b *testing.B) {
	for _, mode := range []string{"inprocess", "sandbox"} {
		b.Run(mode, func(b *testing.B) {
			cfg := testConfig(b, mode)
			n := openBenchNode(b, cfg)
			id := benchInstall(b, n, certModule(b, false))
			ctx := context.Background()
			for b.Loop() {
				r, err := n.Query(ctx, Message{Canister: id, Method: "cert", Caller: user})
				if err != nil || len(r.Data) < 100 {
					b.Fatalf("cert: %v", err)
				}
			}
		})
	}
}
