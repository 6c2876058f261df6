// Package boundary is the trust boundary between the cordon host and its
// sandbox processes: the wire protocol (framing, message kinds, file
// descriptor passing), the structural decoding of every message, and the
// semantic validation of what a sandbox reports against what the host asked
// for. Nothing outside this package reads raw bytes that came from a
// sandbox. Everything a sandbox sends is assumed to be written by an
// attacker (DESIGN.md §1, §5): decoding never panics, never allocates
// before a length has been checked against a cap, never trusts a count, and
// reports every problem as a *Violation.
//
// # Why a hand-written format
//
// The format is a small explicit binary encoding written here rather than
// CBOR: every field has one fixed encoding (little-endian fixed-width
// integers, u64 length prefixes, booleans that must be 0 or 1, enums from
// allowlists), so there is exactly one way to encode a value, the decoder is
// a few hundred lines that can be read in one sitting and fuzzed to
// exhaustion, and no generic reflection-driven decoder (with its own
// allocation behaviour, tags, indefinite lengths and maps) stands between
// the attacker and the host. Both sides are built from the same source, so
// there is no schema evolution to support: the protocol version is checked
// at startup and in every packet header.
//
// # Framing
//
// The transport is a SOCK_SEQPACKET unix socket pair: the kernel keeps
// packet boundaries and order, and a packet longer than the receive buffer
// is reported (MSG_TRUNC), never silently split. Every packet is at most
// MaxPacket bytes and starts with a 24-byte header (little-endian):
//
//	offset size field
//	0      1    kind     message kind (allowlist below), or KindCont
//	1      1    version  protocol Version
//	2      2    reserved 0
//	4      4    nfds     number of file descriptors attached (SCM_RIGHTS)
//	8      8    id       request id: the host's, echoed by the sandbox
//	16     8    length   first packet: total body length of the message;
//	                     continuation packet: offset of this chunk
//
// A message whose body does not fit in one packet continues in KindCont
// packets carrying the same id, no descriptors, and the offset of their
// chunk; the receiver checks the declared total against the cap for that
// kind before allocating anything, grows the buffer only as bytes arrive,
// and rejects a chunk that is out of order or longer than what remains.
// Only some kinds may span packets; the others must fit in their first.
//
// Between exchanges the host watches the socket (Conn.WatchIdle): a sandbox
// has nothing to say then, so any packet is a VUnsolicited violation. A
// write failing with ENOBUFS (no buffer under memory pressure) is retried
// for up to NoBufsBudget, within the socket's deadline.
//
// Descriptors are accepted only on the kinds that declare them (host to
// sandbox only: KindLoad and KindWarm exactly one, KindExecute up to two, as its header
// declares). No message from a sandbox may carry a
// descriptor: any received is closed and the message is a violation.
//
// # Messages
//
// Host to sandbox: Compile (module limits + Wasm), Load (module hash + the
// artifact as an fd), Warm (as Load, for a primed sandbox: the module is
// loaded and its instantiation made ready ahead of its canister's next
// message; answered by Loaded), Execute (request header, then the heap and stable
// pages as Pages packets, if any), Ping, Shutdown. Sandbox to host: Ready (protocol
// version and mode, once at start), Compiled (module info, global types and
// the artifact), Loaded, Output (the execution result without memory pages,
// then the dirty heap pages and dirty stable pages as Pages packets), Log (a
// diagnostic line of the sandbox process), Error (a code and a message),
// Pong. A Pages packet holds up to PagesPerPacket 4 KiB pages of one memory
// with their indices; a stream of them is validated page by page as it
// arrives (index below the memory size, strictly increasing, exactly the
// announced count). The host reserves the announced pages' memory
// (Expect.Reserve) before it receives one; pages it refuses are read,
// validated and dropped (ReserveError), the connection kept. Body layouts
// are documented on the encoders.
//
// The memories travel as descriptors (MemoryMapped): the read-only memfd
// images of the committed heap (if not empty) and stable memory (if not
// empty) are attached to the Execute request, which declares how many it
// carries; the sandbox maps or reads them and never receives a page over
// the socket. A composite query's frame (clones of the committed memories,
// changed by the frame's executions or by commits since) travels as the
// same descriptors with the pages it differs in (MemoryLayered): the header
// gives, per memory, how many of its first bytes are the image's (whole
// pages, at most its size; zeros beyond) and how many pages follow, which
// the sandbox lays over the image after the same page-by-page checks.
// Without images (a page map that could not make one) the stored pages
// follow the request as Pages packets (HeapInline).
//
// # Executions in flight
//
// A host may have several Execute requests in flight on one connection
// (queries of one canister, at most MaxInFlight), each with its own id. The
// sandbox answers them in any order, but each answer (Output and its Pages,
// or an Error) in one uninterrupted sequence; Log lines of any execution in
// flight may come between answers. Inflight validates each answer against
// its own request; an answer, or a Log line, for an id that is not in flight
// (never asked, already answered) is a VID violation, and a packet of
// another message inside an answer a VFraming one, as for one exchange.
//
// # Validation
//
// Structural decoding (this file's decoders) checks only shape: lengths,
// counts, enums, booleans, that nothing is left over. Semantic validation
// (ValidateHeader, ValidateOutput, ValidateCompiled) then checks the decoded
// values against the request (Expect): see validate.go for the rules.
package boundary
