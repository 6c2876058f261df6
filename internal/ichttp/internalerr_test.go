package ichttp

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// lockedBuffer is a log destination a test reads while the handler writes.
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

// failingNode is a real node whose queries, updates, statuses and
// metadata fail as a node's own errors do: with an error naming a file of
// the host.
type failingNode struct {
	*host.Node
	err error
}

func (n failingNode) Query(context.Context, host.Message) (*host.Reply, error)  { return nil, n.err }
func (n failingNode) Update(context.Context, host.Message) (*host.Reply, error) { return nil, n.err }
func (n failingNode) Status(context.Context, principal.Principal) (*host.Status, error) {
	return nil, n.err
}
func (n failingNode) Metadata(context.Context, principal.Principal, string) (engine.Metadata, bool, []string, error) {
	return engine.Metadata{}, false, nil, n.err
}

// An error of the node's own reached the client verbatim: a query's 500
// ("query failed: "+err), a call's certified status ("the node could not
// run the call: "+err), read_state's 500s, and such errors name files of
// the host. The client now reads an error id; the log has the detail
// under it.
func TestInternalErrorsReachOnlyTheLog(t *testing.T) {
	node, id, home := counterNode(t)
	key := testRootKey(t, home)
	_, perr := os.Open(filepath.Join(home, "store", "no-such-page"))
	if perr == nil {
		t.Fatal("opened a file that does not exist")
	}
	var logs lockedBuffer
	h := New(failingNode{node, fmt.Errorf("read canister %s: %w", id, perr)}, key, testNodeKey(t, home), slog.New(slog.NewTextHandler(&logs, nil)))
	srv := httptest.NewServer(h)
	defer srv.Close()
	base := srv.URL + "/api/v2/canister/" + id.String()

	// answered checks that a client's message gives an error id and not
	// the detail, which the log holds under that id.
	answered := func(what, msg string) {
		t.Helper()
		if strings.Contains(msg, home) || strings.Contains(msg, "no such file") {
			t.Errorf("%s: the client reads the node's own error: %q", what, msg)
			return
		}
		i := strings.Index(msg, "internal error ")
		if i < 0 {
			t.Errorf("%s: %q gives no error id", what, msg)
			return
		}
		errID := strings.Fields(msg[i+len("internal error "):])[0]
		for line := range strings.SplitSeq(logs.String(), "\n") {
			if strings.Contains(line, "error_id="+errID) && strings.Contains(line, home) {
				return
			}
		}
		t.Errorf("%s: no log record holds error %s and its detail", what, errID)
	}

	code, b := post(t, base+"/query", envelope(t, content("query", principal.Anonymous(), id, "get", time.Now(), 1), nil))
	if code != 500 {
		t.Fatalf("query: %d %s", code, b)
	}
	answered("query", string(b))

	call := content("call", principal.Anonymous(), id, "inc", time.Now(), 2)
	if code, b := post(t, base+"/call", envelope(t, call, nil)); code != 202 {
		t.Fatalf("call: %d %s", code, b)
	}
	rid, err := RequestID(call)
	if err != nil {
		t.Fatal(err)
	}
	st, _, rcode, msg := h.RequestStatus(rid)
	if st != "rejected" || rcode != uint64(host.SysTransient) {
		t.Fatalf("call's status %s %d %q", st, rcode, msg)
	}
	answered("call's status", msg)

	for _, path := range [][][]byte{
		{[]byte("canister"), id.Bytes(), []byte("module_hash")},
		{[]byte("canister"), id.Bytes(), []byte("metadata"), []byte("candid:service")},
	} {
		code, b := post(t, base+"/read_state", envelope(t, readStateContent(principal.Anonymous(), path), nil))
		if code != 500 {
			t.Fatalf("read_state %s: %d %s", path[len(path)-1], code, b)
		}
		answered("read_state "+string(path[len(path)-1]), string(b))
	}
}
