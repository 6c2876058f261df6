package wasmbin

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// fuzzSeeds returns a mix of valid and hostile inputs. The real canister is
// included whole and as a small structure-only module built from its
// sections, which the fuzzer mutates far more efficiently.
func fuzzSeeds(f *testing.F) [][]byte {
	seeds := [][]byte{
		module(),
		module(sec(SectionType, vec(funcTypeVoid)), sec(SectionFunction, vec(leb(0))), sec(SectionStart, leb(0)), sec(SectionCode, vec(emptyBody))),
		module(sec(SectionMemory, vec([]byte{5, 1, 2})), sec(SectionGlobal, vec([]byte{0x7e, 1, 0x42, 0x7f, 0x0b}))),
		module(sec(SectionCustom, str("icp:public candid:service"), []byte("service:{}")), sec(SectionDataCount, leb(0)), sec(SectionData, vec())),
		module(sec(SectionType, leb(1<<32-1))),
		wat(f, featuresWAT),
		wat(f, startWAT),
	}
	files, _ := filepath.Glob("/work/shared/canisters/*.wasm")
	if len(files) > 0 {
		b, err := os.ReadFile(files[0])
		if err == nil {
			seeds = append(seeds, b)
			if m, err := Decode(b); err == nil {
				small := append([]byte(nil), b[:headerSize]...)
				for _, s := range m.Sections {
					switch s.ID {
					case SectionType, SectionImport, SectionTable, SectionMemory, SectionGlobal:
						small = append(small, b[s.Offset:s.End]...)
					}
				}
				seeds = append(seeds, small)
			}
		}
	}
	return seeds
}

// checkDecodeResult asserts the invariants every Decode result must satisfy.
func checkDecodeResult(t *testing.T, b []byte, m *Module, err error) {
	if err != nil {
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("error %v is not *Error", err)
		}
		if e.Offset < -1 || e.Offset > len(b) {
			t.Fatalf("error offset %d outside [-1,%d]: %v", e.Offset, len(b), err)
		}
		if !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrLimit) && !errors.Is(err, ErrUnsupported) {
			t.Fatalf("error of unknown kind: %v", err)
		}
		if m != nil {
			t.Fatalf("module returned with error")
		}
		return
	}
	prev := headerSize
	for _, s := range m.Sections {
		if s.Offset != prev || s.Start <= s.Offset || s.End < s.Start || s.End > len(b) {
			t.Fatalf("bad section header %+v after %d", s, prev)
		}
		prev = s.End
	}
	if prev != len(b) && len(b) > headerSize {
		t.Fatalf("sections end at %d of %d", prev, len(b))
	}
	for _, e := range m.Exports {
		switch e.Kind {
		case ExternFunc:
			if _, ok := m.FuncType(e.Index); !ok {
				t.Fatalf("export %q: FuncType(%d) failed", e.Name, e.Index)
			}
		case ExternGlobal:
			if _, ok := m.Global(e.Index); !ok {
				t.Fatalf("export %q: Global(%d) failed", e.Name, e.Index)
			}
		case ExternMemory:
			if _, ok := m.Memory(e.Index); !ok {
				t.Fatalf("export %q: Memory(%d) failed", e.Name, e.Index)
			}
		}
	}
	if m.Start != nil {
		if ft, ok := m.FuncType(*m.Start); !ok || len(ft.Params)+len(ft.Results) != 0 {
			t.Fatalf("start %d: %v %v", *m.Start, ft, ok)
		}
	}
	for i := uint32(0); i < m.NumFuncs(); i++ {
		if _, ok := m.FuncType(i); !ok {
			t.Fatalf("FuncType(%d) failed", i)
		}
	}
	_ = m.Memory64()
}

func FuzzDecode(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		checkDecodeResult(t, b, m, err)
		if err != nil {
			return
		}
		// The data pages are sorted, apart and within the limit, or an error.
		if pages, _, err := DataPages(b, m, 1<<20); err == nil {
			for i, p := range pages {
				if p.First >= p.End || p.End > 1<<20/DataPageSize || (i > 0 && p.First <= pages[i-1].End) {
					t.Fatalf("data pages %v", pages)
				}
			}
		} else if !errors.As(err, new(*Error)) {
			t.Fatalf("data pages: %v", err)
		}
		// The loops' weight: a decoding error or a weight, never a panic;
		// stopped early, what it returns is above a limit.
		if _, _, _, err := LoopLocals(b, m, 1<<40, 1<<40); err != nil && !errors.As(err, new(*Error)) {
			t.Fatalf("loop locals: %v", err)
		}
		if most, _, total, err := LoopLocals(b, m, 3, 5); err == nil {
			if exact, _, all, err := LoopLocals(b, m, 1<<40, 1<<40); err == nil && (exact > 3 || all > 5) != (most > 3 || total > 5) {
				t.Fatalf("loop locals: %d, %d with limits 3, 5; %d, %d without", most, total, exact, all)
			}
		}
		// The locals' weight across blocks: likewise.
		unbounded := LiveLocalsLimits{LiveLocalsWeight{1 << 40, 1 << 40, 1 << 40}, 1 << 40, 1 << 40, 1 << 40}
		if _, err := LiveLocals(b, m, unbounded); err != nil && !errors.As(err, new(*Error)) {
			t.Fatalf("live locals: %v", err)
		}
		small := LiveLocalsLimits{LiveLocalsWeight{3, 3, 3}, 9, 5, 5}
		if got, err := LiveLocals(b, m, small); err == nil {
			over := func(r LiveLocalsResult) bool {
				return r.Most.Merges > 3 || r.Most.Spans > 3 || r.Most.Visits > 3 || r.MergesSquared > 9 || r.Spans > 5 || r.Visits > 5
			}
			if exact, err := LiveLocals(b, m, unbounded); err == nil && over(exact) != over(got) {
				t.Fatalf("live locals: %+v with small limits; %+v without", got, exact)
			}
		}
		// Anything that decodes must instrument unless it uses a reserved name.
		if _, _, err := Instrument(b); err != nil && !errors.Is(err, ErrReservedExport) && !errors.Is(err, ErrLimit) {
			t.Fatalf("decodes but does not instrument: %v", err)
		}
	})
}

func FuzzInstrument(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		out, info, err := Instrument(b)
		if err != nil {
			if out != nil {
				t.Fatalf("output alongside error")
			}
			return
		}
		checkInstrumented(t, b, out, info.Module, info)
		m, err := Decode(out)
		checkDecodeResult(t, out, m, err)
		// Instrumenting twice must be refused if anything was added.
		added := len(info.Globals) > 0 || info.StartExport != "" || info.MemoryExport != "" || info.TableExport != ""
		_, _, err = Instrument(out)
		if added != (err != nil) || (err != nil && !errors.Is(err, ErrReservedExport)) {
			t.Fatalf("re-instrument: added=%v err=%v", added, err)
		}
		for _, e := range m.Exports {
			if strings.HasPrefix(e.Name, ReservedPrefix) && !added {
				t.Fatalf("reserved export %q without additions", e.Name)
			}
		}
	})
}

// simdWAT exercises the immediates of SIMD, bulk memory, reference types
// and memory64-free memargs for the body decoder's seeds.
const simdWAT = `(module
  (memory 1)
  (table 2 funcref)
  (elem declare func 0)
  (data "abc")
  (func (param i32) (result i32)
    (v128.store offset=16 align=4 (i32.const 0) (i8x16.shuffle 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15
      (v128.const i32x4 1 2 3 4) (v128.load8_lane 3 (i32.const 0) (v128.const i64x2 0 0))))
    (drop (i32x4.extract_lane 2 (v128.load32_zero (i32.const 4))))
    (v128.store64_lane 1 (i32.const 8) (v128.const i64x2 5 6))
    (memory.init 0 (i32.const 0) (i32.const 0) (i32.const 3))
    (data.drop 0)
    (table.fill (i32.const 0) (ref.func 0) (i32.const 1))
    (table.copy (i32.const 0) (i32.const 1) (i32.const 1))
    (drop (table.grow (ref.null func) (i32.const 1)))
    (drop (select (result i32) (i32.const 1) (i32.const 2) (local.get 0)))
    (drop (i32.trunc_sat_f32_s (f32.const 1.5)))
    (drop (i64.extend8_s (i64.const -1)))
    (block $b (br_table $b $b (local.get 0)))
    (if (local.get 0) (then (return (i32.const 1))) (else nop))
    (memory.size))
)`

// FuzzMetering: metering never panics; what it produces decodes (bodies
// included), and metering a module wasmtime accepts yields a module
// wasmtime accepts.
func FuzzMetering(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Add(wat(f, meterWAT))
	f.Add(wat(f, simdWAT))
	e := meterEngine()
	f.Fuzz(func(t *testing.T, b []byte) {
		out, info, err := InstrumentMetering(b)
		if err != nil {
			var we *Error
			if out != nil || !errors.As(err, &we) {
				t.Fatalf("out %d bytes, error %v", len(out), err)
			}
			return
		}
		if info.CounterExport != CounterExportName {
			t.Fatalf("counter export %q", info.CounterExport)
		}
		m, err := Decode(out)
		checkDecodeResult(t, out, m, err)
		if err := DefaultConfig().DecodeBodies(out); err != nil {
			t.Fatalf("metered module's bodies do not decode: %v", err)
		}
		if wasmtime.ModuleValidate(e, b) == nil {
			if err := wasmtime.ModuleValidate(e, out); err != nil {
				t.Fatalf("valid module metered into an invalid one: %v", err)
			}
		}
	})
}
