package boundary

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/fdpass"
)

// Version is the protocol version; both sides are built from one source.
// 2: Warm (load a module ahead of its canister's next message).
// 3: Execute carries Input.Responded (a callback of an answered call).
// 4: Execute carries the mapped heap image's generation.
// 5: Compiled says whether the module has a memory.
// 6: Execute lays pages over mapped images (MemoryLayered: a composite
// query's frame), with the images' bases.
const Version = 6

// MaxPacket is the largest packet either side sends or accepts, header
// included. It stays well below the kernel's default socket send buffer
// (212992 bytes), which bounds SOCK_SEQPACKET packets.
const MaxPacket = 128 << 10

// HeaderSize is the size of the packet header.
const HeaderSize = 24

// MaxFDs is the most descriptors any message may carry.
const MaxFDs = 2

// Kind is a message kind.
type Kind uint8

// Message kinds. Values below 0x80 are sent by the host, 0x80 and above by
// a sandbox; Pages and Cont go both ways.
const (
	KindCompile  Kind = 0x01
	KindLoad     Kind = 0x02
	KindExecute  Kind = 0x03
	KindPing     Kind = 0x04
	KindShutdown Kind = 0x05
	KindWarm     Kind = 0x06
	KindPages    Kind = 0x10
	KindCont     Kind = 0x11

	KindReady    Kind = 0x81
	KindCompiled Kind = 0x82
	KindLoaded   Kind = 0x83
	KindOutput   Kind = 0x84
	KindLog      Kind = 0x85
	KindError    Kind = 0x86
	KindPong     Kind = 0x87
)

type kindInfo struct {
	name  string
	known bool
	multi bool // may span several packets
}

// kinds is static data (an array literal of constants), not built at
// init: every sandbox would pay that before its first instruction.
var kinds = [256]kindInfo{
	KindCompile:  {name: "compile", known: true, multi: true},
	KindLoad:     {name: "load", known: true},
	KindExecute:  {name: "execute", known: true, multi: true},
	KindPing:     {name: "ping", known: true},
	KindShutdown: {name: "shutdown", known: true},
	KindWarm:     {name: "warm", known: true},
	KindPages:    {name: "pages", known: true},
	KindCont:     {name: "continuation", known: true},
	KindReady:    {name: "ready", known: true},
	KindCompiled: {name: "compiled", known: true, multi: true},
	KindLoaded:   {name: "loaded", known: true},
	KindOutput:   {name: "output", known: true, multi: true},
	KindLog:      {name: "log", known: true},
	KindError:    {name: "error", known: true},
	KindPong:     {name: "pong", known: true},
}

// String names the kind.
func (k Kind) String() string {
	if kinds[k].known {
		return kinds[k].name
	}
	return fmt.Sprintf("kind(0x%02x)", uint8(k))
}

// Limit is what a receiver accepts of one kind right now.
type Limit struct {
	MaxBody uint64 // largest total body
	FDs     int    // exact number of descriptors the kind carries
	// VarFDs makes FDs a maximum; the decoder of the kind then checks the
	// exact number against what the body declares.
	VarFDs bool
}

// Accept maps the kinds a receiver accepts at this point of the protocol
// to their limits. Known kinds not in the map are unexpected.
type Accept map[Kind]Limit

// Msg is one message.
type Msg struct {
	Kind  Kind
	ID    uint64
	Body  []byte
	Files []*os.File // received descriptors; the receiver owns and closes them
}

// CloseFiles closes the message's descriptors.
func (m *Msg) CloseFiles() {
	for _, f := range m.Files {
		f.Close()
	}
	m.Files = nil
}

// ErrClosed means the peer closed its end (or exited).
var ErrClosed = errors.New("boundary: connection closed by the peer")

// Conn speaks the protocol over one end of a SOCK_SEQPACKET socket pair.
// Sending and receiving use separate buffers: one goroutine may send while
// another receives, but neither side is safe for concurrent use by itself
// (senders take turns under a lock of their own).
type Conn struct {
	c    *net.UnixConn
	rbuf []byte
	oob  []byte
	// wbuf grows to the largest packet sent (packet): most are small,
	// and a host holds a Conn for every live sandbox.
	wbuf []byte
	// sendmsg is c.WriteMsgUnix; tests replace it to inject errors.
	sendmsg func(b, oob []byte) (n, oobn int, err error)
	// pending is a packet AwaitReadable received (or the error receiving
	// it gave): the next readPacket returns it without a system call.
	pending    *packet
	pendingErr error
}

// NewConn wraps one end of a SOCK_SEQPACKET unix socket pair.
func NewConn(c *net.UnixConn) *Conn {
	return &Conn{
		c:       c,
		sendmsg: func(b, oob []byte) (int, int, error) { return c.WriteMsgUnix(b, oob, nil) },
		rbuf:    make([]byte, MaxPacket),
		// Room for MaxFDs descriptors plus one: more than that sets
		// MSG_CTRUNC, and the kernel closes what does not fit.
		oob: make([]byte, unix.CmsgSpace(4*(MaxFDs+1))),
	}
}

// packet returns the write buffer cut to n bytes (n <= MaxPacket), grown
// if it is shorter: to n rounded up to a power of two, at least 4 KiB.
func (c *Conn) packet(n int) []byte {
	if cap(c.wbuf) < n {
		size := 4 << 10
		for size < n {
			size *= 2
		}
		c.wbuf = make([]byte, min(size, MaxPacket))
	}
	return c.wbuf[:n]
}

// Raw returns the underlying socket (for deadlines).
func (c *Conn) Raw() *net.UnixConn { return c.c }

func putHeader(b []byte, k Kind, nfds uint32, id, length uint64) {
	b[0] = byte(k)
	b[1] = Version
	b[2], b[3] = 0, 0
	binary.LittleEndian.PutUint32(b[4:], nfds)
	binary.LittleEndian.PutUint64(b[8:], id)
	binary.LittleEndian.PutUint64(b[16:], length)
}

// Send sends a message, split into packets as needed.
func (c *Conn) Send(m *Msg) error {
	if !kinds[m.Kind].known || m.Kind == KindCont {
		return fmt.Errorf("boundary: cannot send kind %s", m.Kind)
	}
	if len(m.Files) > MaxFDs {
		return fmt.Errorf("boundary: %d descriptors, at most %d", len(m.Files), MaxFDs)
	}
	const room = MaxPacket - HeaderSize
	if !kinds[m.Kind].multi && len(m.Body) > room {
		return fmt.Errorf("boundary: %s body of %d bytes does not fit one packet", m.Kind, len(m.Body))
	}
	var oob []byte
	if len(m.Files) > 0 {
		fds := make([]int, len(m.Files))
		for i, f := range m.Files {
			fds[i] = int(f.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	body := m.Body
	first := min(len(body), room)
	b := c.packet(HeaderSize + first)
	putHeader(b, m.Kind, uint32(len(m.Files)), m.ID, uint64(len(body)))
	copy(b[HeaderSize:], body[:first])
	if err := c.write(b, oob); err != nil {
		return err
	}
	for off := first; off < len(body); {
		chunk := min(len(body)-off, room)
		b := c.packet(HeaderSize + chunk)
		putHeader(b, KindCont, 0, m.ID, uint64(off))
		copy(b[HeaderSize:], body[off:off+chunk])
		if err := c.write(b, nil); err != nil {
			return err
		}
		off += chunk
	}
	return nil
}

// NoBufsBudget bounds how long a write retries ENOBUFS.
const NoBufsBudget = 2 * time.Second

// write sends one packet. ENOBUFS (the kernel could not allocate the
// packet's buffer: memory pressure, nothing was sent) is retried with a
// growing pause for up to NoBufsBudget: a transient shortage must not kill
// a sandbox, or the worker. Each attempt honours the socket's deadline,
// which the host's watchdog and contexts set, so a retry never outlives
// them.
func (c *Conn) write(pkt, oob []byte) error {
	var n, oobn int
	var err error
	pause, waited := time.Millisecond, time.Duration(0)
	for {
		n, oobn, err = c.sendmsg(pkt, oob)
		if !errors.Is(err, unix.ENOBUFS) || waited >= NoBufsBudget {
			break
		}
		time.Sleep(pause)
		waited += pause
		pause = min(2*pause, 100*time.Millisecond)
	}
	if err != nil {
		return err
	}
	if n != len(pkt) || oobn != len(oob) {
		return fmt.Errorf("boundary: short write (%d of %d bytes)", n, len(pkt))
	}
	return nil
}

// packet is one received packet, decoded header and all.
type packet struct {
	kind   Kind
	nfds   uint32
	id     uint64
	length uint64
	data   []byte // aliases rbuf until the next read
	files  []*os.File
}

// readPacket receives one packet. Descriptors received are always wrapped
// in files, so they are closed whatever happens next.
func (c *Conn) readPacket() (*packet, error) {
	if p, err := c.pending, c.pendingErr; p != nil || err != nil {
		c.pending, c.pendingErr = nil, nil
		return p, err
	}
	n, oobn, flags, _, err := c.c.ReadMsgUnix(c.rbuf, c.oob)
	return c.packetOf(n, oobn, flags, err)
}

// packetOf checks and decodes a packet received into rbuf and oob by one
// recvmsg that returned n, oobn, flags and err.
func (c *Conn) packetOf(n, oobn, flags int, err error) (*packet, error) {
	var files []*os.File
	if oobn > 0 {
		var ferr error
		files, ferr = parseRights(c.oob[:oobn])
		if ferr != nil && err == nil {
			err = violation(VDescriptors, "%v", ferr)
		}
	}
	fail := func(e error) (*packet, error) {
		for _, f := range files {
			f.Close()
		}
		return nil, e
	}
	if errors.Is(err, io.EOF) {
		return fail(ErrClosed)
	}
	if err != nil {
		return fail(err)
	}
	if n == 0 {
		// SOCK_SEQPACKET: end of file. The protocol never sends empty packets.
		return fail(ErrClosed)
	}
	if flags&unix.MSG_TRUNC != 0 {
		return fail(violation(VFraming, "packet larger than %d bytes", MaxPacket))
	}
	if flags&unix.MSG_CTRUNC != 0 {
		return fail(violation(VDescriptors, "more descriptors than any message may carry"))
	}
	if n < HeaderSize {
		return fail(violation(VFraming, "packet of %d bytes is shorter than the header", n))
	}
	b := c.rbuf[:n]
	if b[1] != Version {
		return fail(violation(VFraming, "protocol version %d, want %d", b[1], Version))
	}
	if b[2] != 0 || b[3] != 0 {
		return fail(violation(VFraming, "reserved header bytes are not zero"))
	}
	p := &packet{
		kind:   Kind(b[0]),
		nfds:   binary.LittleEndian.Uint32(b[4:]),
		id:     binary.LittleEndian.Uint64(b[8:]),
		length: binary.LittleEndian.Uint64(b[16:]),
		data:   b[HeaderSize:],
		files:  files,
	}
	if uint64(len(files)) != uint64(p.nfds) {
		return fail(violation(VDescriptors, "%d descriptors received, header declares %d", len(files), p.nfds))
	}
	return p, nil
}

// parseRights wraps the descriptors in oob in files; on error it has
// closed them all (fdpass.Take).
func parseRights(oob []byte) ([]*os.File, error) {
	fds, err := fdpass.Take(oob)
	if err != nil {
		return nil, err
	}
	files := make([]*os.File, len(fds))
	for i, fd := range fds {
		files[i] = os.NewFile(uintptr(fd), "received")
	}
	return files, nil
}

// Recv receives one message of a kind in accept. Protocol errors are
// *Violation; ErrClosed means the peer is gone; other errors come from the
// socket (a deadline, for example). On error nothing is left open.
func (c *Conn) Recv(accept Accept) (*Msg, error) {
	return c.recvWith(func(k Kind, _ uint64) (Limit, error) {
		lim, ok := accept[k]
		if !ok {
			return Limit{}, violation(VUnexpected, "%s message not expected here", k)
		}
		return lim, nil
	})
}

// recvWith is Recv with the limits of a message decided by limit from its
// kind and id, once its first packet has arrived: with several requests in
// flight, what is accepted depends on which one a message answers. An error
// from limit rejects the message.
func (c *Conn) recvWith(limit func(Kind, uint64) (Limit, error)) (*Msg, error) {
	p, err := c.readPacket()
	if err != nil {
		return nil, err
	}
	m, err := c.assemble(p, limit)
	if err != nil {
		for _, f := range p.files {
			f.Close()
		}
		return nil, err
	}
	return m, nil
}

func (c *Conn) assemble(p *packet, limit func(Kind, uint64) (Limit, error)) (*Msg, error) {
	info := kinds[p.kind]
	switch {
	case !info.known:
		return nil, violation(VUnknownKind, "%s", p.kind)
	case p.kind == KindCont:
		return nil, violation(VFraming, "continuation packet without a message")
	}
	lim, err := limit(p.kind, p.id)
	if err != nil {
		return nil, err
	}
	if len(p.files) != lim.FDs && !(lim.VarFDs && len(p.files) < lim.FDs) {
		return nil, violation(VDescriptors, "%s carries %d descriptors, %d expected", p.kind, len(p.files), lim.FDs)
	}
	total := p.length
	if total > lim.MaxBody {
		return nil, violation(VSize, "%s of %d bytes exceeds the limit of %d", p.kind, total, lim.MaxBody)
	}
	if uint64(len(p.data)) > total {
		return nil, violation(VFraming, "%s packet has %d body bytes, the message declares %d", p.kind, len(p.data), total)
	}
	if !info.multi && uint64(len(p.data)) != total {
		return nil, violation(VFraming, "%s must fit in one packet", p.kind)
	}
	// Grow as bytes arrive: a large declared length costs nothing until
	// the sandbox really sends it.
	body := make([]byte, len(p.data), min(total, 2*MaxPacket))
	copy(body, p.data)
	m := &Msg{Kind: p.kind, ID: p.id, Files: p.files}
	for uint64(len(body)) < total {
		q, err := c.readPacket()
		if err != nil {
			if errors.Is(err, ErrClosed) {
				return nil, violation(VFraming, "connection closed after %d of %d bytes of %s", len(body), total, p.kind)
			}
			return nil, err
		}
		if len(q.files) > 0 {
			for _, f := range q.files {
				f.Close()
			}
			return nil, violation(VDescriptors, "descriptors on a continuation packet")
		}
		if q.kind != KindCont {
			return nil, violation(VFraming, "%s packet inside a %s message (%d of %d bytes received)", q.kind, p.kind, len(body), total)
		}
		if q.id != p.id {
			return nil, violation(VFraming, "continuation for id %d inside message %d", q.id, p.id)
		}
		if q.length != uint64(len(body)) {
			return nil, violation(VFraming, "continuation at offset %d, expected %d", q.length, len(body))
		}
		if len(q.data) == 0 || uint64(len(q.data)) > total-uint64(len(body)) {
			return nil, violation(VFraming, "continuation of %d bytes with %d remaining", len(q.data), total-uint64(len(body)))
		}
		body = append(body, q.data...)
	}
	m.Body = body
	return m, nil
}

// Pair returns both ends of a new SOCK_SEQPACKET socket pair (for tests and
// in-process stand-ins of a sandbox).
func Pair() (*net.UnixConn, *net.UnixConn, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	conns := make([]*net.UnixConn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "seqpacket")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			for _, c := range conns[:i] {
				c.Close()
			}
			if i == 0 {
				unix.Close(fds[1])
			}
			return nil, nil, err
		}
		conns[i] = c.(*net.UnixConn)
	}
	return conns[0], conns[1], nil
}
