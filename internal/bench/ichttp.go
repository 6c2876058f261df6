package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/cordon-dev/cordon/internal/api"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// ichttp: a query and an update of the counter through `cordon serve`'s IC
// HTTP interface and through its JSON API, one after the other on the same
// server, so that the interface's own cost (CBOR envelopes, the node's
// signature on a query response, the certificate of an update) stands out
// against the JSON path's.
func (e *env) ichttp() error {
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	const sec = "ichttp"
	n := e.runs(30, 200)
	nd, err := e.openNode("sandbox", nil)
	if err != nil {
		return err
	}
	defer nd.close()
	home, err := os.MkdirTemp(e.tmp, "serve-")
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() {
		done <- api.Serve(ctx, nd.Node, api.ServeOptions{Listen: "127.0.0.1:0", Home: home, AllowNoToken: true,
			Logger: slog.New(slog.DiscardHandler), TokenOut: io.Discard})
	}()
	defer func() { cancel(); <-done }()
	var client *api.Client
	for deadline := time.Now().Add(30 * time.Second); client == nil; {
		if client, err = api.Dial(ctx, home); err != nil {
			return err
		}
		select {
		case err := <-done:
			return fmt.Errorf("serve: %w", err)
		default:
		}
		if client == nil {
			if time.Now().After(deadline) {
				return errors.New("cordon serve did not come up")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	defer client.Close()
	inst, err := client.Install(ctx, api.InstallRequest{Wasm: e.counter, Arg: noArgs})
	if err != nil {
		return err
	}
	ic := &icClient{base: client.BaseURL(), hc: &http.Client{Timeout: time.Minute}}
	id := principal.MustFromText(inst.ID)
	paths := []struct {
		name string
		do   func() error
	}{
		{"json-query", func() error {
			_, err := client.Call(ctx, api.CallRequest{ID: inst.ID, Method: "get", Arg: noArgs, Query: true})
			return err
		}},
		{"ic-query", func() error { return ic.do(ctx, "query", id, "get") }},
		{"json-update", func() error {
			_, err := client.Call(ctx, api.CallRequest{ID: inst.ID, Method: "inc", Arg: noArgs})
			return err
		}},
		{"ic-update", func() error { return ic.do(ctx, "call", id, "inc") }},
	}
	samples := make(map[string][]float64, len(paths))
	for i := -5; i < n; i++ { // five warm-up rounds
		for _, p := range paths {
			start := time.Now()
			if err := p.do(); err != nil {
				return fmt.Errorf("%s: %w", p.name, err)
			}
			if i >= 0 {
				samples[p.name] = append(samples[p.name], time.Since(start).Seconds())
			}
		}
	}
	for _, k := range []struct{ kind, what string }{{"query", "query `get` (counter)"}, {"update", "update `inc` (counter)"}} {
		base := k.what + ", JSON API (POST /api/v1/" + map[string]string{"query": "query", "update": "call"}[k.kind] + ")"
		e.rep.Add(&Figure{Section: sec, Name: base, Samples: samples["json-"+k.kind]})
		e.rep.Add(&Figure{Section: sec, Name: k.what + ", IC interface (/api/v3 " + map[string]string{"query": "query, node-signed", "update": "call, certified"}[k.kind] + ")",
			Samples: samples["ic-"+k.kind], Baseline: base})
	}
	e.rep.Note(sec, "One sandboxed node behind `cordon serve` on 127.0.0.1, the four requests in turn (%d rounds after 5 "+
		"untimed): HTTP/1.1 keep-alive, anonymous unsigned envelopes (a client's signing is not cordon's cost). "+
		"The IC query's response carries the node key's signature; the IC update waits for the execution and "+
		"its durable commit, as the JSON call does, and answers with a BLS-signed certificate of its status.", n)
	return nil
}

// icClient sends IC HTTP interface requests with anonymous envelopes.
type icClient struct {
	base  string
	hc    *http.Client
	nonce uint64
}

func (c *icClient) do(ctx context.Context, typ string, id principal.Principal, method string) error {
	c.nonce++
	env, err := cbor.Marshal(map[string]any{"content": map[string]any{"request_type": typ, "sender": principal.Anonymous().Bytes(),
		"canister_id": id.Bytes(), "method_name": method, "arg": noArgs, "nonce": binary.BigEndian.AppendUint64(nil, c.nonce),
		"ingress_expiry": uint64(time.Now().Add(2 * time.Minute).UnixNano())}})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/api/v3/canister/"+id.String()+"/"+typ, bytes.NewReader(env))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/cbor")
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	var st struct {
		Status string `cbor:"status"`
	}
	if resp.StatusCode != http.StatusOK || cbor.Unmarshal(body, &st) != nil || st.Status != "replied" {
		return fmt.Errorf("IC %s %s: HTTP %d %q", typ, method, resp.StatusCode, body)
	}
	return nil
}
