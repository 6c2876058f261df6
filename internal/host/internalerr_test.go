package host

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/cordon-dev/cordon/internal/exec"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// lockedBuffer is a log destination tests read while the node may write.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// failingPrepare fails every module preparation with err, as an executor
// whose artifact cache cannot be written does.
type failingPrepare struct {
	exec.Executor
	err error
}

func (x *failingPrepare) Prepare(context.Context, []byte) (*exec.Module, error) { return nil, x.err }

// A management call that fails for a reason of the node's own (its store,
// a file) answered its caller, a client or a canister, with the error's
// text (answerManagement's %v), which names files of the host. The caller
// now gets an error id; the node's log has the detail under that id.
func TestInternalErrorReachesOnlyTheLog(t *testing.T) {
	t.Parallel()
	var logs lockedBuffer
	cfg := DefaultConfig()
	cfg.Home = t.TempDir()
	cfg.Isolation = "inprocess"
	n, err := Open(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, home: cfg.Home, cfg: cfg, node: n}
	t.Cleanup(func() { n.Close() })

	// A real error of the host's file system, naming a path in the home.
	_, perr := os.Open(filepath.Join(cfg.Home, "artifacts", "no-such-artifact"))
	if perr == nil {
		t.Fatal("opened a file that does not exist")
	}
	n.exec = &failingPrepare{Executor: n.exec, err: fmt.Errorf("exec: artifact cache: %w", perr)}

	id, err := n.Create(context.Background(), CreateOptions{Controllers: []principal.Principal{user}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.ingress(user, "install_code", fmt.Sprintf(`(record { mode = variant { install }; canister_id = principal "%s"; wasm_module = blob "%s"; arg = blob "" })`,
		id, blobText(mustWat(t, `(module)`))))
	rej := f.reject(err)
	if strings.Contains(rej.Message, cfg.Home) || strings.Contains(rej.Message, "no such file") {
		t.Fatalf("the caller reads the node's own error: %q", rej.Message)
	}
	i := strings.Index(rej.Message, "internal error ")
	if i < 0 {
		t.Fatalf("reject %q gives no error id", rej.Message)
	}
	errID := strings.Fields(rej.Message[i+len("internal error "):])[0]
	for line := range strings.SplitSeq(logs.String(), "\n") {
		if strings.Contains(line, "error_id="+errID) && strings.Contains(line, cfg.Home) {
			return
		}
	}
	t.Fatalf("no log record holds error %s and its detail:\n%s", errID, logs.String())
}
