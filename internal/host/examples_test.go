package host

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// A Motoko actor class: the factory creates a child canister through the
// management canister (create_canister + install_code) and calls it.
func TestActorClassFactory(t *testing.T) {
	f := newFixture(t)
	wasm := module(t, examplesDir, "factory64")
	factory := f.install(wasm, noArgs)
	got := f.callText(factory, "spawn", "(41 : nat)")
	if !strings.HasPrefix(got, "(principal \"") {
		t.Fatalf("spawn: %s", got)
	}
	child, err := principal.FromText(strings.TrimSuffix(strings.TrimPrefix(got, "(principal \""), "\")"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := f.node.Status(context.Background(), child)
	if err != nil {
		t.Fatalf("child status: %v", err)
	}
	if len(st.Controllers) != 1 || st.Controllers[0] != factory.String() {
		t.Fatalf("child controllers %v, want the factory %s", st.Controllers, factory)
	}
	if got := f.callText(factory, "incChild", "(0 : nat)"); got != "(42 : nat)" {
		t.Fatalf("incChild: %s", got)
	}
	if got := f.queryText(child, "get", "()"); got != "(42 : nat)" {
		t.Fatalf("child.get: %s", got)
	}
	second := f.callText(factory, "spawn", "(0 : nat)")
	if second == got {
		t.Fatal("second child has the same id")
	}
	if got := f.queryText(factory, "count", "()"); got != "(2 : nat)" {
		t.Fatalf("count: %s", got)
	}
	// Enhanced orthogonal persistence: the list of children survives an upgrade.
	f.upgrade(factory, wasm)
	if got := f.queryText(factory, "count", "()"); got != "(2 : nat)" {
		t.Fatalf("count after upgrade: %s", got)
	}
	if got := f.callText(factory, "incChild", "(0 : nat)"); got != "(43 : nat)" {
		t.Fatalf("incChild after upgrade: %s", got)
	}
	_, err = f.node.Update(context.Background(), Message{Canister: factory, Method: "incChild", Arg: encodeText(t, "(9 : nat)"), Caller: user})
	if r := f.reject(err); r.Code != CanisterError || !strings.Contains(r.Message, "no child 9") {
		t.Fatalf("incChild(9): %v", r)
	}
	f.checkConservation()
}

func TestCompositeQuery(t *testing.T) {
	f := newFixture(t)
	wasm := module(t, examplesDir, "composite64")
	a := f.install(wasm, noArgs)
	b := f.install(wasm, noArgs)
	counter := f.install(module(t, corpusDir, "counter"), noArgs)
	f.callText(counter, "add", "(5 : nat)")
	arg := fmt.Sprintf("(vec { principal %q; principal %q; principal %q })", a, b, counter)
	if got := f.queryText(a, "sumOf", arg); got != "(19 : nat)" { // 7 + 7 + 5
		t.Fatalf("sumOf: %s", got)
	}
	// A composite query is not callable as an update.
	_, err := f.node.Update(context.Background(), Message{Canister: a, Method: "sumOf", Arg: encodeText(t, arg), Caller: user})
	if r := f.reject(err); r.Code != CanisterError {
		t.Fatalf("composite as update: %v", r)
	}
	// A target that does not exist rejects the whole query.
	bad := fmt.Sprintf("(vec { principal %q })", principal.CanisterID(999))
	_, err = f.node.Query(context.Background(), Message{Canister: a, Method: "sumOf", Arg: encodeText(t, bad), Caller: user})
	if err == nil {
		t.Fatal("composite query over a missing canister succeeded")
	}
	t.Logf("missing target: %v", err)
}
