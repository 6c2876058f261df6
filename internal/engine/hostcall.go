package engine

/*
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// Declared in wasmtime-go's bundled wasmtime/{global,memory,error,val}.h
// (which this package cannot name on its include path) and defined in the
// libwasmtime.a that wasmtime-go links. The global and memory handles are
// only passed through, so they stay opaque here.
typedef struct wasmtime_context wasmtime_context_t;
typedef struct wasmtime_error wasmtime_error_t;

// wasmtime_val_t: a one-byte kind, then a union aligned to 8 bytes whose
// largest member is 16 bytes; the padding gives room to spare.
// meter.attach checks the layout against wasmtime-go on every execution.
typedef struct {
	uint8_t kind;
	union {
		int64_t i64;
		uint8_t bytes[32];
	} of;
} cordon_val_t;

#define CORDON_WASMTIME_I64 1 // WASMTIME_I64

extern void wasmtime_global_get(wasmtime_context_t*, const void*, cordon_val_t*);
extern wasmtime_error_t *wasmtime_global_set(wasmtime_context_t*, const void*, const cordon_val_t*);
extern void wasmtime_error_delete(wasmtime_error_t*);
extern uint8_t *wasmtime_memory_data(const wasmtime_context_t*, const void*);
extern size_t wasmtime_memory_data_size(const wasmtime_context_t*, const void*);

// cordon_counter_get reads the i64 counter g into *out; false if g does not
// hold an i64.
static bool cordon_counter_get(wasmtime_context_t *ctx, const void *g, int64_t *out) {
	cordon_val_t v = {0};
	wasmtime_global_get(ctx, g, &v);
	if (v.kind != CORDON_WASMTIME_I64) {
		return false;
	}
	*out = v.of.i64;
	return true;
}

static bool cordon_counter_set(wasmtime_context_t *ctx, const void *g, int64_t val) {
	cordon_val_t v = {0};
	v.kind = CORDON_WASMTIME_I64;
	v.of.i64 = val;
	wasmtime_error_t *err = wasmtime_global_set(ctx, g, &v);
	if (err != NULL) {
		wasmtime_error_delete(err);
		return false;
	}
	return true;
}

// cordon_counter_charge is meter.Charge in one crossing: it subtracts n
// from the counter, or, if the counter holds less than n (or is negative
// already), leaves it negative (-1, or its negative value). It returns 0
// when charged, 1 at the limit, -1 if the counter is not an i64 or cannot
// be set.
static int cordon_counter_charge(wasmtime_context_t *ctx, const void *g, uint64_t n) {
	int64_t c;
	if (!cordon_counter_get(ctx, g, &c)) {
		return -1;
	}
	int limit = 0;
	if (c < 0 || (uint64_t)c < n) {
		limit = 1;
		if (c >= 0) {
			c = -1;
		}
	} else {
		c -= (int64_t)n;
	}
	if (!cordon_counter_set(ctx, g, c)) {
		return -1;
	}
	return limit;
}

// cordon_memory returns the memory's base and stores its length in *len.
static uint8_t *cordon_memory(wasmtime_context_t *ctx, const void *m, size_t *len) {
	*len = wasmtime_memory_data_size(ctx, m);
	return wasmtime_memory_data(ctx, m);
}
*/
import "C"

import (
	"errors"
	"reflect"
	"runtime"
	"unsafe"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// An ic0 call is a cgo callback from Wasm, and every wasmtime-go accessor
// it makes is more cgo calls: Global.Get is four (the store's context, the
// read, the value's kind, its unrooting) and Global.Set four, so charging
// the counter cost eight crossings, and Memory.UnsafeData four. The helpers
// here make each of these one crossing on a store context looked up once
// per execution: the same wasmtime C API, called from C.

// storeCtx is a store's wasmtime_context_t, which lives as long as the
// store.
type storeCtx = *C.wasmtime_context_t

func storeContext(s *wasmtime.Store) storeCtx {
	return (*C.wasmtime_context_t)(unsafe.Pointer(s.Context()))
}

// externPtr returns the C handle (wasmtime_global_t, wasmtime_memory_t)
// that a wasmtime-go Global or Memory holds as its only field; the layout
// is checked rather than assumed (handlesOK).
func externPtr[T wasmtime.Global | wasmtime.Memory](v *T) unsafe.Pointer {
	return unsafe.Pointer(v)
}

// handlesOK reports whether wasmtime-go's Global and Memory still wrap
// their C handle as their only field, at offset 0.
var handlesOK = func() bool {
	for _, t := range []reflect.Type{reflect.TypeFor[wasmtime.Global](), reflect.TypeFor[wasmtime.Memory]()} {
		if t.NumField() != 1 || t.Field(0).Offset != 0 || t.Field(0).Type.Kind() != reflect.Struct {
			return false
		}
	}
	return true
}()

var errHandles = errors.New("engine: wasmtime-go's Global or Memory is not a single C handle")

func counterGet(ctx storeCtx, g *wasmtime.Global) (int64, bool) {
	var v C.int64_t
	ok := C.cordon_counter_get(ctx, externPtr(g), &v)
	runtime.KeepAlive(g)
	return int64(v), bool(ok)
}

// counterCharge: 0 charged, 1 limit, -1 not an i64 counter.
func counterCharge(ctx storeCtx, g *wasmtime.Global, n uint64) int {
	r := C.cordon_counter_charge(ctx, externPtr(g), C.uint64_t(n))
	runtime.KeepAlive(g)
	return int(r)
}

// memoryBytes is Memory.UnsafeData in one crossing: the memory's current
// contents, valid until Wasm runs again (memory.grow may change the
// length; a memory of this engine never moves, but the base is read each
// time anyway, as it costs nothing more).
func memoryBytes(ctx storeCtx, m *wasmtime.Memory) []byte {
	var n C.size_t
	p := C.cordon_memory(ctx, externPtr(m), &n)
	runtime.KeepAlive(m)
	if p == nil || n == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(p)), int(n))
}
