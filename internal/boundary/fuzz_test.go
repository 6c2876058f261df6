package boundary

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

func seedOutput() []byte {
	o := testOutput()
	return EncodeOutput(o)
}

func seedExecute() []byte {
	return EncodeExecute(&ExecRequest{HasHeap: true, HeapSize: 65536, HeapPages: 1, HasGlobals: true,
		Globals: []state.Global{{Type: state.GlobalI64, Bits: 3}}, Input: testInput()})
}

func seedCompiled() []byte {
	return EncodeCompiled(&Compiled{Info: engine.Info{Methods: map[string]engine.MethodKind{"a": engine.UpdateMethod, "b": engine.QueryMethod}},
		GlobalTypes: []state.GlobalType{state.GlobalI32}, Artifact: []byte("artifact")})
}

// Decoding never panics; what decodes re-encodes to the same bytes (one
// encoding per value); what decodes and validates is within the limits.
func FuzzDecodeOutput(f *testing.F) {
	f.Add(seedOutput())
	f.Add(EncodeOutput(&sysapi.Output{Trapped: true, TrapMessage: "x", Instructions: 3}))
	f.Add(EncodeOutput(&sysapi.Output{}))
	f.Fuzz(func(t *testing.T, b []byte) {
		exp := testExpect(1)
		h, err := DecodeOutput(b, exp)
		if err != nil {
			return
		}
		if got := EncodeOutputHeader(h); !bytes.Equal(got, b) {
			t.Fatalf("re-encoding differs:\n%x\n%x", got, b)
		}
		_ = ValidateHeader(exp, h)
	})
}

func FuzzDecodeExecute(f *testing.F) {
	f.Add(seedExecute())
	f.Fuzz(func(t *testing.T, b []byte) {
		q, err := DecodeExecute(b)
		if err != nil {
			return
		}
		if got := EncodeExecute(q); !bytes.Equal(got, b) {
			t.Fatalf("re-encoding differs:\n%x\n%x", got, b)
		}
	})
}

func FuzzDecodeCompiled(f *testing.F) {
	f.Add(seedCompiled())
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeCompiled(b, engine.DefaultModuleLimits())
		if err != nil {
			return
		}
		_ = ValidateCompiled(engine.DefaultModuleLimits(), len(b), uint64(len(b)), c)
		c2, err := DecodeCompiled(EncodeCompiled(c), engine.DefaultModuleLimits())
		if err != nil || len(c2.Info.Methods) != len(c.Info.Methods) || !bytes.Equal(c2.Artifact, c.Artifact) {
			t.Fatalf("re-encoding does not decode to the same: %v", err)
		}
	})
}

func FuzzDecodeSmall(f *testing.F) {
	f.Add(uint8(0), EncodeCompile(&CompileRequest{Limits: engine.DefaultModuleLimits(), Wasm: []byte("\x00asm")}))
	f.Add(uint8(1), EncodeLog(LogLine{Level: LogInfo, Text: "hi"}))
	f.Add(uint8(2), EncodeError(&RemoteError{Code: ErrInternal, Message: "no"}))
	f.Add(uint8(3), EncodeReady(ModeCompile))
	f.Add(uint8(4), EncodeHash([32]byte{1}))
	f.Fuzz(func(t *testing.T, which uint8, b []byte) {
		switch which % 5 {
		case 0:
			if c, err := DecodeCompile(b); err == nil && !bytes.Equal(EncodeCompile(c), b) {
				t.Fatal("compile re-encoding differs")
			}
		case 1:
			if l, err := DecodeLog(b); err == nil && len(l.Text) > 3*MaxLogText {
				t.Fatal("log text too long")
			}
		case 2:
			_, _ = DecodeError(b)
		case 3:
			_, _, _ = DecodeReady(b)
		case 4:
			_, _ = DecodeHash(b)
		}
	})
}

// FuzzValidateApply: an output that passes validation can always be applied
// to the state it was computed from (the host's commit cannot fail on it),
// and the result respects the limits.
func FuzzValidateApply(f *testing.F) {
	f.Add(seedOutput(), []byte{0, 0, 31, 0}, []byte{3, 0}, uint8(1))
	f.Add(EncodeOutput(&sysapi.Output{Heap: state.Delta{Size: 0}}), []byte{1, 0}, []byte{}, uint8(0))
	f.Fuzz(func(t *testing.T, b, heapIdx, stableIdx []byte, heapBase uint8) {
		h, err := DecodeOutput(b, testExpect(1))
		if err != nil {
			return
		}
		out := h.Out
		pages := func(idx []byte) []state.DirtyPage {
			var ps []state.DirtyPage
			for i := 0; i+1 < len(idx) && len(ps) < 64; i += 2 {
				ps = append(ps, state.DirtyPage{Index: uint64(binary.LittleEndian.Uint16(idx[i:])), Data: page(byte(i))})
			}
			return ps
		}
		out.Heap.Pages, out.Stable.Pages = pages(heapIdx), pages(stableIdx)
		exp := testExpect(1)
		exp.Limits.HeapBytes = 64 * state.WasmPageSize
		exp.Limits.StableBytes = 64 * state.WasmPageSize
		exp.HeapSize = uint64(heapBase%8) * state.WasmPageSize
		if ValidateOutput(exp, out) != nil {
			return
		}
		if out.Trapped || exp.Context.IsQuery() {
			return
		}
		heap := state.NewPageMap(exp.HeapSize)
		if err := heap.Apply(out.Heap); err != nil {
			t.Fatalf("validated heap delta does not apply: %v", err)
		}
		stable := state.NewPageMap(exp.StableSize)
		if err := stable.Apply(out.Stable); err != nil {
			t.Fatalf("validated stable delta does not apply: %v", err)
		}
		if heap.Size() > exp.Limits.HeapBytes || stable.Size() > exp.Limits.StableBytes {
			t.Fatal("limits exceeded")
		}
	})
}

// FuzzRecv feeds arbitrary packets to the host's receiving side: it must
// return (an error or an output), never panic or hang.
func FuzzRecv(f *testing.F) {
	var seed []byte
	add := func(p []byte) {
		seed = binary.LittleEndian.AppendUint16(seed, uint16(len(p)))
		seed = append(seed, p...)
	}
	add(hdr(KindLog, 0, 1, 5, EncodeLog(LogLine{Text: "ab"})))
	o := seedOutput()
	add(hdr(KindOutput, 0, 1, uint64(len(o)), o))
	f.Add(seed)
	f.Add([]byte{3, 0, 1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		host, sb := pair(t)
		feed(sb, b)
		host.Raw().SetDeadline(time.Now().Add(5 * time.Second))
		exp := testExpect(1)
		exp.HeapSize = 0
		_, _ = host.AwaitOutput(exp, nil)
	})
}

// feed writes the packets encoded in b (u16 length, bytes), at most 64 of
// them and 128 KiB in all so that they fit in the socket buffer, then
// closes c.
func feed(c *Conn, b []byte) {
	total := 0
	for n := 0; len(b) >= 2 && n < 64; n++ {
		size := min(int(binary.LittleEndian.Uint16(b)), len(b)-2)
		if size == 0 || total+size > 128<<10 {
			break
		}
		if _, _, err := c.Raw().WriteMsgUnix(b[2:2+size], nil, nil); err != nil {
			break
		}
		total += size
		b = b[2+size:]
	}
	c.Raw().Close()
}

// FuzzNextRequest: the sandbox's receiving side, on arbitrary packets.
func FuzzNextRequest(f *testing.F) {
	var seed []byte
	add := func(p []byte) {
		seed = binary.LittleEndian.AppendUint16(seed, uint16(len(p)))
		seed = append(seed, p...)
	}
	e := seedExecute()
	add(hdr(KindExecute, 0, 1, uint64(len(e)), e))
	pg := append([]byte{byte(HeapMemory), 1, 0, 0, 0}, make([]byte, 8+state.PageSize)...)
	add(hdr(KindPages, 0, 1, uint64(len(pg)), pg))
	f.Add(seed)
	f.Fuzz(func(t *testing.T, b []byte) {
		host, sb := pair(t)
		feed(host, b)
		sb.Raw().SetDeadline(time.Now().Add(5 * time.Second))
		for {
			q, err := sb.NextRequest()
			if err != nil {
				return
			}
			if q.File != nil {
				q.File.Close()
			}
		}
	})
}
