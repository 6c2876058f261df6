package wasmbin

import (
	"errors"
	"testing"
)

func TestTypeStrings(t *testing.T) {
	for v, want := range map[ValType]string{I32: "i32", I64: "i64", F32: "f32", F64: "f64", V128: "v128", FuncRef: "funcref", ExternRef: "externref", 0x40: "valtype(0x40)"} {
		if v.String() != want {
			t.Errorf("%#x: %s", byte(v), v)
		}
	}
	for k, want := range map[ExternKind]string{ExternFunc: "func", ExternTable: "table", ExternMemory: "memory", ExternGlobal: "global", ExternTag: "tag", 9: "externkind(0x09)"} {
		if k.String() != want {
			t.Errorf("%d: %s", k, k)
		}
	}
	if SectionDataCount.String() != "datacount" || SectionTag.String() != "tag" || SectionID(20).String() != "section(20)" {
		t.Errorf("section names")
	}
	a := FuncType{Params: []ValType{I32, I64}, Results: []ValType{F64}}
	if a.String() != "(i32, i64) -> (f64)" {
		t.Errorf("FuncType.String = %s", a)
	}
	if !a.Equal(FuncType{Params: []ValType{I32, I64}, Results: []ValType{F64}}) || a.Equal(FuncType{Params: []ValType{I32, I32}, Results: []ValType{F64}}) ||
		a.Equal(FuncType{Params: []ValType{I32, I64}, Results: []ValType{F32}}) || a.Equal(FuncType{}) || !(FuncType{}).Equal(FuncType{Params: []ValType{}}) {
		t.Errorf("FuncType.Equal")
	}
	e := &Error{Section: "export", Offset: -1, Err: ErrReservedExport, Msg: "x"}
	if e.Error() != "wasmbin: export section: reserved export name: x" || !errors.Is(e, ErrReservedExport) {
		t.Errorf("Error() = %q", e.Error())
	}
}
