package ichttp

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// Node is what the interface needs of a node (host.Node).
type Node interface {
	Update(ctx context.Context, msg host.Message) (*host.Reply, error)
	Query(ctx context.Context, msg host.Message) (*host.Reply, error)
}

// ImplVersion is what /api/v2/status reports as impl_version.
var ImplVersion = "cordon"

// maxStatuses bounds the request statuses kept in memory; the oldest go
// first. They are not durable yet: a restart forgets them.
const maxStatuses = 10_000

// Handler serves the IC HTTP interface of one node.
type Handler struct {
	node Node
	key  *RootKey
	log  *slog.Logger
	now  func() time.Time
	mux  *http.ServeMux

	mu       sync.Mutex
	statuses map[[32]byte]*requestStatus
	order    [][32]byte
}

// requestStatus is an update call's outcome as request_status reports it.
type requestStatus struct {
	Status        string // "processing", "replied", "rejected"
	Reply         []byte
	RejectCode    uint64
	RejectMessage string
}

// New serves node's canisters over the IC HTTP interface, certifying with
// key.
func New(node Node, key *RootKey, log *slog.Logger) *Handler {
	if log == nil {
		log = slog.Default()
	}
	h := &Handler{node: node, key: key, log: log, now: time.Now, mux: http.NewServeMux(), statuses: map[[32]byte]*requestStatus{}}
	h.mux.HandleFunc("GET /api/v2/status", h.status)
	h.mux.HandleFunc("POST /api/v2/canister/{ecid}/query", h.query)
	h.mux.HandleFunc("POST /api/v2/canister/{ecid}/call", h.call)
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
	// Calls to the management canister name their effective canister in
	// the path; any other call must name the same canister in both.
	if !req.CanisterID.IsManagement() && !req.CanisterID.Equal(ecid) {
		return fail(badRequest("Specified CanisterId %s does not match effective canister id in URL %s", req.CanisterID, ecid))
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
	if st.Status == "replied" {
		writeCBOR(w, http.StatusOK, map[string]any{"status": "replied", "reply": map[string]any{"arg": st.Reply}})
		return
	}
	writeCBOR(w, http.StatusOK, map[string]any{"status": "rejected", "reject_code": st.RejectCode, "reject_message": st.RejectMessage})
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
	if !h.begin(req.ID) {
		// A replay of a request id already received does nothing again.
		w.WriteHeader(http.StatusAccepted)
		return
	}
	rep, err := h.node.Update(r.Context(), host.Message{Canister: req.CanisterID, Method: req.MethodName, Arg: req.Arg, Caller: req.Sender})
	st, ok := outcome(rep, err)
	if !ok {
		h.log.Error("ic call failed", "canister", req.CanisterID, "method", req.MethodName, "error", err)
		st = &requestStatus{Status: "rejected", RejectCode: uint64(host.SysTransient), RejectMessage: "the node could not run the call: " + err.Error()}
	}
	h.finish(req.ID, st)
	w.WriteHeader(http.StatusAccepted)
}

// begin records id as processing; false if it was already known.
func (h *Handler) begin(id [32]byte) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.statuses[id]; ok {
		return false
	}
	if len(h.order) >= maxStatuses {
		delete(h.statuses, h.order[0])
		h.order = h.order[1:]
	}
	h.statuses[id] = &requestStatus{Status: "processing"}
	h.order = append(h.order, id)
	return true
}

func (h *Handler) finish(id [32]byte, st *requestStatus) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.statuses[id]; ok {
		h.statuses[id] = st
	}
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
