package api

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/ichttp"
)

// agentScript drives a cordon server with @dfinity/agent as a dapp would:
// fetch the root key, then an update and a query signed by an Ed25519
// identity. The bearer token rides on every request through the agent's
// fetch option.
const agentScript = `
import { HttpAgent, Actor, CanisterStatus } from '@dfinity/agent';
import { Ed25519KeyIdentity, DelegationChain, DelegationIdentity } from '@dfinity/identity';
import { Principal } from '@dfinity/principal';
const [host, token, canisterId, otherKeyHex] = process.argv.slice(2);
const f = (url, init = {}) => fetch(url, { ...init, headers: { ...(init.headers || {}), ...(token ? { Authorization: 'Bearer ' + token } : {}) } });
const agent = await HttpAgent.create({ host, shouldFetchRootKey: true, identity: Ed25519KeyIdentity.generate(), fetch: f });
const idl = ({ IDL }) => IDL.Service({ inc: IDL.Func([], [IDL.Nat], []), get: IDL.Func([], [IDL.Nat], ['query']) });
const actor = Actor.createActor(idl, { agent, canisterId });
const inc1 = await actor.inc();
const inc2 = await actor.inc();
const get = await actor.get();
let rejected = '';
try {
  await Actor.createActor(({ IDL }) => IDL.Service({ nope: IDL.Func([], [], []) }), { agent, canisterId }).nope();
} catch (e) { rejected = String(e.message || e); }
// The canister's certified status.
const cs = await CanisterStatus.request({ canisterId: Principal.fromText(canisterId), agent, paths: ['module_hash', 'controllers'] });
const moduleHash = String(cs.get('module_hash'));
const controllers = cs.get('controllers').map(p => p.toText()).join(',');
// Anonymous too.
const anon = await HttpAgent.create({ host, shouldFetchRootKey: true, fetch: f });
const anonActor = Actor.createActor(idl, { agent: anon, canisterId });
const anonInc = await anonActor.inc();
const anonGet = await anonActor.get();
// A session key acting for a user's key through a delegation chain
// limited to this canister.
const user = Ed25519KeyIdentity.generate();
const sessionKey = Ed25519KeyIdentity.generate();
const chain = await DelegationChain.create(user, sessionKey.getPublicKey(), new Date(Date.now() + 10 * 60 * 1000), { targets: [Principal.fromText(canisterId)] });
const delegated = DelegationIdentity.fromDelegation(sessionKey, chain);
const dagent = await HttpAgent.create({ host, shouldFetchRootKey: true, identity: delegated, fetch: f });
const delegatedInc = await Actor.createActor(idl, { agent: dagent, canisterId }).inc();
const delegatedSender = delegated.getPrincipal().toText() === user.getPrincipal().toText();
// An agent that trusts another root key must refuse cordon's certificates.
const liar = await HttpAgent.create({ host, rootKey: Uint8Array.from(Buffer.from(otherKeyHex, 'hex')), shouldFetchRootKey: false, identity: Ed25519KeyIdentity.generate(), fetch: f });
let distrusted = '';
try {
  await Actor.createActor(idl, { agent: liar, canisterId }).inc();
} catch (e) { distrusted = String(e.message || e); }
console.log(JSON.stringify({ inc1: inc1.toString(), inc2: inc2.toString(), get: get.toString(), rejected, distrusted, anonInc: anonInc.toString(), anonGet: anonGet.toString(), delegatedInc: delegatedInc.toString(), delegatedSender, moduleHash, controllers }));
`

// The agent's version is pinned: the test is about this interface, not
// about whatever the registry serves today.
const agentVersion = "3.4.3"

// A real IC client against cordon serve: @dfinity/agent (npm) fetches the
// root key, verifies the certificates of its updates and reads the
// counter. Skipped only when node/npm are missing or the registry cannot be
// reached, and never where CORDON_REQUIRE_NODE=1 (npm_test.go).
func TestDfinityAgent(t *testing.T) {
	node, npm := nodeTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dir := npmInstall(ctx, t, npm, "@dfinity/agent@"+agentVersion, "@dfinity/identity@"+agentVersion, "@dfinity/candid@"+agentVersion, "@dfinity/principal@"+agentVersion)
	if err := os.WriteFile(filepath.Join(dir, "agent.mjs"), []byte(agentScript), 0o644); err != nil {
		t.Fatal(err)
	}

	s := serve(t)
	inst, err := s.client.Install(ctx, InstallRequest{Wasm: counterWasm(t), Arg: noArgs})
	if err != nil {
		t.Fatal(err)
	}
	other, err := ichttp.LoadOrCreateRootKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	run := exec.CommandContext(ctx, node, "agent.mjs", s.base, s.token, inst.ID, hex.EncodeToString(other.DER()))
	run.Dir = dir
	out, err := run.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("agent: %v\n%s\n%s", err, out, ee.Stderr)
		}
		t.Fatalf("agent: %v", err)
	}
	var got struct {
		Inc1, Inc2, Get, Rejected, Distrusted, AnonInc, AnonGet, DelegatedInc string
		ModuleHash, Controllers                                               string
		DelegatedSender                                                       bool
	}
	if err := json.Unmarshal([]byte(lastLine(string(out))), &got); err != nil {
		t.Fatalf("agent output %q: %v", out, err)
	}
	if got.Inc1 != "1" || got.Inc2 != "2" || got.Get != "2" {
		t.Fatalf("agent saw %+v, want inc 1, 2 and get 2", got)
	}
	if got.AnonInc != "3" || got.AnonGet != "3" {
		t.Fatalf("anonymous agent saw inc %s, get %s; want 3, 3", got.AnonInc, got.AnonGet)
	}
	if got.DelegatedInc != "4" || !got.DelegatedSender {
		t.Fatalf("delegated agent saw inc %s (want 4), sender is the user's principal: %v", got.DelegatedInc, got.DelegatedSender)
	}
	st, err := s.client.Status(ctx, inst.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.ModuleHash != st.ModuleHash || got.Controllers != strings.Join(st.Controllers, ",") {
		t.Fatalf("CanisterStatus: module hash %q, controllers %q; the node has %q, %q", got.ModuleHash, got.Controllers, st.ModuleHash, st.Controllers)
	}
	if !strings.Contains(got.Rejected, "nope") {
		t.Fatalf("a call of a missing method: %q", got.Rejected)
	}
	if !strings.Contains(strings.ToLower(got.Distrusted), "signature") && !strings.Contains(strings.ToLower(got.Distrusted), "certificate") {
		t.Fatalf("an agent with another root key accepted cordon's certificate (or failed otherwise): %q", got.Distrusted)
	}
	t.Logf("agent with another root key: %s", got.Distrusted)
	// And the node agrees (the distrusted call ran: the client refused
	// only its certificate).
	r, err := s.client.Call(ctx, CallRequest{ID: inst.ID, Method: "get", Arg: noArgs, Query: true})
	if err != nil || string(r.Reply) != "DIDL\x00\x01\x7d\x05" {
		t.Fatalf("get through the JSON API: %v %v", r, err)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
