package sysapi

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"unicode/utf8"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// Memory gives the System API access to the canister's Wasm memory. Bytes
// must return the current contents; the slice is only used until the next
// Wasm instruction runs (memory.grow may move it).
type Memory interface {
	Bytes() []byte
}

// Meter counts instructions. Charge fails with ErrInstructionLimit when the
// execution would exceed its limit.
type Meter interface {
	Charge(n uint64) error
	Used() uint64
}

// Trap is an error that ends the execution as a canister trap.
type Trap struct{ Message string }

func (t *Trap) Error() string { return t.Message }

func trapf(format string, args ...any) error { return &Trap{Message: fmt.Sprintf(format, args...)} }

// ErrInstructionLimit is the trap of an execution that ran out of instructions.
var ErrInstructionLimit = &Trap{Message: "Canister exceeded the limit of instructions for a single message execution"}

// Maximum sizes of values read from canister memory.
const (
	maxPrincipalBytes  = 29
	maxMethodNameBytes = 20000
	maxTrapMessage     = 16 * 1024
	maxCertifiedData   = 32
)

// Execution is the System API state of one running message.
type Execution struct {
	in    *Input
	out   *Output
	mem   Memory
	meter Meter

	stable  *state.Overlay
	balance cycles.Amount // live balance: in.Balance + accepted - sent - burned

	pending *Call      // call under construction (call_new … call_perform)
	tally   *CallTally // calls performed, against in.Limits.Calls
	done    bool       // replied or rejected, here or before (Input.Responded)
}

// NewExecution starts the System API for one execution.
func NewExecution(in *Input, mem Memory, meter Meter) *Execution {
	return &Execution{
		in:      in,
		out:     &Output{},
		mem:     mem,
		meter:   meter,
		stable:  state.NewOverlay(in.Stable),
		balance: in.Balance,
		done:    in.Responded,
	}
}

// Call runs ic0.<spec.Name> with raw argument values and returns its result
// (0 if it has none). Every error is a trap.
func (e *Execution) Call(s *Spec, args []uint64) (uint64, error) {
	if !s.Allowed.Has(e.in.Context) {
		return 0, trapf("\"ic0.%s\" cannot be executed in %s mode", s.Name, e.in.Context)
	}
	if err := e.meter.Charge(s.Cost); err != nil {
		return 0, err
	}
	if !e.in.Memory64 {
		// I = i32: values arrive zero-extended; anything larger is a bug of the caller.
		for i, k := range s.Params {
			if k == Ptr && args[i] > math.MaxUint32 {
				return 0, trapf("ic0.%s: argument %d out of range", s.Name, i)
			}
		}
	}
	return s.impl(e, args)
}

// Finish completes the output after the Wasm code returned (or trapped with
// err). On a trap the output carries only the trap and the instructions used.
func (e *Execution) Finish(err error) *Output {
	out := e.out
	out.Instructions = e.meter.Used()
	if err != nil {
		msg := err.Error()
		var t *Trap
		if errors.As(err, &t) {
			msg = t.Message
		}
		return &Output{Instructions: out.Instructions, Trapped: true, TrapMessage: msg, Logs: out.Logs}
	}
	out.Stable = e.stable.Delta()
	return out
}

// Stable returns the live stable memory (for the engine's state hash in tests).
func (e *Execution) Stable() *state.Overlay { return e.stable }

// --- memory helpers -------------------------------------------------------

func (e *Execution) memRange(ptr, size uint64, what string) ([]byte, error) {
	m := e.mem.Bytes()
	end := ptr + size
	if end < ptr || end > uint64(len(m)) {
		return nil, trapf("%s: heap out of bounds (offset %d, size %d, heap %d bytes)", what, ptr, size, len(m))
	}
	return m[ptr:end:end], nil
}

func (e *Execution) read(ptr, size uint64, what string) ([]byte, error) {
	if err := e.meter.Charge(size); err != nil {
		return nil, err
	}
	b, err := e.memRange(ptr, size, what)
	if err != nil {
		return nil, err
	}
	return bytes.Clone(b), nil
}

func (e *Execution) write(ptr uint64, data []byte, what string) error {
	if err := e.meter.Charge(uint64(len(data))); err != nil {
		return err
	}
	b, err := e.memRange(ptr, uint64(len(data)), what)
	if err != nil {
		return err
	}
	copy(b, data)
	return nil
}

// copyOut implements the *_copy idiom: src[offset:offset+size] to heap[dst:].
func (e *Execution) copyOut(src []byte, dst, offset, size uint64, what string) error {
	end := offset + size
	if end < offset || end > uint64(len(src)) {
		return trapf("%s: offset %d + size %d exceeds the data of %d bytes", what, offset, size, len(src))
	}
	return e.write(dst, src[offset:end], what)
}

func (e *Execution) write128(dst uint64, a cycles.Amount, what string) error {
	b := a.Bytes()
	return e.write(dst, b[:], what)
}

func amount128(hi, lo uint64) cycles.Amount { return cycles.Amount{Hi: hi, Lo: lo} }

// --- message data ---------------------------------------------------------

func (e *Execution) msgArgDataSize([]uint64) (uint64, error) { return uint64(len(e.in.Arg)), nil }
func (e *Execution) msgArgDataCopy(a []uint64) (uint64, error) {
	return 0, e.copyOut(e.in.Arg, a[0], a[1], a[2], "ic0.msg_arg_data_copy")
}
func (e *Execution) msgCallerSize([]uint64) (uint64, error) { return uint64(len(e.in.Caller)), nil }
func (e *Execution) msgCallerCopy(a []uint64) (uint64, error) {
	return 0, e.copyOut(e.in.Caller, a[0], a[1], a[2], "ic0.msg_caller_copy")
}

// Caller info exists only for callers authenticated by canister signatures,
// which cordon's callers never are: the values are empty, as the spec says.
func (e *Execution) emptySize([]uint64) (uint64, error) { return 0, nil }
func (e *Execution) emptyCopy(a []uint64) (uint64, error) {
	return 0, e.copyOut(nil, a[0], a[1], a[2], "ic0.msg_caller_info_*_copy")
}

func (e *Execution) msgRejectCode([]uint64) (uint64, error) { return uint64(e.in.RejectCode), nil }
func (e *Execution) msgRejectMsgSize([]uint64) (uint64, error) {
	if e.in.RejectCode == 0 {
		return 0, trapf("ic0.msg_reject_msg_size: there is no reject message")
	}
	return uint64(len(e.in.RejectMessage)), nil
}
func (e *Execution) msgRejectMsgCopy(a []uint64) (uint64, error) {
	if e.in.RejectCode == 0 {
		return 0, trapf("ic0.msg_reject_msg_copy: there is no reject message")
	}
	return 0, e.copyOut([]byte(e.in.RejectMessage), a[0], a[1], a[2], "ic0.msg_reject_msg_copy")
}
func (e *Execution) msgDeadline([]uint64) (uint64, error) { return e.in.Deadline, nil }

func (e *Execution) msgMethodNameSize([]uint64) (uint64, error) {
	return uint64(len(e.in.MethodName)), nil
}
func (e *Execution) msgMethodNameCopy(a []uint64) (uint64, error) {
	return 0, e.copyOut([]byte(e.in.MethodName), a[0], a[1], a[2], "ic0.msg_method_name_copy")
}
func (e *Execution) acceptMessage([]uint64) (uint64, error) {
	if e.out.Accepted {
		return 0, trapf("ic0.accept_message: the message was already accepted")
	}
	e.out.Accepted = true
	return 0, nil
}

// --- responding -----------------------------------------------------------

func (e *Execution) checkNotResponded(name string) error {
	if e.done {
		return trapf("ic0.%s: the call was already replied or rejected", name)
	}
	return nil
}

func (e *Execution) msgReplyDataAppend(a []uint64) (uint64, error) {
	if err := e.checkNotResponded("msg_reply_data_append"); err != nil {
		return 0, err
	}
	size := a[1]
	if uint64(len(e.out.Reply))+size > e.in.Limits.ReplyBytes {
		return 0, trapf("ic0.msg_reply_data_append: reply exceeds the limit of %d bytes", e.in.Limits.ReplyBytes)
	}
	b, err := e.read(a[0], size, "ic0.msg_reply_data_append")
	if err != nil {
		return 0, err
	}
	e.out.Reply = append(e.out.Reply, b...)
	return 0, nil
}

func (e *Execution) msgReply([]uint64) (uint64, error) {
	if err := e.checkNotResponded("msg_reply"); err != nil {
		return 0, err
	}
	e.done = true
	e.out.Response = Replied
	if e.out.Reply == nil {
		e.out.Reply = []byte{}
	}
	return 0, nil
}

func (e *Execution) msgReject(a []uint64) (uint64, error) {
	if err := e.checkNotResponded("msg_reject"); err != nil {
		return 0, err
	}
	if a[1] > e.in.Limits.ReplyBytes {
		return 0, trapf("ic0.msg_reject: message exceeds the limit of %d bytes", e.in.Limits.ReplyBytes)
	}
	b, err := e.read(a[0], a[1], "ic0.msg_reject")
	if err != nil {
		return 0, err
	}
	if !utf8.Valid(b) {
		return 0, trapf("ic0.msg_reject: the message is not valid UTF-8")
	}
	e.done = true
	e.out.Response = Rejected
	e.out.Reply = nil
	e.out.RejectMessage = string(b)
	return 0, nil
}

// --- cycles ---------------------------------------------------------------

// available is what the call may still accept: nothing once it has been
// answered, as the rest went back to the caller with the reply or reject
// (the interface specification's msg_reply and msg_reject set
// cycles_available to 0). Otherwise a callee could answer "accepted
// nothing" and then take what the caller was told came back.
func (e *Execution) available() cycles.Amount {
	if e.out.Response != NoResponse {
		return cycles.Amount{}
	}
	return e.in.CyclesAvailable.SaturatingSub(e.out.CyclesAccepted)
}

func (e *Execution) msgCyclesAvailable128(a []uint64) (uint64, error) {
	return 0, e.write128(a[0], e.available(), "ic0.msg_cycles_available128")
}
func (e *Execution) msgCyclesAvailable([]uint64) (uint64, error) {
	v := e.available()
	if v.Hi != 0 {
		return 0, trapf("ic0.msg_cycles_available: the amount does not fit in 64 bits")
	}
	return v.Lo, nil
}
func (e *Execution) msgCyclesRefunded128(a []uint64) (uint64, error) {
	return 0, e.write128(a[0], e.in.CyclesRefunded, "ic0.msg_cycles_refunded128")
}
func (e *Execution) msgCyclesRefunded([]uint64) (uint64, error) {
	if e.in.CyclesRefunded.Hi != 0 {
		return 0, trapf("ic0.msg_cycles_refunded: the amount does not fit in 64 bits")
	}
	return e.in.CyclesRefunded.Lo, nil
}

func (e *Execution) accept(max cycles.Amount) (cycles.Amount, error) {
	n := cycles.Min(max, e.available())
	acc, err := e.out.CyclesAccepted.Add(n)
	if err != nil {
		return cycles.Amount{}, trapf("ic0.msg_cycles_accept: %v", err)
	}
	bal, err := e.balance.Add(n)
	if err != nil {
		return cycles.Amount{}, trapf("ic0.msg_cycles_accept: balance %v", err)
	}
	e.out.CyclesAccepted, e.balance = acc, bal
	return n, nil
}

func (e *Execution) msgCyclesAccept128(a []uint64) (uint64, error) {
	n, err := e.accept(amount128(a[0], a[1]))
	if err != nil {
		return 0, err
	}
	return 0, e.write128(a[2], n, "ic0.msg_cycles_accept128")
}
func (e *Execution) msgCyclesAccept(a []uint64) (uint64, error) {
	n, err := e.accept(cycles.New(a[0]))
	return n.Lo, err
}

// liquid is the liquid balance (interface specification,
// liquid_balance): the balance less what the execution must keep, its own
// maximum fee and the freezing limit (CallLimits.Keep); an execution
// without call limits (install, queries) keeps nothing.
func (e *Execution) liquid() cycles.Amount {
	if l := e.in.Limits.Calls; l != nil {
		return e.balance.SaturatingSub(l.Keep)
	}
	return e.balance
}

// canisterLiquidCycleBalance128 reports the liquid balance: what the
// canister may spend on calls and burn in this execution.
func (e *Execution) canisterLiquidCycleBalance128(a []uint64) (uint64, error) {
	return 0, e.write128(a[0], e.liquid(), "ic0.canister_liquid_cycle_balance128")
}

// cyclesBurn128 burns at most the liquid balance: what the execution must
// keep stays, so an execution can never burn what pays for it.
func (e *Execution) cyclesBurn128(a []uint64) (uint64, error) {
	n := cycles.Min(amount128(a[0], a[1]), e.liquid())
	e.balance = e.balance.SaturatingSub(n)
	e.out.CyclesBurned = e.out.CyclesBurned.SaturatingAdd(n)
	return 0, e.write128(a[2], n, "ic0.cycles_burn128")
}

// mintCycles128 and mintCycles trap as the replica does for any canister but
// the Cycles Minting Canister. cordon runs no CMC, so no canister mints,
// whatever its id (a node's fifth canister has the CMC's mainnet id).
func (e *Execution) mintCycles128([]uint64) (uint64, error) {
	return 0, e.mintRefused("mint_cycles128")
}
func (e *Execution) mintCycles([]uint64) (uint64, error) { return 0, e.mintRefused("mint_cycles") }

func (e *Execution) mintRefused(name string) error {
	id := fmt.Sprintf("%x", e.in.CanisterID)
	if p, err := principal.FromBytes(e.in.CanisterID); err == nil {
		id = p.String()
	}
	return trapf("ic0.%s cannot be executed on non Cycles Minting Canister: canister %s may not mint cycles (cordon runs no Cycles Minting Canister)", name, id)
}

func (e *Execution) canisterCycleBalance128(a []uint64) (uint64, error) {
	return 0, e.write128(a[0], e.balance, "ic0.canister_cycle_balance128")
}
func (e *Execution) canisterCycleBalance([]uint64) (uint64, error) {
	if e.balance.Hi != 0 {
		return 0, trapf("ic0.canister_cycle_balance: the balance does not fit in 64 bits")
	}
	return e.balance.Lo, nil
}

// --- canister and subnet --------------------------------------------------

func (e *Execution) canisterSelfSize([]uint64) (uint64, error) {
	return uint64(len(e.in.CanisterID)), nil
}
func (e *Execution) canisterSelfCopy(a []uint64) (uint64, error) {
	return 0, e.copyOut(e.in.CanisterID, a[0], a[1], a[2], "ic0.canister_self_copy")
}
func (e *Execution) subnetSelfSize([]uint64) (uint64, error) { return uint64(len(e.in.SubnetID)), nil }
func (e *Execution) subnetSelfCopy(a []uint64) (uint64, error) {
	return 0, e.copyOut(e.in.SubnetID, a[0], a[1], a[2], "ic0.subnet_self_copy")
}
func (e *Execution) canisterStatus([]uint64) (uint64, error)  { return uint64(e.in.Status), nil }
func (e *Execution) canisterVersion([]uint64) (uint64, error) { return e.in.Version, nil }

func (e *Execution) isController(a []uint64) (uint64, error) {
	if a[1] > maxPrincipalBytes {
		return 0, trapf("ic0.is_controller: a principal is at most %d bytes, got %d", maxPrincipalBytes, a[1])
	}
	b, err := e.read(a[0], a[1], "ic0.is_controller")
	if err != nil {
		return 0, err
	}
	for _, c := range e.in.Controllers {
		if bytes.Equal(c, b) {
			return 1, nil
		}
	}
	return 0, nil
}

func (e *Execution) inReplicatedExecution([]uint64) (uint64, error) {
	if e.in.Context.Replicated() {
		return 1, nil
	}
	return 0, nil
}

// --- inter-canister calls -------------------------------------------------

func (e *Execution) callNew(a []uint64) (uint64, error) {
	if a[1] > maxPrincipalBytes {
		return 0, trapf("ic0.call_new: callee id of %d bytes is longer than %d", a[1], maxPrincipalBytes)
	}
	if a[3] > maxMethodNameBytes {
		return 0, trapf("ic0.call_new: method name of %d bytes is longer than %d", a[3], maxMethodNameBytes)
	}
	callee, err := e.read(a[0], a[1], "ic0.call_new")
	if err != nil {
		return 0, err
	}
	name, err := e.read(a[2], a[3], "ic0.call_new")
	if err != nil {
		return 0, err
	}
	if !utf8.Valid(name) {
		return 0, trapf("ic0.call_new: the method name is not valid UTF-8")
	}
	e.discardPending()
	e.pending = &Call{
		Callee:   callee,
		Method:   string(name),
		Arg:      []byte{},
		OnReply:  Callback{Fun: a[4], Env: a[5]},
		OnReject: Callback{Fun: a[6], Env: a[7]},
	}
	return 0, nil
}

// discardPending drops a call under construction and returns its cycles.
func (e *Execution) discardPending() {
	if e.pending != nil {
		e.balance = e.balance.SaturatingAdd(e.pending.Cycles)
		e.pending = nil
	}
}

func (e *Execution) needPending(name string) error {
	if e.pending == nil {
		return trapf("ic0.%s: no call is under construction (call ic0.call_new first)", name)
	}
	return nil
}

func (e *Execution) callOnCleanup(a []uint64) (uint64, error) {
	if err := e.needPending("call_on_cleanup"); err != nil {
		return 0, err
	}
	if e.pending.OnCleanup != nil {
		return 0, trapf("ic0.call_on_cleanup: a cleanup callback is already set")
	}
	e.pending.OnCleanup = &Callback{Fun: a[0], Env: a[1]}
	return 0, nil
}

func (e *Execution) callDataAppend(a []uint64) (uint64, error) {
	if err := e.needPending("call_data_append"); err != nil {
		return 0, err
	}
	if uint64(len(e.pending.Arg))+a[1] > e.in.Limits.CallArgBytes {
		return 0, trapf("ic0.call_data_append: argument exceeds the limit of %d bytes", e.in.Limits.CallArgBytes)
	}
	b, err := e.read(a[0], a[1], "ic0.call_data_append")
	if err != nil {
		return 0, err
	}
	e.pending.Arg = append(e.pending.Arg, b...)
	return 0, nil
}

func (e *Execution) callWithBestEffortResponse(a []uint64) (uint64, error) {
	if err := e.needPending("call_with_best_effort_response"); err != nil {
		return 0, err
	}
	if e.pending.Timeout != 0 {
		return 0, trapf("ic0.call_with_best_effort_response: called twice for one call")
	}
	t := uint32(a[0])
	if t == 0 {
		t = 1
	}
	if t > 300 {
		t = 300
	}
	e.pending.Timeout = t
	return 0, nil
}

func (e *Execution) addCallCycles(n cycles.Amount, name string) error {
	if err := e.needPending(name); err != nil {
		return err
	}
	bal, err := e.balance.Sub(n)
	if err != nil {
		return trapf("ic0.%s: insufficient cycles balance (%s) to attach %s", name, e.balance, n)
	}
	sum, err := e.pending.Cycles.Add(n)
	if err != nil {
		return trapf("ic0.%s: %v", name, err)
	}
	e.balance, e.pending.Cycles = bal, sum
	return nil
}

func (e *Execution) callCyclesAdd128(a []uint64) (uint64, error) {
	return 0, e.addCallCycles(amount128(a[0], a[1]), "call_cycles_add128")
}
func (e *Execution) callCyclesAdd(a []uint64) (uint64, error) {
	return 0, e.addCallCycles(cycles.New(a[0]), "call_cycles_add")
}

func (e *Execution) callPerform([]uint64) (uint64, error) {
	if err := e.needPending("call_perform"); err != nil {
		return 0, err
	}
	c := e.pending
	e.pending = nil
	refuse := func() (uint64, error) {
		// The call is not enqueued: its cycles stay with the canister and the
		// canister learns it through the error code (SYS_TRANSIENT).
		e.balance = e.balance.SaturatingAdd(c.Cycles)
		return 2, nil
	}
	if len(e.out.Calls) >= e.in.Limits.MaxOutgoing {
		return refuse()
	}
	if l := e.in.Limits.Calls; l != nil {
		// Queues, outstanding calls and message memory first, then the
		// fee and the reservation, which must leave l.Keep.
		charge := l.Charge(c)
		left, err := e.balance.Sub(charge)
		if err != nil || left.Cmp(l.Keep) < 0 {
			return refuse()
		}
		if e.tally == nil {
			e.tally = NewCallTally(l)
		}
		if !e.tally.Admit(c) {
			return refuse()
		}
		e.balance = left
	}
	e.out.CyclesSent = e.out.CyclesSent.SaturatingAdd(c.Cycles)
	e.out.Calls = append(e.out.Calls, *c)
	return 0, nil
}

// --- stable memory --------------------------------------------------------

func (e *Execution) stablePages() uint64 { return e.stable.Size() / state.WasmPageSize }

func (e *Execution) stable64Size([]uint64) (uint64, error) { return e.stablePages(), nil }

func (e *Execution) growStable(n uint64) (old uint64, ok bool) {
	old = e.stablePages()
	newPages := old + n
	if newPages < old || newPages > e.in.Limits.StableBytes/state.WasmPageSize {
		return old, false
	}
	e.stable.Grow(newPages * state.WasmPageSize)
	return old, true
}

func (e *Execution) stable64Grow(a []uint64) (uint64, error) {
	old, ok := e.growStable(a[0])
	if !ok {
		return math.MaxUint64, nil
	}
	return old, nil
}

func (e *Execution) stableSize([]uint64) (uint64, error) {
	n := e.stablePages()
	if n > math.MaxUint16+1 {
		return 0, trapf("ic0.stable_size: stable memory is larger than 4 GiB; use ic0.stable64_size")
	}
	return n, nil
}

func (e *Execution) stableGrow(a []uint64) (uint64, error) {
	if e.stablePages() > math.MaxUint16+1 {
		return 0, trapf("ic0.stable_grow: stable memory is larger than 4 GiB; use ic0.stable64_grow")
	}
	if e.stablePages()+a[0] > math.MaxUint16+1 {
		return math.MaxUint32, nil
	}
	old, ok := e.growStable(a[0])
	if !ok {
		return math.MaxUint32, nil
	}
	return old, nil
}

func (e *Execution) stable64Write(a []uint64) (uint64, error) {
	off, src, size := a[0], a[1], a[2]
	if end := off + size; end < off || end > e.stable.Size() {
		return 0, trapf("stable memory out of bounds: write at %d of %d bytes, stable memory is %d bytes", off, size, e.stable.Size())
	}
	if err := e.meter.Charge(size); err != nil {
		return 0, err
	}
	b, err := e.memRange(src, size, "ic0.stable64_write")
	if err != nil {
		return 0, err
	}
	if err := e.chargeStablePages(off, size); err != nil {
		return 0, err
	}
	return 0, e.stable.WriteAt(b, off)
}

func (e *Execution) stable64Read(a []uint64) (uint64, error) {
	dst, off, size := a[0], a[1], a[2]
	if end := off + size; end < off || end > e.stable.Size() {
		return 0, trapf("stable memory out of bounds: read at %d of %d bytes, stable memory is %d bytes", off, size, e.stable.Size())
	}
	if err := e.meter.Charge(size); err != nil {
		return 0, err
	}
	b, err := e.memRange(dst, size, "ic0.stable64_read")
	if err != nil {
		return 0, err
	}
	return 0, e.stable.ReadAt(b, off)
}

// --- certification, time, timers -------------------------------------------

func (e *Execution) rootKeySize([]uint64) (uint64, error) {
	if e.in.RootKey == nil {
		return 0, trapf("ic0.root_key_size: this node has no IC root key")
	}
	return uint64(len(e.in.RootKey)), nil
}
func (e *Execution) rootKeyCopy(a []uint64) (uint64, error) {
	if e.in.RootKey == nil {
		return 0, trapf("ic0.root_key_copy: this node has no IC root key")
	}
	return 0, e.copyOut(e.in.RootKey, a[0], a[1], a[2], "ic0.root_key_copy")
}

func (e *Execution) certifiedDataSet(a []uint64) (uint64, error) {
	if a[1] > maxCertifiedData {
		return 0, trapf("ic0.certified_data_set: certified data is at most %d bytes, got %d", maxCertifiedData, a[1])
	}
	b, err := e.read(a[0], a[1], "ic0.certified_data_set")
	if err != nil {
		return 0, err
	}
	e.out.CertifiedData, e.out.CertifiedDataSet = b, true
	return 0, nil
}

func (e *Execution) dataCertificatePresent([]uint64) (uint64, error) {
	if e.in.DataCertificate != nil {
		return 1, nil
	}
	return 0, nil
}
func (e *Execution) dataCertificateSize([]uint64) (uint64, error) {
	if e.in.DataCertificate == nil {
		return 0, trapf("ic0.data_certificate_size: no data certificate is present")
	}
	return uint64(len(e.in.DataCertificate)), nil
}
func (e *Execution) dataCertificateCopy(a []uint64) (uint64, error) {
	if e.in.DataCertificate == nil {
		return 0, trapf("ic0.data_certificate_copy: no data certificate is present")
	}
	return 0, e.copyOut(e.in.DataCertificate, a[0], a[1], a[2], "ic0.data_certificate_copy")
}

func (e *Execution) time([]uint64) (uint64, error) { return e.in.Time, nil }

func (e *Execution) globalTimerSet(a []uint64) (uint64, error) {
	prev := e.in.GlobalTimer
	if e.out.GlobalTimerSet {
		prev = e.out.GlobalTimer
	}
	e.out.GlobalTimer, e.out.GlobalTimerSet = a[0], true
	return prev, nil
}

func (e *Execution) performanceCounter(a []uint64) (uint64, error) {
	switch uint32(a[0]) {
	case 0:
		return e.meter.Used(), nil
	case 1:
		return e.in.CallContextInstr + e.meter.Used(), nil
	}
	return 0, trapf("ic0.performance_counter: unknown counter type %d", uint32(a[0]))
}

// --- costs ------------------------------------------------------------------

// Fees of the cost model (IC defaults for a 13-node subnet), for
// executions the host gives no call prices (queries, tests).
const (
	feeCall           = 260_000
	feeCallPerByte    = 1_000
	feeCreateCanister = 100_000_000_000
	// The reservation of a response: a 2 MiB reply and a callback of up to
	// 40 billion instructions at 1 cycle each plus the 5 million base fee.
	maxResponseBytes   = 2 << 20
	feeMaxCallbackExec = 5_000_000 + 40_000_000_000
)

// costCall reports what call_perform takes for a call (CallLimits.Cost):
// the fee, the request's bytes and the reservation for the largest
// response, with the node's prices when the host gave them, else the IC's.
func (e *Execution) costCall(a []uint64) (uint64, error) {
	l := e.in.Limits.Calls
	if l == nil {
		l = &CallLimits{Fee: feeCall, ByteFee: feeCallPerByte,
			Reservation: ResponseReservation(feeCallPerByte, maxResponseBytes, cycles.New(feeMaxCallbackExec))}
	}
	return 0, e.write128(a[2], l.Cost(a[0], a[1]), "ic0.cost_call")
}

func (e *Execution) costCreateCanister(a []uint64) (uint64, error) {
	return 0, e.write128(a[0], cycles.New(feeCreateCanister), "ic0.cost_create_canister")
}

func notSupported(feature string) func(*Execution, []uint64) (uint64, error) {
	return func(*Execution, []uint64) (uint64, error) {
		return 0, trapf("%s: not supported by cordon", feature)
	}
}

// --- environment variables --------------------------------------------------

func (e *Execution) envVarCount([]uint64) (uint64, error) { return uint64(len(e.in.EnvVars)), nil }

func (e *Execution) envVarAt(i uint64, name string) (*EnvVar, error) {
	if i >= uint64(len(e.in.EnvVars)) {
		return nil, trapf("ic0.%s: index %d out of range (%d variables)", name, i, len(e.in.EnvVars))
	}
	return &e.in.EnvVars[i], nil
}

func (e *Execution) envVarNameSize(a []uint64) (uint64, error) {
	v, err := e.envVarAt(a[0], "env_var_name_size")
	if err != nil {
		return 0, err
	}
	return uint64(len(v.Name)), nil
}

func (e *Execution) envVarNameCopy(a []uint64) (uint64, error) {
	v, err := e.envVarAt(a[0], "env_var_name_copy")
	if err != nil {
		return 0, err
	}
	return 0, e.copyOut([]byte(v.Name), a[1], a[2], a[3], "ic0.env_var_name_copy")
}

func (e *Execution) envVarByName(src, size uint64, name string) (*EnvVar, error) {
	if size > maxMethodNameBytes {
		return nil, trapf("ic0.%s: name of %d bytes is too long", name, size)
	}
	b, err := e.read(src, size, "ic0."+name)
	if err != nil {
		return nil, err
	}
	for i := range e.in.EnvVars {
		if e.in.EnvVars[i].Name == string(b) {
			return &e.in.EnvVars[i], nil
		}
	}
	return nil, nil
}

func (e *Execution) envVarNameExists(a []uint64) (uint64, error) {
	v, err := e.envVarByName(a[0], a[1], "env_var_name_exists")
	if err != nil || v == nil {
		return 0, err
	}
	return 1, nil
}

func (e *Execution) envVarValueSize(a []uint64) (uint64, error) {
	v, err := e.envVarByName(a[0], a[1], "env_var_value_size")
	if err != nil {
		return 0, err
	}
	if v == nil {
		return 0, trapf("ic0.env_var_value_size: no such environment variable")
	}
	return uint64(len(v.Value)), nil
}

func (e *Execution) envVarValueCopy(a []uint64) (uint64, error) {
	v, err := e.envVarByName(a[0], a[1], "env_var_value_copy")
	if err != nil {
		return 0, err
	}
	if v == nil {
		return 0, trapf("ic0.env_var_value_copy: no such environment variable")
	}
	return 0, e.copyOut([]byte(v.Value), a[2], a[3], a[4], "ic0.env_var_value_copy")
}

// --- debugging --------------------------------------------------------------

func (e *Execution) debugPrint(a []uint64) (uint64, error) {
	size := a[1]
	truncated := false
	if limit := uint64(e.in.Limits.DebugPrintBytes); size > limit {
		size, truncated = limit, true
	}
	b, err := e.read(a[0], size, "ic0.debug_print")
	if err != nil {
		return 0, err
	}
	if len(e.out.Logs) < e.in.Limits.MaxLogLines {
		e.out.Logs = append(e.out.Logs, LogLine{Text: string(bytes.ToValidUTF8(b, []byte("\uFFFD"))), Truncated: truncated})
	}
	return 0, nil
}

func (e *Execution) trap(a []uint64) (uint64, error) {
	size := min(a[1], maxTrapMessage)
	b, err := e.read(a[0], size, "ic0.trap")
	if err != nil {
		return 0, err
	}
	return 0, trapf("%s%s%s", calledTrapPrefix, bytes.ToValidUTF8(b, []byte("\uFFFD")), calledTrapSuffix)
}

// LittleEndianU64 is a helper for tests reading 128-bit results.
func LittleEndianU64(b []byte) uint64 { return binary.LittleEndian.Uint64(b) }
