package api

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// agentProtoScript drives the protocol items @dfinity/agent exercises
// beyond TestDfinityAgent: a secp256k1 identity (the npm package's own key
// and signature encodings), the management canister (aaaaa-aa, sent as an
// empty blob, its effective canister taken from the argument), and a
// canister's metadata read through read_state.
const agentProtoScript = `
import { HttpAgent, Actor, CanisterStatus } from '@dfinity/agent';
import { Secp256k1KeyIdentity } from '@dfinity/identity-secp256k1';
import { Principal } from '@dfinity/principal';
const [host, token, canisterId] = process.argv.slice(2);
const f = (url, init = {}) => fetch(url, { ...init, headers: { ...(init.headers || {}), ...(token ? { Authorization: 'Bearer ' + token } : {}) } });
const idl = ({ IDL }) => IDL.Service({ inc: IDL.Func([], [IDL.Nat], []), get: IDL.Func([], [IDL.Nat], ['query']) });
const k1 = Secp256k1KeyIdentity.generate();
const k1agent = await HttpAgent.create({ host, shouldFetchRootKey: true, identity: k1, fetch: f });
const k1Inc = await Actor.createActor(idl, { agent: k1agent, canisterId }).inc();
const k1Get = await Actor.createActor(idl, { agent: k1agent, canisterId }).get();
const anon = await HttpAgent.create({ host, shouldFetchRootKey: true, fetch: f });
// aaaaa-aa as a dapp addresses it: the effective canister is the one the
// argument names (the result type lists only the fields read here).
const mgmtIdl = ({ IDL }) => IDL.Service({ canister_status: IDL.Func([IDL.Record({ canister_id: IDL.Principal })],
  [IDL.Record({ module_hash: IDL.Opt(IDL.Vec(IDL.Nat8)) })], []) });
const mgmt = Actor.createActor(mgmtIdl, { agent: anon, canisterId: Principal.managementCanister(), effectiveCanisterId: Principal.fromText(canisterId) });
const st = await mgmt.canister_status({ canister_id: Principal.fromText(canisterId) });
const cs = await CanisterStatus.request({ canisterId: Principal.fromText(canisterId), agent: anon, paths: ['candid'] });
console.log(JSON.stringify({ k1Inc: k1Inc.toString(), k1Get: k1Get.toString(), k1Principal: k1.getPrincipal().toText(),
  mgmtModuleHash: st.module_hash.length ? Buffer.from(st.module_hash[0]).toString('hex') : '', candid: String(cs.get('candid') || '') }));
`

// @dfinity/agent with a secp256k1 identity, the management canister and
// metadata against cordon serve. Skipped only when node/npm are missing or
// the registry cannot be reached, and never where CORDON_REQUIRE_NODE=1
// (npm_test.go).
func TestDfinityAgentProtocol(t *testing.T) {
	node, npm := nodeTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dir := npmInstall(ctx, t, npm, "@dfinity/agent@"+agentVersion, "@dfinity/identity-secp256k1@"+agentVersion, "@dfinity/candid@"+agentVersion, "@dfinity/principal@"+agentVersion)
	if err := os.WriteFile(filepath.Join(dir, "agent.mjs"), []byte(agentProtoScript), 0o644); err != nil {
		t.Fatal(err)
	}
	s := serve(t)
	inst, err := s.client.Install(ctx, InstallRequest{Wasm: counterWasm(t), Arg: noArgs})
	if err != nil {
		t.Fatal(err)
	}
	run := exec.CommandContext(ctx, node, "agent.mjs", s.base, s.token, inst.ID)
	run.Dir = dir
	out, err := run.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("agent: %v\n%s\n%s", err, out, ee.Stderr)
		}
		t.Fatalf("agent: %v", err)
	}
	var got struct{ K1Inc, K1Get, K1Principal, MgmtModuleHash, Candid string }
	if err := json.Unmarshal([]byte(lastLine(string(out))), &got); err != nil {
		t.Fatalf("agent output %q: %v", out, err)
	}
	if got.K1Inc != "1" || got.K1Get != "1" || got.K1Principal == "" {
		t.Fatalf("secp256k1 identity: %+v", got)
	}
	st, err := s.client.Status(ctx, inst.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.MgmtModuleHash != st.ModuleHash {
		t.Fatalf("canister_status through aaaaa-aa: module hash %q, the node has %q", got.MgmtModuleHash, st.ModuleHash)
	}
	if got.Candid == "" || got.Candid != st.CandidService {
		t.Fatalf("metadata candid:service %q, the node has %q", got.Candid, st.CandidService)
	}
}
