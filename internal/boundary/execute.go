package boundary

import (
	"encoding/binary"
	"math"

	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// ExecRequest is the header of an Execute message. With HeapInline the
// memories follow as Pages packets: HeapPages heap pages, then StablePages
// stable pages. With MemoryMapped they are descriptors on the message.
// With MemoryLayered they are descriptors too, and the pages laid over
// their first HeapBase and StableBase bytes follow as with HeapInline.
type ExecRequest struct {
	Module     [32]byte // hash of the module the sandbox must have loaded
	RunStart   bool
	HeapSource uint8 // HeapInline or MemoryMapped
	HasHeap    bool  // false: the module's initial memory (engine.Request.Heap nil)
	HeapSize   uint64
	HeapPages  uint64
	// HeapImageGen, if HasHeapImageGen, is the generation of the mapped
	// heap's image (state.PageMap.ImageGeneration): the sandbox's kept
	// instance looks the image's extents up again only when it moved.
	HasHeapImageGen bool
	HeapImageGen    uint64
	HasGlobals      bool // false: the module's initial values
	Globals         []state.Global
	StableSize      uint64
	// StablePages is the number of stable pages that follow.
	StablePages uint64
	// HeapBase and StableBase are, with MemoryLayered, how many bytes of
	// each memory are its image's (whole pages, at most its size); 0
	// otherwise.
	HeapBase, StableBase uint64
	// Input is the System API input; its Stable field is not encoded (the
	// stable memory travels as pages).
	Input *sysapi.Input
}

// EncodeExecute encodes an ExecRequest header:
//
//	[32]byte module; bool run start; u8 heap source; bool has heap;
//	u64 heap size; u64 heap pages; bool has heap image generation, u64
//	heap image generation; bool has globals; u64 n, n × (u8 type,
//	u64 bits); u64 stable size; u64 stable pages; u64 heap base; u64
//	stable base; then the input:
//	u8 context; str entry; u64 callback fun; u64 callback env; bool memory64;
//	bytes canister id; bytes subnet id; bytes caller; bytes arg; str method
//	name; u64 n, n × bytes controller; u64 n, n × (str name, str value);
//	u128 balance, cycles available, cycles refunded (hi, lo); u32 reject
//	code; str reject message; u8 status; u64 version, time, deadline, global
//	timer; bool has data certificate, bytes data certificate (at most
//	sysapi.MaxDataCertificate); bool has root key, bytes root key (at most
//	sysapi.MaxRootKey); u64 call
//	context instructions; bool responded; u64 × 8 limits (instructions, heap bytes, stable
//	bytes, reply bytes, call arg bytes, max outgoing, debug print bytes, max
//	log lines); bool has call limits, then u64 fee, u64 byte fee, u128
//	reservation, u128 keep, u64 outstanding, u64 memory bytes, u64 response
//	bytes, u64 queue capacity, u64 n, n × (bytes callee, u64 used).
func EncodeExecute(q *ExecRequest) []byte {
	in := q.Input
	w := &writer{b: make([]byte, 0, 512+len(in.Arg)+len(in.DataCertificate)+len(in.RootKey))}
	w.b = append(w.b, q.Module[:]...)
	w.bool(q.RunStart)
	w.u8(q.HeapSource)
	w.bool(q.HasHeap)
	w.u64(q.HeapSize)
	w.u64(q.HeapPages)
	w.bool(q.HasHeapImageGen)
	w.u64(q.HeapImageGen)
	w.bool(q.HasGlobals)
	writeGlobals(w, q.Globals)
	w.u64(q.StableSize)
	w.u64(q.StablePages)
	w.u64(q.HeapBase)
	w.u64(q.StableBase)

	w.u8(uint8(in.Context))
	w.str(in.Entry)
	w.u64(in.Callback.Fun)
	w.u64(in.Callback.Env)
	w.bool(in.Memory64)
	w.bytes(in.CanisterID)
	w.bytes(in.SubnetID)
	w.bytes(in.Caller)
	w.bytes(in.Arg)
	w.str(in.MethodName)
	w.count(len(in.Controllers))
	for _, c := range in.Controllers {
		w.bytes(c)
	}
	w.count(len(in.EnvVars))
	for _, v := range in.EnvVars {
		w.str(v.Name)
		w.str(v.Value)
	}
	w.amount(in.Balance)
	w.amount(in.CyclesAvailable)
	w.amount(in.CyclesRefunded)
	w.u32(in.RejectCode)
	w.str(in.RejectMessage)
	w.u8(uint8(in.Status))
	w.u64(in.Version)
	w.u64(in.Time)
	w.u64(in.Deadline)
	w.u64(in.GlobalTimer)
	w.bool(in.DataCertificate != nil)
	w.bytes(in.DataCertificate)
	w.bool(in.RootKey != nil)
	w.bytes(in.RootKey)
	w.u64(in.CallContextInstr)
	w.bool(in.Responded)
	l := &in.Limits
	w.u64(l.Instructions)
	w.u64(l.HeapBytes)
	w.u64(l.StableBytes)
	w.u64(l.ReplyBytes)
	w.u64(l.CallArgBytes)
	w.u64(nonNeg(l.MaxOutgoing))
	w.u64(nonNeg(l.DebugPrintBytes))
	w.u64(nonNeg(l.MaxLogLines))
	w.u64(l.HeapDirtyPages)
	w.u64(l.StableDirtyPages)
	w.bool(l.Calls != nil)
	if c := l.Calls; c != nil {
		w.u64(c.Fee)
		w.u64(c.ByteFee)
		w.amount(c.Reservation)
		w.amount(c.Keep)
		w.u64(nonNeg(c.Outstanding))
		w.u64(c.MemoryBytes)
		w.u64(c.ResponseBytes)
		w.u64(nonNeg(c.QueueCapacity))
		w.count(len(c.Queues))
		for _, q := range c.Queues {
			w.bytes(q.Callee)
			w.u64(nonNeg(q.Used))
		}
	}
	return w.b
}

func writeGlobals(w *writer, gs []state.Global) {
	w.count(len(gs))
	for _, g := range gs {
		w.u8(uint8(g.Type))
		w.u64(g.Bits)
	}
}

func readGlobals(r *reader) []state.Global {
	return readGlobalsOf(r, r.count(math.MaxInt32, 9, "globals"))
}

// readGlobalsOf reads n globals, whose count was read.
func readGlobalsOf(r *reader, n int) []state.Global {
	if n == 0 {
		return nil
	}
	gs := make([]state.Global, 0, n)
	for i := 0; i < n && r.err == nil; i++ {
		t := state.GlobalType(r.u8("global type"))
		if t < state.GlobalI32 || t > state.GlobalF64 {
			r.fail("global %d: type %d", i, t)
		}
		gs = append(gs, state.Global{Type: t, Bits: r.u64("global bits")})
	}
	return gs
}

// DecodeExecute decodes an ExecRequest header (in the sandbox).
func DecodeExecute(b []byte) (*ExecRequest, error) {
	r := &reader{b: b}
	q := &ExecRequest{Input: &sysapi.Input{}}
	copy(q.Module[:], r.take(32, "module"))
	q.RunStart = r.bool("run start")
	q.HeapSource = r.u8("heap source")
	if r.err == nil && q.HeapSource != HeapInline && q.HeapSource != MemoryMapped && q.HeapSource != MemoryLayered {
		r.fail("heap source %d", q.HeapSource)
	}
	q.HasHeap = r.bool("has heap")
	q.HeapSize = r.u64("heap size")
	q.HeapPages = r.u64("heap pages")
	q.HasHeapImageGen = r.bool("has heap image generation")
	q.HeapImageGen = r.u64("heap image generation")
	q.HasGlobals = r.bool("has globals")
	q.Globals = readGlobals(r)
	if q.HasGlobals && q.Globals == nil {
		q.Globals = []state.Global{}
	}
	if !q.HasGlobals && len(q.Globals) != 0 {
		r.fail("globals without the flag")
	}
	q.StableSize = r.u64("stable size")
	q.StablePages = r.u64("stable pages")
	q.HeapBase = r.u64("heap base")
	q.StableBase = r.u64("stable base")

	in := q.Input
	in.Context = sysapi.Context(r.u8("context"))
	if r.err == nil && !in.Context.Valid() {
		r.fail("context %d", in.Context)
	}
	in.Entry = r.str(math.MaxUint64, "entry")
	in.Callback.Fun = r.u64("callback")
	in.Callback.Env = r.u64("callback env")
	in.Memory64 = r.bool("memory64")
	in.CanisterID = r.bytes(math.MaxUint64, "canister id")
	in.SubnetID = r.bytes(math.MaxUint64, "subnet id")
	in.Caller = r.bytes(math.MaxUint64, "caller")
	in.Arg = r.bytes(math.MaxUint64, "arg")
	in.MethodName = r.str(math.MaxUint64, "method name")
	n := r.count(math.MaxInt32, 8, "controllers")
	for i := 0; i < n && r.err == nil; i++ {
		in.Controllers = append(in.Controllers, r.bytes(math.MaxUint64, "controller"))
	}
	n = r.count(sysapi.MaxEnvVars, 16, "env vars")
	for i := 0; i < n && r.err == nil; i++ {
		in.EnvVars = append(in.EnvVars, sysapi.EnvVar{Name: r.str(sysapi.MaxEnvVarName, "env name"), Value: r.str(sysapi.MaxEnvVarValue, "env value")})
	}
	in.Balance = r.amount("balance")
	in.CyclesAvailable = r.amount("cycles available")
	in.CyclesRefunded = r.amount("cycles refunded")
	in.RejectCode = r.u32("reject code")
	in.RejectMessage = r.str(math.MaxUint64, "reject message")
	in.Status = sysapi.Status(r.u8("status"))
	if r.err == nil && (in.Status < sysapi.StatusRunning || in.Status > sysapi.StatusStopped) {
		r.fail("status %d", in.Status)
	}
	in.Version = r.u64("version")
	in.Time = r.u64("time")
	in.Deadline = r.u64("deadline")
	in.GlobalTimer = r.u64("global timer")
	hasCert := r.bool("has certificate")
	cert := r.bytes(sysapi.MaxDataCertificate, "certificate")
	if hasCert {
		in.DataCertificate = cert
	} else if len(cert) != 0 {
		r.fail("data certificate without the flag")
	}
	hasRootKey := r.bool("has root key")
	rootKey := r.bytes(sysapi.MaxRootKey, "root key")
	if hasRootKey {
		in.RootKey = rootKey
	} else if len(rootKey) != 0 {
		r.fail("root key without the flag")
	}
	in.CallContextInstr = r.u64("call context instructions")
	in.Responded = r.bool("responded")
	l := &in.Limits
	l.Instructions = r.u64("instruction limit")
	l.HeapBytes = r.u64("heap limit")
	l.StableBytes = r.u64("stable limit")
	l.ReplyBytes = r.u64("reply limit")
	l.CallArgBytes = r.u64("call arg limit")
	intLimit := func(what string) int {
		v := r.u64(what)
		if v > math.MaxInt32 {
			r.fail("%s: %d", what, v)
			return 0
		}
		return int(v)
	}
	l.MaxOutgoing = intLimit("max outgoing")
	l.DebugPrintBytes = intLimit("debug print bytes")
	l.MaxLogLines = intLimit("max log lines")
	l.HeapDirtyPages = r.u64("heap dirty page limit")
	l.StableDirtyPages = r.u64("stable dirty page limit")
	if r.bool("has call limits") {
		c := &sysapi.CallLimits{}
		c.Fee = r.u64("call fee")
		c.ByteFee = r.u64("call byte fee")
		c.Reservation = r.amount("call reservation")
		c.Keep = r.amount("call keep")
		c.Outstanding = intLimit("outstanding calls")
		c.MemoryBytes = r.u64("message memory")
		c.ResponseBytes = r.u64("response bytes")
		c.QueueCapacity = intLimit("queue capacity")
		n := r.count(math.MaxInt32, 16, "queues")
		for i := 0; i < n && r.err == nil; i++ {
			c.Queues = append(c.Queues, sysapi.QueueUse{Callee: r.bytes(math.MaxUint64, "queue callee"), Used: intLimit("queue used")})
		}
		l.Calls = c
	}
	if err := r.done("execute"); err != nil {
		return nil, err
	}
	if !q.HasHeap && (q.HeapSize != 0 || q.HeapPages != 0) {
		return nil, violation(VDecode, "execute: heap pages without a heap")
	}
	if q.HeapPages > pages4K(q.HeapSize) || q.StablePages > pages4K(q.StableSize) {
		return nil, violation(VDecode, "execute: more pages than the memory holds")
	}
	if q.HeapSource == MemoryMapped && (q.HeapPages != 0 || q.StablePages != 0) {
		return nil, violation(VDecode, "execute: pages with mapped memories")
	}
	if q.HeapSource != MemoryLayered && (q.HeapBase != 0 || q.StableBase != 0) {
		return nil, violation(VDecode, "execute: image bases without layered memories")
	}
	if q.HeapBase > q.HeapSize || q.StableBase > q.StableSize || q.HeapBase%state.PageSize != 0 || q.StableBase%state.PageSize != 0 {
		return nil, violation(VDecode, "execute: image bases %d and %d for memories of %d and %d bytes", q.HeapBase, q.StableBase, q.HeapSize, q.StableSize)
	}
	if (q.HasHeapImageGen || q.HeapImageGen != 0) && (q.HeapSource != MemoryMapped || !q.HasHeap || q.HeapSize == 0 || !q.HasHeapImageGen) {
		return nil, violation(VDecode, "execute: a heap image generation without a mapped heap")
	}
	return q, nil
}

// Descriptors returns how many descriptors an Execute request carries.
func (q *ExecRequest) Descriptors() int {
	n := 0
	if q.HeapSource == MemoryMapped || q.HeapSource == MemoryLayered {
		// An empty memory has no descriptor.
		if q.HasHeap && q.HeapSize > 0 {
			n++
		}
		if q.StableSize > 0 {
			n++
		}
	}
	return n
}

// OutputHeader is an Output message: an execution's result without the
// memory pages, which follow as Pages packets (HeapPages, then StablePages).
type OutputHeader struct {
	Out         *sysapi.Output // Heap.Pages and Stable.Pages are empty
	HeapPages   uint64
	StablePages uint64
}

// EncodeOutput encodes the header of an output (pages are sent separately):
//
//	u64 instructions; bool trapped; str trap message; u8 response; bytes
//	reply; str reject message; bool accepted; u128 accepted, burned, sent;
//	u64 n, n × call (bytes callee, str method, bytes arg, u128 cycles, u64 ×2
//	on reply, u64 ×2 on reject, bool has cleanup, u64 ×2 cleanup, u32
//	timeout); bool certified data set, bytes certified data; bool timer set,
//	u64 timer; u64 heap size, u64 heap pages; u64 stable size, u64 stable
//	pages; u64 n, n × (u8 type, u64 bits) globals; u64 n, n × (bool
//	truncated, str text) logs.
func EncodeOutput(out *sysapi.Output) []byte {
	return encodeOutput(out, uint64(len(out.Heap.Pages)), uint64(len(out.Stable.Pages)))
}

// EncodeOutputHeader encodes a decoded header again (with its page counts).
func EncodeOutputHeader(h *OutputHeader) []byte {
	return encodeOutput(h.Out, h.HeapPages, h.StablePages)
}

func encodeOutput(out *sysapi.Output, heapPages, stablePages uint64) []byte {
	w := &writer{b: make([]byte, 0, 256+len(out.Reply))}
	w.u64(out.Instructions)
	w.bool(out.Trapped)
	w.str(out.TrapMessage)
	w.u8(uint8(out.Response))
	w.bytes(out.Reply)
	w.str(out.RejectMessage)
	w.bool(out.Accepted)
	w.amount(out.CyclesAccepted)
	w.amount(out.CyclesBurned)
	w.amount(out.CyclesSent)
	w.count(len(out.Calls))
	for i := range out.Calls {
		c := &out.Calls[i]
		w.bytes(c.Callee)
		w.str(c.Method)
		w.bytes(c.Arg)
		w.amount(c.Cycles)
		w.u64(c.OnReply.Fun)
		w.u64(c.OnReply.Env)
		w.u64(c.OnReject.Fun)
		w.u64(c.OnReject.Env)
		w.bool(c.OnCleanup != nil)
		var cl sysapi.Callback
		if c.OnCleanup != nil {
			cl = *c.OnCleanup
		}
		w.u64(cl.Fun)
		w.u64(cl.Env)
		w.u32(c.Timeout)
	}
	w.bool(out.CertifiedDataSet)
	w.bytes(out.CertifiedData)
	w.bool(out.GlobalTimerSet)
	w.u64(out.GlobalTimer)
	w.u64(out.Heap.Size)
	w.u64(heapPages)
	w.u64(out.Stable.Size)
	w.u64(stablePages)
	writeGlobals(w, out.Globals)
	w.count(len(out.Logs))
	for _, l := range out.Logs {
		w.bool(l.Truncated)
		w.str(l.Text)
	}
	return w.b
}

const minCallSize = 8 + 8 + 8 + 16 + 16 + 16 + 1 + 16 + 4

// DecodeOutput decodes an Output header answering exp structurally. Its
// calls, log lines and globals are refused as soon as their count is read
// if it exceeds what exp allows (as ValidateHeader would refuse them), not
// after they are decoded: the body may be as large as OutputCap (a GiB for
// an update, its calls' arguments), and decoded entries cost more than
// their bytes (an empty log line, 9 bytes, is a 24-byte LogLine; a call,
// 109 bytes, some 190).
func DecodeOutput(b []byte, exp *Expect) (*OutputHeader, error) {
	r := &reader{b: b}
	out := &sysapi.Output{}
	h := &OutputHeader{Out: out}
	out.Instructions = r.u64("instructions")
	out.Trapped = r.bool("trapped")
	out.TrapMessage = r.str(MaxTrapMessage, "trap message")
	out.Response = sysapi.ResponseKind(r.u8("response"))
	if r.err == nil && out.Response > sysapi.Rejected {
		r.fail("response kind %d", out.Response)
	}
	out.Reply = r.bytes(math.MaxUint64, "reply")
	if len(out.Reply) == 0 {
		out.Reply = nil
	}
	if out.Response == sysapi.Replied && out.Reply == nil {
		out.Reply = []byte{}
	}
	out.RejectMessage = r.str(math.MaxUint64, "reject message")
	out.Accepted = r.bool("accepted")
	out.CyclesAccepted = r.amount("cycles accepted")
	out.CyclesBurned = r.amount("cycles burned")
	out.CyclesSent = r.amount("cycles sent")
	n := r.count(math.MaxInt32, minCallSize, "calls")
	if most := nonNeg(exp.Limits.MaxOutgoing); uint64(n) > most {
		return nil, violation(VCalls, "%d calls, at most %d", n, most)
	}
	for i := 0; i < n && r.err == nil; i++ {
		c := sysapi.Call{
			Callee: r.bytes(math.MaxUint64, "callee"),
			Method: r.str(math.MaxUint64, "method"),
			Arg:    r.bytes(math.MaxUint64, "call arg"),
			Cycles: r.amount("call cycles"),
		}
		c.OnReply = sysapi.Callback{Fun: r.u64("on reply"), Env: r.u64("on reply env")}
		c.OnReject = sysapi.Callback{Fun: r.u64("on reject"), Env: r.u64("on reject env")}
		hasCleanup := r.bool("has cleanup")
		cl := sysapi.Callback{Fun: r.u64("cleanup"), Env: r.u64("cleanup env")}
		if hasCleanup {
			c.OnCleanup = &cl
		} else if cl != (sysapi.Callback{}) {
			r.fail("call %d: cleanup callback without the flag", i)
		}
		c.Timeout = r.u32("timeout")
		out.Calls = append(out.Calls, c)
	}
	out.CertifiedDataSet = r.bool("certified data set")
	out.CertifiedData = r.bytes(math.MaxUint64, "certified data")
	if out.CertifiedDataSet && out.CertifiedData == nil {
		out.CertifiedData = []byte{}
	}
	out.GlobalTimerSet = r.bool("timer set")
	out.GlobalTimer = r.u64("timer")
	out.Heap.Size = r.u64("heap size")
	h.HeapPages = r.u64("heap pages")
	out.Stable.Size = r.u64("stable size")
	h.StablePages = r.u64("stable pages")
	n = r.count(math.MaxInt32, 9, "globals")
	if n > len(exp.GlobalTypes) {
		return nil, violation(VGlobals, "%d globals reported, the module has %d", n, len(exp.GlobalTypes))
	}
	out.Globals = readGlobalsOf(r, n)
	n = r.count(math.MaxInt32, 9, "logs")
	if most := nonNeg(exp.Limits.MaxLogLines); uint64(n) > most {
		return nil, violation(VLogs, "%d log lines, at most %d", n, most)
	}
	for i := 0; i < n && r.err == nil; i++ {
		tr := r.bool("truncated")
		out.Logs = append(out.Logs, sysapi.LogLine{Truncated: tr, Text: r.str(math.MaxUint64, "log text")})
	}
	if err := r.done("output"); err != nil {
		return nil, err
	}
	return h, nil
}

// pages4K is the number of 4 KiB pages a memory of size bytes spans.
func pages4K(size uint64) uint64 {
	return size/state.PageSize + boolU64(size%state.PageSize != 0)
}

func boolU64(v bool) uint64 {
	if v {
		return 1
	}
	return 0
}

// ---- Pages -------------------------------------------------------------------

const pageEntry = 8 + state.PageSize

// PagesPerPacket is how many pages one Pages packet carries at most.
const PagesPerPacket = (MaxPacket - HeaderSize - 5) / pageEntry

// SendPages sends pages (sorted, no duplicates) of one memory as Pages
// packets: u8 memory, u32 count, count × (u64 index, 4096 bytes).
func (c *Conn) SendPages(id uint64, mem Memory, pages []state.DirtyPage) error {
	for len(pages) > 0 {
		n := min(len(pages), PagesPerPacket)
		b := c.packet(HeaderSize + 5 + n*pageEntry)
		putHeader(b, KindPages, 0, id, uint64(len(b)-HeaderSize))
		b[HeaderSize] = byte(mem)
		binary.LittleEndian.PutUint32(b[HeaderSize+1:], uint32(n))
		off := HeaderSize + 5
		for _, p := range pages[:n] {
			binary.LittleEndian.PutUint64(b[off:], p.Index)
			copy(b[off+8:off+pageEntry], p.Data[:])
			off += pageEntry
		}
		if err := c.write(b, nil); err != nil {
			return err
		}
		pages = pages[n:]
	}
	return nil
}

// PagesOf lists a page map's stored pages, for SendPages.
func PagesOf(m *state.PageMap) []state.DirtyPage {
	idx := m.StoredPages()
	out := make([]state.DirtyPage, len(idx))
	for i, n := range idx {
		out[i] = state.DirtyPage{Index: n, Data: m.Page(n)}
	}
	return out
}

// RecvPages receives exactly count pages of mem for request id, checking as
// they arrive that every index is below numPages and strictly greater than
// the previous one. The caller has checked count ≤ numPages. Only Pages
// packets may arrive until the stream is complete.
func (c *Conn) RecvPages(id uint64, mem Memory, count, numPages uint64, emit func(state.DirtyPage) error) error {
	return c.recvPages(id, mem, count, numPages, nil, emit)
}

// recvPages is RecvPages with the host's waits for the pages counted
// against w (PageWait; nil: the connection's deadline alone).
func (c *Conn) recvPages(id uint64, mem Memory, count, numPages uint64, w *PageWait, emit func(state.DirtyPage) error) error {
	if count > numPages {
		return violation(VMemory, "%d %s pages announced for a memory of %d pages", count, mem, numPages)
	}
	var got uint64
	next := uint64(0) // smallest acceptable index
	for got < count {
		p, err := c.readPaced(w)
		if err != nil {
			if err == ErrClosed {
				return violation(VFraming, "connection closed after %d of %d %s pages", got, count, mem)
			}
			return err
		}
		if len(p.files) > 0 {
			for _, f := range p.files {
				f.Close()
			}
			return violation(VDescriptors, "descriptors on a pages packet")
		}
		if p.kind != KindPages {
			return violation(VUnexpected, "%s packet while %d of %d %s pages are missing", p.kind, count-got, count, mem)
		}
		if p.id != id {
			return violation(VID, "pages for request %d during request %d", p.id, id)
		}
		d := p.data
		if p.length != uint64(len(d)) || len(d) < 5 {
			return violation(VFraming, "pages packet of %d bytes declares %d", len(d), p.length)
		}
		if Memory(d[0]) != mem {
			return violation(VMemory, "%s pages where %s pages were due", Memory(d[0]), mem)
		}
		n := uint64(binary.LittleEndian.Uint32(d[1:]))
		if n == 0 || n > count-got {
			return violation(VMemory, "pages packet with %d pages, %d remaining", n, count-got)
		}
		if uint64(len(d)-5) != n*pageEntry {
			return violation(VFraming, "pages packet of %d bytes for %d pages", len(d), n)
		}
		d = d[5:]
		for i := uint64(0); i < n; i++ {
			idx := binary.LittleEndian.Uint64(d)
			if idx >= numPages {
				return violation(VMemory, "%s page %d outside a memory of %d pages", mem, idx, numPages)
			}
			if idx < next {
				return violation(VMemory, "%s page %d out of order or duplicated", mem, idx)
			}
			next = idx + 1
			pg := new(state.Page)
			copy(pg[:], d[8:pageEntry])
			if err := emit(state.DirtyPage{Index: idx, Data: pg}); err != nil {
				return err
			}
			d = d[pageEntry:]
		}
		got += n
		if w != nil && w.AfterPacket != nil {
			w.AfterPacket()
		}
	}
	return nil
}
