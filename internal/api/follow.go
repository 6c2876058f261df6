package api

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// PollInterval is how often FollowLogs reads the store when no server runs.
const PollInterval = 500 * time.Millisecond

// FollowLogs calls fn with each debug_print line of canister id, with
// sequence numbers from since on, as it is printed, until ctx ends (it then
// returns nil) or the canister is gone (a *host.Reject).
//
// While a `cordon serve` runs on home, the lines come from its log stream;
// otherwise the store is opened every PollInterval just long enough to
// read them, so other commands (and a server starting) are not locked out.
// When a server starts or stops, FollowLogs switches over without losing or
// repeating a line.
func FollowLogs(ctx context.Context, home, id string, since uint64, fn func(store.LogEntry) error) error {
	p, err := parseID(id)
	if err != nil {
		return err
	}
	next := since
	deliver := func(e store.LogEntry) error {
		if e.Seq < next {
			return nil
		}
		next = e.Seq + 1
		return fn(e)
	}
	for {
		if ctx.Err() != nil {
			return nil
		}
		c, err := Dial(ctx, home)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if c != nil {
			err := c.FollowLogs(ctx, id, next, deliver)
			c.Close()
			switch {
			case ctx.Err() != nil:
				return nil
			case errors.Is(err, ErrStreamEnded):
				// The server stopped: carry on with the store.
			case err != nil && !isConnErr(err):
				return err
			}
			if !sleep(ctx, PollInterval) {
				return nil
			}
			continue
		}
		es, err := readStoreLogs(home, p)
		switch {
		case errors.Is(err, errLocked):
			// A server is starting (or another command runs): try again.
		case err != nil:
			return err
		default:
			for _, e := range es {
				if err := deliver(e); err != nil {
					return err
				}
			}
		}
		if !sleep(ctx, PollInterval) {
			return nil
		}
	}
}

var errLocked = errors.New("store locked")

// readStoreLogs opens the store briefly and reads a canister's kept lines.
func readStoreLogs(home string, id principal.Principal) ([]store.LogEntry, error) {
	st, err := store.Open(home, 100*time.Millisecond)
	if err != nil {
		if errors.Is(err, store.ErrLocked) {
			return nil, errLocked
		}
		return nil, err
	}
	defer st.Close()
	es, err := st.Logs(id.Bytes())
	if errors.Is(err, store.ErrNotFound) {
		return nil, &host.Reject{Code: host.DestinationInvalid, Message: "Canister " + id.String() + " not found"}
	}
	return es, err
}

// isConnErr reports whether err is the server going away rather than an
// answer from it.
func isConnErr(err error) bool {
	var rej *host.Reject
	if errors.As(err, &rej) {
		return false
	}
	return strings.HasPrefix(err.Error(), "cordon server at ")
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
