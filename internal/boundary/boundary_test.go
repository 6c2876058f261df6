package boundary

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

func pair(t testing.TB) (*Conn, *Conn) {
	t.Helper()
	a, b, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return NewConn(a), NewConn(b)
}

func page(b byte) *state.Page {
	p := new(state.Page)
	for i := range p {
		p[i] = b + byte(i)
	}
	return p
}

func testInput() *sysapi.Input {
	return &sysapi.Input{
		Context: sysapi.CtxUpdate, Entry: "canister_update inc", Callback: sysapi.Callback{Fun: 3, Env: 4},
		CanisterID: []byte{1, 2, 3}, SubnetID: []byte{9}, Caller: []byte{4}, Arg: []byte("DIDL\x00\x00"),
		MethodName: "m", Controllers: [][]byte{{1}, {2, 3}}, EnvVars: []sysapi.EnvVar{{Name: "a", Value: "b"}},
		Balance: cycles.New(1_000_000), CyclesAvailable: cycles.New(500), CyclesRefunded: cycles.Amount{Hi: 1, Lo: 2},
		RejectCode: 4, RejectMessage: "no", Status: sysapi.StatusRunning, Version: 7, Time: 8, Deadline: 9,
		GlobalTimer: 10, DataCertificate: []byte{}, RootKey: []byte{0x30, 0x81, 0x82}, CallContextInstr: 11,
		Limits: sysapi.Limits{Instructions: 1e9, HeapBytes: 4 << 30, StableBytes: 1 << 30, ReplyBytes: 2 << 20,
			CallArgBytes: 2 << 20, MaxOutgoing: 10, DebugPrintBytes: 100, MaxLogLines: 5,
			HeapDirtyPages: 1 << 18, StableDirtyPages: 1 << 19,
			Calls: &sysapi.CallLimits{Fee: 1000, ByteFee: 1, Reservation: cycles.New(100), Keep: cycles.New(7),
				Outstanding: 5, MemoryBytes: 1 << 30, ResponseBytes: 2 << 20, QueueCapacity: 4,
				Queues: []sysapi.QueueUse{{Callee: []byte{1}, Used: 2}, {Callee: []byte{9, 9}, Used: 1}}}},
	}
}

func testOutput() *sysapi.Output {
	cl := sysapi.Callback{Fun: 5, Env: 6}
	return &sysapi.Output{
		// At least what its pages, calls and reply cost (sysapi.MinInstructions).
		Instructions: 1_234_567, Response: sysapi.Replied, Reply: []byte("DIDL\x00\x01\x7d\x01"),
		CyclesAccepted: cycles.New(100), CyclesBurned: cycles.New(10), CyclesSent: cycles.New(50),
		Calls: []sysapi.Call{{Callee: []byte{1}, Method: "f", Arg: []byte{}, Cycles: cycles.New(50),
			OnReply: sysapi.Callback{Fun: 1, Env: 2}, OnReject: sysapi.Callback{Fun: 3, Env: 4}, OnCleanup: &cl, Timeout: 10}},
		CertifiedData: []byte("abc"), CertifiedDataSet: true, GlobalTimer: 99, GlobalTimerSet: true,
		Heap:    state.Delta{Size: 2 * state.WasmPageSize, Pages: []state.DirtyPage{{Index: 0, Data: page(1)}, {Index: 31, Data: page(2)}}},
		Stable:  state.Delta{Size: state.WasmPageSize, Pages: []state.DirtyPage{{Index: 3, Data: page(3)}}},
		Globals: []state.Global{{Type: state.GlobalI32, Bits: 1}, {Type: state.GlobalF64, Bits: math.Float64bits(1.5)}},
		Logs:    []sysapi.LogLine{{Text: "hello"}, {Text: "long", Truncated: true}},
	}
}

func testExpect(id uint64) *Expect {
	in := testInput()
	return &Expect{ID: id, Context: in.Context, Limits: in.Limits, HeapSize: state.WasmPageSize, StableSize: 0,
		Balance: in.Balance, CyclesAvailable: in.CyclesAvailable, GlobalTypes: []state.GlobalType{state.GlobalI32, state.GlobalF64}}
}

// sameMemory compares two memories page by page (absent = zeros).
func sameMemory(a, b state.Memory) bool {
	if a.Size() != b.Size() {
		return false
	}
	for i := uint64(0); i < a.Size()/state.PageSize; i++ {
		pa, pb := a.Page(i), b.Page(i)
		if pa == nil {
			pa = state.ZeroPage()
		}
		if pb == nil {
			pb = state.ZeroPage()
		}
		if *pa != *pb {
			return false
		}
	}
	return true
}

func TestExecuteRoundTrip(t *testing.T) {
	host, sb := pair(t)
	heap := state.NewPageMap(3 * state.WasmPageSize)
	for i := uint64(0); i < 40; i++ { // more than one Pages packet
		if err := heap.SetPage(i*1, page(byte(i))); err != nil {
			t.Fatal(err)
		}
	}
	stable := state.NewPageMap(state.WasmPageSize)
	_ = stable.SetPage(15, page(7))
	in := testInput()
	in.Responded = true
	q := &ExecRequest{Module: [32]byte{1}, RunStart: true, HasGlobals: true, Globals: []state.Global{{Type: state.GlobalI64, Bits: 5}}, Input: in}
	errc := make(chan error, 1)
	// Page maps with images travel as descriptors; clones (which make no
	// image) travel inline. Both must arrive the same.
	for _, tc := range []struct {
		name         string
		heap, stable *state.PageMap
		source       uint8
	}{
		{"mapped", heap, stable, MemoryMapped},
		{"inline", heap.Clone(), stable.Clone(), HeapInline},
	} {
		go func() { errc <- host.SendExecute(42, q, tc.heap, tc.stable) }()
		r, err := sb.NextRequest()
		if err != nil {
			t.Fatal(tc.name, err)
		}
		if err := <-errc; err != nil {
			t.Fatal(tc.name, err)
		}
		if r.Kind != KindExecute || r.ID != 42 || r.Exec.Module != q.Module || !r.Exec.RunStart || !r.Exec.HasHeap || r.Exec.HeapSource != tc.source {
			t.Fatalf("%s header: %+v", tc.name, r.Exec)
		}
		if !reflect.DeepEqual(r.Exec.Globals, q.Globals) {
			t.Fatalf("%s globals %v", tc.name, r.Exec.Globals)
		}
		// A mapped heap carries its image's generation, which the
		// sandbox's memory reports (engine: extents looked up only
		// after it moved); an inline one carries none.
		wantGen, wantOK := tc.heap.ImageGeneration()
		gotGen, gotOK := r.Heap.(interface{ ImageGeneration() (uint64, bool) }).ImageGeneration()
		if tc.source == HeapInline {
			wantGen, wantOK = 0, false
		}
		if tc.source == MemoryMapped && !wantOK {
			t.Fatalf("%s: the mapped heap has no image generation", tc.name)
		}
		if gotGen != wantGen || gotOK != wantOK || r.Exec.HasHeapImageGen != wantOK {
			t.Fatalf("%s: heap image generation %d, %v arrived; want %d, %v", tc.name, gotGen, gotOK, wantGen, wantOK)
		}
		got := *r.Exec.Input
		got.Stable = nil
		if !reflect.DeepEqual(&got, in) {
			t.Fatalf("%s input differs:\n%+v\n%+v", tc.name, got, in)
		}
		if !sameMemory(r.Heap, heap) || *r.Heap.Page(39) != *heap.Page(39) {
			t.Fatalf("%s heap differs", tc.name)
		}
		if !sameMemory(r.Stable, stable) || *r.Stable.Page(15) != *stable.Page(15) {
			t.Fatalf("%s stable differs", tc.name)
		}
		r.Release()
	}
	var r *Request
	var err error
	// nil heap and nil data certificate survive too.
	in.DataCertificate = nil
	q = &ExecRequest{Input: in}
	go func() { errc <- host.SendExecute(43, q, nil, state.NewPageMap(0)) }()
	if r, err = sb.NextRequest(); err != nil || <-errc != nil {
		t.Fatal(err)
	}
	if r.Heap != nil || r.Exec.HasGlobals || r.Exec.Input.DataCertificate != nil {
		t.Fatalf("nil fields: %+v", r.Exec)
	}

	// The answer, validated.
	out := testOutput()
	go func() { errc <- sb.SendOutput(42, out) }()
	got2, err := host.AwaitOutput(testExpect(42), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !Equal(got2, out) || !reflect.DeepEqual(got2.Calls, out.Calls) || !reflect.DeepEqual(got2.Globals, out.Globals) {
		t.Fatalf("output differs:\n%+v\n%+v", got2, out)
	}
}

// A callback of a call context the host says was answered already cannot
// answer it (sysapi traps msg_reply there): a sandbox that reports a reply
// or a reject for it lies, and the host refuses its output. The same
// output for a context still open passes.
func TestAnswerToAnsweredCallRefused(t *testing.T) {
	answers := map[string]func(*sysapi.Output){
		"reply":  func(*sysapi.Output) {}, // testOutput replies
		"reject": func(o *sysapi.Output) { o.Response, o.Reply, o.RejectMessage = sysapi.Rejected, nil, "again" },
	}
	for _, responded := range []bool{true, false} {
		for name, answer := range answers {
			host, sb := pair(t) // a violation leaves the rest of the answer unread: one connection each
			in := testInput()
			in.Context, in.Responded = sysapi.CtxReply, responded
			errc := make(chan error, 1)
			go func() { errc <- host.SendExecute(50, &ExecRequest{Input: in}, nil, state.NewPageMap(0)) }()
			r, err := sb.NextRequest()
			if err != nil || <-errc != nil {
				t.Fatal(err)
			}
			if r.Exec.Input.Responded != responded {
				t.Fatalf("the sandbox was told responded=%v, sent %v", r.Exec.Input.Responded, responded)
			}
			r.Release()
			out := testOutput()
			answer(out)
			go func() { errc <- sb.SendOutput(50, out) }()
			_, err = host.AwaitOutput(ExpectFor(50, in, nil, state.NewPageMap(0), []state.GlobalType{state.GlobalI32, state.GlobalF64}), nil)
			if responded {
				wantViolation(t, err, VResponse)
				continue
			}
			if err != nil {
				t.Fatalf("%s of an open call context refused: %v", name, err)
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestOtherMessagesRoundTrip(t *testing.T) {
	host, sb := pair(t)
	errc := make(chan error, 8)
	// Ready with a log line before it.
	go func() {
		errc <- sb.SendLog(0, LogWarn, "hello\nworld\x00")
		errc <- sb.Send(&Msg{Kind: KindReady, Body: EncodeReady(ModeCanister)})
	}()
	var lines []LogLine
	if err := host.AwaitReady(ModeCanister, func(l LogLine) { lines = append(lines, l) }); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if len(lines) != 1 || lines[0].Text != "hello world\uFFFD" || lines[0].Level != LogWarn {
		t.Fatalf("log lines %+v", lines)
	}
	// Compile → Compiled, with a body over several packets.
	wasm := bytes.Repeat([]byte{0xab}, 3*MaxPacket+17)
	lim := engine.DefaultModuleLimits()
	go func() {
		errc <- host.Send(&Msg{Kind: KindCompile, ID: 5, Body: EncodeCompile(&CompileRequest{Limits: lim, Wasm: wasm})})
	}()
	r, err := sb.NextRequest()
	if err != nil || <-errc != nil {
		t.Fatal(err)
	}
	if r.Kind != KindCompile || !bytes.Equal(r.Compile.Wasm, wasm) || r.Compile.Limits != lim {
		t.Fatal("compile request differs")
	}
	comp := &Compiled{
		Info: engine.Info{HasMemory: true, Memory64: true, HasInit: true, HasStart: true, CandidService: "service : {}", NumGlobals: 2,
			Methods: map[string]engine.MethodKind{"inc": engine.UpdateMethod, "get": engine.QueryMethod, "cq": engine.CompositeQueryMethod}},
		GlobalTypes: []state.GlobalType{state.GlobalI32, 0},
		Artifact:    bytes.Repeat([]byte{1}, 2*MaxPacket),
	}
	go func() { errc <- sb.Send(&Msg{Kind: KindCompiled, ID: 5, Body: EncodeCompiled(comp)}) }()
	got, err := host.AwaitCompiled(5, lim, len(wasm), 1<<30, nil)
	if err != nil || <-errc != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, comp) {
		t.Fatalf("compiled differs:\n%+v\n%+v", got, comp)
	}
	// Load with a descriptor → Loaded.
	f, err := os.CreateTemp(t.TempDir(), "art")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	go func() {
		errc <- host.Send(&Msg{Kind: KindLoad, ID: 6, Body: EncodeHash([32]byte{9}), Files: []*os.File{f}})
	}()
	if r, err = sb.NextRequest(); err != nil || <-errc != nil {
		t.Fatal(err)
	}
	if r.Kind != KindLoad || r.Hash != [32]byte{9} || r.File == nil {
		t.Fatalf("load: %+v", r)
	}
	r.File.Close()
	go func() { errc <- sb.Send(&Msg{Kind: KindLoaded, ID: 6, Body: EncodeHash([32]byte{9})}) }()
	if err := host.AwaitLoaded(6, [32]byte{9}, nil); err != nil || <-errc != nil {
		t.Fatal(err)
	}
	// Warm (a primed sandbox) carries its descriptor as Load does, and is
	// answered by Loaded.
	go func() {
		errc <- host.Send(&Msg{Kind: KindWarm, ID: 8, Body: EncodeHash([32]byte{10}), Files: []*os.File{f}})
	}()
	if r, err = sb.NextRequest(); err != nil || <-errc != nil {
		t.Fatal(err)
	}
	if r.Kind != KindWarm || r.Hash != [32]byte{10} || r.File == nil {
		t.Fatalf("warm: %+v", r)
	}
	r.File.Close()
	go func() { errc <- sb.Send(&Msg{Kind: KindLoaded, ID: 8, Body: EncodeHash([32]byte{11})}) }()
	wantViolation(t, host.AwaitLoaded(8, [32]byte{10}, nil), VUnexpected) // loaded another module
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	// Error answers come back as *RemoteError.
	go func() { errc <- sb.SendError(7, ErrInvalidModule, "bad\x1b[31m module") }()
	err = host.AwaitPong(7, nil)
	var re *RemoteError
	if !errors.As(err, &re) || re.Code != ErrInvalidModule || re.Message != "bad\uFFFD[31m module" {
		t.Fatalf("remote error: %v", err)
	}
	<-errc
}

// raw sends raw packets as a hostile sandbox would.
func raw(t *testing.T, c *Conn, pkts ...[]byte) {
	t.Helper()
	for _, p := range pkts {
		if _, _, err := c.Raw().WriteMsgUnix(p, nil, nil); err != nil {
			t.Fatal(err)
		}
	}
}

func hdr(k Kind, nfds uint32, id, length uint64, body []byte) []byte {
	b := make([]byte, HeaderSize, HeaderSize+len(body))
	putHeader(b, k, nfds, id, length)
	return append(b, body...)
}

func wantViolation(t *testing.T, err error, kind ViolationKind) {
	t.Helper()
	var v *Violation
	if !errors.As(err, &v) {
		t.Fatalf("want a %s violation, got %v", kind, err)
	}
	if v.Kind != kind {
		t.Fatalf("want a %s violation, got %v", kind, v)
	}
	t.Logf("%v", v)
}

var outAccept = Accept{KindOutput: {MaxBody: 1 << 20}, KindLog: {MaxBody: 100}}

func TestFraming(t *testing.T) {
	cases := []struct {
		name string
		pkts [][]byte
		want ViolationKind
	}{
		{"garbage", [][]byte{[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")}, VFraming},
		{"short", [][]byte{{0x84, 1, 0}}, VFraming},
		{"version", [][]byte{func() []byte { b := hdr(KindOutput, 0, 1, 0, nil); b[1] = 9; return b }()}, VFraming},
		{"reserved", [][]byte{func() []byte { b := hdr(KindOutput, 0, 1, 0, nil); b[3] = 1; return b }()}, VFraming},
		{"unknown kind", [][]byte{hdr(0x99, 0, 1, 0, nil)}, VUnknownKind},
		{"host kind from sandbox", [][]byte{hdr(KindCompile, 0, 1, 0, nil)}, VUnexpected},
		{"length 2^63", [][]byte{hdr(KindOutput, 0, 1, 1<<63, []byte{1, 2, 3})}, VSize},
		{"length max", [][]byte{hdr(KindOutput, 0, 1, math.MaxUint64, nil)}, VSize},
		{"body longer than declared", [][]byte{hdr(KindOutput, 0, 1, 2, []byte{1, 2, 3})}, VFraming},
		{"single-packet kind split", [][]byte{hdr(KindLog, 0, 1, 50, []byte{1, 2, 3})}, VFraming},
		{"lone continuation", [][]byte{hdr(KindCont, 0, 1, 0, []byte{1})}, VFraming},
		{"continuation wrong offset", [][]byte{hdr(KindOutput, 0, 1, 10, []byte{1, 2}), hdr(KindCont, 0, 1, 3, []byte{3})}, VFraming},
		{"continuation wrong id", [][]byte{hdr(KindOutput, 0, 1, 10, []byte{1, 2}), hdr(KindCont, 0, 2, 2, []byte{3})}, VFraming},
		{"continuation too long", [][]byte{hdr(KindOutput, 0, 1, 3, []byte{1, 2}), hdr(KindCont, 0, 1, 2, []byte{3, 4})}, VFraming},
		{"empty continuation", [][]byte{hdr(KindOutput, 0, 1, 3, []byte{1, 2}), hdr(KindCont, 0, 1, 2, nil)}, VFraming},
		{"other message inside", [][]byte{hdr(KindOutput, 0, 1, 3, []byte{1, 2}), hdr(KindLog, 0, 1, 0, nil)}, VFraming},
		{"fds declared not sent", [][]byte{hdr(KindOutput, 1, 1, 0, nil)}, VDescriptors},
		{"oversize packet", [][]byte{make([]byte, MaxPacket+1)}, VFraming},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			host, sb := pair(t)
			raw(t, sb, tc.pkts...)
			_, err := host.Recv(outAccept)
			wantViolation(t, err, tc.want)
		})
	}
}

func TestTruncatedThenEOF(t *testing.T) {
	host, sb := pair(t)
	raw(t, sb, hdr(KindOutput, 0, 1, 1000, []byte{1, 2, 3}))
	sb.Raw().Close()
	_, err := host.Recv(outAccept)
	wantViolation(t, err, VFraming)
	if !strings.Contains(err.Error(), "closed after 3 of 1000") {
		t.Fatal(err)
	}
	// And a clean EOF is ErrClosed.
	host2, sb2 := pair(t)
	sb2.Raw().Close()
	if _, err := host2.Recv(outAccept); !errors.Is(err, ErrClosed) {
		t.Fatalf("EOF: %v", err)
	}
}

func TestCutThenSilence(t *testing.T) {
	host, sb := pair(t)
	raw(t, sb, hdr(KindOutput, 0, 1, 1000, []byte{1, 2, 3}))
	host.Raw().SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	_, err := host.Recv(outAccept)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("want a timeout, got %v", err)
	}
}

func openFDs(t testing.TB) int {
	settleFinalizers(t)
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// settleFinalizers collects garbage and waits until the finalizers and
// cleanups it queued have run: an *os.File another test dropped (the
// engine's tests in this package map memory images) closes its descriptor
// in one, and must not do so while a test counts descriptors.
func settleFinalizers(t testing.TB) {
	runtime.GC()
	fin, clean := make(chan struct{}), make(chan struct{})
	a, b := new([16]byte), new([16]byte)
	runtime.SetFinalizer(a, func(*[16]byte) { close(fin) })
	runtime.AddCleanup(b, func(c chan struct{}) { close(c) }, clean)
	a, b = nil, nil
	runtime.GC()
	for _, ch := range []chan struct{}{fin, clean} {
		select {
		case <-ch:
		case <-time.After(time.Minute):
			t.Fatal("finalizers did not run within a minute")
		}
	}
}

// Descriptors from a sandbox are refused and closed, however many it sends.
func TestDescriptorsRefused(t *testing.T) {
	host, sb := pair(t)
	before := openFDs(t)
	f, err := os.Open("/dev/null")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fds := make([]int, 250)
	for i := range fds {
		fds[i] = int(f.Fd())
	}
	for i := 0; i < 20; i++ { // 5000 descriptors in all
		if _, _, err := sb.Raw().WriteMsgUnix(hdr(KindOutput, 250, 1, 0, nil), unix.UnixRights(fds...), nil); err != nil {
			t.Fatal(err)
		}
		_, err := host.Recv(outAccept)
		wantViolation(t, err, VDescriptors)
	}
	// One descriptor, declared, on a kind that takes none.
	if _, _, err := sb.Raw().WriteMsgUnix(hdr(KindOutput, 1, 1, 0, nil), unix.UnixRights(int(f.Fd())), nil); err != nil {
		t.Fatal(err)
	}
	_, err = host.Recv(outAccept)
	wantViolation(t, err, VDescriptors)
	if after := openFDs(t); after != before+1 { // +1: f
		t.Fatalf("descriptors leaked: %d before, %d after", before, after)
	}
}

// Control data that does not parse whole (here a second header that
// overruns it) still has the descriptors of the messages before the fault
// closed: the kernel installed them. They were dropped unclosed.
func TestUnparsableControlDataClosesDescriptors(t *testing.T) {
	host, _ := pair(t)
	f, err := os.Open("/dev/null")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	before := openFDs(t)
	overrun := binary.NativeEndian.AppendUint64(nil, 1<<20)
	overrun = binary.NativeEndian.AppendUint32(overrun, unix.SOL_SOCKET)
	overrun = binary.NativeEndian.AppendUint32(overrun, unix.SCM_RIGHTS)
	host.oob = make([]byte, 64) // room for both (the kernel never writes this)
	for range 10 {
		var fds []int
		for range MaxFDs {
			fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			fds = append(fds, fd)
		}
		oobn := copy(host.oob, append(unix.UnixRights(fds...), overrun...))
		n := copy(host.rbuf, hdr(KindOutput, MaxFDs, 1, 0, nil))
		_, err := host.packetOf(n, oobn, 0, nil)
		wantViolation(t, err, VDescriptors)
	}
	if after := openFDs(t); after != before {
		t.Fatalf("descriptors leaked: %d before, %d after", before, after)
	}
}

func TestPagesStream(t *testing.T) {
	mk := func(mem Memory, idx ...uint64) []byte {
		b := []byte{byte(mem)}
		b = binary.LittleEndian.AppendUint32(b, uint32(len(idx)))
		for _, i := range idx {
			b = binary.LittleEndian.AppendUint64(b, i)
			b = append(b, make([]byte, state.PageSize)...)
		}
		return hdr(KindPages, 0, 1, uint64(len(b)), b)
	}
	cases := []struct {
		name  string
		pkts  [][]byte
		count uint64
		want  ViolationKind
	}{
		{"out of range", [][]byte{mk(HeapMemory, 16)}, 1, VMemory},
		{"duplicate", [][]byte{mk(HeapMemory, 2, 2)}, 2, VMemory},
		{"duplicate across packets", [][]byte{mk(HeapMemory, 2), mk(HeapMemory, 2)}, 2, VMemory},
		{"decreasing", [][]byte{mk(HeapMemory, 3, 1)}, 2, VMemory},
		{"too many", [][]byte{mk(HeapMemory, 1, 2, 3)}, 2, VMemory},
		{"wrong memory", [][]byte{mk(StableMemory, 1)}, 1, VMemory},
		{"empty packet", [][]byte{mk(HeapMemory)}, 1, VMemory},
		{"wrong id", [][]byte{func() []byte { b := mk(HeapMemory, 1); b[8] = 2; return b }()}, 1, VID},
		{"other kind", [][]byte{hdr(KindLog, 0, 1, 0, nil)}, 1, VUnexpected},
		{"short page", [][]byte{func() []byte {
			b := mk(HeapMemory, 1)
			b = b[:len(b)-1]
			putHeader(b, KindPages, 0, 1, uint64(len(b)-HeaderSize))
			return b
		}()}, 1, VFraming},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			host, sb := pair(t)
			raw(t, sb, tc.pkts...)
			err := host.RecvPages(1, HeapMemory, tc.count, 16, func(state.DirtyPage) error { return nil })
			wantViolation(t, err, tc.want)
		})
	}
}

func TestValidateOutput(t *testing.T) {
	ok := testOutput()
	if err := ValidateOutput(testExpect(1), ok); err != nil {
		t.Fatalf("valid output refused: %v", err)
	}
	cases := []struct {
		name string
		mod  func(e *Expect, o *sysapi.Output)
		want ViolationKind
	}{
		{"instructions over limit", func(e *Expect, o *sysapi.Output) { o.Instructions = e.Limits.Instructions + 1 }, VInstructions},
		{"heap over limit", func(e *Expect, o *sysapi.Output) { o.Heap.Size = e.Limits.HeapBytes + state.WasmPageSize }, VMemory},
		{"heap not 64K", func(e *Expect, o *sysapi.Output) { o.Heap.Size += 4096 }, VMemory},
		{"heap shrank", func(e *Expect, o *sysapi.Output) { e.HeapSize = 4 * state.WasmPageSize }, VMemory},
		{"heap size 0 with pages (audit)", func(e *Expect, o *sysapi.Output) { e.HeapSize = 0; o.Heap.Size = 0 }, VMemory},
		{"dirty page out of range", func(e *Expect, o *sysapi.Output) { o.Heap.Pages[1].Index = 32 }, VMemory},
		{"duplicate pages", func(e *Expect, o *sysapi.Output) { o.Heap.Pages[1].Index = 0 }, VMemory},
		{"stable over limit", func(e *Expect, o *sysapi.Output) { o.Stable.Size = e.Limits.StableBytes + state.WasmPageSize }, VMemory},
		{"minted cycles", func(e *Expect, o *sysapi.Output) { o.CyclesBurned = cycles.New(2_000_000) }, VCycles},
		{"accept more than available (audit)", func(e *Expect, o *sysapi.Output) { o.CyclesAccepted = cycles.New(501) }, VCycles},
		{"sent differs from calls", func(e *Expect, o *sysapi.Output) { o.CyclesSent = cycles.New(0) }, VCycles},
		{"call cycles overflow", func(e *Expect, o *sysapi.Output) {
			o.Calls = append(o.Calls, o.Calls[0])
			o.Calls[1].Cycles = cycles.Max
		}, VCycles},
		{"reply and reject", func(e *Expect, o *sysapi.Output) { o.RejectMessage = "no" }, VResponse},
		{"reject with reply bytes", func(e *Expect, o *sysapi.Output) { o.Response = sysapi.Rejected }, VResponse},
		{"reply too big", func(e *Expect, o *sysapi.Output) { e.Limits.ReplyBytes = 3 }, VResponse},
		{"reply in init", func(e *Expect, o *sysapi.Output) {
			e.Context = sysapi.CtxInit
			o.Calls, o.CyclesSent = nil, cycles.Amount{}
		}, VResponse},
		{"accept_message outside inspect", func(e *Expect, o *sysapi.Output) { o.Accepted = true }, VResponse},
		{"reply to an answered call", func(e *Expect, o *sysapi.Output) { e.Context, e.Responded = sysapi.CtxReply, true }, VResponse},
		{"reject of an answered call", func(e *Expect, o *sysapi.Output) {
			e.Context, e.Responded = sysapi.CtxReject, true
			o.Response, o.Reply, o.RejectMessage = sysapi.Rejected, nil, "again"
		}, VResponse},
		{"too many calls", func(e *Expect, o *sysapi.Output) { e.Limits.MaxOutgoing = 0 }, VCalls},
		// A sandbox that performs calls its limits refused: the host's
		// tally of queues, outstanding calls and message memory catches it.
		{"queue to callee full", func(e *Expect, o *sysapi.Output) { e.Limits.Calls.Queues[0].Used = 4 }, VCalls},
		{"no outstanding call left", func(e *Expect, o *sysapi.Output) { e.Limits.Calls.Outstanding = 0 }, VCalls},
		{"message memory exhausted", func(e *Expect, o *sysapi.Output) { e.Limits.Calls.MemoryBytes = 2 << 20 }, VCalls},
		{"call charges not paid", func(e *Expect, o *sysapi.Output) { e.Limits.Calls.Reservation = cycles.New(1_000_000) }, VCycles},
		// Burns and calls stop at what the execution must keep (its fee, the
		// freezing limit): 1 000 100 - 50 - 10 - 1 101 is 998 939.
		{"spent below what it must keep", func(e *Expect, o *sysapi.Output) { e.Limits.Calls.Keep = cycles.New(998_940) }, VCycles},
		{"long callee", func(e *Expect, o *sysapi.Output) { o.Calls[0].Callee = make([]byte, 30) }, VCalls},
		{"callback beyond 32 bits", func(e *Expect, o *sysapi.Output) { o.Calls[0].OnReply.Fun = 1 << 32 }, VCalls},
		{"certified data 33 bytes", func(e *Expect, o *sysapi.Output) { o.CertifiedData = make([]byte, 33) }, VCertifiedData},
		{"certified data without flag", func(e *Expect, o *sysapi.Output) { o.CertifiedDataSet = false }, VCertifiedData},
		{"timer without flag", func(e *Expect, o *sysapi.Output) { o.GlobalTimerSet = false }, VTimer},
		{"globals count", func(e *Expect, o *sysapi.Output) { o.Globals = o.Globals[:1] }, VGlobals},
		{"globals type", func(e *Expect, o *sysapi.Output) { o.Globals[1].Type = state.GlobalI64 }, VGlobals},
		{"log flood", func(e *Expect, o *sysapi.Output) {
			o.Logs = make([]sysapi.LogLine, 6)
		}, VLogs},
		{"log line too long", func(e *Expect, o *sysapi.Output) { o.Logs[0].Text = strings.Repeat("x", 301) }, VLogs},
		{"log not utf8", func(e *Expect, o *sysapi.Output) { o.Logs[0].Text = "\xff" }, VLogs},
		{"query with state", func(e *Expect, o *sysapi.Output) { e.Context = sysapi.CtxNonReplicatedQuery }, VQueryState},
		{"trapped with state", func(e *Expect, o *sysapi.Output) { o.Trapped, o.TrapMessage = true, "x" }, VTrapState},
		{"trap message without trap", func(e *Expect, o *sysapi.Output) { o.TrapMessage = "x" }, VDecode},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e, o := testExpect(1), testOutput()
			tc.mod(e, o)
			wantViolation(t, ValidateOutput(e, o), tc.want)
		})
	}
	// Spending down to exactly what must be kept passes.
	e0 := testExpect(1)
	e0.Limits.Calls.Keep = cycles.New(998_939)
	if err := ValidateOutput(e0, testOutput()); err != nil {
		t.Fatalf("spent down to Keep: %v", err)
	}
	// A normalized query output and a trap pass.
	q := testOutput()
	q.Calls, q.CyclesSent = nil, cycles.Amount{}
	Normalize(sysapi.CtxNonReplicatedQuery, q)
	e := testExpect(1)
	e.Context = sysapi.CtxNonReplicatedQuery
	if err := ValidateOutput(e, q); err != nil {
		t.Fatalf("normalized query: %v", err)
	}
	// A composite query reports its memory (the host carries it to the
	// query's callbacks), but never cycles, certified data or timers.
	cq := testOutput()
	cq.Calls, cq.CyclesSent = nil, cycles.Amount{}
	Normalize(sysapi.CtxCompositeQuery, cq)
	e.Context = sysapi.CtxCompositeQuery
	if err := ValidateOutput(e, cq); err != nil || len(cq.Heap.Pages) == 0 {
		t.Fatalf("normalized composite query: %v", err)
	}
	cq.CertifiedDataSet, cq.CertifiedData = true, []byte{1}
	wantViolation(t, ValidateOutput(e, cq), VQueryState)
	// (Its debug_print of one byte cost CallOverhead + 100 + 1 instructions.)
	tr := &sysapi.Output{Instructions: sysapi.CallOverhead + 101, Trapped: true, TrapMessage: "boom", Logs: []sysapi.LogLine{{Text: "x"}}}
	if err := ValidateOutput(testExpect(1), tr); err != nil {
		t.Fatalf("trap: %v", err)
	}
}

func TestValidateCompiled(t *testing.T) {
	lim := engine.DefaultModuleLimits()
	good := func() *Compiled {
		return &Compiled{Info: engine.Info{Methods: map[string]engine.MethodKind{"a": engine.UpdateMethod}, NumGlobals: 1},
			GlobalTypes: []state.GlobalType{state.GlobalI32}, Artifact: []byte{1}}
	}
	if err := ValidateCompiled(lim, 100, 10, good()); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(c *Compiled){
		"too many methods": func(c *Compiled) {
			for i := 0; i <= lim.MaxMethods; i++ {
				c.Info.Methods[strings.Repeat("m", i%50)+string(rune('a'+i%26))+string(rune(i))] = engine.QueryMethod
			}
		},
		"names longer than module": func(c *Compiled) { c.Info.Methods[strings.Repeat("x", 100)] = engine.UpdateMethod },
		"name not utf8":            func(c *Compiled) { c.Info.Methods["\xff"] = engine.UpdateMethod },
		"bad kind":                 func(c *Compiled) { c.Info.Methods["b"] = engine.NoMethod },
		"candid too long":          func(c *Compiled) { c.Info.CandidService = strings.Repeat("s", 101) },
		"globals mismatch":         func(c *Compiled) { c.Info.NumGlobals = 2 },
		"empty artifact":           func(c *Compiled) { c.Artifact = nil },
		"big artifact":             func(c *Compiled) { c.Artifact = make([]byte, 11) },
	} {
		c := good()
		mod(c)
		if err := ValidateCompiled(lim, 100, 10, c); err == nil {
			t.Fatalf("%s: accepted", name)
		}
	}
	// Method names the engine would have refused (the IC's bound on their
	// sum), from a module large enough to hold them.
	c := good()
	c.Info.Methods[strings.Repeat("n", engine.MaxMethodNameBytes-1)] = engine.QueryMethod // and "a"
	if err := ValidateCompiled(lim, 1<<20, 10, c); err != nil {
		t.Fatalf("names of %d bytes: %v", engine.MaxMethodNameBytes, err)
	}
	c.Info.Methods["b"] = engine.QueryMethod
	if err := ValidateCompiled(lim, 1<<20, 10, c); err == nil {
		t.Fatalf("names of %d bytes: accepted", engine.MaxMethodNameBytes+1)
	}
}

// Log floods, replies to requests never made, and replies out of order.
func TestAwaitRules(t *testing.T) {
	t.Run("log flood", func(t *testing.T) {
		host, sb := pair(t)
		go func() {
			for i := 0; i < MaxLogsPerExec+5; i++ {
				if sb.SendLog(1, LogInfo, "spam %d", i) != nil {
					return
				}
			}
		}()
		_, err := host.AwaitOutput(testExpect(1), nil)
		wantViolation(t, err, VLogs)
	})
	t.Run("reply to a request never made", func(t *testing.T) {
		host, sb := pair(t)
		go sb.SendOutput(77, testOutput())
		_, err := host.AwaitOutput(testExpect(1), nil)
		wantViolation(t, err, VID)
	})
	t.Run("wrong kind", func(t *testing.T) {
		host, sb := pair(t)
		go sb.Send(&Msg{Kind: KindPong, ID: 1})
		_, err := host.AwaitOutput(testExpect(1), nil)
		wantViolation(t, err, VUnexpected)
	})
	t.Run("pages of another request", func(t *testing.T) {
		host, sb := pair(t)
		go func() {
			out := testOutput()
			sb.Send(&Msg{Kind: KindOutput, ID: 1, Body: EncodeOutput(out)})
			sb.SendPages(2, HeapMemory, out.Heap.Pages)
		}()
		_, err := host.AwaitOutput(testExpect(1), nil)
		wantViolation(t, err, VID)
	})
}

// A heap image generation belongs to a mapped, non-empty heap only.
func TestExecuteHeapImageGenerationOnlyWhenMapped(t *testing.T) {
	for name, q := range map[string]*ExecRequest{
		"inline heap":    {HeapSource: HeapInline, HasHeap: true, HeapSize: state.WasmPageSize, HasHeapImageGen: true, HeapImageGen: 3},
		"no heap":        {HeapSource: MemoryMapped, HasHeapImageGen: true, HeapImageGen: 3},
		"empty heap":     {HeapSource: MemoryMapped, HasHeap: true, HasHeapImageGen: true},
		"value, no flag": {HeapSource: MemoryMapped, HasHeap: true, HeapSize: state.WasmPageSize, HeapImageGen: 3},
	} {
		q.Input = testInput()
		if _, err := DecodeExecute(EncodeExecute(q)); err == nil || !strings.Contains(err.Error(), "heap image generation") {
			t.Errorf("%s: %v, want refused", name, err)
		}
	}
	ok := &ExecRequest{HeapSource: MemoryMapped, HasHeap: true, HeapSize: state.WasmPageSize, HasHeapImageGen: true, HeapImageGen: 3, Input: testInput()}
	if q, err := DecodeExecute(EncodeExecute(ok)); err != nil || !q.HasHeapImageGen || q.HeapImageGen != 3 {
		t.Fatalf("mapped heap with a generation: %+v, %v", q, err)
	}
}

// A mapped Execute must carry exactly the descriptors its header declares,
// each at least as long as the memory it stands for; otherwise it is
// refused and every descriptor received is closed.
func TestExecuteMappedDescriptors(t *testing.T) {
	host, sb := pair(t)
	heap := state.NewPageMap(state.WasmPageSize)
	_ = heap.SetPage(1, page(9))
	ro := heap.ReadOnlyFile()
	if ro == nil {
		t.Skip("no memfd images")
	}
	defer heap.Release()
	q := &ExecRequest{Module: [32]byte{1}, HeapSource: MemoryMapped, HasHeap: true, HeapSize: state.WasmPageSize,
		StableSize: state.WasmPageSize, Input: testInput()}
	before := openFDs(t)
	for _, tc := range []struct {
		name  string
		files []*os.File
		want  string
	}{
		{"one descriptor for two memories", []*os.File{ro}, "declares 2"},
		{"three descriptors for two memories", []*os.File{ro, ro, ro}, ""}, // more than MaxFDs: refused by Send
		{"a memory longer than its file", nil, "memory file of"},
	} {
		files := tc.files
		if files == nil {
			q2 := *q
			q2.HeapSize = 4 * state.WasmPageSize // the image holds one Wasm page
			if err := host.Send(&Msg{Kind: KindExecute, ID: 7, Body: EncodeExecute(&q2), Files: []*os.File{ro, ro}}); err != nil {
				t.Fatal(err)
			}
		} else if err := host.Send(&Msg{Kind: KindExecute, ID: 7, Body: EncodeExecute(q), Files: files}); err != nil {
			if tc.want == "" {
				continue
			}
			t.Fatal(err)
		} else if tc.want == "" {
			t.Fatalf("%s: sent", tc.name)
		}
		r, err := sb.NextRequest()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("%s: %+v, %v", tc.name, r, err)
		}
	}
	// The receiving side closed every descriptor it got.
	if after := openFDs(t); after != before {
		t.Fatalf("%d descriptors open before, %d after", before, after)
	}
}

// Environment variables cross to the sandbox bounded by the IC's limits:
// at the limits they arrive intact, beyond them the decoder refuses the
// request instead of allocating what it claims.
func TestEnvVarsBounded(t *testing.T) {
	at := testInput()
	at.EnvVars = nil
	for i := 0; i < sysapi.MaxEnvVars; i++ {
		at.EnvVars = append(at.EnvVars, sysapi.EnvVar{Name: fmt.Sprintf("%0*d", sysapi.MaxEnvVarName, i), Value: strings.Repeat("v", sysapi.MaxEnvVarValue)})
	}
	q, err := DecodeExecute(EncodeExecute(&ExecRequest{Input: at}))
	if err != nil {
		t.Fatalf("at the limits: %v", err)
	}
	if !reflect.DeepEqual(q.Input.EnvVars, at.EnvVars) {
		t.Fatal("environment variables changed in transit")
	}
	for name, in := range map[string][]sysapi.EnvVar{
		"too many":   append(slices.Clone(at.EnvVars), sysapi.EnvVar{Name: "x"}),
		"long name":  {{Name: strings.Repeat("n", sysapi.MaxEnvVarName+1)}},
		"long value": {{Name: "n", Value: strings.Repeat("v", sysapi.MaxEnvVarValue+1)}},
	} {
		bad := testInput()
		bad.EnvVars = in
		if _, err := DecodeExecute(EncodeExecute(&ExecRequest{Input: bad})); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}

// The data certificate and the root key a sandbox is given are bounded:
// at the limits they arrive intact, beyond them the request is refused, and
// neither may come without its flag.
func TestCertificationInputBounded(t *testing.T) {
	at := testInput()
	at.DataCertificate = bytes.Repeat([]byte{0xd9}, sysapi.MaxDataCertificate)
	at.RootKey = bytes.Repeat([]byte{0x30}, sysapi.MaxRootKey)
	q, err := DecodeExecute(EncodeExecute(&ExecRequest{Input: at}))
	if err != nil {
		t.Fatalf("at the limits: %v", err)
	}
	if !bytes.Equal(q.Input.DataCertificate, at.DataCertificate) || !bytes.Equal(q.Input.RootKey, at.RootKey) {
		t.Fatal("certificate or root key changed in transit")
	}
	for name, mod := range map[string]func(*sysapi.Input){
		"long certificate": func(in *sysapi.Input) { in.DataCertificate = make([]byte, sysapi.MaxDataCertificate+1) },
		"long root key":    func(in *sysapi.Input) { in.RootKey = make([]byte, sysapi.MaxRootKey+1) },
	} {
		bad := testInput()
		mod(bad)
		if _, err := DecodeExecute(EncodeExecute(&ExecRequest{Input: bad})); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
	// A root key without its flag: clear the flag byte of an encoding.
	in := testInput()
	in.RootKey = []byte{7, 7, 7}
	b := EncodeExecute(&ExecRequest{Input: in})
	i := bytes.Index(b, []byte{1, 3, 0, 0, 0, 0, 0, 0, 0, 7, 7, 7})
	if i < 0 {
		t.Fatal("root key not found in the encoding")
	}
	b[i] = 0
	if _, err := DecodeExecute(b); err == nil || !strings.Contains(err.Error(), "root key without the flag") {
		t.Fatalf("root key without the flag: %v", err)
	}
}

// A Conn's write buffer is only as large as the largest packet it sent
// (the host keeps a Conn per live sandbox: a full-size buffer each was
// 128 KiB per sandbox); what it sends is the same whatever the size.
func TestWriteBufferGrowsWithPackets(t *testing.T) {
	host, sb := pair(t)
	if cap(host.wbuf) != 0 {
		t.Fatalf("a new Conn holds a %d-byte write buffer", cap(host.wbuf))
	}
	errc := make(chan error, 1)
	go func() { errc <- host.Send(&Msg{Kind: KindReady, Body: EncodeReady(ModeCanister)}) }()
	if err := sb.AwaitReady(ModeCanister, nil); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if c := cap(host.wbuf); c != 4<<10 {
		t.Fatalf("after a small message the write buffer is %d bytes, want 4 KiB", c)
	}
	// A body over several packets, the first of them full: the buffer
	// grows to a packet, and every packet arrives intact.
	wasm := bytes.Repeat([]byte("cordon"), MaxPacket/3)
	lim := engine.DefaultModuleLimits()
	go func() {
		errc <- host.Send(&Msg{Kind: KindCompile, ID: 7, Body: EncodeCompile(&CompileRequest{Limits: lim, Wasm: wasm})})
	}()
	r, err := sb.NextRequest()
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if r.Kind != KindCompile || r.Compile == nil || !bytes.Equal(r.Compile.Wasm, wasm) {
		t.Fatalf("compile request: kind %s, %+v", r.Kind, r.Compile != nil)
	}
	if c := cap(host.wbuf); c != MaxPacket {
		t.Fatalf("write buffer %d bytes after full packets, want %d", c, MaxPacket)
	}
}

// A compiler sandbox's Compiled may claim as many methods as its body could
// hold (9 bytes each): the decoder must not size anything by that claim
// before the entries are read. A map made for 2 million methods is over
// 100 MiB; the body that claims them is 18 MB and fails at its first entry.
func TestDecodeCompiledDoesNotTrustTheMethodCount(t *testing.T) {
	const n = 2 << 20
	w := &writer{}
	for range 10 {
		w.bool(false)
	}
	w.str("")
	w.count(n)
	body := append(w.b, make([]byte, 9*n)...) // kind 0: refused at once
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := DecodeCompiled(body, engine.ModuleLimits{MaxMethods: math.MaxInt32, MaxGlobals: math.MaxInt32})
	runtime.ReadMemStats(&after)
	if err == nil {
		t.Fatal("a method of kind 0 accepted")
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<20 {
		t.Fatalf("decoding a claim of %d methods allocated %d bytes before refusing its first", n, alloc)
	}
}

// A compiler sandbox's Compiled may list real methods, as many as the body
// AwaitCompiled allows holds (up to the artifact limit, a GiB): their map
// costs about five times the body. The decoder refuses a count beyond the
// module limit before it reads an entry.
func TestDecodeCompiledMethodsWithinTheLimit(t *testing.T) {
	const n = 1 << 18
	w := &writer{}
	for range 11 {
		w.bool(false)
	}
	w.str("")
	w.count(n)
	for i := range n {
		w.u8(uint8(engine.UpdateMethod))
		w.str(string([]byte{byte(i), byte(i >> 8), byte(i >> 16)}))
	}
	w.count(0)
	w.count(0)
	w.bytes([]byte("artifact"))
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := DecodeCompiled(w.b, engine.DefaultModuleLimits())
	runtime.ReadMemStats(&after)
	wantViolation(t, err, VDecode)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<20 {
		t.Fatalf("decoding %d methods (a %d-byte body) allocated %d bytes before refusing them", n, len(w.b), alloc)
	}
}

// A compiler sandbox's Compiled may claim strings as long as its body,
// which AwaitCompiled lets be as large as the artifact limit (a GiB): a
// candid service beyond the IC's metadata bound, method names longer
// together than the module limit or the IC's bound on their sum, metadata names longer together than the
// metadata bound. The decoder refuses each before it copies the string
// that crosses its bound; before, it copied them all and only
// ValidateCompiled refused them afterwards.
func TestDecodeCompiledBoundsItsStrings(t *testing.T) {
	lim := engine.DefaultModuleLimits()
	lim.MaxBytes = 256 << 10
	big := strings.Repeat("a", 8<<20)
	answer := func(candid string, names []string, metadata []string) []byte {
		w := &writer{}
		for range 11 {
			w.bool(false)
		}
		w.str(candid)
		w.count(len(names))
		for _, n := range names {
			w.u8(uint8(engine.UpdateMethod))
			w.str(n)
		}
		w.count(0) // globals
		w.count(len(metadata))
		for _, n := range metadata {
			w.bool(true)
			w.str(n)
			w.bytes(nil)
		}
		w.bytes([]byte("artifact"))
		return w.b
	}
	near := strings.Repeat("m", 200<<10)    // under the module limit, two are over it
	mdName := strings.Repeat("n", 1500<<10) // under MaxMetadataBytes, two are over it
	for _, c := range []struct {
		what string
		body []byte
	}{
		{"a candid service of 8 MiB", answer(big, nil, nil)},
		{"a method name of 8 MiB", answer("", []string{big}, nil)},
		{"method names of 8 MiB together", answer("", []string{near, near + "2", big}, nil)},
		{"method names beyond the IC's bound on their sum", answer("", []string{strings.Repeat("a", 10_000), strings.Repeat("b", engine.MaxMethodNameBytes-10_000+1)}, nil)},
		{"metadata names of 11 MiB together", answer("", nil, []string{mdName, mdName + "2", big})},
	} {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		_, err := DecodeCompiled(c.body, lim)
		runtime.ReadMemStats(&after)
		wantViolation(t, err, VDecode)
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 4<<20 {
			t.Errorf("%s: %d bytes allocated before it was refused", c.what, alloc)
		}
	}
}

// An Output header may be as large as OutputCap (for an update, its calls'
// arguments: a GiB by default), and decoded entries cost more than their
// bytes: empty log lines (9 bytes, a 24-byte LogLine each) or bare calls
// filling it made the host allocate several times the body, and as much
// again growing the slices, before ValidateHeader counted them. Counts
// beyond what the request allows are refused as they are read.
func TestDecodeOutputCountsWithinTheRequest(t *testing.T) {
	const n = 1 << 18
	header := func(calls, globals, logs int) []byte {
		w := &writer{}
		w.u64(0)      // instructions
		w.bool(false) // trapped
		w.str("")
		w.u8(uint8(sysapi.NoResponse))
		w.bytes(nil)
		w.str("")
		w.bool(false)
		for range 3 {
			w.amount(cycles.Amount{})
		}
		w.count(calls)
		for range calls {
			w.bytes(nil)
			w.str("")
			w.bytes(nil)
			w.amount(cycles.Amount{})
			for range 4 {
				w.u64(0)
			}
			w.bool(false)
			w.u64(0)
			w.u64(0)
			w.u32(0)
		}
		w.bool(false)
		w.bytes(nil)
		w.bool(false)
		w.u64(0)
		for range 4 {
			w.u64(0)
		}
		w.count(globals)
		for range globals {
			w.u8(uint8(state.GlobalI32))
			w.u64(0)
		}
		w.count(logs)
		for range logs {
			w.bool(false)
			w.str("")
		}
		return w.b
	}
	exp := testExpect(1) // 10 calls, 5 log lines, 2 globals
	for _, c := range []struct {
		name string
		body []byte
		want ViolationKind
	}{
		{"calls", header(n, 0, 0), VCalls},
		{"globals", header(0, n, 0), VGlobals},
		{"log lines", header(0, 0, n), VLogs},
	} {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		_, err := DecodeOutput(c.body, exp)
		runtime.ReadMemStats(&after)
		wantViolation(t, err, c.want)
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<20 {
			t.Errorf("%s: decoding %d of them (a %d-byte body) allocated %d bytes before refusing them", c.name, n, len(c.body), alloc)
		}
	}
	// Within the request's counts, the same layout decodes.
	if _, err := DecodeOutput(header(exp.Limits.MaxOutgoing, len(exp.GlobalTypes), exp.Limits.MaxLogLines), exp); err != nil {
		t.Fatal(err)
	}
}
