package host

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/cordon-dev/cordon/internal/exec"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// A controller of many canisters sends install_code to each at once, a
// different module every time: each management call runs on its own, but
// the modules are compiled in at most sandbox.max_compiles compiler
// sandboxes at once, and every install completes.
func TestConcurrentInstallsShareCompilers(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "sandbox")
	cfg.Sandbox.MaxCompiles = 2
	f := openFixture(t, cfg)
	const n = 6
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		id, err := f.node.Create(context.Background(), CreateOptions{Controllers: []principal.Principal{user}})
		if err != nil {
			t.Fatal(err)
		}
		var blob strings.Builder
		for _, c := range mustWat(t, fmt.Sprintf(`(module (memory 1) (data (i32.const 0) "module %d"))`, i)) {
			fmt.Fprintf(&blob, "\\%02x", c)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = f.ingress(user, "install_code", fmt.Sprintf(`(record { mode = variant { install }; canister_id = principal "%s"; wasm_module = blob "%s"; arg = blob "" })`, id, blob.String()))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("install_code %d: %v", i, err)
		}
	}
	st := f.node.exec.(*exec.Sandboxed).Stats()
	if st.Compiles != n || st.MostCompiles < 1 || st.MostCompiles > 2 {
		t.Fatalf("%d compilations, at most %d compilers at once: want %d, at most 2", st.Compiles, st.MostCompiles, n)
	}
}
