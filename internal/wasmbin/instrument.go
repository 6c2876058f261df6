package wasmbin

import (
	"bytes"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Export names added by Instrument. Modules may not export anything starting
// with ReservedPrefix, so the added names can never collide.
const (
	ReservedPrefix     = "__cordon_"
	GlobalExportPrefix = "__cordon_global_"
	StartExportName    = "__cordon_start"
	MemoryExportName   = "__cordon_memory"
	TableExportName    = "__cordon_table"
)

// GlobalExportName is the name under which Instrument exports global index i.
func GlobalExportName(i uint32) string {
	return GlobalExportPrefix + strconv.FormatUint(uint64(i), 10)
}

// InstrumentedGlobal describes one global exported by Instrument.
type InstrumentedGlobal struct {
	Index  uint32 // global index (imported globals come first)
	Export string
	Type   GlobalType
}

// Instrumentation describes what Instrument added.
type Instrumentation struct {
	Globals      []InstrumentedGlobal // every defined global, in index order
	StartExport  string               // "" if the module had no start section
	StartFunc    uint32               // the removed start function; valid if StartExport != ""
	MemoryExport string               // "" if memory 0 is absent or imported
	TableExport  string               // "" if table 0 is absent or imported
	// CounterExport is CounterExportName if the module was metered
	// (InstrumentMetering), else "".
	CounterExport string
	// GrowLimitExport is GrowLimitExportName if the module was metered
	// and grows its memory, else "".
	GrowLimitExport string
	Module          *Module // the decoded input module
}

// Instrument rewrites b with DefaultConfig; see Config.Instrument.
func Instrument(b []byte) ([]byte, Instrumentation, error) {
	return DefaultConfig().Instrument(b)
}

// Instrument returns a copy of b in which
//   - every defined global i is exported as GlobalExportName(i) (imported
//     globals are left alone; they are already reachable from outside),
//   - the start section, if any, is removed and its function exported as
//     StartExportName, so the embedder decides when it runs,
//   - a defined memory 0 is exported as MemoryExportName, in addition to
//     any existing export of it,
//   - a defined table 0 is exported as TableExportName, in addition to any
//     existing export of it: the IC's callbacks (call_new's reply and reject
//     functions, call_on_cleanup's) are indices into table 0 whether the
//     module exports it or not, and Rust canisters do not.
//
// Every other section is copied byte for byte in its original position. The
// export section is rewritten in place (existing entries kept verbatim,
// new ones appended) or, if absent, inserted before the first known section
// that must follow it. It fails with ErrReservedExport if the module already
// exports a name starting with ReservedPrefix, and with ErrLimit if the
// result would have more than MaxExports exports.
func (c Config) Instrument(b []byte) ([]byte, Instrumentation, error) {
	return c.instrument(b, false)
}

func (c Config) instrument(b []byte, metered bool) ([]byte, Instrumentation, error) {
	c = c.normalized()
	m, err := c.Decode(b)
	if err != nil {
		return nil, Instrumentation{}, err
	}
	for _, e := range m.Exports {
		if strings.HasPrefix(e.Name, ReservedPrefix) {
			return nil, Instrumentation{}, &Error{Section: "export", Offset: -1, Err: ErrReservedExport,
				Msg: fmt.Sprintf("module exports %q, which uses the reserved prefix %q", e.Name, ReservedPrefix)}
		}
	}

	info := Instrumentation{Module: m}
	var added []byte // encoded export entries to append
	nAdded := 0
	addExport := func(name string, kind ExternKind, idx uint32) {
		added = appendU32(added, uint32(len(name)))
		added = append(added, name...)
		added = append(added, byte(kind))
		added = appendU32(added, idx)
		nAdded++
	}
	for i, g := range m.Globals {
		idx := m.NumImportedGlobals + uint32(i)
		name := GlobalExportName(idx)
		info.Globals = append(info.Globals, InstrumentedGlobal{Index: idx, Export: name, Type: g})
		addExport(name, ExternGlobal, idx)
	}
	if m.Start != nil {
		info.StartExport, info.StartFunc = StartExportName, *m.Start
		addExport(StartExportName, ExternFunc, *m.Start)
	}
	if m.NumImportedMemories == 0 && len(m.Memories) > 0 {
		info.MemoryExport = MemoryExportName
		addExport(MemoryExportName, ExternMemory, 0)
	}
	if m.NumImportedTables == 0 && len(m.Tables) > 0 {
		info.TableExport = TableExportName
		addExport(TableExportName, ExternTable, 0)
	}
	var mt *metering
	if metered {
		if mt, err = c.meter(b, m); err != nil {
			return nil, Instrumentation{}, err
		}
		info.CounterExport = CounterExportName
		addExport(CounterExportName, ExternGlobal, mt.counter)
		if mt.hasGrow {
			info.GrowLimitExport = GrowLimitExportName
			addExport(GrowLimitExportName, ExternGlobal, mt.growLimit)
		}
	}
	if nAdded == 0 {
		return bytes.Clone(b), info, nil
	}
	if total := len(m.Exports) + nAdded; total > c.MaxExports {
		return nil, Instrumentation{}, &Error{Section: "export", Offset: -1, Err: ErrLimit,
			Msg: fmt.Sprintf("instrumented module would have %d exports, limit is %d", total, c.MaxExports)}
	}

	// New export section content: count, the original entries verbatim, then
	// ours. The original count may use a non-minimal LEB128, so find where
	// its entries start by reading it rather than re-encoding it.
	var oldEntries []byte
	for _, s := range m.Sections {
		if s.ID == SectionExport {
			r := &reader{b: b, pos: s.Start, end: s.End, section: "export"}
			if _, err := r.u32("export count"); err != nil {
				return nil, Instrumentation{}, err // unreachable: Decode read it
			}
			oldEntries = b[r.pos:s.End]
		}
	}
	count := uint32(len(m.Exports) + nAdded)
	contentLen := uint64(sizeU32(count)) + uint64(len(oldEntries)) + uint64(len(added))
	if contentLen > math.MaxUint32 {
		return nil, Instrumentation{}, &Error{Section: "export", Offset: -1, Err: ErrLimit,
			Msg: fmt.Sprintf("export section would be %d bytes", contentLen)}
	}
	exportSec := make([]byte, 0, 1+5+contentLen)
	exportSec = append(exportSec, byte(SectionExport))
	exportSec = appendU32(exportSec, uint32(contentLen))
	exportSec = appendU32(exportSec, count)
	exportSec = append(exportSec, oldEntries...)
	exportSec = append(exportSec, added...)

	// Replaced sections go where the originals were; added ones before
	// the first known section that must follow them.
	repl := map[SectionID][]byte{SectionExport: exportSec}
	order := []SectionID{SectionGlobal, SectionExport, SectionCode}
	if mt != nil {
		repl[SectionGlobal] = mt.global
		if mt.code != nil {
			repl[SectionCode] = mt.code
		}
	}
	size := len(b) + len(exportSec)
	if mt != nil {
		size += len(mt.global) + len(mt.code)
	}
	out := make([]byte, 0, size)
	out = append(out, b[:headerSize]...)
	placed := map[SectionID]bool{}
	for _, s := range m.Sections {
		if s.ID == SectionStart {
			continue // dropped; exported instead
		}
		if s.ID != SectionCustom {
			for _, id := range order {
				if sec, ok := repl[id]; ok && !placed[id] && id.order() < s.ID.order() {
					out = append(out, sec...) // absent from the input: insert it here
					placed[id] = true
				}
			}
			if sec, ok := repl[s.ID]; ok {
				out = append(out, sec...)
				placed[s.ID] = true
				continue
			}
		}
		out = append(out, b[s.Offset:s.End]...)
	}
	for _, id := range order {
		if sec, ok := repl[id]; ok && !placed[id] {
			out = append(out, sec...)
		}
	}

	// Cheap self-check (structure only): never hand wasmtime something we
	// cannot decode ourselves. The added exports may push the output past
	// MaxModuleSize; that is fine, the limit applies to untrusted input.
	check := c
	check.MaxModuleSize = max(c.MaxModuleSize, len(out))
	if _, err := check.Decode(out); err != nil {
		return nil, Instrumentation{}, fmt.Errorf("wasmbin: internal error: instrumented module does not decode: %w", err)
	}
	return out, info, nil
}
