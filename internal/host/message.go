package host

import (
	"context"
	"fmt"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/exec"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/internal/sysapi"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// Message is a call from a user to a canister method.
type Message struct {
	Canister principal.Principal
	Method   string
	Arg      []byte
	Caller   principal.Principal
	// Status, for an update, makes its outcome durable with the execution
	// that answers it (ingress.go); nil: not recorded.
	Status *IngressStatus
}

// Reply is a successful answer.
type Reply struct {
	Data         []byte
	Instructions uint64
}

// inspectInstructions bounds canister_inspect_message (IC: 200 million).
const inspectInstructions = 200_000_000

func (n *Node) checkRunnable(c *canister) error {
	if c.module == nil {
		return rejectf(CanisterError, "Canister %s has no Wasm module installed", c.id)
	}
	switch c.meta.Status {
	case "stopped":
		return rejectf(CanisterError, "Canister %s is stopped", c.id)
	case "stopping":
		return rejectf(CanisterError, "Canister %s is stopping", c.id)
	}
	return nil
}

// inspect runs canister_inspect_message for an ingress message, if the
// canister exports it; a trap or a missing accept refuses the message.
func (n *Node) inspect(ctx context.Context, c *canister, msg Message) error {
	if !c.module.Info.HasInspect {
		return nil
	}
	in := n.input(c, c.module, sysapi.CtxInspect, "canister_inspect_message", inspectInstructions)
	in.Caller, in.Arg, in.MethodName = msg.Caller.Bytes(), msg.Arg, msg.Method
	out, err := n.execOf(c).Execute(ctx, c.id.String(), &exec.Request{Module: c.module, Heap: c.heap, Globals: c.globals, Input: in})
	if err != nil {
		return fmt.Errorf("inspect message to %s: %w", c.id, err)
	}
	if out.Trapped {
		return rejectf(CanisterReject, "Canister %s rejected the message: inspect_message trapped: %s", c.id, out.TrapMessage)
	}
	if !out.Accepted {
		return rejectf(CanisterReject, "Canister %s rejected the message", c.id)
	}
	return nil
}

// commitExecution validates an execution's output against the canister's
// limits and commits it with the given extra cycles movements: a fee charged
// (ingress) and cycles credited (a refund with a response).
//
// flight are the records of cycles in flight (inflight.go) and ingress the
// ingress statuses to commit in the same transaction.
func (n *Node) commitExecution(c *canister, out *sysapi.Output, extraFee, credit cycles.Amount, flight *callFlight, ingress []store.IngressRecord) (err error) {
	defer func() {
		if err != nil {
			// execute reserved the memory the execution ends with in the
			// node's ledger: what stays is what was committed.
			n.mem.set(c.id, satAdd(c.heap.Size(), c.stable.Size()))
		}
	}()
	if err := validateDelta(out.Heap, c.heap, n.heapLimit(c.module)); err != nil {
		return fmt.Errorf("canister %s heap: %w", c.id, err)
	}
	if err := validateDelta(out.Stable, c.stable, n.cfg.StableBytes); err != nil {
		return fmt.Errorf("canister %s stable memory: %w", c.id, err)
	}
	if len(out.Globals) != len(c.globals) && c.globals != nil {
		return fmt.Errorf("canister %s: execution returned %d globals, the module has %d", c.id, len(out.Globals), len(c.globals))
	}
	// Backstop: execute turns this into a trap before it gets here.
	if msg := allocationViolation(c.meta.Settings, c.moduleBytes, chunkStoreBytes(c.meta), out); msg != "" {
		return rejectf(CanisterError, "Error from Canister %s: %s", c.id, msg)
	}
	meta := c.meta
	fee := n.executionFee(out.Instructions).SaturatingAdd(extraFee)
	// The calls' fees and response reservations, as call_perform took them.
	callFees, reserved, err := n.callCharges(out.Calls)
	if err != nil {
		return fmt.Errorf("canister %s: cycles accounting: %w", c.id, err)
	}
	bal, over, err := settle(meta.Balance, credit, out.CyclesAccepted, out.CyclesSent, out.CyclesBurned, callFees, reserved)
	if err != nil {
		return fmt.Errorf("canister %s: cycles accounting: %w", c.id, err)
	}
	// The fee is taken, or the whole balance when it cannot pay (only an
	// execution without a Keep, a cleanup or an install, can get there):
	// what is burned is what was taken, never more.
	var taken cycles.Amount
	meta.Balance, taken = takeFee(bal, fee)
	meta.CyclesBurned = meta.CyclesBurned.SaturatingAdd(taken).SaturatingAdd(out.CyclesBurned).SaturatingAdd(callFees).SaturatingAdd(over)
	meta.CyclesReserved = meta.CyclesReserved.SaturatingAdd(reserved)
	meta.Instructions += out.Instructions
	meta.Messages++
	// Every successful execution that can change state is a new version
	// (interface specification, canister version); queries never get here.
	meta.Version++
	meta.HeapSize, meta.StableSize = out.Heap.Size, out.Stable.Size
	if out.CertifiedDataSet {
		meta.CertifiedData = out.CertifiedData
	}
	if out.GlobalTimerSet {
		setGlobalTimer(c, &meta, out.GlobalTimer)
	}
	updateLowMemory(&meta, out.Heap.Size)
	entries := c.logs.prepare(n.logEntries(out.Logs))
	change := store.Change{
		ID: c.id.Bytes(), Meta: meta,
		Heap:    &store.MemoryChange{Delta: out.Heap},
		Stable:  &store.MemoryChange{Delta: out.Stable},
		Globals: out.Globals, SetGlobals: true,
		Logs: entries, KeepLogs: n.cfg.LogLines, KeepLogBytes: n.cfg.LogBytes,
		// Its reply (up to ReplyBytes) is stored with the status: counted
		// by the disk margin as the canister's data, or callbacks that
		// reply to many held ingress calls at once would write gigabytes
		// past it. A refused one is answered with a reject, whose status
		// is stored on its own (recordAnswer).
		Ingress: ingress, IngressIsData: true,
	}
	if flight != nil {
		change.Sent, change.Left = flight.sent, flight.left
	}
	undo := c.qstats.fold(&change.Meta)
	if err := n.commit(change); err != nil {
		undo()
		return err
	}
	meta = change.Meta
	// The commit is durable; now make it visible. Apply cannot fail: the
	// deltas were validated above.
	if err := c.heap.Apply(out.Heap); err != nil {
		return fmt.Errorf("canister %s heap after commit: %w", c.id, err)
	}
	if err := c.stable.Apply(out.Stable); err != nil {
		return fmt.Errorf("canister %s stable memory after commit: %w", c.id, err)
	}
	// The pages are the memories' now (in their images): drop the
	// execution's copies.
	applied := deltaBytes(out.Heap, out.Stable)
	out.Heap.Pages, out.Stable.Pages = nil, nil
	returnApplied(applied)
	c.meta, c.globals = meta, out.Globals
	if out.GlobalTimerSet {
		c.timerTaken = false // the value set replaces the one a queued task took (sched.go)
	}
	n.mem.set(c.id, satAdd(c.heap.Size(), c.stable.Size()))
	c.logs.publish(entries)
	// Queued before the execution's reply goes out, so a message sent
	// after the reply runs after the hook (lowmem.go).
	n.scheduleLowMemory(c)
	return nil
}

// settle is balance + credit + accepted - debits, each step checked, but
// for the credit (a refund a response brought): the part of it that would
// take the result past 2^128-1 is not added and is returned as over, to be
// burned, since it is the canister's and has nowhere else to go. The
// debits are what the execution spent, possibly of the credit it was told
// of, so they come off before the credit is capped.
func settle(balance, credit, accepted cycles.Amount, debits ...cycles.Amount) (bal, over cycles.Amount, err error) {
	var spent cycles.Amount
	for _, d := range debits {
		if spent, err = spent.Add(d); err != nil {
			return cycles.Amount{}, cycles.Amount{}, err
		}
	}
	if bal, err = balance.Add(accepted); err != nil {
		return cycles.Amount{}, cycles.Amount{}, err
	}
	if bal.Cmp(spent) >= 0 {
		bal, over = bal.SaturatingSub(spent).AddCapped(credit)
		return bal, over, nil
	}
	// Spent beyond the balance: the credit pays the rest, and what is left
	// of it fits.
	if bal, err = credit.Sub(spent.SaturatingSub(bal)); err != nil {
		return cycles.Amount{}, cycles.Amount{}, err
	}
	return bal, cycles.Amount{}, nil
}

// takeFee takes fee from bal, or all of bal if it is less, and reports
// what it took.
func takeFee(bal, fee cycles.Amount) (left, taken cycles.Amount) {
	taken = cycles.Min(fee, bal)
	return bal.SaturatingSub(taken), taken
}

func validateDelta(d state.Delta, cur *state.PageMap, max uint64) error {
	if d.Size < cur.Size() {
		return fmt.Errorf("memory shrank from %d to %d bytes", cur.Size(), d.Size)
	}
	return d.Validate(max)
}
