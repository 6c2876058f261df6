package host

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/cordon-dev/cordon/internal/store"
)

// What a caller is told when the node's store could not take its call's
// changes. Rejects wrap these (errors.Is), so that interfaces can answer
// them apart: SYS_TRANSIENT all, their messages saying what happened and
// without the store's error, which names the host's files (it goes to the
// node's log under the message's error id).
var (
	// ErrWritesStopped: the store failed a commit whose outcome it cannot
	// know (store.ErrFailed: its last sync failed) and refuses every
	// write until it is opened again; the node takes no more updates and
	// a server stops (api.Serve), so that its next start reads what the
	// disk holds.
	ErrWritesStopped = errors.New("the node stopped accepting writes after a storage failure")
	// ErrOutcomeUnknown: the call whose commit failed the store; its
	// changes may or may not be durable. Wraps ErrWritesStopped too.
	ErrOutcomeUnknown = errors.New("the outcome of this call is unknown")
	// ErrStorageFull: the store's file system is full, or nearly
	// (ErrDiskNearlyFull, diskmargin.go); nothing of the call was
	// applied, and the node goes on (the store is intact).
	ErrStorageFull = errors.New("the node's storage is full")
)

// WritesStopped is closed when the node's store fails a commit whose
// outcome is unknown (ErrWritesStopped): from then on every update is
// refused until the node is opened again.
func (n *Node) WritesStopped() <-chan struct{} { return n.store.Failed() }

// writesStoppedReject is the answer to a call refused because the store
// failed earlier: nothing of it ran or was applied.
func writesStoppedReject() *Reject {
	return &Reject{Code: SysTransient, cause: ErrWritesStopped,
		Message: ErrWritesStopped.Error() + "; this call was not run: call again once the node has been restarted"}
}

// refuseWrites is the reject of a call that would write, once the store
// has failed; nil before.
func (n *Node) refuseWrites() *Reject {
	select {
	case <-n.store.Failed():
		return writesStoppedReject()
	default:
		return nil
	}
}

// commit commits changes (store.Commit); a failure of the store's own is
// answered as storageReject says.
func (n *Node) commit(changes ...store.Change) error {
	err := n.store.Commit(changes...)
	if rej := n.storageReject(err); rej != nil {
		return rej
	}
	return err
}

// storageReject is the reject of a call whose write to the store failed
// for the store's sake (it failed, or its file system is full), the
// detail logged under an error id, or that the disk margin refused
// (diskmargin.go); nil for any other error.
func (n *Node) storageReject(err error) *Reject {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, store.ErrOutcomeUnknown):
		id := ErrorID()
		n.log.Error("storage failure: a commit's last sync failed and its outcome is unknown; the node accepts no more writes until it is restarted, which reads what the disk holds",
			"error_id", id, "error", err)
		return &Reject{Code: SysTransient, cause: errors.Join(ErrWritesStopped, ErrOutcomeUnknown),
			Message: ErrWritesStopped.Error() + ", and " + ErrOutcomeUnknown.Error() + ": its changes may or may not have been stored. Once the node has been restarted, check the canister's state before calling again (error " + id + " in the node's log)"}
	case errors.Is(err, store.ErrFailed):
		return writesStoppedReject()
	case errors.Is(err, store.ErrNoRoom):
		return n.noRoomReject(err) // diskmargin.go
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		id := ErrorID()
		n.log.Error("storage full: a commit found no room; nothing of it was applied", "error_id", id, "error", err)
		return &Reject{Code: SysTransient, cause: ErrStorageFull,
			Message: ErrStorageFull.Error() + "; nothing of this call was applied: try again later (error " + id + " in the node's log)"}
	}
	return nil
}

// backgroundWrite says what became of a write of the store that the node
// makes on its own, with no caller waiting for its answer (what names it,
// attrs add to its log line): burning the refund of a response to a
// deleted canister, trimming a stored log, releasing replaced modules,
// storing an answer's or pruning the IC interface's request statuses. It
// follows commit's rule. A write that failed the store (its outcome
// unknown) has stopped the node taking writes (store.Failed, so
// WritesStopped: a server stops, and its next start reads what the disk
// holds): a storage failure, logged as such under an error id. One the
// stopped store refused is a warning (the failure was said once). A full
// file system applied nothing, and the node goes on; so did a write the
// disk margin refused (the node's own writes bring no canister data, so
// the margin refuses none of them today). The error returned wraps
// ErrWritesStopped, ErrStorageFull or err, after what.
func (n *Node) backgroundWrite(err error, what string, attrs ...any) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, store.ErrOutcomeUnknown):
		id := ErrorID()
		n.log.Error("storage failure: "+what+": its last sync failed and its outcome is unknown; the node accepts no more writes until it is restarted, which reads what the disk holds",
			append(attrs, "error_id", id, "error", err)...)
		return fmt.Errorf("%s: %w (error %s)", what, errors.Join(ErrWritesStopped, ErrOutcomeUnknown), id)
	case errors.Is(err, store.ErrFailed):
		n.log.Warn(what+": not stored: "+ErrWritesStopped.Error(), attrs...)
		return fmt.Errorf("%s: %w", what, ErrWritesStopped)
	case errors.Is(err, store.ErrNoRoom):
		n.log.Warn(what+": not stored: "+ErrDiskNearlyFull.Error(), append(attrs, "error", err)...)
		return fmt.Errorf("%s: %w", what, errors.Join(ErrDiskNearlyFull, ErrStorageFull))
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		id := ErrorID()
		n.log.Error("storage full: "+what+" found no room; nothing of it was applied", append(attrs, "error_id", id, "error", err)...)
		return fmt.Errorf("%s: %w (error %s)", what, ErrStorageFull, id)
	}
	n.log.Error(what+" failed", append(attrs, "error", err)...)
	return fmt.Errorf("%s: %w", what, err)
}
