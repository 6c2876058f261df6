// Package wasmbin decodes and rewrites the section structure of WebAssembly
// binaries supplied by untrusted parties (Internet Computer canisters).
//
// cordon needs this because wasmtime cannot reach non-exported globals and
// always runs a module's start function on instantiation, whereas the IC
// persists all globals between messages and runs the start function only at
// install, and calls callbacks through table 0 whether the module exports it
// or not. Instrument therefore exports every defined global, the start
// function (removing the start section), memory 0 and table 0 under reserved
// "__cordon_" names before the module is compiled. Decode also gives the
// imports, exports, memories and custom sections (e.g. "icp:public
// candid:service") needed to vet a module before install.
//
// API:
//
//	func Decode(b []byte) (*Module, error)
//	func Instrument(b []byte) ([]byte, Instrumentation, error)
//	func DefaultConfig() Config
//	func (c Config) Decode(b []byte) (*Module, error)
//	func (c Config) Instrument(b []byte) ([]byte, Instrumentation, error)
//	func (m *Module) FuncType(funcIndex uint32) (FuncType, bool)
//	func (m *Module) Global(globalIndex uint32) (GlobalType, bool)
//	func (m *Module) Memory(memIndex uint32) (Limits, bool)
//	func (m *Module) Memory64() bool
//	func (m *Module) Export(name string) (Export, bool)
//	func (m *Module) CustomSection(name string) ([]byte, bool)
//	func (m *Module) CustomSections(name string) [][]byte
//	func GlobalExportName(i uint32) string
//	func InstrumentMetering(b []byte) ([]byte, Instrumentation, error)
//	func (c Config) InstrumentMetering(b []byte) ([]byte, Instrumentation, error)
//	func (c Config) DecodeBodies(b []byte) error
//	func ControlInstructions(b []byte, m *Module) (most uint64, mostFunc uint32, total uint64, err error)
//	func CountBodies(b []byte, m *Module) (BodyCounts, error)
//	func FuncInstructions(b []byte, m *Module) (most uint64, mostFunc uint32, err error)
//
// Decode decodes only structure (function bodies are decoded, instruction
// by instruction, by DecodeBodies, ControlInstructions, CountBodies and
// InstrumentMetering, see body.go):
// types, imports, function/table/memory/tag/
// global declarations, exports, start, datacount and custom sections.
// Function bodies are length-checked and skipped, element segments skipped,
// and data segments only counted; global and table initializers are skipped
// opcode by opcode (constant-expression opcodes only, including
// extended-const). Full validation is wasmtime's job. The decoder does check
// what cordon relies on: section order (custom sections anywhere, DataCount
// between Element and Code, Tag between Memory and Global, no duplicates),
// that every section is consumed exactly, index ranges of type references,
// exports and the start function, start type () -> (), unique export
// names, function/code count agreement, DataCount agreement, memory limits
// (memory64 via flag 0x04, shared needs a maximum, page caps) and UTF-8 names.
//
// Proposals outside cordon's feature set are rejected with ErrUnsupported:
// GC and typed function references (type forms other than 0x60, reference
// types other than funcref/externref), custom page sizes, shared tables and
// component-model binaries. Multi-memory, memory64, table64, shared memory,
// SIMD, exception tags and table initializers are decoded.
//
// Hardening: input is attacker-controlled. Decoding never panics; every
// length and count is checked against both a Config limit and the bytes
// remaining before anything is allocated, so memory use is proportional to
// the input; LEB128 is overflow-checked (u32 at most 5 bytes, u64 at most
// 10, unused high bits of the last byte must be zero or, for signed values,
// sign copies). Errors are *Error values naming the section and absolute
// offset, wrapping ErrTruncated, ErrMalformed, ErrLimit, ErrUnsupported or
// ErrReservedExport for errors.Is.
package wasmbin
