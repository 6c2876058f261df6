package boundary

import (
	"encoding/binary"
	"errors"
	"reflect"
	"testing"

	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// inflight returns the host side of a pair with executions ids in flight,
// and the sandbox side.
func inflight(t *testing.T, ids ...uint64) (*Inflight, *Conn) {
	t.Helper()
	host, sb := pair(t)
	f := NewInflight(host)
	for _, id := range ids {
		if err := f.Add(testExpect(id)); err != nil {
			t.Fatal(err)
		}
	}
	return f, sb
}

// Answers come in any order, each validated against its own request; the
// table empties as they come, and an Error answers one execution alone.
func TestInflightOutOfOrder(t *testing.T) {
	f, sb := inflight(t, 1, 2, 3)
	go func() {
		sb.SendOutput(3, testOutput())
		sb.SendLog(1, LogInfo, "for one")
		sb.SendError(2, ErrInternal, "engine broke")
		sb.SendOutput(1, testOutput())
	}()
	var logs []string
	onLog := func(l LogLine) { logs = append(logs, l.Text) }
	id, out, err := f.Next(onLog)
	if id != 3 || err != nil || !reflect.DeepEqual(out.Reply, testOutput().Reply) || len(out.Heap.Pages) != 2 {
		t.Fatalf("first answer: %d %v %+v", id, err, out)
	}
	id, _, err = f.Next(onLog)
	var re *RemoteError
	if id != 2 || !errors.As(err, &re) || re.Message != "engine broke" {
		t.Fatalf("second answer: %d %v", id, err)
	}
	id, _, err = f.Next(onLog)
	if id != 1 || err != nil || f.Len() != 0 || len(logs) != 1 {
		t.Fatalf("third answer: %d %v, %d in flight, logs %q", id, err, f.Len(), logs)
	}
}

func TestInflightViolations(t *testing.T) {
	cases := []struct {
		name string
		send func(sb *Conn)
		ok   int // answers accepted before the violation
		want ViolationKind
	}{
		{"answer twice", func(sb *Conn) { sb.SendOutput(1, testOutput()); sb.SendOutput(1, testOutput()) }, 1, VID},
		{"id never asked", func(sb *Conn) { sb.SendOutput(9, testOutput()) }, 0, VID},
		{"error for an id never asked", func(sb *Conn) { sb.SendError(9, ErrInternal, "x") }, 0, VID},
		{"log for an answered id", func(sb *Conn) { sb.SendOutput(1, testOutput()); sb.SendLog(1, LogInfo, "late") }, 1, VID},
		{"another answer inside one", func(sb *Conn) {
			out := testOutput()
			sb.Send(&Msg{Kind: KindOutput, ID: 1, Body: EncodeOutput(out)})
			sb.SendOutput(2, testOutput())
		}, 0, VUnexpected},
		{"pages of the other execution", func(sb *Conn) {
			out := testOutput()
			sb.Send(&Msg{Kind: KindOutput, ID: 1, Body: EncodeOutput(out)})
			sb.SendPages(2, HeapMemory, out.Heap.Pages)
		}, 0, VID},
		{"wrong kind", func(sb *Conn) { sb.Send(&Msg{Kind: KindPong, ID: 1}) }, 0, VUnexpected},
		{"log flood for one execution", func(sb *Conn) {
			for i := 0; i <= MaxLogsPerExec; i++ {
				if sb.SendLog(2, LogInfo, "spam") != nil {
					return
				}
			}
		}, 0, VLogs},
		{"log flood without an id", func(sb *Conn) {
			for i := 0; i <= MaxLogsPerExec; i++ {
				if sb.SendLog(0, LogInfo, "spam") != nil {
					return
				}
			}
		}, 0, VLogs},
		{"answer over the execution's cap", func(sb *Conn) {
			b := make([]byte, HeaderSize+3)
			putHeader(b, KindOutput, 0, 2, OutputCap(testExpect(2))+1)
			sb.c.WriteMsgUnix(b, nil, nil)
		}, 0, VSize},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, sb := inflight(t, 1, 2)
			go c.send(sb)
			for i := 0; i < c.ok; i++ {
				if _, _, err := f.Next(nil); err != nil {
					t.Fatalf("answer %d: %v", i, err)
				}
			}
			id, _, err := f.Next(nil)
			if id != 0 {
				t.Fatalf("violation reported for execution %d", id)
			}
			wantViolation(t, err, c.want)
		})
	}
}

func TestInflightAddBounded(t *testing.T) {
	f, _ := inflight(t)
	for i := uint64(1); i <= MaxInFlight; i++ {
		if err := f.Add(testExpect(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Add(testExpect(MaxInFlight + 1)); !errors.Is(err, ErrInFlightFull) {
		t.Fatalf("execution %d admitted: %v", MaxInFlight+1, err)
	}
	if err := f.Add(testExpect(1)); err == nil {
		t.Fatal("an id in flight added twice")
	}
}

// FuzzInflight: whatever packets a sandbox sends with two executions in
// flight, Next never panics, answers only ids in flight, each at most once,
// and reports anything else as the end of the connection (id 0). The host
// refuses execution 1's pages and grants execution 2's (Expect.Reserve):
// each is asked at most once, for what the header announces, before any
// page is held; an answer holds no more pages than were granted; a refused
// one fails alone (*ReserveError) and the connection stays in step.
func FuzzInflight(f *testing.F) {
	frame := func(k Kind, id uint64, body []byte) []byte {
		b := make([]byte, HeaderSize, HeaderSize+len(body))
		putHeader(b, k, 0, id, uint64(len(body)))
		return append(b, body...)
	}
	// The input is a sequence of packets, each prefixed by its length
	// (two bytes, little-endian).
	packets := func(ps ...[]byte) []byte {
		var out []byte
		for _, p := range ps {
			out = append(out, byte(len(p)), byte(len(p)>>8))
			out = append(out, p...)
		}
		return out
	}
	// At least what its reply and globals prove was charged
	// (sysapi.MinInstructions), so that the seeds are answers.
	quiet := &sysapi.Output{Instructions: 100_000, Response: sysapi.Replied, Reply: []byte("ok"),
		Heap: state.Delta{Size: state.WasmPageSize}, Globals: []state.Global{{Type: state.GlobalI32}, {Type: state.GlobalF64}}}
	f.Add(packets(frame(KindOutput, 2, EncodeOutput(quiet)), frame(KindOutput, 1, EncodeOutput(quiet))))
	f.Add(packets(frame(KindLog, 1, EncodeLog(LogLine{Text: "x"})), frame(KindError, 2, EncodeError(&RemoteError{Code: ErrInternal, Message: "m"}))))
	f.Add(packets(frame(KindOutput, 1, EncodeOutput(quiet)), frame(KindOutput, 1, EncodeOutput(quiet))))
	// Answers with pages (testOutput: heap pages 0 and 31, stable page 3),
	// the refused one first.
	paged := EncodeOutput(testOutput())
	f.Add(packets(frame(KindOutput, 1, paged), pagesPacket(1, HeapMemory, 0, 31), pagesPacket(1, StableMemory, 3),
		frame(KindOutput, 2, paged), pagesPacket(2, HeapMemory, 0), pagesPacket(2, HeapMemory, 31), pagesPacket(2, StableMemory, 3)))
	f.Add(packets(frame(KindOutput, 2, paged), pagesPacket(2, HeapMemory, 0, 31), pagesPacket(2, StableMemory, 3),
		frame(KindOutput, 1, paged), pagesPacket(1, HeapMemory, 0, 31), pagesPacket(1, StableMemory, 3)))
	f.Fuzz(func(t *testing.T, stream []byte) {
		if len(stream) > 64<<10 { // written before it is read: stay below the socket buffer
			return
		}
		a, b, err := Pair()
		if err != nil {
			t.Skip(err)
		}
		defer a.Close()
		in := NewInflight(NewConn(a))
		refused := errors.New("no room")
		asked := map[uint64][]uint64{} // bytes each execution's Reserve was asked for
		for _, id := range []uint64{1, 2} {
			exp := testExpect(id)
			exp.Reserve = func(b uint64) error {
				asked[id] = append(asked[id], b)
				if id == 1 {
					return refused
				}
				return nil
			}
			if err := in.Add(exp); err != nil {
				t.Fatal(err)
			}
		}
		for len(stream) >= 2 {
			n := int(stream[0]) | int(stream[1])<<8
			stream = stream[2:]
			n = min(n, len(stream))
			if n > 0 {
				if _, _, err := b.WriteMsgUnix(stream[:n], nil, nil); err != nil {
					break
				}
			}
			stream = stream[n:]
		}
		b.Close()
		seen := map[uint64]bool{}
		for {
			id, out, err := in.Next(nil)
			if id == 0 {
				if err == nil {
					t.Fatal("no answer and no error")
				}
				return
			}
			if (id != 1 && id != 2) || seen[id] {
				t.Fatalf("answer for %d (seen %v)", id, seen)
			}
			seen[id] = true
			var re *RemoteError
			var rs *ReserveError
			switch {
			case (err == nil) == (out == nil):
				t.Fatalf("answer %d: %v %v", id, out, err)
			case errors.As(err, &rs):
				if id != 1 || !errors.Is(err, refused) || len(asked[1]) != 1 {
					t.Fatalf("answer %d refused (asked %v): %v", id, asked, err)
				}
			case err != nil && !errors.As(err, &re):
				t.Fatalf("answer %d: %v", id, err)
			case out != nil:
				held := uint64(len(out.Heap.Pages) + len(out.Stable.Pages))
				if (held == 0 && len(asked[id]) != 0) || (held > 0 && (id != 2 || len(asked[2]) != 1 || asked[2][0] != held*state.PageSize)) {
					t.Fatalf("answer %d holds %d pages, reservations asked %v", id, held, asked)
				}
			}
			if len(asked[id]) > 1 {
				t.Fatalf("execution %d's Reserve asked %d times", id, len(asked[id]))
			}
		}
	})
}

// pagesPacket is a Pages packet of request id: one page of mem at each
// index, the page's bytes its index.
func pagesPacket(id uint64, mem Memory, idx ...uint64) []byte {
	b := make([]byte, HeaderSize+5+len(idx)*pageEntry)
	putHeader(b, KindPages, 0, id, uint64(len(b)-HeaderSize))
	b[HeaderSize] = byte(mem)
	binary.LittleEndian.PutUint32(b[HeaderSize+1:], uint32(len(idx)))
	for i, x := range idx {
		e := b[HeaderSize+5+i*pageEntry:]
		binary.LittleEndian.PutUint64(e, x)
		e[8] = byte(x)
	}
	return b
}
