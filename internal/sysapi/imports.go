package sysapi

import "sync"

// Kind is the Wasm type of an ic0 parameter or result.
type Kind uint8

// Parameter and result kinds. Ptr is I of the specification: i32 for a
// canister with 32-bit memory, i64 for one with 64-bit memory.
const (
	I32 Kind = iota
	I64
	Ptr
)

// Spec describes one ic0 import: its signature, where it may be called, its
// fixed instruction cost, and its implementation.
type Spec struct {
	Name    string
	Params  []Kind
	Results []Kind // zero or one
	Allowed ContextSet
	Only32  bool   // exists only for canisters with 32-bit memory
	Cost    uint64 // fixed instructions charged per call (per-byte costs are charged by the implementation)
	impl    func(e *Execution, a []uint64) (uint64, error)
}

// Costs: a fixed charge per call plus one instruction per byte copied.
// The fixed charge is CallOverhead, what the call itself costs the host,
// plus the IC's system API overhead for the work the import does.
const (
	costSmall   = CallOverhead + 20     // reads of small values
	costCopy    = HeapCallOverhead + 20 // *_copy and similar, plus bytes
	costMedium  = CallOverhead + 100    // calls touching host state
	costCall    = CallOverhead + 5000   // call_perform
	costStable  = HeapCallOverhead + 20 // stable memory access, plus bytes
	costGrow    = CallOverhead + 100    // memory growth
	costRespond = CallOverhead + 500    // msg_reply / msg_reject / trap
)

// CallOverhead is what every ic0 call is charged for the call itself, in
// instructions: a call from Wasm into the host is a cgo callback, and
// charging the instruction counter is one more cgo call (engine's
// hostcall.go), some 0.8 µs of host CPU in all on a loaded 2-core VM, while
// plain Wasm runs at about 0.1 ns per instruction. At 20 instructions a
// call, a loop of ic0 calls was charged 500 times less per CPU second than
// plain code (a free 5 B query would have run for minutes); at 6,500 an
// ic0-bound loop costs about 1.3 times the CPU per instruction of plain
// code (engine's BenchmarkCPUPerInstruction).
// The IC charges 500 for most imports, its calls being native.
const CallOverhead = 6_500

// HeapCallOverhead is the fixed charge of imports that copy between the heap
// and the host: locating the heap and charging the bytes are two more cgo
// calls, which make such a call cost about 1.5 times a plain one.
const HeapCallOverhead = 3 * CallOverhead / 2

func p(k ...Kind) []Kind { return k }

// Imports is the complete ic0 API for 32- and 64-bit canisters: every import
// of the IC interface specification, plus those the IC's replica links
// beyond it (mint_cycles128, cost_http_request_v2, and mint_cycles, which
// older replicas linked in both widths), so no module is refused for an ic0
// import the IC links. Every entry has real semantics; calls cordon cannot
// serve (threshold signatures, HTTP outcalls, minting cycles) install fine
// and trap when called.
var Imports = []Spec{
	{"msg_arg_data_size", nil, p(Ptr), set(CtxInit, CtxUpdate, CtxReplicatedQuery, CtxNonReplicatedQuery, CtxTransformQuery, CtxCompositeQuery, CtxReply, CtxCompositeReply, CtxInspect), false, costSmall, (*Execution).msgArgDataSize},
	{"msg_arg_data_copy", p(Ptr, Ptr, Ptr), nil, set(CtxInit, CtxUpdate, CtxReplicatedQuery, CtxNonReplicatedQuery, CtxTransformQuery, CtxCompositeQuery, CtxReply, CtxCompositeReply, CtxInspect), false, costCopy, (*Execution).msgArgDataCopy},
	{"msg_caller_size", nil, p(Ptr), everywhere, false, costSmall, (*Execution).msgCallerSize},
	{"msg_caller_copy", p(Ptr, Ptr, Ptr), nil, everywhere, false, costCopy, (*Execution).msgCallerCopy},
	{"msg_caller_info_data_size", nil, p(Ptr), callerInfo, false, costSmall, (*Execution).emptySize},
	{"msg_caller_info_data_copy", p(Ptr, Ptr, Ptr), nil, callerInfo, false, costCopy, (*Execution).emptyCopy},
	{"msg_caller_info_signer_size", nil, p(Ptr), callerInfo, false, costSmall, (*Execution).emptySize},
	{"msg_caller_info_signer_copy", p(Ptr, Ptr, Ptr), nil, callerInfo, false, costCopy, (*Execution).emptyCopy},
	{"msg_reject_code", nil, p(I32), set(CtxReply, CtxReject, CtxCompositeReply, CtxCompositeReject, CtxCleanup), false, costSmall, (*Execution).msgRejectCode},
	{"msg_reject_msg_size", nil, p(Ptr), set(CtxReject, CtxCompositeReject), false, costSmall, (*Execution).msgRejectMsgSize},
	{"msg_reject_msg_copy", p(Ptr, Ptr, Ptr), nil, set(CtxReject, CtxCompositeReject), false, costCopy, (*Execution).msgRejectMsgCopy},
	{"msg_deadline", nil, p(I64), set(CtxUpdate, CtxReplicatedQuery, CtxNonReplicatedQuery, CtxCompositeQuery, CtxReply, CtxReject, CtxCompositeReply, CtxCompositeReject), false, costSmall, (*Execution).msgDeadline},
	{"msg_reply_data_append", p(Ptr, Ptr), nil, respond, false, costCopy, (*Execution).msgReplyDataAppend},
	{"msg_reply", nil, nil, respond, false, costRespond, (*Execution).msgReply},
	{"msg_reject", p(Ptr, Ptr), nil, respond, false, costRespond, (*Execution).msgReject},
	{"msg_cycles_available128", p(Ptr), nil, cyclesIn, false, costSmall, (*Execution).msgCyclesAvailable128},
	{"msg_cycles_refunded128", p(Ptr), nil, set(CtxReply, CtxReject), false, costSmall, (*Execution).msgCyclesRefunded128},
	{"msg_cycles_accept128", p(I64, I64, Ptr), nil, cyclesIn, false, costMedium, (*Execution).msgCyclesAccept128},
	// Only the Cycles Minting Canister may mint; cordon runs none, so these
	// always trap (after the context check) and never change a balance.
	{"mint_cycles128", p(I64, I64, Ptr), nil, mintContexts, false, costMedium, (*Execution).mintCycles128},
	{"mint_cycles", p(I64), p(I64), mintContexts, false, costMedium, (*Execution).mintCycles},
	{"cycles_burn128", p(I64, I64, Ptr), nil, set(CtxInit, CtxPreUpgrade, CtxUpdate, CtxReplicatedQuery, CtxReply, CtxReject, CtxCleanup, CtxSystemTask), false, costMedium, (*Execution).cyclesBurn128},
	{"canister_self_size", nil, p(Ptr), everywhere, false, costSmall, (*Execution).canisterSelfSize},
	{"canister_self_copy", p(Ptr, Ptr, Ptr), nil, everywhere, false, costCopy, (*Execution).canisterSelfCopy},
	{"canister_cycle_balance128", p(Ptr), nil, everywhere, false, costSmall, (*Execution).canisterCycleBalance128},
	{"canister_liquid_cycle_balance128", p(Ptr), nil, everywhere, false, costSmall, (*Execution).canisterLiquidCycleBalance128},
	{"canister_status", nil, p(I32), everywhere, false, costSmall, (*Execution).canisterStatus},
	{"canister_version", nil, p(I64), everywhere, false, costSmall, (*Execution).canisterVersion},
	{"subnet_self_size", nil, p(Ptr), everywhere, false, costSmall, (*Execution).subnetSelfSize},
	{"subnet_self_copy", p(Ptr, Ptr, Ptr), nil, everywhere, false, costCopy, (*Execution).subnetSelfCopy},
	{"msg_method_name_size", nil, p(Ptr), set(CtxInspect), false, costSmall, (*Execution).msgMethodNameSize},
	{"msg_method_name_copy", p(Ptr, Ptr, Ptr), nil, set(CtxInspect), false, costCopy, (*Execution).msgMethodNameCopy},
	{"accept_message", nil, nil, set(CtxInspect), false, costSmall, (*Execution).acceptMessage},
	{"call_new", p(Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr, Ptr), nil, calls, false, costMedium, (*Execution).callNew},
	{"call_on_cleanup", p(Ptr, Ptr), nil, calls, false, costSmall, (*Execution).callOnCleanup},
	{"call_data_append", p(Ptr, Ptr), nil, calls, false, costCopy, (*Execution).callDataAppend},
	{"call_with_best_effort_response", p(I32), nil, calls, false, costSmall, (*Execution).callWithBestEffortResponse},
	{"call_cycles_add128", p(I64, I64), nil, set(CtxUpdate, CtxReply, CtxReject, CtxSystemTask), false, costSmall, (*Execution).callCyclesAdd128},
	{"call_perform", nil, p(I32), calls, false, costCall, (*Execution).callPerform},
	{"stable64_size", nil, p(I64), everywhereAndStart, false, costSmall, (*Execution).stable64Size},
	{"stable64_grow", p(I64), p(I64), everywhereAndStart, false, costGrow, (*Execution).stable64Grow},
	{"stable64_write", p(I64, I64, I64), nil, everywhereAndStart, false, costStable, (*Execution).stable64Write},
	{"stable64_read", p(I64, I64, I64), nil, everywhereAndStart, false, costStable, (*Execution).stable64Read},
	{"root_key_size", nil, p(Ptr), rootKey, false, costSmall, (*Execution).rootKeySize},
	{"root_key_copy", p(Ptr, Ptr, Ptr), nil, rootKey, false, costCopy, (*Execution).rootKeyCopy},
	{"certified_data_set", p(Ptr, Ptr), nil, set(CtxInit, CtxPreUpgrade, CtxUpdate, CtxReply, CtxReject, CtxSystemTask), false, costMedium, (*Execution).certifiedDataSet},
	{"data_certificate_present", nil, p(I32), everywhere, false, costSmall, (*Execution).dataCertificatePresent},
	{"data_certificate_size", nil, p(Ptr), set(CtxNonReplicatedQuery, CtxCompositeQuery), false, costSmall, (*Execution).dataCertificateSize},
	{"data_certificate_copy", p(Ptr, Ptr, Ptr), nil, set(CtxNonReplicatedQuery, CtxCompositeQuery), false, costCopy, (*Execution).dataCertificateCopy},
	{"time", nil, p(I64), everywhere, false, costSmall, (*Execution).time},
	{"global_timer_set", p(I64), p(I64), set(CtxInit, CtxPreUpgrade, CtxUpdate, CtxReply, CtxReject, CtxCleanup, CtxSystemTask), false, costSmall, (*Execution).globalTimerSet},
	{"performance_counter", p(I32), p(I64), everywhereAndStart, false, costSmall, (*Execution).performanceCounter},
	{"is_controller", p(Ptr, Ptr), p(I32), everywhereAndStart, false, costSmall, (*Execution).isController},
	{"in_replicated_execution", nil, p(I32), everywhereAndStart, false, costSmall, (*Execution).inReplicatedExecution},
	{"cost_call", p(I64, I64, Ptr), nil, everywhereAndStart, false, costSmall, (*Execution).costCall},
	{"cost_create_canister", p(Ptr), nil, everywhereAndStart, false, costSmall, (*Execution).costCreateCanister},
	{"cost_http_request", p(I64, I64, Ptr), nil, everywhereAndStart, false, costSmall, notSupported("HTTP outcalls")},
	{"cost_http_request_v2", p(Ptr, Ptr, Ptr), nil, everywhereAndStart, false, costSmall, notSupported("HTTP outcalls")},
	{"cost_sign_with_ecdsa", p(Ptr, Ptr, I32, Ptr), p(I32), everywhereAndStart, false, costSmall, notSupported("threshold ECDSA")},
	{"cost_sign_with_schnorr", p(Ptr, Ptr, I32, Ptr), p(I32), everywhereAndStart, false, costSmall, notSupported("threshold Schnorr")},
	{"cost_vetkd_derive_key", p(Ptr, Ptr, I32, Ptr), p(I32), everywhereAndStart, false, costSmall, notSupported("vetKD")},
	{"env_var_count", nil, p(Ptr), everywhere, false, costSmall, (*Execution).envVarCount},
	{"env_var_name_size", p(Ptr), p(Ptr), everywhere, false, costSmall, (*Execution).envVarNameSize},
	{"env_var_name_copy", p(Ptr, Ptr, Ptr, Ptr), nil, everywhere, false, costCopy, (*Execution).envVarNameCopy},
	{"env_var_name_exists", p(Ptr, Ptr), p(I32), everywhere, false, costSmall, (*Execution).envVarNameExists},
	{"env_var_value_size", p(Ptr, Ptr), p(Ptr), everywhere, false, costSmall, (*Execution).envVarValueSize},
	{"env_var_value_copy", p(Ptr, Ptr, Ptr, Ptr, Ptr), nil, everywhere, false, costCopy, (*Execution).envVarValueCopy},
	{"debug_print", p(Ptr, Ptr), nil, everywhereAndStart, false, costMedium, (*Execution).debugPrint},
	{"trap", p(Ptr, Ptr), nil, everywhereAndStart, false, costRespond, (*Execution).trap},

	// Only for canisters with 32-bit memory.
	{"msg_cycles_available", nil, p(I64), cyclesIn, true, costSmall, (*Execution).msgCyclesAvailable},
	{"msg_cycles_refunded", nil, p(I64), set(CtxReply, CtxReject), true, costSmall, (*Execution).msgCyclesRefunded},
	{"msg_cycles_accept", p(I64), p(I64), cyclesIn, true, costMedium, (*Execution).msgCyclesAccept},
	{"canister_cycle_balance", nil, p(I64), everywhere, true, costSmall, (*Execution).canisterCycleBalance},
	{"call_cycles_add", p(I64), nil, set(CtxUpdate, CtxReply, CtxReject, CtxSystemTask), true, costSmall, (*Execution).callCyclesAdd},
	{"stable_size", nil, p(I32), everywhereAndStart, true, costSmall, (*Execution).stableSize},
	{"stable_grow", p(I32), p(I32), everywhereAndStart, true, costGrow, (*Execution).stableGrow},
	{"stable_write", p(I32, I32, I32), nil, everywhereAndStart, true, costStable, (*Execution).stable64Write},
	{"stable_read", p(I32, I32, I32), nil, everywhereAndStart, true, costStable, (*Execution).stable64Read},
}

var (
	callerInfo = set(CtxUpdate, CtxReplicatedQuery, CtxNonReplicatedQuery, CtxCompositeQuery, CtxReply, CtxReject,
		CtxCompositeReply, CtxCompositeReject, CtxCleanup, CtxCompositeCleanup, CtxInspect)
	respond = set(CtxUpdate, CtxReplicatedQuery, CtxNonReplicatedQuery, CtxTransformQuery, CtxCompositeQuery,
		CtxReply, CtxReject, CtxCompositeReply, CtxCompositeReject)
	cyclesIn = set(CtxUpdate, CtxReplicatedQuery, CtxReject, CtxReply)
	calls    = set(CtxUpdate, CtxCompositeQuery, CtxReply, CtxReject, CtxCompositeReply, CtxCompositeReject, CtxSystemTask)
	rootKey  = set(CtxInit, CtxPreUpgrade, CtxUpdate, CtxReplicatedQuery, CtxReply, CtxReject, CtxCleanup, CtxSystemTask)
	// mintContexts are "U Ry Rt T", where the specification had mint_cycles.
	mintContexts = set(CtxUpdate, CtxReply, CtxReject, CtxSystemTask)
)

// importIndex is built on first use (linking a module), not at every
// sandbox's initialisation.
var importIndex = sync.OnceValue(func() map[string]int {
	m := make(map[string]int, len(Imports))
	for i, s := range Imports {
		m[s.Name] = i
	}
	return m
})

// Lookup returns the spec of ic0.<name> for a canister with the given memory
// width, or false if no such import exists for it.
func Lookup(name string, memory64 bool) (*Spec, bool) {
	i, ok := importIndex()[name]
	if !ok {
		return nil, false
	}
	s := &Imports[i]
	if s.Only32 && memory64 {
		return nil, false
	}
	return s, true
}
