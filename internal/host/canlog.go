package host

import (
	"context"
	"fmt"
	"slices"

	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/internal/sysapi"
	"github.com/cordon-dev/cordon/pkg/candid"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// Canister logs as the IC keeps them (IC interface specification,
// fetch_canister_logs). A canister's log is its debug_print lines and the
// records of its traps (sysapi.TrapLogRecord), committed with the
// execution that wrote them even when its state is rolled back, numbered
// by one sequence per canister (the records' idx). The node keeps the
// last Config.LogLines of them within Config.LogBytes (`cordon logs`,
// logs.go); fetch_canister_logs returns
// what the IC would still hold: the newest records whose sizes add up to
// at most logBudget bytes, the oldest dropped first, each record's content
// cut to what fits in one.

const (
	// logBudget is the IC's canister log buffer (4 KiB).
	logBudget = 4096
	// logRecordOverhead is what a record costs on top of its content (the
	// size of the IC's CanisterLogRecord: idx, timestamp, content header).
	logRecordOverhead = 40
	// maxLogContent is the longest content a record keeps.
	maxLogContent = logBudget - logRecordOverhead
)

// LogRecord is one record of a canister's log as fetch_canister_logs
// returns it.
type LogRecord struct {
	Idx            uint64
	TimestampNanos uint64
	Content        []byte
}

// logsOf is what an execution adds to its canister's log: its debug_print
// lines, then the record of its trap, if the IC keeps one for it.
func logsOf(out *sysapi.Output) []sysapi.LogLine {
	if !out.Trapped {
		return out.Logs
	}
	rec, ok := sysapi.TrapLogRecord(out.TrapMessage)
	if !ok {
		return out.Logs
	}
	return append(slices.Clip(out.Logs), sysapi.LogLine{Text: rec})
}

// canisterLogView returns the records the IC's buffer of budget bytes
// would hold after entries (oldest first) were appended to it: the longest
// run of newest records whose sizes fit.
func canisterLogView(entries []store.LogEntry, budget int) []LogRecord {
	used, first := 0, len(entries)
	for i := len(entries) - 1; i >= 0; i-- {
		size := logRecordOverhead + min(len(entries[i].Text), maxLogContent)
		if used+size > budget {
			break
		}
		used += size
		first = i
	}
	out := make([]LogRecord, 0, len(entries)-first)
	for _, e := range entries[first:] {
		content := []byte(e.Text)
		if len(content) > maxLogContent {
			content = content[:maxLogContent]
		}
		var ts uint64
		if ns := e.Time.UnixNano(); ns > 0 {
			ts = uint64(ns)
		}
		out = append(out, LogRecord{Idx: e.Seq, TimestampNanos: ts, Content: content})
	}
	return out
}

// The log_visibility setting (store.Settings.LogVisibility).
const (
	logVisibilityControllers    = "" // the default
	logVisibilityPublic         = "public"
	logVisibilityAllowedViewers = "allowed_viewers"
	maxLogViewers               = 10 // IC: at most 10 allowed viewers
)

// mayReadLogs reports whether caller may fetch the logs of a canister with
// settings s: anyone when public, controllers always, allowed viewers when
// listed.
func mayReadLogs(s store.Settings, caller principal.Principal) bool {
	who := caller.String()
	switch {
	case s.LogVisibility == logVisibilityPublic:
		return true
	case slices.Contains(s.Controllers, who):
		return true
	case s.LogVisibility == logVisibilityAllowedViewers:
		return slices.Contains(s.LogViewers, who)
	}
	return false
}

// FetchCanisterLogs answers the management canister's fetch_canister_logs
// for caller, a user making a query (non-replicated) call, the only way the
// IC accepts it.
func (n *Node) FetchCanisterLogs(ctx context.Context, id, caller principal.Principal) ([]LogRecord, error) {
	c, err := n.get(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := n.readLockWithin(ctx, c); err != nil {
		return nil, err
	}
	s, gone := c.meta.Settings, c.deleted
	c.mu.RUnlock()
	if gone {
		return nil, rejectf(DestinationInvalid, "Canister %s not found", id)
	}
	if !mayReadLogs(s, caller) {
		return nil, rejectf(CanisterReject, "Caller %s is not allowed to query ic00 method fetch_canister_logs", caller)
	}
	return canisterLogView(c.logs.snapshot(), logBudget), nil
}

// errLogsReplicated is the IC's answer to fetch_canister_logs called in
// replicated mode: by a canister, or as an update call.
var errLogsReplicated = rejectf(CanisterReject, "fetch_canister_logs API is only accessible in non-replicated mode")

// queryManagement answers a user's query call to fetch_canister_logs, the
// management canister's one query method (canister_status by query is
// managementIngress's).
func (n *Node) queryManagement(ctx context.Context, msg Message) (*Reply, error) {
	svc, err := managementService()
	if err != nil {
		return nil, fmt.Errorf("management interface: %w", err)
	}
	meth, ok := svc.Method(msg.Method)
	if !ok || !meth.IsQuery() {
		return nil, rejectf(DestinationInvalid, "Management canister has no query method '%s'", EchoedName(msg.Method))
	}
	args, err := mgmtDecoder.DecodeAs(msg.Arg, meth.Args())
	if err != nil {
		return nil, rejectf(CanisterError, "Error decoding the argument of management method %s: %v", msg.Method, err)
	}
	var arg candid.Record
	if len(args.Values) > 0 {
		arg, _ = args.Values[0].(candid.Record)
	}
	target, ok := principalField(arg, "canister_id")
	if !ok {
		return nil, rejectf(CanisterError, "fetch_canister_logs: canister_id missing")
	}
	recs, err := n.FetchCanisterLogs(ctx, target, msg.Caller)
	if err != nil {
		return nil, err
	}
	vec := make(candid.Vec, 0, len(recs))
	for _, r := range recs {
		vec = append(vec, sortRecord(candid.Record{
			{ID: candid.Hash("idx"), Value: candid.Nat64(r.Idx)},
			{ID: candid.Hash("timestamp_nanos"), Value: candid.Nat64(r.TimestampNanos)},
			{ID: candid.Hash("content"), Value: candid.Blob(r.Content)},
		}))
	}
	reply, err := candid.EncodeArgs(candid.Args{Types: meth.Results(), Values: []candid.Value{
		candid.Record{{ID: candid.Hash("canister_log_records"), Value: vec}},
	}})
	if err != nil {
		return nil, fmt.Errorf("encode fetch_canister_logs reply: %w", err)
	}
	return &Reply{Data: reply}, nil
}

// logSettings reads log_visibility and wasm_memory_threshold from a
// canister_settings record into s.
func logSettings(sr candid.Record, s *settings) error {
	s.wasmMemoryThreshold, _ = optNat(sr, "wasm_memory_threshold")
	v, ok := sr.GetNamed("log_visibility")
	if !ok {
		return nil
	}
	o, ok := v.(candid.Opt)
	if !ok || o.Value == nil {
		return nil
	}
	vr, ok := o.Value.(candid.Variant)
	if !ok {
		return nil
	}
	lv := &logVisibility{}
	switch vr.ID {
	case candid.Hash("controllers"):
		lv.mode = logVisibilityControllers
	case candid.Hash("public"):
		lv.mode = logVisibilityPublic
	case candid.Hash("allowed_viewers"):
		lv.mode = logVisibilityAllowedViewers
		vec, _ := vr.Value.(candid.Vec)
		if len(vec) > maxLogViewers {
			return rejectf(CanisterError, "Number of allowed viewers %d exceeds the maximum allowed: %d", len(vec), maxLogViewers)
		}
		lv.viewers = []string{}
		for _, e := range vec {
			if p, ok := e.(candid.Principal); ok {
				lv.viewers = append(lv.viewers, p.Principal.String())
			}
		}
	default:
		return rejectf(CanisterError, "unknown log_visibility")
	}
	s.logVisibility = lv
	return nil
}

// logVisibility is a log_visibility setting given to update_settings.
type logVisibility struct {
	mode    string
	viewers []string
}

// applyLogSettings sets the log_visibility logSettings read (nil: unchanged).
func applyLogSettings(dst *store.Settings, s settings) {
	if lv := s.logVisibility; lv != nil {
		dst.LogVisibility, dst.LogViewers = lv.mode, lv.viewers
	}
}
