package engine

/*
#include <stdbool.h>
#include <stdint.h>

// Declared in wasmtime-go's bundled wasmtime/config.h (which this package
// cannot name on its include path) and defined in the libwasmtime.a that
// wasmtime-go links; wasmtime-go has no Go setters for them.
typedef struct wasm_config_t wasm_config_t;
extern void wasmtime_config_memory_reservation_set(wasm_config_t*, uint64_t);
extern void wasmtime_config_memory_may_move_set(wasm_config_t*, bool);
extern void wasmtime_config_memory_reservation_for_growth_set(wasm_config_t*, uint64_t);
*/
import "C"

import (
	"errors"
	"reflect"
	"runtime"
	"unsafe"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// MaxHeapBytes is the largest Wasm memory an instance can have: every
// linear memory reserves this much address space up front and never moves.
// The host's heap limits (host.Config.HeapBytes32/64) may not exceed it.
//
// wasmtime's defaults reserve 4 GiB and let a memory that grows past its
// reservation move: a 64-bit heap grown past 4 GiB was copied whole by one
// memory.grow (seconds of CPU for a few instructions), and every later
// execution of that canister copied it again when restoring its heap,
// because the file mapping was made at one address and the memory then
// lived at another. Reserving the largest heap allowed and forbidding moves
// makes a grow beyond the reservation fail (memory.grow returns -1) instead.
// Only the engine of 64-bit canisters is configured so (Engine.wt64): a
// 32-bit memory, at most 4 GiB, never moves with wasmtime's defaults, and
// would otherwise reserve 6 GiB too.
const MaxHeapBytes = 6 << 30

// reserveMaxHeap sets c so that no linear memory ever moves (see
// MaxHeapBytes).
func reserveMaxHeap(c *wasmtime.Config) error {
	p, err := configPtr(c)
	if err != nil {
		return err
	}
	C.wasmtime_config_memory_reservation_set(p, C.uint64_t(MaxHeapBytes))
	C.wasmtime_config_memory_may_move_set(p, C.bool(false))
	C.wasmtime_config_memory_reservation_for_growth_set(p, 0)
	runtime.KeepAlive(c)
	return nil
}

// configPtr returns the wasm_config_t that c wraps. wasmtime-go keeps it in
// its only, unexported field; the layout is checked rather than assumed, so
// a wasmtime-go that changes it fails New instead of corrupting memory.
func configPtr(c *wasmtime.Config) (*C.wasm_config_t, error) {
	t := reflect.TypeOf(*c)
	if t.NumField() != 1 || t.Field(0).Type.Kind() != reflect.Pointer || t.Field(0).Offset != 0 {
		return nil, errors.New("engine: wasmtime.Config is not a single C pointer: cannot set the memory reservation")
	}
	p := *(**C.wasm_config_t)(unsafe.Pointer(c))
	if p == nil {
		return nil, errors.New("engine: wasmtime.Config already used")
	}
	return p, nil
}
