package ichttp

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/fxamacker/cbor/v2"

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
// maxStatuses bounds how many calls may be kept (more are refused with
// 503, never evicted: evicting one would let it be replayed),
// maxReplyBytes the replies held (beyond it the oldest replies are dropped
// and their status becomes "done", as the IC prunes replies).
const (
	maxStatuses   = 100_000
	maxReplyBytes = 256 << 20
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

	mu         sync.Mutex
	statuses   map[[32]byte]*requestStatus
	order      [][32]byte // by arrival
	replyBytes int        // sum of the kept replies' sizes
	pruned     int        // order[:pruned] have had their replies dropped
	expired    int        // order[:expired] are past their expiry ("done")
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
}

// New serves node's canisters over the IC HTTP interface, certifying with
// key and signing query answers with nodeKey.
func New(node Node, key *RootKey, nodeKey *NodeKey, log *slog.Logger) *Handler {
	if log == nil {
		log = slog.Default()
	}
	h := &Handler{node: node, key: key, nodeKey: nodeKey, log: log, now: time.Now, mux: http.NewServeMux(), statuses: map[[32]byte]*requestStatus{}}
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
		st, msg := asRequestError(err)
		writeText(w, st, msg)
		return nil
	}
	// As the JSON API requires JSON: a page's form can post text/plain
	// without a preflight, never application/cbor.
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/cbor" {
		return fail(&requestError{status: http.StatusUnsupportedMediaType, msg: fmt.Sprintf("Content-Type %q: the request body must be application/cbor", r.Header.Get("Content-Type"))})
	}
	ecid, err := principal.FromText(r.PathValue("ecid"))
	if err != nil {
		return fail(badRequest("Invalid effective canister id %q: %v", r.PathValue("ecid"), err))
	}
	body, err := readBody(r.Body)
	if err != nil {
		return fail(err)
	}
	req, err := ParseEnvelope(body, typ, h.now())
	if err != nil {
		return fail(err)
	}
	// A call must be sent to the canister it is for: its canister_id, or
	// for the management canister the canister its argument names.
	target, ok := req.CanisterID, true
	if req.Type != "read_state" && req.CanisterID.IsManagement() {
		target, ok = mgmtTarget(req.Arg)
	}
	if req.Type != "read_state" && ok && !target.Equal(ecid) {
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
		h.log.Error("ic query failed", "canister", req.CanisterID, "method", req.MethodName, "error", err)
		writeText(w, http.StatusInternalServerError, "query failed: "+err.Error())
		return
	}
	resp := map[string]any{"status": "rejected", "reject_code": st.RejectCode, "reject_message": st.RejectMessage}
	if st.Status == "replied" {
		resp = map[string]any{"status": "replied", "reply": map[string]any{"arg": st.Reply}}
	}
	sigs, err := h.nodeKey.signQuery(resp, req.ID, uint64(h.now().UnixNano()))
	if err != nil {
		writeText(w, http.StatusInternalServerError, "sign query response: "+err.Error())
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
		return &requestStatus{Status: "rejected", RejectCode: uint64(rj.Code), RejectMessage: rj.Message}, true
	}
	return nil, false
}

// call answers 202 once the update has run and its status is recorded
// (the spec lets the node answer 202 at any point; later is simpler and
// never wrong).
func (h *Handler) call(w http.ResponseWriter, r *http.Request) {
	req := h.parse(w, r, "call")
	if req == nil {
		return
	}
	if err := h.run(r.Context(), req); err != nil {
		st, msg := asRequestError(err)
		writeText(w, st, msg)
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

// callSync is /api/v3's call: it answers with a certificate of the call's
// status once it is done (a replay still running gets 202, as a call the
// node does not wait for would).
func (h *Handler) callSync(w http.ResponseWriter, r *http.Request) {
	req := h.parse(w, r, "call")
	if req == nil {
		return
	}
	if err := h.run(r.Context(), req); err != nil {
		st, msg := asRequestError(err)
		writeText(w, st, msg)
		return
	}
	cert, done, err := h.certifyStatus(req.ID)
	if err != nil {
		writeText(w, http.StatusInternalServerError, "certify: "+err.Error())
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
// "processing" (the node may still complete the call; statuses are not
// durable yet, so its outcome is then not reported).
const maxCallWait = 10 * time.Minute

// run executes an update call once per request id and records its status;
// a replay of a request id already received runs nothing again. It waits
// while ctx lasts; the call itself goes on when the client goes away (an
// accepted call is the node's to finish, as on the IC) and its status is
// recorded when it ends.
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
	done := make(chan struct{})
	go func() {
		defer close(done)
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), maxCallWait)
		defer cancel()
		rep, err := h.node.Update(wctx, host.Message{Canister: req.CanisterID, Method: req.MethodName, Arg: req.Arg, Caller: req.Sender, Status: status})
		if err != nil && wctx.Err() != nil {
			h.log.Warn("ic call: no answer from the node in time; its status stays processing", "canister", req.CanisterID, "method", req.MethodName, "request_id", fmt.Sprintf("%x", req.ID))
			return
		}
		st, ok := outcome(rep, err)
		if !ok {
			h.log.Error("ic call failed", "canister", req.CanisterID, "method", req.MethodName, "error", err)
			st = &requestStatus{Status: "rejected", RejectCode: uint64(host.SysTransient), RejectMessage: "the node could not run the call: " + err.Error()}
		}
		h.persist(h.finish(req.ID, st))
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
	return nil
}

// begin records a request as processing; false if its id was already
// known. Statuses are pruned first (durable.go); a full window is a 503.
// recs are the pruning's store records, for persist.
func (h *Handler) begin(req *Request) (fresh bool, recs []store.IngressRecord, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.statuses[req.ID]; ok {
		return false, nil, nil
	}
	recs = h.pruneLocked()
	if len(h.statuses) >= maxStatuses {
		return false, recs, &requestError{status: http.StatusServiceUnavailable,
			msg: fmt.Sprintf("too many calls (%d) within their ingress expiry; retry later", maxStatuses)}
	}
	h.statuses[req.ID] = &requestStatus{Status: "processing", Sender: req.Sender, Canister: req.CanisterID, Expiry: req.IngressExpiry}
	h.order = append(h.order, req.ID)
	return true, recs, nil
}

// finish records a call's outcome (which the node has stored with its
// execution) and returns the store records of replies dropped for space.
func (h *Handler) finish(id [32]byte, st *requestStatus) []store.IngressRecord {
	h.mu.Lock()
	defer h.mu.Unlock()
	old, ok := h.statuses[id]
	if !ok || old.Status != "processing" {
		return nil
	}
	st.Sender, st.Canister, st.Expiry = old.Sender, old.Canister, old.Expiry
	*old = *st
	h.replyBytes += len(st.Reply)
	return h.capRepliesLocked()
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
		n["reply"] = Leaf(st.Reply)
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

// readState certifies the paths asked for that this node serves: time
// and request_status/<id>[/…] of one request, asked for by its sender.
// A request id the node does not know is absent from the tree, which is
// how the spec says "unknown".
func (h *Handler) readState(w http.ResponseWriter, r *http.Request) {
	req := h.parse(w, r, "read_state")
	if req == nil {
		return
	}
	ecid, _ := principal.FromText(r.PathValue("ecid"))
	var rid []byte
	withSubnet, withCanister := false, false
	for _, p := range req.Paths {
		switch {
		case len(p) == 1 && string(p[0]) == "time":
		case len(p) >= 1 && len(p) <= 2 && string(p[0]) == "subnet":
			withSubnet = true
		case len(p) == 3 && string(p[0]) == "canister" && canisterFields[string(p[2])]:
			// The IC answers canister paths only for the effective canister.
			if string(p[1]) != string(ecid.Bytes()) {
				writeText(w, http.StatusBadRequest, fmt.Sprintf("Effective canister id in URL %s does not match requested canister id in path %x", ecid, p[1]))
				return
			}
			withCanister = true
		case len(p) >= 2 && len(p) <= 3 && string(p[0]) == "request_status":
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
			writeText(w, http.StatusNotFound, fmt.Sprintf("Invalid path requested: %s is not served by this node yet (only time and request_status)", pathText(p)))
			return
		}
	}
	tn := node{"time": Leaf(leb128(uint64(h.now().UnixNano())))}
	if withSubnet {
		st, err := h.subnetTree()
		if err != nil {
			writeText(w, http.StatusInternalServerError, "subnet: "+err.Error())
			return
		}
		tn["subnet"] = st
	}
	if withCanister {
		ct, err := h.canisterTree(r.Context(), ecid)
		if err != nil {
			st, msg := asRequestError(err)
			writeText(w, st, msg)
			return
		}
		tn["canister"] = ct
	}
	if rid != nil {
		st, ok := h.lookup([32]byte(rid))
		if ok {
			// Only the request's sender may read its status, through the
			// canister it was for (the IC's rule).
			if !st.Sender.Equal(req.Sender) {
				writeText(w, http.StatusForbidden, fmt.Sprintf("Request %x is not authorized: the sender %s is not the sender of request %x", req.ID, req.Sender, rid))
				return
			}
			if !st.Canister.IsManagement() && !st.Canister.Equal(ecid) {
				writeText(w, http.StatusBadRequest, fmt.Sprintf("request %x was for canister %s, not the effective canister %s", rid, st.Canister, ecid))
				return
			}
			tn["request_status"] = node{string(rid): statusTree(st)}.tree()
		}
	}
	cert, err := h.key.Certify(tn.tree())
	if err != nil {
		writeText(w, http.StatusInternalServerError, "certify: "+err.Error())
		return
	}
	writeCBOR(w, http.StatusOK, map[string]any{"certificate": cert})
}

// SubnetID is the id of the node's one subnet: the self-authenticating
// principal of the root key, as on a local replica without delegation.
func (h *Handler) SubnetID() principal.Principal { return principal.SelfAuthenticating(h.key.DER()) }

// subnetTree is subnet/<id>: the root key, the canister ranges (every
// canister id cordon allocates: principal.CanisterID(0…2⁶⁴-1)) and the
// node's key, which is how clients learn the key its query answers are
// signed with.
func (h *Handler) subnetTree() (*Tree, error) {
	ranges, err := cbor.Marshal([]any{[]any{principal.CanisterID(0).Bytes(), principal.CanisterID(^uint64(0)).Bytes()}})
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

// canisterFields are the canister/<id>/… paths this node certifies.
var canisterFields = map[string]bool{"module_hash": true, "controllers": true, "certified_data": true}

// canisterTree is canister/<id>: module_hash (absent while empty),
// controllers (self-described CBOR array of principals) and
// certified_data, read from the node's status of the canister.
func (h *Handler) canisterTree(ctx context.Context, id principal.Principal) (*Tree, error) {
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
	return node{string(id.Bytes()): n.tree()}.tree(), nil
}

func pathText(p [][]byte) string {
	var b strings.Builder
	for _, l := range p {
		b.WriteByte('/')
		if utf8.Valid(l) && len(l) < 64 {
			b.WriteString(string(l))
		} else {
			fmt.Fprintf(&b, "%x", l)
		}
	}
	return b.String()
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
