package host

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/faultinject"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// instFaultChild names the environment variable that makes
// TestHostFailedInstantiationIsNotTheCanisters its own child, in the
// isolation mode it holds.
const instFaultChild = "CORDON_TEST_INSTANTIATION_FAULT"

// instFaultPages is the initial memory whose mapping the child's seccomp
// filter fails: instantiation makes exactly that many pages read-write
// (one mprotect), and gets ENOMEM, as under a node group at its limit.
const instFaultPages = 79

// An instantiation the kernel refuses (wasmtime reports an OS error:
// here ENOMEM for the instance's initial memory) is the host's failure,
// as a grow it refuses is (RATIONALE.md, "A grow the host fails is the
// host's failure"): SYS_TRANSIENT, nothing applied. An update's is not
// charged either. Before, both were CANISTER_ERROR: in process an internal
// error, in a sandbox the sandbox's failure.
//
// In process the filter is installed after a first install, so that an
// update is what fails; sandboxes inherit the filter only from the spawner
// (started with the node), so there the filter is on from the start and
// the install is what fails.
func TestHostFailedInstantiationIsNotTheCanisters(t *testing.T) {
	if mode := os.Getenv(instFaultChild); mode != "" {
		instFaultChildMain(t, mode)
		return
	}
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			out, err := faultinject.Child("TestHostFailedInstantiationIsNotTheCanisters", instFaultChild+"="+mode).Output()
			if s := string(out); strings.Contains(s, "INSTFAULT-SKIP") {
				t.Skip(s)
			}
			if err != nil || !bytes.Contains(out, []byte("INSTFAULT-OK")) {
				t.Fatalf("child: %v\n%s", err, out)
			}
		})
	}
}

// instFaultWat has memory 0 of instFaultPages pages and no canister_init.
var instFaultWat = fmt.Sprintf(`(module
  (import "ic0" "msg_reply" (func $reply))
  (memory %d)
  (func (export "canister_update set") (i32.store (i32.const 0) (i32.const 42)) (call $reply)))`, instFaultPages)

func instFaultChildMain(t *testing.T, mode string) {
	if !growFaultsPossible() {
		fmt.Println("INSTFAULT-SKIP: no seccomp filters here")
		t.Skip()
	}
	if mode == "sandbox" {
		faultinject.GrowFaults(t, instFaultPages<<16)
	}
	cfg := testConfig(t, mode)
	cfg.Fees.GiBStoragePerSecond = 0 // the balance moves only by what messages pay
	f := openFixture(t, cfg)
	wasm := mustWat(t, instFaultWat)
	if mode == "inprocess" {
		id := f.install(wasm, nil)
		faultinject.GrowFaults(t, instFaultPages<<16)
		before := f.storedMeta(id)
		_, err := f.node.Update(context.Background(), Message{Canister: id, Method: "set", Caller: user})
		if err == nil {
			t.Fatal("an update whose instantiation the host failed was answered")
		}
		if r := f.reject(err); r.Code != SysTransient {
			t.Fatalf("update: want SYS_TRANSIENT for the host's instantiation failure, got %v", r)
		}
		f.quiesce()
		after := f.storedMeta(id)
		if after.Balance != before.Balance || after.CyclesBurned != before.CyclesBurned || after.Messages != before.Messages {
			t.Fatalf("the host's failure was charged: balance %s -> %s, burned %s -> %s, messages %d -> %d",
				before.Balance, after.Balance, before.CyclesBurned, after.CyclesBurned, before.Messages, after.Messages)
		}
	}
	id, err := f.node.Create(context.Background(), CreateOptions{Controllers: []principal.Principal{user}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.node.Install(context.Background(), id, InstallOptions{Mode: ModeInstall, Wasm: wasm, Caller: user})
	if err == nil {
		t.Fatal("an install whose instantiation the host failed succeeded")
	}
	if r := f.reject(err); r.Code != SysTransient {
		t.Fatalf("install: want SYS_TRANSIENT for the host's instantiation failure, got %v", r)
	}
	if f.storedMeta(id).ModuleHash != "" {
		t.Fatal("the failed install left a module installed")
	}
	if t.Failed() {
		return
	}
	fmt.Println("INSTFAULT-OK")
}
