package engine

import (
	"errors"
	"fmt"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/cordon-dev/cordon/internal/state"
)

// ErrHostMemory is an execution ended because the host could not grow the
// canister's memory within the canister's own limits: the kernel refused
// the memory (in a memory cgroup at its limit a charge made inside a
// system call fails with ENOMEM instead of OOM-killing, and wasmtime turns
// a failed grow into memory.grow = -1). On the IC a grow fails only
// against deterministic limits, so the canister must never see such a
// -1: the execution fails as the host's, nothing applied or charged, and
// may be tried again (RATIONALE.md, "A grow the host fails is the host's
// failure, never -1"). The same for an instantiation the kernel refused
// (the instance's reservation or its initial memory: run.go), which is
// no more the canister's doing.
var ErrHostMemory = errors.New("the host could not grow or map the canister's memory within its limits (the node is out of memory)")

// wasmPages32 is the most pages a 32-bit memory may have (4 GiB).
const wasmPages32 = 1 << 16

// maxMemoryPages is the most pages memory 0 of a module may ever have,
// whatever the execution's limits: its declared maximum, within 4 GiB for
// a 32-bit memory and MaxHeapBytes (the 64-bit engine's reservation, which
// a memory never leaves: reserve.go) for a 64-bit one.
func maxMemoryPages(l memoryLimits) uint64 {
	most := uint64(wasmPages32)
	if l.is64 {
		most = MaxHeapBytes / state.WasmPageSize
	}
	if l.hasMax {
		most = min(most, l.max)
	}
	return most
}

// memoryLimits is what maxMemoryPages needs of a module's memory 0.
type memoryLimits struct {
	max          uint64
	hasMax, is64 bool
}

// growLimit is the most pages the memory may have in an execution with
// heap limit heapBytes (sysapi.Limits.HeapBytes, wasmtime's limiter): a
// grow to more fails for the canister's reason, deterministically.
func (m *Module) growLimit(heapBytes uint64) uint64 {
	return min(m.maxPages, heapBytes/state.WasmPageSize)
}

// setGrowLimit sets the instance's grow limit global (none if the module
// never grows its memory) for an execution with heap limit heapBytes.
func (r *run) setGrowLimit(inst *wasmtime.Instance, m *Module, heapBytes uint64) error {
	if m.growLimitExport == "" {
		return nil
	}
	if r.growLimit == nil {
		if r.growLimit = exportedGlobal(r.store, inst, m.growLimitExport); r.growLimit == nil {
			return fmt.Errorf("grow limit export %s missing", m.growLimitExport)
		}
	}
	if err := r.growLimit.Set(r.store, wasmtime.ValI64(clampInt64(m.growLimit(heapBytes)))); err != nil {
		msg := err.Error()
		closeError(err)
		return fmt.Errorf("set grow limit: %s", msg)
	}
	return nil
}

// hostFailedGrow reports whether the instrumentation marked a grow the
// host failed (the grow limit global set to -1 before it trapped).
func (r *run) hostFailedGrow() bool {
	if r.growLimit == nil {
		return false
	}
	v := r.growLimit.Get(r.store)
	return v.Kind() == wasmtime.KindI64 && v.I64() < 0
}
