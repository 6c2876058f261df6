package wasmbin

import (
	"bytes"
	"fmt"
	"math"
)

// Config bounds what Decode and Instrument accept. A zero field means "use
// the default" (see DefaultConfig). Count limits mirror wasmparser's (and so
// wasmtime's) so that nothing wasmtime would accept is rejected here, while
// every allocation stays proportional to the input size.
//
// There is no separate limit on the number of sections: known sections may
// each appear at most once (ordering is strict), so the total is bounded by
// 13 + MaxCustomSections.
type Config struct {
	MaxModuleSize     int // bytes; default 100 MiB
	MaxCustomSections int // default 1000
	MaxTypes          int // default 1_000_000
	MaxImports        int // default 100_000
	MaxFuncs          int // imported + defined; default 1_000_000
	MaxTables         int // imported + defined; default 100
	MaxMemories       int // imported + defined; default 100
	MaxTags           int // imported + defined; default 1_000_000
	MaxGlobals        int // imported + defined; default 1_000_000
	MaxExports        int // also bounds Instrument's output; default 100_000
	MaxFuncParams     int // per function type; default 1000
	MaxFuncResults    int // per function type; default 1000
	MaxNameLen        int // bytes, for import/export/custom names; default 100_000
}

// DefaultConfig returns the limits used by Decode and Instrument.
func DefaultConfig() Config {
	return Config{
		MaxModuleSize:     100 << 20,
		MaxCustomSections: 1000,
		MaxTypes:          1_000_000,
		MaxImports:        100_000,
		MaxFuncs:          1_000_000,
		MaxTables:         100,
		MaxMemories:       100,
		MaxTags:           1_000_000,
		MaxGlobals:        1_000_000,
		MaxExports:        100_000,
		MaxFuncParams:     1000,
		MaxFuncResults:    1000,
		MaxNameLen:        100_000,
	}
}

// normalized fills in defaults and clamps limits so that index-space sizes
// always fit in a uint32.
func (c Config) normalized() Config {
	d := DefaultConfig()
	fix := func(v *int, def int) {
		if *v <= 0 {
			*v = def
		}
		if *v > math.MaxUint32 {
			*v = math.MaxUint32
		}
	}
	fix(&c.MaxModuleSize, d.MaxModuleSize)
	fix(&c.MaxCustomSections, d.MaxCustomSections)
	fix(&c.MaxTypes, d.MaxTypes)
	fix(&c.MaxImports, d.MaxImports)
	fix(&c.MaxFuncs, d.MaxFuncs)
	fix(&c.MaxTables, d.MaxTables)
	fix(&c.MaxMemories, d.MaxMemories)
	fix(&c.MaxTags, d.MaxTags)
	fix(&c.MaxGlobals, d.MaxGlobals)
	fix(&c.MaxExports, d.MaxExports)
	fix(&c.MaxFuncParams, d.MaxFuncParams)
	fix(&c.MaxFuncResults, d.MaxFuncResults)
	fix(&c.MaxNameLen, d.MaxNameLen)
	return c
}

var (
	wasmMagic     = []byte{0x00, 'a', 's', 'm'}
	wasmVersion1  = []byte{0x01, 0x00, 0x00, 0x00}
	componentVers = []byte{0x0d, 0x00, 0x01, 0x00} // component-model layer 1
)

const headerSize = 8

// Decode decodes the section structure of b with DefaultConfig.
func Decode(b []byte) (*Module, error) { return DefaultConfig().Decode(b) }

// Decode decodes the section structure of b. The returned Module does not
// retain b. Function bodies are only length-checked, element segments are
// skipped and of the data section only the segment count is read (to check
// it against DataCount); wasmtime validates the rest at compile time.
func (c Config) Decode(b []byte) (*Module, error) {
	d := decoder{cfg: c.normalized(), b: b, m: &Module{}}
	if err := d.module(); err != nil {
		return nil, err
	}
	return d.m, nil
}

type decoder struct {
	cfg Config
	b   []byte
	m   *Module

	hasCode      bool
	dataSegments uint32
}

// CheckHeader checks a module's 8-byte preamble (magic and version) and
// returns the error Decode would give for it: what is not a core module at
// all can be refused before any work is done for it.
func CheckHeader(b []byte) error {
	return checkHeader(&reader{b: b, end: len(b), section: "header"}, b)
}

func checkHeader(r *reader, b []byte) error {
	n := min(len(b), 4)
	if !bytes.Equal(b[:n], wasmMagic[:n]) {
		return r.fail(0, ErrMalformed, "not a WebAssembly binary (bad magic)")
	}
	if len(b) < headerSize {
		return r.fail(len(b), ErrTruncated, "module header is %d bytes, want %d", len(b), headerSize)
	}
	switch v := b[4:8]; {
	case bytes.Equal(v, wasmVersion1):
	case bytes.Equal(v, componentVers):
		return r.fail(4, ErrUnsupported, "component-model binary, want a core module")
	default:
		return r.fail(4, ErrMalformed, "unsupported binary version % x", v)
	}
	return nil
}

func (d *decoder) module() error {
	b := d.b
	if len(b) > d.cfg.MaxModuleSize {
		return &Error{Section: "module", Offset: -1, Err: ErrLimit,
			Msg: fmt.Sprintf("module size %d exceeds limit %d", len(b), d.cfg.MaxModuleSize)}
	}
	r := &reader{b: b, end: len(b), section: "header"}
	if err := checkHeader(r, b); err != nil {
		return err
	}
	r.pos = headerSize
	r.section = "module"

	lastOrder, lastID := 0, SectionCustom
	customs := 0
	for r.pos < len(b) {
		off := r.pos
		idByte, _ := r.byte("section id") // cannot fail: pos < len
		id := SectionID(idByte)
		order := id.order()
		if id != SectionCustom && order == 0 {
			return r.fail(off, ErrMalformed, "unknown section id %d", idByte)
		}
		r.section = id.String()
		size, err := r.u32("section size")
		if err != nil {
			return err
		}
		if uint64(size) > uint64(r.remaining()) {
			return r.fail(off, ErrTruncated, "section size %d exceeds the %d remaining bytes", size, r.remaining())
		}
		if id == SectionCustom {
			customs++
			if customs > d.cfg.MaxCustomSections {
				return r.fail(off, ErrLimit, "more than %d custom sections", d.cfg.MaxCustomSections)
			}
		} else {
			if order == lastOrder {
				return r.fail(off, ErrMalformed, "duplicate %s section", id)
			}
			if order < lastOrder {
				return r.fail(off, ErrMalformed, "%s section after %s section (out of order)", id, lastID)
			}
			lastOrder, lastID = order, id
		}
		sr := &reader{b: b, pos: r.pos, end: r.pos + int(size), section: id.String()}
		d.m.Sections = append(d.m.Sections, SectionHeader{ID: id, Offset: off, Start: sr.pos, End: sr.end})
		if err := d.section(id, sr); err != nil {
			return err
		}
		if sr.pos != sr.end {
			return sr.fail(sr.pos, ErrMalformed, "section size mismatch: %d unread bytes at end of section", sr.remaining())
		}
		r.pos = sr.end
		r.section = "module"
	}

	m := d.m
	if len(m.Funcs) > 0 && !d.hasCode {
		return r.fail(len(b), ErrMalformed, "function section declares %d functions but there is no code section", len(m.Funcs))
	}
	if m.DataCount != nil {
		if got := d.dataSegments; got != *m.DataCount {
			return r.fail(len(b), ErrMalformed, "datacount section says %d data segments, data section has %d", *m.DataCount, got)
		}
	}
	return nil
}

func (d *decoder) section(id SectionID, r *reader) error {
	switch id {
	case SectionCustom:
		return d.customSection(r)
	case SectionType:
		return d.typeSection(r)
	case SectionImport:
		return d.importSection(r)
	case SectionFunction:
		return d.functionSection(r)
	case SectionTable:
		return d.tableSection(r)
	case SectionMemory:
		return d.memorySection(r)
	case SectionTag:
		return d.tagSection(r)
	case SectionGlobal:
		return d.globalSection(r)
	case SectionExport:
		return d.exportSection(r)
	case SectionStart:
		return d.startSection(r)
	case SectionElement:
		r.pos = r.end // segments are validated by wasmtime
		return nil
	case SectionDataCount:
		n, err := r.u32("data count")
		if err != nil {
			return err
		}
		d.m.DataCount = &n
		return nil
	case SectionCode:
		return d.codeSection(r)
	case SectionData:
		return d.dataSection(r)
	}
	return r.fail(r.pos, ErrMalformed, "unknown section id %d", byte(id)) // unreachable: filtered by order()
}

func (d *decoder) customSection(r *reader) error {
	name, err := r.name("custom section name", d.cfg.MaxNameLen)
	if err != nil {
		return err
	}
	data := bytes.Clone(r.b[r.pos:r.end])
	if data == nil {
		data = []byte{}
	}
	r.pos = r.end
	d.m.Customs = append(d.m.Customs, Custom{Name: name, Data: data})
	return nil
}

func (d *decoder) typeSection(r *reader) error {
	n, err := r.count("type", d.cfg.MaxTypes, 3) // form + two vector lengths
	if err != nil {
		return err
	}
	d.m.Types = make([]FuncType, 0, n)
	for i := 0; i < n; i++ {
		off := r.pos
		form, err := r.byte("type form")
		if err != nil {
			return err
		}
		switch form {
		case 0x60:
		case 0x4e, 0x4f, 0x50, 0x5e, 0x5f: // rec, sub final, sub, array, struct
			return r.fail(off, ErrUnsupported, "type %d: GC type form 0x%02x", i, form)
		default:
			return r.fail(off, ErrMalformed, "type %d: invalid type form 0x%02x, want 0x60 (func)", i, form)
		}
		params, err := valTypes(r, "param", d.cfg.MaxFuncParams)
		if err != nil {
			return err
		}
		results, err := valTypes(r, "result", d.cfg.MaxFuncResults)
		if err != nil {
			return err
		}
		d.m.Types = append(d.m.Types, FuncType{Params: params, Results: results})
	}
	return nil
}

func valTypes(r *reader, what string, max int) ([]ValType, error) {
	n, err := r.count(what, max, 1)
	if err != nil || n == 0 {
		return nil, err
	}
	ts := make([]ValType, n)
	for i := range ts {
		if ts[i], err = valType(r, what); err != nil {
			return nil, err
		}
	}
	return ts, nil
}

func valType(r *reader, what string) (ValType, error) {
	off := r.pos
	c, err := r.byte(what + " type")
	if err != nil {
		return 0, err
	}
	if t := ValType(c); t.valid() {
		return t, nil
	}
	if isProposalRefType(c) {
		return 0, r.fail(off, ErrUnsupported, "%s: typed/GC reference type 0x%02x", what, c)
	}
	return 0, r.fail(off, ErrMalformed, "%s: invalid value type 0x%02x", what, c)
}

// isProposalRefType reports encodings from the function-references, GC and
// exception-handling proposals, which this package does not decode.
func isProposalRefType(c byte) bool {
	return c == 0x63 || c == 0x64 || (c >= 0x69 && c <= 0x74 && c != 0x6f && c != 0x70)
}

func refType(r *reader, what string) (ValType, error) {
	off := r.pos
	t, err := valType(r, what)
	if err != nil {
		return 0, err
	}
	if t != FuncRef && t != ExternRef {
		return 0, r.fail(off, ErrMalformed, "%s: %s is not a reference type", what, t)
	}
	return t, nil
}

// limits reads memory or table limits. Flag bits: 0x01 has max, 0x02 shared,
// 0x04 64-bit index type.
func (d *decoder) limits(r *reader, memory bool) (Limits, error) {
	off := r.pos
	flags, err := r.byte("limits flags")
	if err != nil {
		return Limits{}, err
	}
	if memory {
		if flags&^0x07 != 0 {
			if flags&^0x0f == 0 {
				return Limits{}, r.fail(off, ErrUnsupported, "memory limits flags 0x%02x: custom page sizes", flags)
			}
			return Limits{}, r.fail(off, ErrMalformed, "invalid memory limits flags 0x%02x", flags)
		}
	} else if flags&^0x05 != 0 {
		if flags&^0x07 == 0 {
			return Limits{}, r.fail(off, ErrUnsupported, "table limits flags 0x%02x: shared tables", flags)
		}
		return Limits{}, r.fail(off, ErrMalformed, "invalid table limits flags 0x%02x", flags)
	}
	l := Limits{HasMax: flags&0x01 != 0, Shared: flags&0x02 != 0, Is64: flags&0x04 != 0}
	read := func(what string) (uint64, error) {
		if l.Is64 {
			return r.u64(what)
		}
		v, err := r.u32(what)
		return uint64(v), err
	}
	if l.Min, err = read("limits minimum"); err != nil {
		return Limits{}, err
	}
	if l.HasMax {
		if l.Max, err = read("limits maximum"); err != nil {
			return Limits{}, err
		}
		if l.Min > l.Max {
			return Limits{}, r.fail(off, ErrMalformed, "limits minimum %d exceeds maximum %d", l.Min, l.Max)
		}
	}
	if memory {
		maxPages := uint64(1) << 16 // 4 GiB of 64 KiB pages
		if l.Is64 {
			maxPages = 1 << 48
		}
		if l.Min > maxPages || (l.HasMax && l.Max > maxPages) {
			return Limits{}, r.fail(off, ErrMalformed, "memory size exceeds %d pages", maxPages)
		}
		if l.Shared && !l.HasMax {
			return Limits{}, r.fail(off, ErrMalformed, "shared memory must have a maximum")
		}
	}
	return l, nil
}

func (d *decoder) tableType(r *reader) (Table, error) {
	elem, err := refType(r, "table element")
	if err != nil {
		return Table{}, err
	}
	l, err := d.limits(r, false)
	return Table{Elem: elem, Limits: l}, err
}

func globalType(r *reader) (GlobalType, error) {
	t, err := valType(r, "global")
	if err != nil {
		return GlobalType{}, err
	}
	off := r.pos
	mut, err := r.byte("global mutability")
	if err != nil {
		return GlobalType{}, err
	}
	if mut > 1 {
		return GlobalType{}, r.fail(off, ErrMalformed, "invalid global mutability 0x%02x", mut)
	}
	return GlobalType{Type: t, Mutable: mut == 1}, nil
}

// typeIndex reads an index into the type section, which precedes every
// section that refers to it.
func (d *decoder) typeIndex(r *reader, what string) (uint32, error) {
	off := r.pos
	ti, err := r.u32(what)
	if err != nil {
		return 0, err
	}
	if uint64(ti) >= uint64(len(d.m.Types)) {
		return 0, r.fail(off, ErrMalformed, "%s: type index %d out of range (%d types)", what, ti, len(d.m.Types))
	}
	return ti, nil
}

func (d *decoder) tagType(r *reader) (uint32, error) {
	off := r.pos
	attr, err := r.byte("tag attribute")
	if err != nil {
		return 0, err
	}
	if attr != 0 {
		return 0, r.fail(off, ErrMalformed, "invalid tag attribute 0x%02x", attr)
	}
	return d.typeIndex(r, "tag")
}

// bump increments an index-space size, enforcing its limit.
func bump(r *reader, off int, n *uint32, max int, what string) error {
	if uint64(*n)+1 > uint64(max) {
		return r.fail(off, ErrLimit, "more than %d %s", max, what)
	}
	*n++
	return nil
}

func (d *decoder) importSection(r *reader) error {
	n, err := r.count("import", d.cfg.MaxImports, 4) // two names, kind, payload
	if err != nil {
		return err
	}
	m := d.m
	m.Imports = make([]Import, 0, n)
	for i := 0; i < n; i++ {
		off := r.pos
		imp := Import{}
		if imp.Module, err = r.name("import module name", d.cfg.MaxNameLen); err != nil {
			return err
		}
		if imp.Name, err = r.name("import name", d.cfg.MaxNameLen); err != nil {
			return err
		}
		kindOff := r.pos
		kind, err := r.byte("import kind")
		if err != nil {
			return err
		}
		imp.Kind = ExternKind(kind)
		switch imp.Kind {
		case ExternFunc:
			if imp.TypeIndex, err = d.typeIndex(r, "imported function"); err == nil {
				err = bump(r, off, &m.NumImportedFuncs, d.cfg.MaxFuncs, "functions")
			}
		case ExternTable:
			var t Table
			if t, err = d.tableType(r); err == nil {
				imp.Table = &t
				err = bump(r, off, &m.NumImportedTables, d.cfg.MaxTables, "tables")
			}
		case ExternMemory:
			var l Limits
			if l, err = d.limits(r, true); err == nil {
				imp.Memory = &l
				err = bump(r, off, &m.NumImportedMemories, d.cfg.MaxMemories, "memories")
			}
		case ExternGlobal:
			var g GlobalType
			if g, err = globalType(r); err == nil {
				imp.Global = &g
				err = bump(r, off, &m.NumImportedGlobals, d.cfg.MaxGlobals, "globals")
			}
		case ExternTag:
			if imp.TypeIndex, err = d.tagType(r); err == nil {
				err = bump(r, off, &m.NumImportedTags, d.cfg.MaxTags, "tags")
			}
		default:
			return r.fail(kindOff, ErrMalformed, "import %d (%q %q): invalid kind 0x%02x", i, imp.Module, imp.Name, kind)
		}
		if err != nil {
			return err
		}
		m.importPos[imp.Kind] = append(m.importPos[imp.Kind], uint32(len(m.Imports)))
		m.Imports = append(m.Imports, imp)
	}
	return nil
}

// room is how many more items fit in an index space of which used are
// already taken by imports.
func room(max int, used uint32) int { return max - int(used) }

func (d *decoder) functionSection(r *reader) error {
	n, err := r.count("function", room(d.cfg.MaxFuncs, d.m.NumImportedFuncs), 1)
	if err != nil {
		return err
	}
	d.m.Funcs = make([]uint32, n)
	for i := range d.m.Funcs {
		if d.m.Funcs[i], err = d.typeIndex(r, "function"); err != nil {
			return err
		}
	}
	return nil
}

func (d *decoder) tableSection(r *reader) error {
	n, err := r.count("table", room(d.cfg.MaxTables, d.m.NumImportedTables), 3)
	if err != nil {
		return err
	}
	d.m.Tables = make([]Table, 0, n)
	for i := 0; i < n; i++ {
		// Function-references encoding: 0x40 0x00 tabletype init-expr.
		hasInit := r.pos < r.end && r.b[r.pos] == 0x40
		if hasInit {
			r.pos++
			off := r.pos
			if c, err := r.byte("table reserved byte"); err != nil {
				return err
			} else if c != 0 {
				return r.fail(off, ErrMalformed, "table %d: reserved byte 0x%02x, want 0x00", i, c)
			}
		}
		t, err := d.tableType(r)
		if err != nil {
			return err
		}
		if hasInit {
			if err := constExpr(r, "table initializer"); err != nil {
				return err
			}
			t.HasInit = true
		}
		d.m.Tables = append(d.m.Tables, t)
	}
	return nil
}

func (d *decoder) memorySection(r *reader) error {
	n, err := r.count("memory", room(d.cfg.MaxMemories, d.m.NumImportedMemories), 2)
	if err != nil {
		return err
	}
	d.m.Memories = make([]Limits, n)
	for i := range d.m.Memories {
		if d.m.Memories[i], err = d.limits(r, true); err != nil {
			return err
		}
	}
	return nil
}

func (d *decoder) tagSection(r *reader) error {
	n, err := r.count("tag", room(d.cfg.MaxTags, d.m.NumImportedTags), 2)
	if err != nil {
		return err
	}
	d.m.Tags = make([]uint32, n)
	for i := range d.m.Tags {
		if d.m.Tags[i], err = d.tagType(r); err != nil {
			return err
		}
	}
	return nil
}

func (d *decoder) globalSection(r *reader) error {
	n, err := r.count("global", room(d.cfg.MaxGlobals, d.m.NumImportedGlobals), 3) // type, mut, end
	if err != nil {
		return err
	}
	d.m.Globals = make([]GlobalType, n)
	for i := range d.m.Globals {
		if d.m.Globals[i], err = globalType(r); err != nil {
			return err
		}
		if err := constExpr(r, "global initializer"); err != nil {
			return err
		}
	}
	return nil
}

// constExpr skips a constant expression up to and including its `end`.
// Only the opcodes allowed in constant expressions (including extended-const)
// are accepted; each iteration consumes at least one byte, so the loop is
// bounded by the section length. Typing is left to wasmtime.
func constExpr(r *reader, what string) error {
	for {
		off := r.pos
		op, err := r.byte(what)
		if err != nil {
			return err
		}
		switch op {
		case 0x0b: // end
			return nil
		case 0x41: // i32.const
			_, err = r.s32(what + ": i32.const")
		case 0x42: // i64.const
			_, err = r.s64(what + ": i64.const")
		case 0x43: // f32.const
			_, err = r.bytes(4, what+": f32.const")
		case 0x44: // f64.const
			_, err = r.bytes(8, what+": f64.const")
		case 0x23: // global.get
			_, err = r.u32(what + ": global.get")
		case 0xd2: // ref.func
			_, err = r.u32(what + ": ref.func")
		case 0xd0: // ref.null heaptype
			hoff := r.pos
			var ht byte
			if ht, err = r.byte(what + ": ref.null"); err == nil && ht != 0x70 && ht != 0x6f {
				return r.fail(hoff, ErrUnsupported, "%s: ref.null heap type 0x%02x", what, ht)
			}
		case 0x6a, 0x6b, 0x6c, 0x7c, 0x7d, 0x7e: // i32/i64 add, sub, mul (extended-const)
		case 0xfd: // SIMD prefix: only v128.const (12) is constant
			var sub uint32
			if sub, err = r.u32(what + ": 0xfd opcode"); err == nil {
				if sub != 12 {
					return r.fail(off, ErrMalformed, "%s: opcode 0xfd %d is not allowed in a constant expression", what, sub)
				}
				_, err = r.bytes(16, what+": v128.const")
			}
		default:
			return r.fail(off, ErrMalformed, "%s: opcode 0x%02x is not allowed in a constant expression", what, op)
		}
		if err != nil {
			return err
		}
	}
}

func (d *decoder) exportSection(r *reader) error {
	n, err := r.count("export", d.cfg.MaxExports, 3) // name length, kind, index
	if err != nil {
		return err
	}
	m := d.m
	m.Exports = make([]Export, 0, n)
	seen := make(map[string]struct{}, n)
	for i := 0; i < n; i++ {
		off := r.pos
		name, err := r.name("export name", d.cfg.MaxNameLen)
		if err != nil {
			return err
		}
		if _, dup := seen[name]; dup {
			return r.fail(off, ErrMalformed, "duplicate export name %q", name)
		}
		seen[name] = struct{}{}
		kindOff := r.pos
		kind, err := r.byte("export kind")
		if err != nil {
			return err
		}
		idxOff := r.pos
		idx, err := r.u32("export index")
		if err != nil {
			return err
		}
		var space uint32
		switch ExternKind(kind) {
		case ExternFunc:
			space = m.NumFuncs()
		case ExternTable:
			space = m.NumTables()
		case ExternMemory:
			space = m.NumMemories()
		case ExternGlobal:
			space = m.NumGlobals()
		case ExternTag:
			space = m.NumTags()
		default:
			return r.fail(kindOff, ErrMalformed, "export %q: invalid kind 0x%02x", name, kind)
		}
		if idx >= space {
			return r.fail(idxOff, ErrMalformed, "export %q: %s index %d out of range (%d defined)", name, ExternKind(kind), idx, space)
		}
		m.Exports = append(m.Exports, Export{Name: name, Kind: ExternKind(kind), Index: idx})
	}
	return nil
}

func (d *decoder) startSection(r *reader) error {
	off := r.pos
	idx, err := r.u32("start function index")
	if err != nil {
		return err
	}
	ft, ok := d.m.FuncType(idx)
	if !ok {
		return r.fail(off, ErrMalformed, "start function %d out of range (%d functions)", idx, d.m.NumFuncs())
	}
	if len(ft.Params) != 0 || len(ft.Results) != 0 {
		return r.fail(off, ErrMalformed, "start function %d has type %s, want () -> ()", idx, ft)
	}
	d.m.Start = &idx
	return nil
}

func (d *decoder) codeSection(r *reader) error {
	d.hasCode = true
	off := r.pos
	n, err := r.count("function body", d.cfg.MaxFuncs, 2) // size + at least `end`
	if err != nil {
		return err
	}
	if n != len(d.m.Funcs) {
		return r.fail(off, ErrMalformed, "code section has %d function bodies, function section declares %d", n, len(d.m.Funcs))
	}
	for i := 0; i < n; i++ {
		boff := r.pos
		size, err := r.u32("function body size")
		if err != nil {
			return err
		}
		if size == 0 {
			return r.fail(boff, ErrMalformed, "function body %d is empty", i)
		}
		if _, err := r.bytes(int(size), "function body"); err != nil {
			return err
		}
	}
	return nil
}

func (d *decoder) dataSection(r *reader) error {
	n, err := r.u32("data segment count")
	if err != nil {
		return err
	}
	d.dataSegments = n
	r.pos = r.end // segments are validated by wasmtime
	return nil
}
