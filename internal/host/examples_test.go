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
	t.Parallel()
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
	t.Parallel()
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

// A Motoko canister declares canister_status_result exactly as the IC
// interface specification does and decodes the management canister's
// reply about itself: every field must be there with the spec's type (a
// missing one traps the decoding), and the values are what happened.
func TestMotokoDecodesCanisterStatus(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			f := newModeFixture(t, mode)
			wasm := module(t, examplesDir, "status64")
			id := f.install(wasm, noArgs)
			if _, err := f.ingress(user, "update_settings", fmt.Sprintf(`(record { canister_id = principal "%s"; settings = record {
				log_visibility = opt variant { public };
				environment_variables = opt vec { record { name = "B"; value = "2" }; record { name = "A"; value = "1" } } } })`, id)); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 2; i++ {
				if got := f.queryText(id, "ping", "()"); got != "(42 : nat)" {
					t.Fatalf("ping: %s", got)
				}
			}
			got := f.callText(id, "status", "()")
			// install 1, update_settings 2, the status call's own execution 3;
			// two pings of 6 bytes in (DIDL\0\0) and 8 out.
			want := fmt.Sprintf(`status=running version=3 ready=false log=public threshold=0 env=A=1;B=2; binary=%d heap=`, len(wasm))
			if !strings.HasPrefix(got, `("`+want) || !strings.Contains(got, " calls=2 in=12 out=16 instructions=>0 controllers=1") {
				t.Fatalf("status:\n got %s\nwant (\"%s… calls=2 in=12 out=16 instructions=>0 controllers=1\")", got, want)
			}
		})
	}
}
