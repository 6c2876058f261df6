package engine

import (
	"errors"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// wasmtime-go gives every object that owns C memory a Go finalizer
// (runtime.SetFinalizer): an Extern from Instance.GetExport, a FuncType from
// Func.Type, a GlobalType, a Trap, an Error. Finalizers are not free: each
// is a "special" record in its span's sorted list, so adding one walks the
// records still there, and those left to the collector pile up between
// collections. A query that left them all to the collector spent about a
// third of its CPU in runtime.addspecial. The engine therefore closes every
// such object as soon as it has read what it needs, in the function that
// created it, and never hands one out: the helpers below return only
// plain handles (Func, Memory, Global, Table are indices into the store,
// without finalizers, valid as long as the store is).

// exported looks up an export and returns what get extracts from it; the
// Extern itself is closed before returning.
func exported[T any](store wasmtime.Storelike, inst *wasmtime.Instance, name string, get func(*wasmtime.Extern) *T) *T {
	ex := inst.GetExport(store, name)
	if ex == nil {
		return nil
	}
	v := get(ex) // a copy of the handle: it does not point into ex
	ex.Close()
	return v
}

func exportedFunc(store wasmtime.Storelike, inst *wasmtime.Instance, name string) *wasmtime.Func {
	return exported(store, inst, name, (*wasmtime.Extern).Func)
}

func exportedMemory(store wasmtime.Storelike, inst *wasmtime.Instance, name string) *wasmtime.Memory {
	return exported(store, inst, name, (*wasmtime.Extern).Memory)
}

func exportedGlobal(store wasmtime.Storelike, inst *wasmtime.Instance, name string) *wasmtime.Global {
	return exported(store, inst, name, (*wasmtime.Extern).Global)
}

func exportedTable(store wasmtime.Storelike, inst *wasmtime.Instance, name string) *wasmtime.Table {
	return exported(store, inst, name, (*wasmtime.Extern).Table)
}

// closeError frees a wasmtime Trap or Error once its message has been read;
// err must not be used afterwards. Other errors are left alone.
func closeError(err error) {
	var t *wasmtime.Trap
	if errors.As(err, &t) {
		t.Close()
		return
	}
	var e *wasmtime.Error
	if errors.As(err, &e) {
		e.Close()
	}
}
