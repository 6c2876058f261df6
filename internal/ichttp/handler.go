package ichttp

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/fxamacker/cbor/v2"

	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// Node is what the interface needs of a node (host.Node).
type Node interface {
	Update(ctx context.Context, msg host.Message) (*host.Reply, error)
	Query(ctx context.Context, msg host.Message) (*host.Reply, error)
	Status(ctx context.Context, id principal.Principal) (*host.Status, error)
}

// ImplVersion is what /api/v2/status reports as impl_version.
var ImplVersion = "cordon"

// Request statuses are kept in memory and, on a node that is a
// StatusStore, in its store, committed with the execution that answers the
// call (durable.go): a restart keeps them. A status is kept until its
// ingress expiry has passed, so that a replay within the window is
// recognized and not run again, then "done" for doneTTL, then forgotten.
//
// maxStatuses bounds how many calls may be kept. When the table is full,
// "done" statuses (past their expiry: a replay is refused by its expiry)
// make room, oldest first; if none is done, the call is refused with 503,
// never a status within its expiry evicted: that would let it be replayed.
// maxStatusesPerSender bounds what one sender holds of the table (429
// beyond it), so that one principal cannot fill it. A call refused before
// anything ran (DESTINATION_INVALID: no such canister or method) keeps its
// status only among the last maxRefused such, outside the table: a replay
// of it runs nothing either, and the IC keeps no trace of such a request.
// Refusals are bounded by count, not bytes, and outside every sender's
// share, so each keeps at most maxRefusalMessage of its reject message
// (the host already clips the method name it echoes: host.EchoedName).
// maxAnswerBytes bounds the answers held, replies and reject messages
// alike (a canister makes either as large, ReplyBytes): beyond it the
// oldest are dropped and their status becomes "done", as the IC prunes
// replies.
const (
	maxStatuses          = 100_000
	maxStatusesPerSender = maxStatuses / 4
	maxRefused           = 10_000
	maxRefusalMessage    = 1 << 10
	maxAnswerBytes       = 256 << 20
)

// Handler serves the IC HTTP interface of one node.
type Handler struct {
	node    Node
	store   StatusStore // nil: statuses in memory only
	key     *RootKey
	nodeKey *NodeKey
	log     *slog.Logger
	now     func() time.Time
	mux     *http.ServeMux

	mu       sync.Mutex
	statuses map[[32]byte]*requestStatus
	// Statuses leave the table by three separate orders (durable.go), so
	// that no status holds back another: due, statuses not yet done by
	// the time they become done; done, done statuses by when they became
	// so (the evictable ones, oldest first); answered, replies and
	// rejects by when they came (the oldest dropped beyond
	// maxAnswerBytes). Each may name ids whose status has moved on; those
	// are skipped.
	due         dueHeap
	seq         uint64 // arrival number of the last status begun (due's tie-break)
	done        [][32]byte
	answered    [][32]byte
	answerBytes int            // sum of the kept answers' sizes (answerSize)
	held        map[string]int // statuses held in the table, by sender
	refused     [][32]byte     // refused calls' statuses, oldest first (some may be gone)
	nRefused    int            // refused statuses in statuses
}

// requestStatus is an update call's outcome as request_status reports it.
type requestStatus struct {
	Status        string // "processing", "replied", "rejected", "done"
	Expiry        uint64 // the request's ingress_expiry
	Sender        principal.Principal
	Canister      principal.Principal
	Reply         []byte
	RejectCode    uint64
	RejectMessage string

	holds   bool // it counts in its sender's held statuses
	refusal bool // refused before anything ran: kept among h.refused
	evict   bool // past its expiry, in h.done: may be forgotten for room
	seq     uint64
}

// New serves node's canisters over the IC HTTP interface, certifying with
// key and signing query answers with nodeKey.
func New(node Node, key *RootKey, nodeKey *NodeKey, log *slog.Logger) *Handler {
	if log == nil {
		log = slog.Default()
	}
	h := &Handler{node: node, key: key, nodeKey: nodeKey, log: log, now: time.Now, mux: http.NewServeMux(),
		statuses: map[[32]byte]*requestStatus{}, held: map[string]int{}}
	if ss, ok := node.(StatusStore); ok {
		h.store = ss
		// A node whose statuses cannot be read still serves; calls it
		// had answered may then run again, which the log says.
		if err := h.load(); err != nil {
			log.Error("ic interface: request statuses of earlier runs are not known", "error", err)
		}
	}
	h.mux.HandleFunc("GET /api/v2/status", h.status)
	h.mux.HandleFunc("POST /api/v2/canister/{ecid}/query", h.query)
	h.mux.HandleFunc("POST /api/v2/canister/{ecid}/call", h.call)
	h.mux.HandleFunc("POST /api/v3/canister/{ecid}/call", h.callSync)
	h.mux.HandleFunc("POST /api/v2/canister/{ecid}/read_state", h.readState)
	// v3's query and read_state are v2's.
	h.mux.HandleFunc("POST /api/v3/canister/{ecid}/query", h.query)
	h.mux.HandleFunc("POST /api/v3/canister/{ecid}/read_state", h.readState)
	// v4's call is v3's: what v4 changes is the form of canister ranges
	// in the NNS delegation of a certificate, and cordon's certificates
	// have no delegation (its one subnet is the root key's).
	h.mux.HandleFunc("POST /api/v4/canister/{ecid}/call", h.callSync)
	h.mux.HandleFunc("POST /api/v2/subnet/{sid}/read_state", h.subnetReadState)
	h.mux.HandleFunc("POST /api/v3/subnet/{sid}/read_state", h.subnetReadState)
	h.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeText(w, http.StatusNotFound, "no such endpoint of the IC HTTP interface: "+r.Method+" "+r.URL.Path)
	})
	return h
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func writeText(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(msg))
}

// internal logs err, an error of the node's own (its store's, a file's),
// under a new error id, with attrs, and returns what the client reads
// instead: the id, not the detail, which may name paths of the host.
func (h *Handler) internal(what string, err error, attrs ...any) string {
	id := host.ErrorID()
	h.log.Error("ic interface: "+what+": internal error", append([]any{"error_id", id, "error", err}, attrs...)...)
	return fmt.Sprintf("%s: internal error %s (the node's log has the detail)", what, id)
}

// errorOf is the status and message of err: a request error's own, or a
// 500 for the node's own errors (internal).
func (h *Handler) errorOf(what string, err error) (int, string) {
	var re *requestError
	if errors.As(err, &re) {
		return re.status, re.msg
	}
	return http.StatusInternalServerError, h.internal(what, err)
}

func writeCBOR(w http.ResponseWriter, status int, v any) {
	b, err := cbor.Marshal(cbor.Tag{Number: selfDescribeTag, Content: v})
	if err != nil {
		writeText(w, http.StatusInternalServerError, "encode response: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/cbor")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func (h *Handler) status(w http.ResponseWriter, _ *http.Request) {
	writeCBOR(w, http.StatusOK, map[string]any{
		"root_key":              h.key.DER(),
		"impl_version":          ImplVersion,
		"replica_health_status": "healthy",
	})
}

// parse reads, decodes and authenticates a request to /canister/{ecid}/…
// and checks that it is for that canister.
func (h *Handler) parse(w http.ResponseWriter, r *http.Request, typ string) *Request {
	fail := func(err error) *Request {
		st, msg := h.errorOf("read the request", err)
		if st == http.StatusRequestTimeout {
			w.Header().Set("Connection", "close") // the rest of the body is not read
		}
		writeText(w, st, msg)
		return nil
	}
	// As the JSON API requires JSON: a page's form can post text/plain
	// without a preflight, never application/cbor.
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/cbor" {
		return fail(&requestError{status: http.StatusUnsupportedMediaType, msg: fmt.Sprintf("Content-Type %q: the request body must be application/cbor", r.Header.Get("Content-Type"))})
	}
	// The subnet endpoints have no effective canister.
	subnet := r.PathValue("sid") != ""
	var ecid principal.Principal
	if !subnet {
		var err error
		if ecid, err = principal.FromText(r.PathValue("ecid")); err != nil {
			return fail(badRequest("Invalid effective canister id %q: %v", clip(r.PathValue("ecid")), err))
		}
	}
	body, err := readBody(r.Body)
	if err != nil {
		return fail(err)
	}
	req, err := ParseEnvelopeWith(body, typ, h.now(), h.key.DER())
	if err != nil {
		return fail(err)
	}
	// A call must be sent to the canister it is for: its canister_id, or
	// for the management canister the canister its argument names. A
	// management method about no canister (creating one) may be sent to
	// any; one whose argument should name its canister but cannot be read
	// for it is refused, as the interface spec has the system reject it:
	// the check would be skipped, while the management canister decodes
	// the whole argument on its own, with its own bounds.
	target, ok := req.CanisterID, true
	if req.Type != "read_state" && req.CanisterID.IsManagement() {
		target, ok = mgmtTarget(req.MethodName, req.Arg)
		if !ok && !subnet && host.ManagementHasTarget(req.MethodName) {
			return fail(badRequest("Could not read the canister that the argument of management canister method %s names: it cannot be checked against the effective canister id in URL %s", req.MethodName, ecid))
		}
	}
	if !subnet && req.Type != "read_state" && ok && !target.Equal(ecid) {
		return fail(badRequest("Specified CanisterId %s does not match effective canister id in URL %s", target, ecid))
	}
	return req
}

func (h *Handler) query(w http.ResponseWriter, r *http.Request) {
	req := h.parse(w, r, "query")
	if req == nil {
		return
	}
	rep, err := h.node.Query(r.Context(), host.Message{Canister: req.CanisterID, Method: req.MethodName, Arg: req.Arg, Caller: req.Sender})
	st, ok := outcome(rep, err)
	if !ok {
		writeText(w, http.StatusInternalServerError, h.internal("query", err, "canister", req.CanisterID, "method", host.EchoedName(req.MethodName)))
		return
	}
	resp := map[string]any{"status": "rejected", "reject_code": st.RejectCode, "reject_message": st.RejectMessage}
	if st.Status == "replied" {
		resp = map[string]any{"status": "replied", "reply": map[string]any{"arg": st.Reply}}
	}
	sigs, err := h.nodeKey.signQuery(resp, req.ID, uint64(h.now().UnixNano()))
	if err != nil {
		writeText(w, http.StatusInternalServerError, h.internal("sign the query's answer", err))
		return
	}
	resp["signatures"] = sigs
	writeCBOR(w, http.StatusOK, resp)
}

// outcome turns a node's answer into a request status; ok is false for
// errors that are the node's, not the canister's.
func outcome(rep *host.Reply, err error) (*requestStatus, bool) {
	if err == nil {
		return &requestStatus{Status: "replied", Reply: rep.Data}, true
	}
	var rj *host.Reject
	if errors.As(err, &rj) {
		return &requestStatus{Status: "rejected", RejectCode: uint64(rj.Code), RejectMessage: rejectText(rj.Message)}, true
	}
	return nil, false
}

// call answers 202 once the update has ended and its status is recorded,
// or after callWait if it has not (the spec lets the node answer 202 at
// any point after accepting the call; a client polls read_state).
func (h *Handler) call(w http.ResponseWriter, r *http.Request) {
	req := h.parse(w, r, "call")
	if req == nil {
		return
	}
	if err := h.run(r.Context(), req); err != nil {
		st, msg := h.errorOf("call", err)
		writeText(w, st, msg)
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

// callSync is /api/v3's call: it answers with a certificate of the call's
// status once it is done, or 202 if it is not done within callWait (the
// spec's implementation-specific timeout; a replay still running gets 202
// at once, as on the IC).
func (h *Handler) callSync(w http.ResponseWriter, r *http.Request) {
	req := h.parse(w, r, "call")
	if req == nil {
		return
	}
	if err := h.run(r.Context(), req); err != nil {
		st, msg := h.errorOf("call", err)
		writeText(w, st, msg)
		return
	}
	cert, done, err := h.certifyStatus(req.ID)
	if err != nil {
		writeText(w, http.StatusInternalServerError, h.internal("certify the call's status", err))
		return
	}
	if !done {
		w.WriteHeader(http.StatusAccepted)
		return
	}
	writeCBOR(w, http.StatusOK, map[string]any{"status": "replied", "certificate": cert})
}

// maxCallWait bounds how long a call accepted over the interface is
// waited for once its client has gone: after it, the status stays
// "processing" here (the node may still complete the call and commit its
// status, which this table learns only when a restart loads it).
const maxCallWait = 10 * time.Minute

// callWait bounds how long a call's request waits for the call to end
// before it is answered 202, v2 and v3/v4 alike: 10 s, the IC replica's
// for its synchronous call (ingress_message_certificate_timeout_seconds).
// A request holds one of the server's slots (server.max_requests) while
// it waits, and a canister decides how long its call stays open (awaiting
// its own calls), so a wait for the call's end let a few open calls take
// every slot for the request timeout. The call goes on after the 202, on
// its own goroutine, bounded by the canister's ingress queue and
// maxCallWait; a call that ends within callWait is answered with its
// status already recorded, so its client's first poll finds it.
const callWait = 10 * time.Second

// run executes an update call once per request id and records its status;
// a replay of a request id already received runs nothing again. It waits
// for the call's end at most callWait, and while ctx lasts; the call
// itself goes on after that (an accepted call is the node's to finish, as
// on the IC) and its status is recorded when it ends.
func (h *Handler) run(ctx context.Context, req *Request) error {
	fresh, recs, err := h.begin(req)
	h.persist(recs)
	if err != nil || !fresh {
		return err
	}
	var status *host.IngressStatus
	if h.store != nil {
		status = ingressStatus(req)
	}
	// The goroutine may wait long after the call ran (for the calls it
	// made): it keeps the call's names, not its argument, which the node
	// counts only while the call is queued.
	msg := host.Message{Canister: req.CanisterID, Method: req.MethodName, Arg: req.Arg, Caller: req.Sender, Status: status}
	id := req.ID
	done := make(chan struct{})
	var stopped error // read after done, set before it is closed
	go func() {
		defer close(done)
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), maxCallWait)
		defer cancel()
		canister, method := msg.Canister, msg.Method
		m := msg
		msg = host.Message{} // what the closure keeps
		rep, err := h.node.Update(wctx, m)
		if err != nil && wctx.Err() != nil {
			h.log.Warn("ic call: no answer from the node in time; its status stays processing", "canister", canister, "method", host.EchoedName(method), "request_id", fmt.Sprintf("%x", id))
			return
		}
		if errors.Is(err, host.ErrWritesStopped) {
			// The store failed: this call's outcome is unknown (its
			// commit's) or it was refused, and no status can be stored.
			// None is certified either: a "rejected" here could
			// contradict what the disk holds, which the next start
			// loads. The status stays processing; the request is
			// answered 503 with the node's message.
			h.log.Warn("ic call: the node stopped accepting writes; its status stays processing", "canister", canister, "method", host.EchoedName(method), "request_id", fmt.Sprintf("%x", id))
			stopped = err
			return
		}
		st, ok := outcome(rep, err)
		if !ok {
			// Certified and kept for request_status: an id, not the detail.
			st = &requestStatus{Status: "rejected", RejectCode: uint64(host.SysTransient),
				RejectMessage: h.internal("the node could not run the call", err, "canister", canister, "method", host.EchoedName(method))}
		}
		h.persist(h.finish(id, st))
	}()
	wait := time.NewTimer(callWait)
	defer wait.Stop()
	select {
	case <-done:
		var rej *host.Reject
		if stopped != nil && errors.As(stopped, &rej) {
			return &requestError{status: http.StatusServiceUnavailable, msg: rej.Message}
		}
	case <-wait.C:
	case <-ctx.Done():
	}
	return nil
}

// begin records a request as processing; false if its id was already
// known. Statuses are pruned first (durable.go); a sender holding
// maxStatusesPerSender is a 429, a full table without a done status to
// evict a 503. recs are the pruning's store records, for persist.
//
// Its expiry is checked again here, under h.mu: parse checked it before,
// and a status is forgotten once its expiry (with the drift) has passed
// (a refusal's at once, a done one later), so a request that passed parse
// just before could otherwise find its earlier status gone and run again.
func (h *Handler) begin(req *Request) (fresh bool, recs []store.IngressRecord, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := checkExpiry(req.IngressExpiry, h.now()); err != nil {
		return false, nil, err
	}
	if _, ok := h.statuses[req.ID]; ok {
		return false, nil, nil
	}
	recs = h.pruneLocked()
	sender := string(req.Sender.Bytes())
	if h.held[sender] >= maxStatusesPerSender {
		return false, recs, &requestError{status: http.StatusTooManyRequests,
			msg: fmt.Sprintf("too many calls (%d) from sender %s within their ingress expiry; retry later", maxStatusesPerSender, req.Sender)}
	}
	recs = append(recs, h.makeRoomLocked()...)
	if h.tableLocked() >= maxStatuses {
		return false, recs, &requestError{status: http.StatusServiceUnavailable,
			msg: fmt.Sprintf("too many calls (%d) within their ingress expiry; retry later", maxStatuses)}
	}
	h.seq++
	st := &requestStatus{Status: "processing", Sender: req.Sender, Canister: req.CanisterID, Expiry: req.IngressExpiry, holds: true, seq: h.seq}
	h.statuses[req.ID] = st
	h.held[sender]++
	h.scheduleLocked(req.ID, st)
	return true, recs, nil
}

// finish records a call's outcome (which the node has stored with its
// execution) and returns the store records of answers and refused
// statuses dropped for space.
func (h *Handler) finish(id [32]byte, st *requestStatus) []store.IngressRecord {
	h.mu.Lock()
	defer h.mu.Unlock()
	old, ok := h.statuses[id]
	if !ok || old.Status != "processing" {
		return nil
	}
	st.Sender, st.Canister, st.Expiry, st.holds, st.seq = old.Sender, old.Canister, old.Expiry, old.holds, old.seq
	*old = *st
	if isRefusal(old) {
		// Forgotten at its expiry, not maxCallWait after it as a call
		// still processing would be (its earlier entry in due is skipped).
		h.scheduleLocked(id, old)
		return h.refuseLocked(id, old)
	}
	// A call that ends late (past its expiry, while its status was kept
	// for maxCallWait) is done at the next pruning, not maxCallWait later.
	h.scheduleLocked(id, old)
	if n := answerSize(old); n > 0 {
		h.answerBytes += n
		h.answered = append(h.answered, id)
	}
	return h.capAnswersLocked()
}

// lookup returns a copy of a request's status.
func (h *Handler) lookup(id [32]byte) (requestStatus, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	st, ok := h.statuses[id]
	if !ok {
		return requestStatus{}, false
	}
	return *st, true
}

// statusTree is request_status/<id> for a known request.
func statusTree(st requestStatus) *Tree {
	n := node{"status": Leaf([]byte(st.Status))}
	switch st.Status {
	case "replied":
		// Never nil: an empty reply is an empty blob, not CBOR null.
		n["reply"] = Leaf(append([]byte{}, st.Reply...))
	case "rejected":
		n["reject_code"] = Leaf(leb128(st.RejectCode))
		n["reject_message"] = Leaf([]byte(st.RejectMessage))
	}
	return n.tree()
}

// certifyStatus certifies time and request_status/<id>; done is false
// while the call is still processing.
func (h *Handler) certifyStatus(id [32]byte) (cert []byte, done bool, err error) {
	st, ok := h.lookup(id)
	if !ok || st.Status == "processing" {
		return nil, false, nil
	}
	t := node{
		"time":           Leaf(leb128(uint64(h.now().UnixNano()))),
		"request_status": node{string(id[:]): statusTree(st)}.tree(),
	}.tree()
	cert, err = h.key.Certify(t)
	return cert, true, err
}

// readState certifies the paths asked for that this node serves at a
// canister's endpoint: time, subnet/…, canister/<ecid>/… (module_hash,
// controllers, certified_data, metadata/<name>) and request_status/<id>[/…]
// of one request, asked for by its sender. A request id the node does not
// know is absent from the tree, which is how the spec says "unknown".
func (h *Handler) readState(w http.ResponseWriter, r *http.Request) {
	req := h.parse(w, r, "read_state")
	if req == nil {
		return
	}
	ecid, _ := principal.FromText(r.PathValue("ecid"))
	if !req.MayAddress(ecid) {
		writeText(w, http.StatusForbidden, fmt.Sprintf("Request %x is not authorized: the effective canister %s is not among the targets of the sender's delegations", req.ID, ecid))
		return
	}
	h.answerReadState(w, r, req, &ecid)
}

// subnetReadState is /api/v2|v3/subnet/<sid>/read_state: time, subnet/…
// and canister_ranges/<sid>; nothing about canisters or requests.
func (h *Handler) subnetReadState(w http.ResponseWriter, r *http.Request) {
	sid, err := principal.FromText(r.PathValue("sid"))
	if err != nil {
		writeText(w, http.StatusBadRequest, fmt.Sprintf("Invalid subnet id %q: %v", clip(r.PathValue("sid")), err))
		return
	}
	if !sid.Equal(h.SubnetID()) {
		writeText(w, http.StatusNotFound, fmt.Sprintf("Subnet %s is not this node's subnet (%s)", sid, h.SubnetID()))
		return
	}
	req := h.parse(w, r, "read_state")
	if req == nil {
		return
	}
	h.answerReadState(w, r, req, nil)
}

// maxMetadataPaths bounds the metadata sections one read_state asks for.
const maxMetadataPaths = 16

// answerReadState answers a read_state at a canister's endpoint (ecid) or
// at the subnet's (ecid nil).
func (h *Handler) answerReadState(w http.ResponseWriter, r *http.Request, req *Request, ecid *principal.Principal) {
	var rid []byte
	withSubnet, withCanister, withRanges := false, false, false
	var metaNames []string
	notServed := func(p [][]byte) {
		where := "this node"
		if ecid == nil {
			where = "a subnet's read_state"
		}
		writeText(w, http.StatusNotFound, fmt.Sprintf("Invalid path requested: %s is not served by %s", pathText(p), where))
	}
	for _, p := range req.Paths {
		switch {
		case len(p) == 1 && string(p[0]) == "time":
		case len(p) >= 1 && len(p) <= 5 && string(p[0]) == "subnet":
			withSubnet = true
		case ecid == nil && len(p) >= 1 && len(p) <= 3 && string(p[0]) == "canister_ranges":
			withRanges = true
		case ecid != nil && len(p) >= 3 && string(p[0]) == "canister" &&
			((len(p) == 3 && canisterFields[string(p[2])]) || (len(p) == 4 && string(p[2]) == "metadata")):
			// The IC answers canister paths only for the effective canister.
			if string(p[1]) != string(ecid.Bytes()) {
				writeText(w, http.StatusBadRequest, fmt.Sprintf("Effective canister id in URL %s does not match requested canister id in path %s", ecid, hexLabel(p[1])))
				return
			}
			withCanister = true
			if len(p) == 4 {
				if !utf8.Valid(p[3]) || len(metaNames) == maxMetadataPaths {
					writeText(w, http.StatusBadRequest, fmt.Sprintf("metadata: at most %d UTF-8 names", maxMetadataPaths))
					return
				}
				metaNames = append(metaNames, string(p[3]))
			}
		case ecid != nil && len(p) >= 2 && len(p) <= 3 && string(p[0]) == "request_status":
			if len(p[1]) != 32 {
				writeText(w, http.StatusBadRequest, "request_status: a request id is 32 bytes")
				return
			}
			if rid != nil && string(rid) != string(p[1]) {
				writeText(w, http.StatusBadRequest, "Can only request a single request ID in request_status paths")
				return
			}
			rid = p[1]
		default:
			notServed(p)
			return
		}
	}
	tn := node{"time": Leaf(leb128(uint64(h.now().UnixNano())))}
	if withSubnet {
		st, err := h.subnetTree()
		if err != nil {
			writeText(w, http.StatusInternalServerError, h.internal("subnet", err))
			return
		}
		tn["subnet"] = st
	}
	if withRanges {
		rt, err := h.rangesTree()
		if err != nil {
			writeText(w, http.StatusInternalServerError, h.internal("canister_ranges", err))
			return
		}
		tn["canister_ranges"] = rt
	}
	if withCanister {
		md, err := h.metadata(r.Context(), req, *ecid, metaNames)
		if err != nil {
			st, msg := h.errorOf("metadata", err)
			writeText(w, st, msg)
			return
		}
		ct, err := h.canisterTree(r.Context(), *ecid, md)
		if err != nil {
			st, msg := h.errorOf("canister", err)
			writeText(w, st, msg)
			return
		}
		tn["canister"] = ct
	}
	if rid != nil {
		st, ok := h.lookup([32]byte(rid))
		if ok {
			// Only the request's sender may read its status, through the
			// canister it was for (the IC's rule), and only if its
			// delegations allow addressing that canister.
			if !st.Sender.Equal(req.Sender) {
				writeText(w, http.StatusForbidden, fmt.Sprintf("Request %x is not authorized: the sender %s is not the sender of request %x", req.ID, req.Sender, rid))
				return
			}
			if !st.Canister.IsManagement() && !st.Canister.Equal(*ecid) {
				writeText(w, http.StatusBadRequest, fmt.Sprintf("request %x was for canister %s, not the effective canister %s", rid, st.Canister, ecid))
				return
			}
			if !req.MayAddress(st.Canister) {
				writeText(w, http.StatusForbidden, fmt.Sprintf("Request %x is not authorized: request %x was for canister %s, which is not among the targets of the sender's delegations", req.ID, rid, st.Canister))
				return
			}
			tn["request_status"] = node{string(rid): statusTree(st)}.tree()
		}
	}
	cert, err := h.key.Certify(tn.tree())
	if err != nil {
		writeText(w, http.StatusInternalServerError, h.internal("certify", err))
		return
	}
	writeCBOR(w, http.StatusOK, map[string]any{"certificate": cert})
}

// MetadataReader is what a node offers to serve canister/<id>/metadata
// (host.Node does).
type MetadataReader interface {
	Metadata(ctx context.Context, id principal.Principal, name string) (md engine.Metadata, ok bool, controllers []string, err error)
}

// metadata reads the sections asked for: a public one for anyone, a
// private one for the canister's controllers only (403 otherwise); an
// absent one is left out (absent from the tree).
func (h *Handler) metadata(ctx context.Context, req *Request, id principal.Principal, names []string) (map[string][]byte, error) {
	if len(names) == 0 {
		return nil, nil
	}
	mr, ok := h.node.(MetadataReader)
	if !ok {
		return nil, nil
	}
	out := map[string][]byte{}
	for _, name := range names {
		md, ok, controllers, err := mr.Metadata(ctx, id, name)
		if err != nil {
			var rj *host.Reject
			if errors.As(err, &rj) {
				return nil, nil // an absent canister is absent from the tree
			}
			return nil, err
		}
		if !ok {
			continue
		}
		if !md.Public && !slices.Contains(controllers, req.Sender.String()) {
			return nil, forbidden("Request %x is not authorized: metadata %q of canister %s is private to its controllers", req.ID, clip(name), id)
		}
		out[name] = md.Data
	}
	return out, nil
}

// SubnetID is the id of the node's one subnet: the self-authenticating
// principal of the root key, as on a local replica without delegation.
func (h *Handler) SubnetID() principal.Principal { return principal.SelfAuthenticating(h.key.DER()) }

// subnetTree is subnet/<id>: the root key, the canister ranges (every
// canister id cordon allocates: principal.CanisterID(0…2⁶⁴-1)) and the
// node's key, which is how clients learn the key its query answers are
// signed with.
func (h *Handler) subnetTree() (*Tree, error) {
	ranges, err := canisterRanges()
	if err != nil {
		return nil, err
	}
	sub := node{
		"public_key":      Leaf(h.key.DER()),
		"canister_ranges": Leaf(ranges),
		"node":            node{string(h.nodeKey.ID().Bytes()): node{"public_key": Leaf(h.nodeKey.der)}.tree()}.tree(),
	}
	return node{string(h.SubnetID().Bytes()): sub.tree()}.tree(), nil
}

// canisterRanges is the CBOR list of the subnet's canister id ranges:
// every canister id cordon allocates, principal.CanisterID(0…2⁶⁴-1).
func canisterRanges() ([]byte, error) {
	return cbor.Marshal([]any{[]any{principal.CanisterID(0).Bytes(), principal.CanisterID(^uint64(0)).Bytes()}})
}

// rangesTree is canister_ranges/<subnet id>/<first canister id>: the
// spec's sharded form of the ranges (each leaf lists the ranges that
// start at or after its label, up to the next label): one shard here.
func (h *Handler) rangesTree() (*Tree, error) {
	ranges, err := canisterRanges()
	if err != nil {
		return nil, err
	}
	shard := node{string(principal.CanisterID(0).Bytes()): Leaf(ranges)}
	return node{string(h.SubnetID().Bytes()): shard.tree()}.tree(), nil
}

// canisterFields are the canister/<id>/<field> paths this node certifies
// (and metadata/<name>).
var canisterFields = map[string]bool{"module_hash": true, "controllers": true, "certified_data": true}

// canisterTree is canister/<id>: module_hash (absent while empty),
// controllers (self-described CBOR array of principals) and
// certified_data, read from the node's status of the canister.
func (h *Handler) canisterTree(ctx context.Context, id principal.Principal, metadata map[string][]byte) (*Tree, error) {
	st, err := h.node.Status(ctx, id)
	if err != nil {
		var rj *host.Reject
		if errors.As(err, &rj) {
			// An absent canister is absent from the tree.
			return emptyTree(), nil
		}
		return nil, err
	}
	n := node{}
	if st.ModuleHash != "" {
		mh, err := hex.DecodeString(st.ModuleHash)
		if err != nil {
			return nil, fmt.Errorf("module hash of %s: %w", id, err)
		}
		n["module_hash"] = Leaf(mh)
	}
	ctrl := make([]any, 0, len(st.Controllers))
	for _, c := range st.Controllers {
		p, err := principal.FromText(c)
		if err != nil {
			return nil, fmt.Errorf("controller of %s: %w", id, err)
		}
		ctrl = append(ctrl, p.Bytes())
	}
	cb, err := cbor.Marshal(cbor.Tag{Number: selfDescribeTag, Content: ctrl})
	if err != nil {
		return nil, err
	}
	n["controllers"] = Leaf(cb)
	cd, err := hex.DecodeString(st.CertifiedData)
	if err != nil {
		return nil, fmt.Errorf("certified data of %s: %w", id, err)
	}
	n["certified_data"] = Leaf(cd)
	if len(metadata) > 0 {
		mn := node{}
		for name, data := range metadata {
			mn[name] = Leaf(append([]byte{}, data...)) // an empty section: a blob, not null
		}
		n["metadata"] = mn.tree()
	}
	return node{string(id.Bytes()): n.tree()}.tree(), nil
}

// pathText is a path as an error repeats it: a short UTF-8 label as text,
// another in hex (hexLabel); at most maxEchoedLabels labels.
func pathText(p [][]byte) string {
	var b strings.Builder
	for i, l := range p {
		if i == maxEchoedLabels {
			fmt.Fprintf(&b, "/… (%d labels)", len(p))
			break
		}
		b.WriteByte('/')
		if utf8.Valid(l) && len(l) < 64 {
			b.WriteString(string(l))
		} else {
			b.WriteString(hexLabel(l))
		}
	}
	return b.String()
}

// maxEchoedLabel and maxEchoedLabels bound what an error repeats of a
// path the client chose: a label may be the whole body (3 MiB, 6 MiB in
// hex), and a path may have as many labels as the body has room for.
const (
	maxEchoedLabel  = 32
	maxEchoedLabels = 8
)

// hexLabel is a label in hex: whole when short, else its first
// maxEchoedLabel bytes, "…" and its length.
func hexLabel(l []byte) string {
	if len(l) <= maxEchoedLabel {
		return fmt.Sprintf("%x", l)
	}
	return fmt.Sprintf("%x… (%d bytes)", l[:maxEchoedLabel], len(l))
}

// RequestStatus reports a call's status ("unknown" if it is not kept).
func (h *Handler) RequestStatus(id [32]byte) (status string, reply []byte, code uint64, msg string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	st, ok := h.statuses[id]
	if !ok {
		return "unknown", nil, 0, ""
	}
	return st.Status, st.Reply, st.RejectCode, st.RejectMessage
}
