package boundary

import (
	"fmt"
	"math"
	"os"
	"sync/atomic"

	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// ---- host side -------------------------------------------------------------

// LogFunc receives a sandbox's diagnostic lines.
type LogFunc func(LogLine)

var (
	logLimit   = Limit{MaxBody: 9 + MaxLogText}
	errorLimit = Limit{MaxBody: 9 + MaxErrorText}
)

// await receives the answer to request id: Log lines (at most
// MaxLogsPerExec, passed to onLog) until a message of another accepted kind,
// which must carry id. An Error answer is returned as *RemoteError.
func (c *Conn) await(id uint64, accept Accept, onLog LogFunc) (*Msg, error) {
	accept[KindLog] = logLimit
	accept[KindError] = errorLimit
	logs := 0
	for {
		m, err := c.Recv(accept)
		if err != nil {
			return nil, err
		}
		switch {
		case m.Kind == KindLog:
			if m.ID != id && m.ID != 0 {
				return nil, violation(VID, "log line for request %d during request %d", m.ID, id)
			}
			if logs++; logs > MaxLogsPerExec {
				return nil, violation(VLogs, "more than %d log messages for one request", MaxLogsPerExec)
			}
			l, err := DecodeLog(m.Body)
			if err != nil {
				return nil, err
			}
			if onLog != nil {
				onLog(l)
			}
			continue
		case m.ID != id:
			m.CloseFiles()
			return nil, violation(VID, "%s for request %d during request %d", m.Kind, m.ID, id)
		case m.Kind == KindError:
			e, err := DecodeError(m.Body)
			if err != nil {
				return nil, err
			}
			return nil, e
		}
		return m, nil
	}
}

// AwaitReady waits for a new sandbox's Ready and checks its version and mode.
func (c *Conn) AwaitReady(mode Mode, onLog LogFunc) error {
	m, err := c.await(0, Accept{KindReady: {MaxBody: 5}}, onLog)
	if err != nil {
		return err
	}
	v, got, err := DecodeReady(m.Body)
	if err != nil {
		return err
	}
	if v != Version || got != mode {
		return violation(VUnexpected, "sandbox speaks version %d in %s mode, want version %d in %s mode", v, got, Version, mode)
	}
	return nil
}

// AwaitCompiled waits for the answer to Compile request id and validates it.
func (c *Conn) AwaitCompiled(id uint64, lim engine.ModuleLimits, wasmSize int, maxArtifact uint64, onLog LogFunc) (*Compiled, error) {
	// Flags, candid service, methods (each kind + length + name), global
	// types, artifact: all bounded by the module size and maxArtifact.
	capBytes := satAdd(satAdd(satMul(uint64(wasmSize), 2), satMul(nonNeg(lim.MaxMethods), 9)),
		satAdd(nonNeg(lim.MaxGlobals), satAdd(maxArtifact, 64)))
	m, err := c.await(id, Accept{KindCompiled: {MaxBody: capBytes}}, onLog)
	if err != nil {
		return nil, err
	}
	comp, err := DecodeCompiled(m.Body, lim)
	if err != nil {
		return nil, err
	}
	if err := ValidateCompiled(lim, wasmSize, maxArtifact, comp); err != nil {
		return nil, err
	}
	return comp, nil
}

// AwaitHash waits for a Loaded (or Pong-like hash echo) answer to request id.
func (c *Conn) AwaitLoaded(id uint64, hash [32]byte, onLog LogFunc) error {
	m, err := c.await(id, Accept{KindLoaded: {MaxBody: 32}}, onLog)
	if err != nil {
		return err
	}
	h, err := DecodeHash(m.Body)
	if err != nil {
		return err
	}
	if h != hash {
		return violation(VUnexpected, "loaded module %x, asked for %x", h[:8], hash[:8])
	}
	return nil
}

// AwaitPong waits for the Pong answering Ping id.
func (c *Conn) AwaitPong(id uint64, onLog LogFunc) error {
	_, err := c.await(id, Accept{KindPong: {MaxBody: 0}}, onLog)
	return err
}

// OutputCap is the largest Output header a valid answer to exp can have,
// so a larger one is refused (VSize) before any of it is buffered: the
// fixed fields, a trap message and the debug_print lines (every context may
// trap and print), and only what exp's context can produce besides: one
// reply or reject message (never both) where msg_reply is allowed, calls
// where call_perform is, the module's globals where the context reports
// memory (ReportsMemory). A plain query's answer is thus bounded by its
// reply and logs, not by MaxOutgoing × CallArgBytes. Memory pages are not
// part of it: they are streamed, and RecvPages bounds them by the sizes
// the header declared and ValidateHeader checked against the context.
func OutputCap(exp *Expect) uint64 {
	l := &exp.Limits
	perLog := satAdd(9, satMul(nonNeg(l.DebugPrintBytes), 3))
	c := uint64(outputFixed) + MaxTrapMessage
	c = satAdd(c, satMul(nonNeg(l.MaxLogLines), perLog))
	if allowed("msg_reply", exp.Context) {
		c = satAdd(c, l.ReplyBytes)
	}
	if allowed("call_perform", exp.Context) {
		perCall := satAdd(minCallSize+MaxPrincipalBytes+MaxMethodNameBytes, l.CallArgBytes)
		c = satAdd(c, satMul(nonNeg(l.MaxOutgoing), perCall))
	}
	if ReportsMemory(exp.Context) {
		c = satAdd(c, satMul(uint64(len(exp.GlobalTypes)), 9))
	}
	return min(c, math.MaxInt32*4) // 8 GiB: no request needs more
}

// outputFixed is room for an Output header's fixed fields (counts, flags,
// amounts, sizes, length prefixes, up to MaxCertifiedData of certified
// data): about 250 bytes, rounded up.
const outputFixed = 4096

// AwaitOutput waits for the answer to execution exp.ID, validates it, and
// receives its pages (validated as they arrive). Only a fully valid output
// is returned.
func (c *Conn) AwaitOutput(exp *Expect, onLog LogFunc) (*sysapi.Output, error) {
	m, err := c.await(exp.ID, Accept{KindOutput: {MaxBody: OutputCap(exp)}}, onLog)
	if err != nil {
		return nil, err
	}
	return c.outputOf(exp, m)
}

// outputOf decodes and validates Output message m answering exp, then
// receives and validates its pages.
func (c *Conn) outputOf(exp *Expect, m *Msg) (*sysapi.Output, error) {
	h, err := DecodeOutput(m.Body, exp)
	if err != nil {
		return nil, err
	}
	if err := ValidateHeader(exp, h); err != nil {
		return nil, err
	}
	out := h.Out
	if pages := satAdd(h.HeapPages, h.StablePages); pages > 0 && exp.Reserve != nil {
		if err := exp.Reserve(satMul(pages, state.PageSize)); err != nil {
			// Read and dropped, still validated: the connection stays in
			// step and the sandbox is not blamed for the host's refusal.
			drop := func(state.DirtyPage) error { return nil }
			if err := c.recvPages(exp.ID, HeapMemory, h.HeapPages, pages4K(out.Heap.Size), exp.PageWait, drop); err != nil {
				return nil, err
			}
			if err := c.recvPages(exp.ID, StableMemory, h.StablePages, pages4K(out.Stable.Size), exp.PageWait, drop); err != nil {
				return nil, err
			}
			return nil, &ReserveError{Err: err}
		}
	}
	if err := c.recvPages(exp.ID, HeapMemory, h.HeapPages, pages4K(out.Heap.Size), exp.PageWait, func(p state.DirtyPage) error {
		out.Heap.Pages = append(out.Heap.Pages, p)
		return nil
	}); err != nil {
		return nil, err
	}
	if err := c.recvPages(exp.ID, StableMemory, h.StablePages, pages4K(out.Stable.Size), exp.PageWait, func(p state.DirtyPage) error {
		out.Stable.Pages = append(out.Stable.Pages, p)
		return nil
	}); err != nil {
		return nil, err
	}
	return out, nil
}

// SendExecute sends an Execute request. heap may be nil (the module's
// initial memory); q's memory fields are ignored and taken from heap and
// stable. When both memories have images (state.PageMap.ReadOnlyFile), their
// read-only descriptors travel with the request and nothing is copied
// (MemoryMapped). When both share images they differ from (clones of
// backed page maps: a composite query's frame), the images travel the same
// way with the pages laid over them (MemoryLayered), so a frame costs the
// pages it changed, not its memories' size. Otherwise their stored pages
// follow (HeapInline).
func (c *Conn) SendExecute(id uint64, req *ExecRequest, heap, stable *state.PageMap) error {
	q := *req
	q.HasHeap = heap != nil
	q.HeapSize, q.HeapPages, q.HeapBase = heap.Size(), 0, 0
	q.StableSize, q.StablePages, q.StableBase = stable.Size(), 0, 0
	q.HasHeapImageGen, q.HeapImageGen = false, 0
	var files []*os.File
	mapped := true
	if q.HeapSize > 0 {
		f := heap.ReadOnlyFile()
		mapped = mapped && f != nil
		files = append(files, f)
	}
	if q.StableSize > 0 {
		f := stable.ReadOnlyFile()
		mapped = mapped && f != nil
		files = append(files, f)
	}
	if mapped {
		q.HeapSource = MemoryMapped
		if q.HeapSize > 0 {
			q.HeapImageGen, q.HasHeapImageGen = heap.ImageGeneration()
			if !q.HasHeapImageGen {
				q.HeapImageGen = 0
			}
		}
		return c.Send(&Msg{Kind: KindExecute, ID: id, Body: EncodeExecute(&q), Files: files})
	}
	var heapPages, stablePages []state.DirtyPage
	if hl, sl, ok := layersOf(heap, stable); ok {
		q.HeapSource = MemoryLayered
		files = files[:0]
		if q.HeapSize > 0 {
			files = append(files, hl.File)
			q.HeapBase, heapPages = hl.Base, hl.Pages
		}
		if q.StableSize > 0 {
			files = append(files, sl.File)
			q.StableBase, stablePages = sl.Base, sl.Pages
		}
	} else {
		q.HeapSource = HeapInline
		files = nil
		if heap != nil {
			heapPages = PagesOf(heap)
		}
		stablePages = PagesOf(stable)
	}
	q.HeapPages, q.StablePages = uint64(len(heapPages)), uint64(len(stablePages))
	sentPages.Add(q.HeapPages + q.StablePages)
	if err := c.Send(&Msg{Kind: KindExecute, ID: id, Body: EncodeExecute(&q), Files: files}); err != nil {
		return err
	}
	if err := c.SendPages(id, HeapMemory, heapPages); err != nil {
		return err
	}
	return c.SendPages(id, StableMemory, stablePages)
}

// layersOf returns the non-empty memories as read-only layers (an empty one
// needs none), false unless both can be.
func layersOf(heap, stable *state.PageMap) (hl, sl state.Layers, ok bool) {
	if heap.Size() > 0 {
		if hl, ok = heap.ReadOnlyLayers(); !ok {
			return hl, sl, false
		}
	}
	if stable.Size() > 0 {
		if sl, ok = stable.ReadOnlyLayers(); !ok {
			return hl, sl, false
		}
	}
	return hl, sl, true
}

// PagesSent returns how many pages SendExecute sends over the socket for
// these memories, without listing them (the watchdog allows time for
// each).
func PagesSent(heap, stable *state.PageMap) uint64 {
	if (heap.Size() == 0 || heap.ReadOnlyFile() != nil) && (stable.Size() == 0 || stable.ReadOnlyFile() != nil) {
		return 0
	}
	var laid uint64
	ok := true
	for _, m := range []*state.PageMap{heap, stable} {
		if m.Size() > 0 && ok {
			var n uint64
			n, ok = m.LaidPages()
			laid += n
		}
	}
	if ok {
		return laid
	}
	return uint64(heap.NumStored() + stable.NumStored())
}

// sentPages counts the memory pages SendExecute sent (tests, benchmarks).
var sentPages atomic.Uint64

// SentMemoryPages returns how many memory pages this process has sent with
// Execute requests (inline or laid over images): what executions without
// mapped memories cost on the socket.
func SentMemoryPages() uint64 { return sentPages.Load() }

// ---- sandbox side ------------------------------------------------------------

// Request is a decoded host request, as the sandbox receives it.
type Request struct {
	Kind    Kind
	ID      uint64
	Compile *CompileRequest // KindCompile
	Hash    [32]byte        // KindLoad, KindWarm
	File    *os.File        // KindLoad, KindWarm: the artifact; the receiver closes it
	Exec    *ExecRequest    // KindExecute
	Heap    state.Memory    // KindExecute: nil if !Exec.HasHeap
	Stable  state.Memory    // KindExecute
	// release unmaps and closes what a mapped Execute brought.
	release []func() error
}

// Release unmaps the request's memories and closes its descriptors. The
// sandbox calls it once the execution is over.
func (q *Request) Release() {
	for _, f := range q.release {
		_ = f()
	}
	q.release = nil
}

var requestAccept = Accept{
	KindCompile:  {MaxBody: MaxRequestBody},
	KindLoad:     {MaxBody: 32, FDs: 1},
	KindWarm:     {MaxBody: 32, FDs: 1},
	KindExecute:  {MaxBody: MaxRequestBody, FDs: MaxFDs, VarFDs: true},
	KindPing:     {MaxBody: 0},
	KindShutdown: {MaxBody: 0},
}

// NextRequest receives the next request from the host.
func (c *Conn) NextRequest() (*Request, error) {
	m, err := c.Recv(requestAccept)
	if err != nil {
		return nil, err
	}
	q := &Request{Kind: m.Kind, ID: m.ID}
	switch m.Kind {
	case KindCompile:
		q.Compile, err = DecodeCompile(m.Body)
	case KindLoad, KindWarm:
		q.Hash, err = DecodeHash(m.Body)
		if err != nil {
			m.CloseFiles()
		} else {
			q.File = m.Files[0]
		}
	case KindExecute:
		err = c.decodeExecute(m, q)
	}
	if err != nil {
		return nil, err
	}
	return q, nil
}

// decodeExecute completes an Execute request: its memories, inline or
// mapped from the attached descriptors. On error every descriptor is closed.
func (c *Conn) decodeExecute(m *Msg, q *Request) (err error) {
	files := m.Files
	defer func() {
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			q.Release()
		}
	}()
	if q.Exec, err = DecodeExecute(m.Body); err != nil {
		return err
	}
	x := q.Exec
	if len(files) != x.Descriptors() {
		return violation(VDescriptors, "execute carries %d descriptors, its header declares %d", len(files), x.Descriptors())
	}
	if x.HeapSource == MemoryLayered {
		return c.recvLayered(m.ID, q, &files)
	}
	if x.HeapSource == MemoryMapped {
		mapFile := func(size uint64) (state.Memory, error) {
			if size == 0 {
				return state.NewPageMap(0), nil
			}
			f := files[0]
			files = files[1:]
			mp, err := state.OpenFileMemory(f, size) // owns f from here
			if err != nil {
				return nil, err
			}
			q.release = append(q.release, mp.Close)
			return mp, nil
		}
		if x.HasHeap {
			if q.Heap, err = mapFile(x.HeapSize); err != nil {
				return err
			}
			if fm, ok := q.Heap.(*state.FileMemory); ok && x.HasHeapImageGen {
				fm.SetImageGeneration(x.HeapImageGen)
			}
		}
		if q.Stable, err = mapFile(x.StableSize); err != nil {
			return err
		}
		x.Input.Stable = q.Stable
		return nil
	}
	if x.HasHeap {
		heap := state.NewPageMap(x.HeapSize)
		// The engine may make an image of it to map; close that with
		// the request rather than leave the descriptor to the GC.
		q.release = append(q.release, func() error { heap.Release(); return nil })
		if err := c.recvInto(m.ID, HeapMemory, x.HeapPages, heap); err != nil {
			return err
		}
		q.Heap = heap
	}
	stable := state.NewPageMap(x.StableSize)
	if err := c.recvInto(m.ID, StableMemory, x.StablePages, stable); err != nil {
		return err
	}
	q.Stable = stable
	x.Input.Stable = stable
	return nil
}

// recvLayered completes a MemoryLayered request: each non-empty memory is
// its descriptor's first base bytes with the pages that follow laid over
// it, heap first. The descriptors are taken from *files as they are used
// (the caller closes what is left on error).
func (c *Conn) recvLayered(id uint64, q *Request, files *[]*os.File) error {
	x := q.Exec
	layered := func(mem Memory, base, size, count uint64) (state.Memory, error) {
		if size == 0 {
			return state.NewPageMap(0), nil
		}
		f := (*files)[0]
		*files = (*files)[1:]
		lm, err := state.OpenLayeredMemory(f, base, size) // owns f from here
		if err != nil {
			return nil, err
		}
		q.release = append(q.release, lm.Close)
		// RecvPages checks every index (below the memory's pages, strictly
		// increasing, exactly count of them) before Lay sees it.
		if err := c.RecvPages(id, mem, count, pages4K(size), lm.Lay); err != nil {
			return nil, err
		}
		return lm, nil
	}
	var err error
	if x.HasHeap {
		if q.Heap, err = layered(HeapMemory, x.HeapBase, x.HeapSize, x.HeapPages); err != nil {
			return err
		}
	}
	if q.Stable, err = layered(StableMemory, x.StableBase, x.StableSize, x.StablePages); err != nil {
		return err
	}
	x.Input.Stable = q.Stable
	return nil
}

func (c *Conn) recvInto(id uint64, mem Memory, count uint64, m *state.PageMap) error {
	return c.RecvPages(id, mem, count, m.NumPages(), func(p state.DirtyPage) error {
		return m.SetPage(p.Index, p.Data)
	})
}

// SendOutput sends an execution's output: the header, then its dirty heap
// and stable pages. The caller normalizes it first (Normalize).
func (c *Conn) SendOutput(id uint64, out *sysapi.Output) error {
	if err := c.Send(&Msg{Kind: KindOutput, ID: id, Body: EncodeOutput(out)}); err != nil {
		return err
	}
	if err := c.SendPages(id, HeapMemory, out.Heap.Pages); err != nil {
		return err
	}
	return c.SendPages(id, StableMemory, out.Stable.Pages)
}

// SendError sends an Error answer.
func (c *Conn) SendError(id uint64, code ErrorCode, format string, args ...any) error {
	return c.Send(&Msg{Kind: KindError, ID: id, Body: EncodeError(&RemoteError{Code: code, Message: fmt.Sprintf(format, args...)})})
}

// SendLog sends a diagnostic line.
func (c *Conn) SendLog(id uint64, level LogLevel, format string, args ...any) error {
	return c.Send(&Msg{Kind: KindLog, ID: id, Body: EncodeLog(LogLine{Level: level, Text: fmt.Sprintf(format, args...)})})
}
