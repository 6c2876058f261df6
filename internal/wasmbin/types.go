package wasmbin

import (
	"errors"
	"fmt"
	"strings"
)

// ValType is a WebAssembly value type, encoded as its binary opcode.
type ValType byte

// Value types this package accepts. Typed references and GC types are
// rejected with ErrUnsupported.
const (
	I32       ValType = 0x7f
	I64       ValType = 0x7e
	F32       ValType = 0x7d
	F64       ValType = 0x7c
	V128      ValType = 0x7b
	FuncRef   ValType = 0x70
	ExternRef ValType = 0x6f
)

func (t ValType) String() string {
	switch t {
	case I32:
		return "i32"
	case I64:
		return "i64"
	case F32:
		return "f32"
	case F64:
		return "f64"
	case V128:
		return "v128"
	case FuncRef:
		return "funcref"
	case ExternRef:
		return "externref"
	}
	return fmt.Sprintf("valtype(0x%02x)", byte(t))
}

func (t ValType) valid() bool {
	switch t {
	case I32, I64, F32, F64, V128, FuncRef, ExternRef:
		return true
	}
	return false
}

// ExternKind is the kind of an import or export (its binary tag).
type ExternKind byte

const (
	ExternFunc   ExternKind = 0x00
	ExternTable  ExternKind = 0x01
	ExternMemory ExternKind = 0x02
	ExternGlobal ExternKind = 0x03
	ExternTag    ExternKind = 0x04
)

func (k ExternKind) String() string {
	switch k {
	case ExternFunc:
		return "func"
	case ExternTable:
		return "table"
	case ExternMemory:
		return "memory"
	case ExternGlobal:
		return "global"
	case ExternTag:
		return "tag"
	}
	return fmt.Sprintf("externkind(0x%02x)", byte(k))
}

// SectionID is the id byte of a section.
type SectionID byte

const (
	SectionCustom    SectionID = 0
	SectionType      SectionID = 1
	SectionImport    SectionID = 2
	SectionFunction  SectionID = 3
	SectionTable     SectionID = 4
	SectionMemory    SectionID = 5
	SectionGlobal    SectionID = 6
	SectionExport    SectionID = 7
	SectionStart     SectionID = 8
	SectionElement   SectionID = 9
	SectionCode      SectionID = 10
	SectionData      SectionID = 11
	SectionDataCount SectionID = 12
	SectionTag       SectionID = 13
)

var sectionNames = [...]string{"custom", "type", "import", "function", "table", "memory", "global",
	"export", "start", "element", "code", "data", "datacount", "tag"}

func (id SectionID) String() string {
	if int(id) < len(sectionNames) {
		return sectionNames[id]
	}
	return fmt.Sprintf("section(%d)", byte(id))
}

// order is the position a known section must have relative to the others
// (ids are not in order: DataCount and Tag were added later). 0 means custom
// or unknown.
func (id SectionID) order() int {
	switch id {
	case SectionType:
		return 1
	case SectionImport:
		return 2
	case SectionFunction:
		return 3
	case SectionTable:
		return 4
	case SectionMemory:
		return 5
	case SectionTag:
		return 6
	case SectionGlobal:
		return 7
	case SectionExport:
		return 8
	case SectionStart:
		return 9
	case SectionElement:
		return 10
	case SectionDataCount:
		return 11
	case SectionCode:
		return 12
	case SectionData:
		return 13
	}
	return 0
}

// FuncType is a function signature.
type FuncType struct {
	Params, Results []ValType
}

func (f FuncType) String() string {
	var sb strings.Builder
	list := func(ts []ValType) {
		sb.WriteByte('(')
		for i, t := range ts {
			if i > 0 {
				sb.WriteString(", ")
			}
			sb.WriteString(t.String())
		}
		sb.WriteByte(')')
	}
	list(f.Params)
	sb.WriteString(" -> ")
	list(f.Results)
	return sb.String()
}

// Equal reports whether f and g have the same parameters and results.
func (f FuncType) Equal(g FuncType) bool {
	if len(f.Params) != len(g.Params) || len(f.Results) != len(g.Results) {
		return false
	}
	for i := range f.Params {
		if f.Params[i] != g.Params[i] {
			return false
		}
	}
	for i := range f.Results {
		if f.Results[i] != g.Results[i] {
			return false
		}
	}
	return true
}

// Limits are the size limits of a memory (in pages) or a table (in elements).
type Limits struct {
	Min    uint64
	Max    uint64 // meaningful only if HasMax
	HasMax bool
	Is64   bool // memory64 / table64: indexed with i64
	Shared bool // shared memory (threads)
}

// Table is a table type.
type Table struct {
	Elem   ValType // FuncRef or ExternRef
	Limits Limits
	// HasInit is set for defined tables using the explicit-initializer
	// encoding (0x40 0x00 ...); the initializer is skipped, not kept.
	HasInit bool
}

// GlobalType is the type of a global.
type GlobalType struct {
	Type    ValType
	Mutable bool
}

// Import is one entry of the import section. Exactly one of the
// kind-specific fields is meaningful, depending on Kind.
type Import struct {
	Module, Name string
	Kind         ExternKind
	TypeIndex    uint32 // ExternFunc and ExternTag: index into Module.Types
	Memory       *Limits
	Table        *Table
	Global       *GlobalType
}

// Export is one entry of the export section.
type Export struct {
	Name  string
	Kind  ExternKind
	Index uint32 // in the index space of Kind (imports first)
}

// Custom is a custom section. Data is a copy, not a view of the input.
type Custom struct {
	Name string
	Data []byte
}

// SectionHeader locates one section in the input binary.
type SectionHeader struct {
	ID     SectionID
	Offset int // offset of the id byte
	Start  int // offset of the first content byte
	End    int // offset just past the content
}

// Module is the decoded section structure of a module. Function bodies,
// element and data segments are not decoded.
type Module struct {
	Types    []FuncType
	Imports  []Import
	Funcs    []uint32 // type index of each defined function
	Tables   []Table  // defined tables
	Memories []Limits // defined memories
	Tags     []uint32 // type index of each defined tag
	Globals  []GlobalType
	Exports  []Export
	Start    *uint32 // start function index, nil if no start section
	// DataCount is the value of the DataCount section, nil if absent.
	DataCount *uint32
	Customs   []Custom // in file order
	Sections  []SectionHeader

	// Index-space sizes contributed by imports; defined items follow them.
	NumImportedFuncs, NumImportedTables, NumImportedMemories uint32
	NumImportedGlobals, NumImportedTags                      uint32

	// importPos[kind][i] is the position in Imports of the i-th import of
	// that kind; built by Decode so index lookups are O(1).
	importPos [5][]uint32
}

// NumFuncs is the size of the function index space (imported + defined).
func (m *Module) NumFuncs() uint32 { return m.NumImportedFuncs + uint32(len(m.Funcs)) }

// NumGlobals is the size of the global index space (imported + defined).
func (m *Module) NumGlobals() uint32 { return m.NumImportedGlobals + uint32(len(m.Globals)) }

// NumMemories is the size of the memory index space (imported + defined).
func (m *Module) NumMemories() uint32 { return m.NumImportedMemories + uint32(len(m.Memories)) }

// NumTables is the size of the table index space (imported + defined).
func (m *Module) NumTables() uint32 { return m.NumImportedTables + uint32(len(m.Tables)) }

// NumTags is the size of the tag index space (imported + defined).
func (m *Module) NumTags() uint32 { return m.NumImportedTags + uint32(len(m.Tags)) }

// imported returns the i-th import of the given kind.
func (m *Module) imported(kind ExternKind, i uint32) (*Import, bool) {
	if int(kind) < len(m.importPos) {
		if pos := m.importPos[kind]; pos != nil {
			if uint64(i) < uint64(len(pos)) && int(pos[i]) < len(m.Imports) {
				return &m.Imports[pos[i]], true
			}
			return nil, false
		}
	}
	// Module not built by Decode: scan.
	n := uint32(0)
	for j := range m.Imports {
		if m.Imports[j].Kind == kind {
			if n == i {
				return &m.Imports[j], true
			}
			n++
		}
	}
	return nil, false
}

// FuncType returns the signature of function funcIndex (imported or defined).
func (m *Module) FuncType(funcIndex uint32) (FuncType, bool) {
	var ti uint32
	if funcIndex < m.NumImportedFuncs {
		imp, ok := m.imported(ExternFunc, funcIndex)
		if !ok {
			return FuncType{}, false
		}
		ti = imp.TypeIndex
	} else {
		d := uint64(funcIndex) - uint64(m.NumImportedFuncs)
		if d >= uint64(len(m.Funcs)) {
			return FuncType{}, false
		}
		ti = m.Funcs[d]
	}
	if uint64(ti) >= uint64(len(m.Types)) {
		return FuncType{}, false
	}
	return m.Types[ti], true
}

// Global returns the type of global globalIndex (imported or defined).
func (m *Module) Global(globalIndex uint32) (GlobalType, bool) {
	if globalIndex < m.NumImportedGlobals {
		imp, ok := m.imported(ExternGlobal, globalIndex)
		if !ok || imp.Global == nil {
			return GlobalType{}, false
		}
		return *imp.Global, true
	}
	d := uint64(globalIndex) - uint64(m.NumImportedGlobals)
	if d >= uint64(len(m.Globals)) {
		return GlobalType{}, false
	}
	return m.Globals[d], true
}

// Memory returns the limits of memory memIndex (imported or defined).
func (m *Module) Memory(memIndex uint32) (Limits, bool) {
	if memIndex < m.NumImportedMemories {
		imp, ok := m.imported(ExternMemory, memIndex)
		if !ok || imp.Memory == nil {
			return Limits{}, false
		}
		return *imp.Memory, true
	}
	d := uint64(memIndex) - uint64(m.NumImportedMemories)
	if d >= uint64(len(m.Memories)) {
		return Limits{}, false
	}
	return m.Memories[d], true
}

// Memory64 reports whether memory 0 exists and is a 64-bit memory.
func (m *Module) Memory64() bool {
	l, ok := m.Memory(0)
	return ok && l.Is64
}

// CustomSection returns the data of the first custom section with the given
// name. Names may repeat; use CustomSections to detect that.
func (m *Module) CustomSection(name string) ([]byte, bool) {
	for _, c := range m.Customs {
		if c.Name == name {
			return c.Data, true
		}
	}
	return nil, false
}

// CustomSections returns the data of every custom section with the given name.
func (m *Module) CustomSections(name string) [][]byte {
	var out [][]byte
	for _, c := range m.Customs {
		if c.Name == name {
			out = append(out, c.Data)
		}
	}
	return out
}

// Export returns the export with the given name.
func (m *Module) Export(name string) (Export, bool) {
	for _, e := range m.Exports {
		if e.Name == name {
			return e, true
		}
	}
	return Export{}, false
}

// Error kinds; test with errors.Is.
var (
	ErrTruncated      = errors.New("unexpected end of data")
	ErrMalformed      = errors.New("malformed")
	ErrLimit          = errors.New("limit exceeded")
	ErrUnsupported    = errors.New("unsupported feature")
	ErrReservedExport = errors.New("reserved export name")
)

// Error describes why a binary was rejected and where.
type Error struct {
	Section string // section name ("type", "custom", ...) or "header"/"module"
	Offset  int    // absolute byte offset in the input, -1 if not applicable
	Err     error  // one of the Err* kinds above
	Msg     string
}

func (e *Error) Error() string {
	where := e.Section
	switch where {
	case "header", "module", "":
	default:
		where += " section"
	}
	if where == "" {
		where = "module"
	}
	if e.Offset < 0 {
		return fmt.Sprintf("wasmbin: %s: %v: %s", where, e.Err, e.Msg)
	}
	return fmt.Sprintf("wasmbin: %s at offset %d (0x%x): %v: %s", where, e.Offset, e.Offset, e.Err, e.Msg)
}

func (e *Error) Unwrap() error { return e.Err }
