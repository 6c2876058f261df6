package wasmbin

import (
	"bufio"
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// objdump is what `wasm-objdump -h -x` says about a module: an independent
// decoder to compare against.
type objdump struct {
	sections    []SectionHeader // Offset unknown (0); Start/End of content
	types       []string        // "(i32, i32) -> nil" as printed by objdump
	imports     []string        // "func[0] sig=0 ic0.accept_message"
	funcSigs    []uint32        // defined functions' type indices
	globals     []GlobalType
	globalInits []string // "i32=2097152"
	exports     []Export
	start       *uint32
	memories    []string // "pages: initial=33"
	tables      []string // "type=funcref initial=48 max=48"
}

var (
	reHeader  = regexp.MustCompile(`^\s*(\w+) start=0x([0-9a-f]+) end=0x([0-9a-f]+) \(size=0x[0-9a-f]+\)`)
	reSection = regexp.MustCompile(`^(\w+)(\[\d+\])?:$`)
	reType    = regexp.MustCompile(`^ - type\[\d+\] (.*)$`)
	reImport  = regexp.MustCompile(`^ - (\w+)\[(\d+)\](?: sig=(\d+))?.* <- (.*)$`)
	reFunc    = regexp.MustCompile(`^ - func\[\d+\] sig=(\d+)`)
	reGlobal  = regexp.MustCompile(`^ - global\[\d+\] (\w+) mutable=([01]) - init (.*)$`)
	reExport  = regexp.MustCompile(`^ - (\w+)\[(\d+)\](?: <[^>]*>)? -> "(.*)"$`)
	reStart   = regexp.MustCompile(`^ - start function: (\d+)`)
	reMemory  = regexp.MustCompile(`^ - memory\[\d+\] (.*)$`)
	reTable   = regexp.MustCompile(`^ - table\[\d+\] (.*)$`)
)

var objdumpIDs = map[string]SectionID{
	"Custom": SectionCustom, "Type": SectionType, "Import": SectionImport, "Function": SectionFunction,
	"Table": SectionTable, "Memory": SectionMemory, "Global": SectionGlobal, "Export": SectionExport,
	"Start": SectionStart, "Elem": SectionElement, "Code": SectionCode, "Data": SectionData,
	"DataCount": SectionDataCount, "Tag": SectionTag,
}

var objdumpKinds = map[string]ExternKind{"func": ExternFunc, "table": ExternTable, "memory": ExternMemory, "global": ExternGlobal, "tag": ExternTag}

func runObjdump(t *testing.T, path string) *objdump {
	t.Helper()
	if _, err := exec.LookPath("wasm-objdump"); err != nil {
		t.Skip("wasm-objdump not installed")
	}
	out, err := exec.Command("wasm-objdump", "-h", "-x", path).Output()
	if err != nil {
		t.Fatalf("wasm-objdump: %v", err)
	}
	d := &objdump{}
	cur := ""
	details := false
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "Section Details:" {
			details = true
			continue
		}
		if !details {
			if m := reHeader.FindStringSubmatch(line); m != nil {
				id, ok := objdumpIDs[m[1]]
				if !ok {
					t.Fatalf("unknown objdump section %q", m[1])
				}
				s, _ := strconv.ParseInt(m[2], 16, 64)
				e, _ := strconv.ParseInt(m[3], 16, 64)
				d.sections = append(d.sections, SectionHeader{ID: id, Start: int(s), End: int(e)})
			}
			continue
		}
		if m := reSection.FindStringSubmatch(line); m != nil {
			cur = m[1]
			continue
		}
		switch cur {
		case "Type":
			if m := reType.FindStringSubmatch(line); m != nil {
				d.types = append(d.types, m[1])
			}
		case "Import":
			if m := reImport.FindStringSubmatch(line); m != nil {
				d.imports = append(d.imports, fmt.Sprintf("%s[%s] sig=%s %s", m[1], m[2], m[3], m[4]))
			}
		case "Function":
			if m := reFunc.FindStringSubmatch(line); m != nil {
				v, _ := strconv.ParseUint(m[1], 10, 32)
				d.funcSigs = append(d.funcSigs, uint32(v))
			}
		case "Global":
			if m := reGlobal.FindStringSubmatch(line); m != nil {
				vt := map[string]ValType{"i32": I32, "i64": I64, "f32": F32, "f64": F64, "v128": V128, "funcref": FuncRef, "externref": ExternRef}[m[1]]
				d.globals = append(d.globals, GlobalType{Type: vt, Mutable: m[2] == "1"})
				d.globalInits = append(d.globalInits, m[3])
			}
		case "Export":
			if m := reExport.FindStringSubmatch(line); m != nil {
				v, _ := strconv.ParseUint(m[2], 10, 32)
				d.exports = append(d.exports, Export{Name: m[3], Kind: objdumpKinds[m[1]], Index: uint32(v)})
			}
		case "Start":
			if m := reStart.FindStringSubmatch(line); m != nil {
				v, _ := strconv.ParseUint(m[1], 10, 32)
				s := uint32(v)
				d.start = &s
			}
		case "Memory":
			if m := reMemory.FindStringSubmatch(line); m != nil {
				d.memories = append(d.memories, m[1])
			}
		case "Table":
			if m := reTable.FindStringSubmatch(line); m != nil {
				d.tables = append(d.tables, m[1])
			}
		}
	}
	return d
}

// objdumpType renders a FuncType the way wasm-objdump prints it.
func objdumpType(f FuncType) string {
	join := func(ts []ValType) string {
		s := make([]string, len(ts))
		for i, t := range ts {
			s[i] = t.String()
		}
		return strings.Join(s, ", ")
	}
	res := "nil"
	switch len(f.Results) {
	case 0:
	case 1:
		res = f.Results[0].String()
	default:
		res = "(" + join(f.Results) + ")"
	}
	return "(" + join(f.Params) + ") -> " + res
}

func objdumpLimits(l Limits) string {
	s := fmt.Sprintf("initial=%d", l.Min)
	if l.HasMax {
		s += fmt.Sprintf(" max=%d", l.Max)
	}
	return s
}

// TestDecodeRealModules compares Decode with wasm-objdump on every sample canister.
func TestDecodeRealModules(t *testing.T) {
	for _, path := range realModules(t) {
		t.Run(filepath.Base(path), func(t *testing.T) {
			b := readFile(t, path)
			m, err := Decode(b)
			if err != nil {
				t.Fatal(err)
			}
			want := runObjdump(t, path)

			if len(m.Sections) != len(want.sections) {
				t.Fatalf("%d sections, objdump %d", len(m.Sections), len(want.sections))
			}
			for i, s := range m.Sections {
				w := want.sections[i]
				if s.ID != w.ID || s.Start != w.Start || s.End != w.End {
					t.Errorf("section %d: got %v [%#x,%#x), objdump %v [%#x,%#x)", i, s.ID, s.Start, s.End, w.ID, w.Start, w.End)
				}
			}
			if len(m.Types) != len(want.types) {
				t.Fatalf("%d types, objdump %d", len(m.Types), len(want.types))
			}
			for i, ft := range m.Types {
				if got := objdumpType(ft); got != want.types[i] {
					t.Errorf("type %d: %s, objdump %s", i, got, want.types[i])
				}
			}
			var imps []string
			var counts [5]int
			for _, imp := range m.Imports {
				sig := ""
				if imp.Kind == ExternFunc {
					sig = strconv.Itoa(int(imp.TypeIndex))
				}
				imps = append(imps, fmt.Sprintf("%s[%d] sig=%s %s.%s", imp.Kind, counts[imp.Kind], sig, imp.Module, imp.Name))
				counts[imp.Kind]++
			}
			if got, w := strings.Join(imps, "\n"), strings.Join(want.imports, "\n"); got != w {
				t.Errorf("imports:\n%s\nobjdump:\n%s", got, w)
			}
			if fmt.Sprint(m.Funcs) != fmt.Sprint(want.funcSigs) {
				t.Errorf("function type indices differ from objdump")
			}
			if fmt.Sprint(m.Globals) != fmt.Sprint(want.globals) {
				t.Errorf("globals %v, objdump %v", m.Globals, want.globals)
			}
			if fmt.Sprint(m.Exports) != fmt.Sprint(want.exports) {
				t.Errorf("exports %v, objdump %v", m.Exports, want.exports)
			}
			if (m.Start == nil) != (want.start == nil) || (m.Start != nil && *m.Start != *want.start) {
				t.Errorf("start %v, objdump %v", m.Start, want.start)
			}
			var mems []string
			for _, l := range m.Memories {
				mems = append(mems, "pages: "+objdumpLimits(l))
			}
			if fmt.Sprint(mems) != fmt.Sprint(want.memories) {
				t.Errorf("memories %v, objdump %v", mems, want.memories)
			}
			var tabs []string
			for _, tb := range m.Tables {
				tabs = append(tabs, "type="+tb.Elem.String()+" "+objdumpLimits(tb.Limits))
			}
			if fmt.Sprint(tabs) != fmt.Sprint(want.tables) {
				t.Errorf("tables %v, objdump %v", tabs, want.tables)
			}

			// Facts cordon relies on for Motoko canisters.
			if m.Memory64() {
				t.Errorf("Motoko sample reports memory64")
			}
			if _, ok := m.CustomSection("icp:private candid:service"); !ok {
				if _, ok := m.CustomSection("icp:public candid:service"); !ok {
					t.Errorf("no candid:service custom section")
				}
			}
			if m.Start != nil {
				if ft, ok := m.FuncType(*m.Start); !ok || len(ft.Params)+len(ft.Results) != 0 {
					t.Errorf("start function type %v %v", ft, ok)
				}
			}
			for _, e := range m.Exports {
				if e.Kind == ExternFunc {
					if _, ok := m.FuncType(e.Index); !ok {
						t.Errorf("export %q: no func type", e.Name)
					}
				}
			}
			t.Logf("%d types, %d imports, %d funcs, %d globals (%d mutable), %d exports, start=%d, memories=%v, customs=%d",
				len(m.Types), len(m.Imports), len(m.Funcs), len(m.Globals), countMutable(m.Globals), len(m.Exports), deref(m.Start), m.Memories, len(m.Customs))
		})
	}
}

func countMutable(gs []GlobalType) int {
	n := 0
	for _, g := range gs {
		if g.Mutable {
			n++
		}
	}
	return n
}

func deref(p *uint32) int64 {
	if p == nil {
		return -1
	}
	return int64(*p)
}

// TestInstrumentRealModules instruments every sample canister and has
// wasmtime compile the result.
func TestInstrumentRealModules(t *testing.T) {
	engine := newEngine()
	for _, path := range realModules(t) {
		t.Run(filepath.Base(path), func(t *testing.T) {
			b := readFile(t, path)
			out, info, err := Instrument(b)
			if err != nil {
				t.Fatal(err)
			}
			orig := info.Module
			checkInstrumented(t, b, out, orig, info)

			mod, err := wasmtime.NewModule(engine, out)
			if err != nil {
				t.Fatalf("wasmtime rejects instrumented module: %v", err)
			}
			defer mod.Close()
			checkWasmtimeExports(t, mod, orig, info)
		})
	}
}

// checkInstrumented verifies the structural promises of Instrument.
func checkInstrumented(t *testing.T, in, out []byte, orig *Module, info Instrumentation) {
	t.Helper()
	m, err := Decode(out)
	if err != nil {
		t.Fatalf("instrumented module does not decode: %v", err)
	}
	if m.Start != nil {
		t.Errorf("start section survived")
	}
	if (orig.Start != nil) != (info.StartExport != "") {
		t.Errorf("StartExport %q for start %v", info.StartExport, orig.Start)
	}
	// Original exports first, unchanged; then ours.
	if len(m.Exports) < len(orig.Exports) {
		t.Fatalf("lost exports")
	}
	for i, e := range orig.Exports {
		if m.Exports[i] != e {
			t.Errorf("export %d: %v, was %v", i, m.Exports[i], e)
		}
	}
	if len(info.Globals) != len(orig.Globals) {
		t.Errorf("%d instrumented globals, module defines %d", len(info.Globals), len(orig.Globals))
	}
	for i, g := range info.Globals {
		want := orig.NumImportedGlobals + uint32(i)
		if g.Index != want || g.Export != fmt.Sprintf("__cordon_global_%d", want) || g.Type != orig.Globals[i] {
			t.Errorf("instrumented global %d: %+v", i, g)
		}
		if e, ok := m.Export(g.Export); !ok || e.Kind != ExternGlobal || e.Index != g.Index {
			t.Errorf("export %q: %+v %v", g.Export, e, ok)
		}
	}
	if info.StartExport != "" {
		if e, ok := m.Export(StartExportName); !ok || e.Kind != ExternFunc || e.Index != *orig.Start || info.StartFunc != *orig.Start {
			t.Errorf("start export %+v %v", e, ok)
		}
	}
	if info.MemoryExport != "" {
		if e, ok := m.Export(MemoryExportName); !ok || e.Kind != ExternMemory || e.Index != 0 {
			t.Errorf("memory export %+v %v", e, ok)
		}
	}
	if (orig.NumImportedTables == 0 && len(orig.Tables) > 0) != (info.TableExport != "") {
		t.Errorf("TableExport %q for %d imported and %d defined tables", info.TableExport, orig.NumImportedTables, len(orig.Tables))
	}
	if info.TableExport != "" {
		if e, ok := m.Export(TableExportName); !ok || e.Kind != ExternTable || e.Index != 0 {
			t.Errorf("table export %+v %v", e, ok)
		}
	}
	// Every section other than export/start is byte-identical and in the same order.
	keep := func(b []byte, mod *Module) [][]byte {
		var s [][]byte
		for _, h := range mod.Sections {
			if h.ID != SectionExport && h.ID != SectionStart {
				s = append(s, b[h.Offset:h.End])
			}
		}
		return s
	}
	a, z := keep(in, orig), keep(out, m)
	if len(a) != len(z) {
		t.Fatalf("%d sections kept, want %d", len(z), len(a))
	}
	for i := range a {
		if !bytes.Equal(a[i], z[i]) {
			t.Errorf("section %d changed", i)
		}
	}
	if !bytes.Equal(in[:8], out[:8]) {
		t.Errorf("header changed")
	}
}

// checkWasmtimeExports checks the added exports as wasmtime sees them.
func checkWasmtimeExports(t *testing.T, mod *wasmtime.Module, orig *Module, info Instrumentation) {
	t.Helper()
	exports := map[string]*wasmtime.ExternType{}
	for _, e := range mod.Exports() {
		exports[e.Name()] = e.Type()
	}
	kinds := map[ValType]wasmtime.ValKind{I32: wasmtime.KindI32, I64: wasmtime.KindI64, F32: wasmtime.KindF32,
		F64: wasmtime.KindF64, FuncRef: wasmtime.KindFuncref, ExternRef: wasmtime.KindExternref} // wasmtime-go has no v128 kind
	for _, g := range info.Globals {
		et := exports[g.Export]
		if et == nil || et.GlobalType() == nil {
			t.Errorf("wasmtime: %s is not an exported global", g.Export)
			continue
		}
		gt := et.GlobalType()
		want, known := kinds[g.Type.Type]
		if (known && gt.Content().Kind() != want) || gt.Mutable() != g.Type.Mutable {
			t.Errorf("wasmtime: %s has kind %d mutable=%v, want %v", g.Export, gt.Content().Kind(), gt.Mutable(), g.Type)
		}
	}
	if info.StartExport != "" {
		et := exports[info.StartExport]
		if et == nil || et.FuncType() == nil {
			t.Errorf("wasmtime: %s is not an exported func", info.StartExport)
		} else if ft := et.FuncType(); len(ft.Params()) != 0 || len(ft.Results()) != 0 {
			t.Errorf("wasmtime: %s has %d params, %d results", info.StartExport, len(ft.Params()), len(ft.Results()))
		}
	}
	if info.MemoryExport != "" {
		et := exports[info.MemoryExport]
		if et == nil || et.MemoryType() == nil {
			t.Errorf("wasmtime: %s is not an exported memory", info.MemoryExport)
		} else if mt := et.MemoryType(); mt.Minimum() != orig.Memories[0].Min || mt.Is64() != orig.Memories[0].Is64 {
			t.Errorf("wasmtime: %s min=%d is64=%v, want %+v", info.MemoryExport, mt.Minimum(), mt.Is64(), orig.Memories[0])
		}
	}
	if info.TableExport != "" {
		et := exports[info.TableExport]
		if et == nil || et.TableType() == nil {
			t.Errorf("wasmtime: %s is not an exported table", info.TableExport)
		} else if tt := et.TableType(); uint64(tt.Minimum()) != orig.Tables[0].Limits.Min || (tt.Element().Kind() == wasmtime.KindFuncref) != (orig.Tables[0].Elem == FuncRef) {
			t.Errorf("wasmtime: %s min=%d elem=%d, want %+v", info.TableExport, tt.Minimum(), tt.Element().Kind(), orig.Tables[0])
		}
	}
	for _, e := range orig.Exports {
		if exports[e.Name] == nil {
			t.Errorf("wasmtime: original export %q missing", e.Name)
		}
	}
	if want := len(orig.Exports) + len(info.Globals) + b2i(info.StartExport != "") + b2i(info.MemoryExport != "") + b2i(info.TableExport != ""); len(exports) != want {
		t.Errorf("wasmtime sees %d exports, want %d", len(exports), want)
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
