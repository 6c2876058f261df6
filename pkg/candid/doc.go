// Package candid implements Candid, the interface description language
// and data format of the Internet Computer: its types, the binary encoding,
// the textual value syntax and service descriptions (.did files).
//
// It follows the Candid specification (version 0.1.8) and passes the
// official conformance suite (see conformance_test.go).
//
// # Types and values
//
// A *Type describes a Candid type; recursive types are pointer cycles.
// Build types with Prim, OptOf, VecOf, BlobType, RecordOf, TupleOf,
// VariantOf, FuncOf and ServiceOf, or parse them with ParseTypes, ParseType
// and ParseService. Record fields and variant cases are identified by
// 32-bit ids, the Hash of their names; a Field keeps its name when known.
//
// A Value is one of the concrete types Null, Bool, Nat, Int, Nat8 ...
// Nat64, Int8 ... Int64, Float32, Float64, Text, Reserved, Principal, Opt,
// Vec, Blob (vec nat8), Record, Variant, FuncRef and ServiceRef. Values do
// not carry types; Args pairs a list of values with their types:
//
//	args := candid.Args{
//		Types:  []*candid.Type{candid.Prim(candid.KindNat), candid.Prim(candid.KindText)},
//		Values: []candid.Value{candid.NatOf(42), candid.Text("hi")},
//	}
//	b, err := candid.EncodeArgs(args) // "DIDL\x00\x02\x7d\x71\x2a\x02hi"
//
// # Binary format
//
// EncodeArgs encodes values. Decode decodes a message at its own wire
// types; DecodeAs decodes it at expected types, applying the subtyping and
// coercion rules of the specification: extra arguments and record fields
// are ignored, absent ones of type null, opt or reserved read as null, a
// value that does not fit an opt type reads as null, nat reads as int, a
// service reference as a principal, anything as reserved, and func and
// service references must be of a subtype (IsSubtype decides the relation).
//
// Decoding is safe on hostile input: every length is checked against the
// remaining input before anything is allocated, LEB128 numbers are checked
// for overflow, the type table size and the nesting depth are limited, and
// a cost budget proportional to the input size bounds the work spent on
// values that take no space on the wire (such as a vec of a billion nulls),
// and a memory budget, also proportional to the input, the bytes of the
// values decoded (such as a vec of vecs of null), charged before they are
// allocated. A Decoder sets the limits; the package functions use the
// defaults.
//
// Opaque references (tag 0 for principal, service and func values) and
// values of future types that carry references are rejected.
//
// # Textual syntax
//
// ParseArgs parses textual values such as
//
//	(42 : nat, "hi", record { name = "x"; age = 3 : nat8 }, variant { circle = 1.5 },
//	 opt vec { 1; 2 }, blob "\00\ff", principal "aaaaa-aa", null, true)
//
// inferring types like dfx does without a .did file (an unannotated
// integer is an int, a float a float64). ParseArgsTyped parses them at
// expected types (42 becomes a nat8 where a nat8 is expected). Numbers may
// contain underscores (1_000) and be hexadecimal (0xff).
//
// Args.String and FormatValue print values the way dfx does:
// `(42 : nat, "hi", record { age = 3 : nat8; name = "x" })`, with numbers
// annotated and grouped by underscores, record fields and variant cases
// named when the type knows their names and numbered otherwise, tuples
// without labels and blobs as blob "...". The output parses back. As an
// extension of the textual syntax, the floats NaN and ±infinity print and
// parse as nan, inf and -inf.
//
// # Service descriptions
//
// ParseService parses a .did file: type definitions, possibly mutually
// recursive, and a service declaration such as
//
//	type user = record { name : text; age : nat8 };
//	service : (init : nat) -> {
//	  add : (user) -> (nat64);
//	  get : (nat64) -> (opt user) query;
//	  log : (text) -> () oneway;
//	}
//
// with comments (// and nested /* */), quoted names and the query,
// composite_query and oneway annotations. Imports are not supported.
package candid
