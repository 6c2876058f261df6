import { HttpAgent, Actor, CanisterStatus } from '@icp-sdk/core/agent';
import { Ed25519KeyIdentity } from '@icp-sdk/core/identity';
import { Principal } from '@icp-sdk/core/principal';
import { IDL } from '@icp-sdk/core/candid';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
const [host, token, wasmPath, printerPath] = process.argv.slice(2);
const f = (url, init = {}) => fetch(url, { ...init, headers: { ...(init.headers || {}), ...(token ? { Authorization: 'Bearer ' + token } : {}) } });
const sha = (b) => new Uint8Array(createHash('sha256').update(b).digest());
const hex = (b) => Buffer.from(b).toString('hex');
const msg = (e) => String((e && e.message) || e);
const me = Ed25519KeyIdentity.generate();
const agent = await HttpAgent.create({ host, shouldFetchRootKey: true, identity: me, fetch: f });
const anon = await HttpAgent.create({ host, shouldFetchRootKey: true, fetch: f });

// The management canister, typed as ic.did types what this script uses.
const mgmtIdl = ({ IDL }) => {
  const settings = IDL.Record({ controllers: IDL.Opt(IDL.Vec(IDL.Principal)), freezing_threshold: IDL.Opt(IDL.Nat) });
  const mode = IDL.Variant({ install: IDL.Null, reinstall: IDL.Null, upgrade: IDL.Opt(IDL.Record({ skip_pre_upgrade: IDL.Opt(IDL.Bool) })) });
  const id = IDL.Record({ canister_id: IDL.Principal });
  const chunkHash = IDL.Record({ hash: IDL.Vec(IDL.Nat8) });
  const status = IDL.Record({
    status: IDL.Variant({ running: IDL.Null, stopping: IDL.Null, stopped: IDL.Null }),
    module_hash: IDL.Opt(IDL.Vec(IDL.Nat8)),
    settings: IDL.Record({ controllers: IDL.Vec(IDL.Principal), freezing_threshold: IDL.Nat }),
    memory_size: IDL.Nat,
    memory_metrics: IDL.Record({ wasm_chunk_store_size: IDL.Nat, wasm_binary_size: IDL.Nat }),
    cycles: IDL.Nat,
  });
  return IDL.Service({
    provisional_create_canister_with_cycles: IDL.Func([IDL.Record({ amount: IDL.Opt(IDL.Nat), settings: IDL.Opt(settings) })], [IDL.Record({ canister_id: IDL.Principal })], []),
    provisional_top_up_canister: IDL.Func([IDL.Record({ canister_id: IDL.Principal, amount: IDL.Nat })], [], []),
    upload_chunk: IDL.Func([IDL.Record({ canister_id: IDL.Principal, chunk: IDL.Vec(IDL.Nat8) })], [chunkHash], []),
    stored_chunks: IDL.Func([id], [IDL.Vec(chunkHash)], []),
    clear_chunk_store: IDL.Func([id], [], []),
    install_chunked_code: IDL.Func([IDL.Record({ mode, target_canister: IDL.Principal, store_canister: IDL.Opt(IDL.Principal), chunk_hashes_list: IDL.Vec(chunkHash), wasm_module_hash: IDL.Vec(IDL.Nat8), arg: IDL.Vec(IDL.Nat8) })], [], []),
    install_code: IDL.Func([IDL.Record({ mode, canister_id: IDL.Principal, wasm_module: IDL.Vec(IDL.Nat8), arg: IDL.Vec(IDL.Nat8) })], [], []),
    update_settings: IDL.Func([IDL.Record({ canister_id: IDL.Principal, settings })], [], []),
    canister_status: IDL.Func([id], [status], []),
    start_canister: IDL.Func([id], [], []),
    stop_canister: IDL.Func([id], [], []),
    delete_canister: IDL.Func([id], [], []),
    fetch_canister_logs: IDL.Func([id], [IDL.Record({ canister_log_records: IDL.Vec(IDL.Record({ idx: IDL.Nat64, timestamp_nanos: IDL.Nat64, content: IDL.Vec(IDL.Nat8) })) })], ['query']),
  });
};
// canister_status answered as a query (the IC takes it so too).
const statusQueryIdl = ({ IDL }) => IDL.Service({
  canister_status: IDL.Func([IDL.Record({ canister_id: IDL.Principal })], [IDL.Record({ module_hash: IDL.Opt(IDL.Vec(IDL.Nat8)), memory_metrics: IDL.Record({ wasm_chunk_store_size: IDL.Nat }) })], ['query']),
});
// The effective canister id of a management call: the canister it is about.
const effective = (method, args) => {
  const a = args[0] || {};
  const p = method === 'install_chunked_code' ? a.target_canister : a.canister_id;
  return p ? { effectiveCanisterId: Principal.from(p) } : {};
};
const mgmtOf = (ag, idl = mgmtIdl) => Actor.createActor(idl, { agent: ag, canisterId: Principal.managementCanister(), callTransform: effective, queryTransform: effective });
const mgmt = mgmtOf(agent);
// A call expected to be rejected goes through agent.update itself: in
// @icp-sdk/core 6.1.0 an Actor turns a reject that arrived by polling (a
// node without /api/v4) into "Cannot use 'in' operator to search for
// 'subnetId' in undefined" while it formats the error, losing the reject.
const mgmtFuncs = Object.fromEntries(mgmtIdl({ IDL })._fields);
const rejectOf = async (ag, canisterId, methodName, argTypes, args, eff) => {
  try {
    await ag.update(Principal.from(canisterId), { methodName, arg: IDL.encode(argTypes, args), effectiveCanisterId: Principal.from(eff ?? canisterId) });
    return 'replied';
  } catch (e) { return msg(e); }
};
const mgmtReject = (ag, method, arg, eff) => rejectOf(ag, Principal.managementCanister(), method, mgmtFuncs[method].argTypes, [arg], eff);
const counterIdl = ({ IDL }) => IDL.Service({ inc: IDL.Func([], [IDL.Nat], []), get: IDL.Func([], [IDL.Nat], ['query']) });
const out = {};

// Chunked install of the counter into a canister created for this identity.
const wasm = readFileSync(wasmPath);
const { canister_id: a } = await mgmt.provisional_create_canister_with_cycles({ amount: [], settings: [] });
out.canister = a.toText();
const chunkSize = Math.ceil(wasm.length / 3);
const hashes = [];
for (let i = 0; i < wasm.length; i += chunkSize) {
  const { hash } = await mgmt.upload_chunk({ canister_id: a, chunk: wasm.subarray(i, i + chunkSize) });
  hashes.push(hash);
}
out.chunkHashesOk = hashes.every((h, i) => hex(h) === hex(sha(wasm.subarray(i * chunkSize, (i + 1) * chunkSize))));
out.stored = (await mgmt.stored_chunks({ canister_id: a })).length;
const bad = sha(wasm); bad[0] ^= 1;
out.wrongHash = await mgmtReject(agent, 'install_chunked_code', { mode: { install: null }, target_canister: a, store_canister: [], chunk_hashes_list: hashes.map(hash => ({ hash })), wasm_module_hash: bad, arg: new Uint8Array() }, a);
await mgmt.install_chunked_code({ mode: { install: null }, target_canister: a, store_canister: [], chunk_hashes_list: hashes.map(hash => ({ hash })), wasm_module_hash: sha(wasm), arg: new Uint8Array() });
const counter = Actor.createActor(counterIdl, { agent, canisterId: a });
out.inc1 = String(await counter.inc());
out.inc2 = String(await counter.inc());
out.get = String(await counter.get());
out.rejected = await rejectOf(agent, a, 'nope', [], []);
// Anonymous: the counter is everyone's; the chunk store is not.
const anonCounter = Actor.createActor(counterIdl, { agent: anon, canisterId: a });
out.anonInc = String(await anonCounter.inc());
out.anonGet = String(await anonCounter.get());
out.anonUpload = await mgmtReject(anon, 'upload_chunk', { canister_id: a, chunk: new Uint8Array([1, 2, 3]) }, a);

// canister_status by update and by query, and the certified view.
const st = await mgmt.canister_status({ canister_id: a });
out.statusModuleHash = hex(st.module_hash[0]);
out.statusChunkStore = String(st.memory_metrics.wasm_chunk_store_size);
out.statusControllers = st.settings.controllers.map(p => p.toText()).join(',');
const stq = await mgmtOf(agent, statusQueryIdl).canister_status({ canister_id: a });
out.queryModuleHash = hex(stq.module_hash[0]);
const cs = await CanisterStatus.request({ canisterId: a, agent, paths: ['module_hash', 'controllers'] });
out.certModuleHash = String(cs.get('module_hash')).replace(/^0x/, '');
out.certControllers = cs.get('controllers').map(p => p.toText()).join(',');
out.me = me.getPrincipal().toText();
// fetch_canister_logs (a query) of a canister that printed in its init.
const { canister_id: p } = await mgmt.provisional_create_canister_with_cycles({ amount: [], settings: [] });
await mgmt.install_code({ mode: { install: null }, canister_id: p, wasm_module: readFileSync(printerPath), arg: new Uint8Array() });
const logs = await mgmt.fetch_canister_logs({ canister_id: p });
out.logs = logs.canister_log_records.map(r => Buffer.from(r.content).toString()).join('|');

// install_code with a gzipped module, settings, top-up, stop and delete.
const { canister_id: b } = await mgmt.provisional_create_canister_with_cycles({ amount: [1_000_000_000_000n], settings: [{ controllers: [], freezing_threshold: [1000n] }] });
await mgmt.install_code({ mode: { install: null }, canister_id: b, wasm_module: gzipSync(wasm), arg: new Uint8Array() });
out.gzInc = String(await Actor.createActor(counterIdl, { agent, canisterId: b }).inc());
await mgmt.update_settings({ canister_id: b, settings: { controllers: [], freezing_threshold: [2000n] } });
await mgmt.provisional_top_up_canister({ canister_id: b, amount: 5n });
const stb = await mgmt.canister_status({ canister_id: b });
out.bFreezing = String(stb.settings.freezing_threshold);
out.bCycles = String(stb.cycles);
await mgmt.stop_canister({ canister_id: b });
out.bStopped = Object.keys((await mgmt.canister_status({ canister_id: b })).status)[0];
await mgmt.start_canister({ canister_id: b });
await mgmt.stop_canister({ canister_id: b });
await mgmt.delete_canister({ canister_id: b });
out.deleted = await mgmtReject(agent, 'canister_status', { canister_id: b }, b);
await mgmt.clear_chunk_store({ canister_id: a });
out.storedAfterClear = (await mgmt.stored_chunks({ canister_id: a })).length;
console.log(JSON.stringify(out));
