// Runs a canister query in V8 (node): the baseline of `cordon bench`'s
// compute figures. It runs the same .wasm as cordon with a minimal
// JavaScript ic0 shim that provides what a Motoko query needs (its argument
// and reply, the canister's own id and the caller, an empty stable memory, a
// performance counter at 0, debug_print, trap); every other System API call
// traps, naming itself.
//
//   node run.js MODULE.wasm METHOD ARG_HEX WARMUP RUNS
//
// For each call it instantiates the module (V8 runs its start function) and
// calls canister_init with an empty Candid argument if the module exports
// it, untimed; then it times `canister_query METHOD`: WARMUP calls untimed,
// then RUNS timed. It prints one JSON object:
//   {"times_ns": [...], "reply_hex": "..."}
'use strict';
const fs = require('fs');

const [file, method, argHex, warmupS, runsS] = process.argv.slice(2);
if (!file || !method || argHex === undefined) {
  console.error('usage: node run.js MODULE.wasm METHOD ARG_HEX [WARMUP] [RUNS]');
  process.exit(2);
}
const warmup = Number(warmupS || 3);
const runs = Number(runsS || 10);

let memory = null;
let arg = Buffer.alloc(0);
let reply = [];
let replied = false;

class Trap extends Error {}

const selfId = Buffer.from('00000000000000000101', 'hex'); // rwlgt-iiaaa-aaaaa-aaaaa-cai
const caller = Buffer.from('04', 'hex'); // the anonymous principal

function copyOut(src, dst, off, size, what) {
  off >>>= 0; size >>>= 0;
  if (off + size > src.length) throw new Trap(what + ' out of bounds');
  new Uint8Array(memory.buffer).set(src.subarray(off, off + size), dst >>> 0);
}

const bytesAt = (ptr, len) => Buffer.from(new Uint8Array(memory.buffer, ptr >>> 0, len >>> 0));

const ic0 = {
  msg_arg_data_size: () => arg.length,
  msg_arg_data_copy: (dst, off, size) => copyOut(arg, dst, off, size, 'msg_arg_data_copy'),
  msg_reply_data_append: (src, size) => { reply.push(bytesAt(src, size)); },
  msg_reply: () => {
    if (replied) throw new Trap('msg_reply called twice');
    replied = true;
  },
  // init reads the canister's own id; a query may read its caller.
  canister_self_size: () => selfId.length,
  canister_self_copy: (dst, off, size) => copyOut(selfId, dst, off, size, 'canister_self_copy'),
  msg_caller_size: () => caller.length,
  msg_caller_copy: (dst, off, size) => copyOut(caller, dst, off, size, 'msg_caller_copy'),
  stable64_size: () => 0n, // init checks that stable memory is empty
  performance_counter: () => 0n, // the runtime reads it; nothing is metered here
  debug_print: (src, size) => { process.stderr.write('debug_print: ' + bytesAt(src, size).toString() + '\n'); },
  trap: (src, size) => { throw new Trap('canister trapped: ' + bytesAt(src, size).toString()); },
};

const wasmModule = new WebAssembly.Module(fs.readFileSync(file));
const imports = { ic0: {} };
for (const imp of WebAssembly.Module.imports(wasmModule)) {
  if (imp.kind !== 'function') continue;
  if (imp.module !== 'ic0') throw new Error('import outside ic0: ' + imp.module + '.' + imp.name);
  imports.ic0[imp.name] = ic0[imp.name] || (() => {
    throw new Trap('ic0.' + imp.name + ' is not provided by the V8 shim (queries only)');
  });
}

// A query's changes are discarded (Motoko's runtime checks it starts from the
// state the last update left), so every query runs on a fresh instance:
// instantiated (V8 runs the start function) and initialised untimed, as
// cordon restores a canister's state before timing starts. Instances of one
// WebAssembly.Module share its compiled (and tiered-up) code.
let instance = null;
function fresh() {
  instance = new WebAssembly.Instance(wasmModule, imports);
  memory = null;
  for (const value of Object.values(instance.exports)) {
    if (value instanceof WebAssembly.Memory) memory = value;
  }
  if (!memory) throw new Error('the module exports no memory');
  if (instance.exports['canister_init']) call('canister_init', Buffer.from('4449444c0000', 'hex'));
}

function call(entry, argBytes) {
  const f = instance.exports[entry];
  if (typeof f !== 'function') throw new Error('no export ' + JSON.stringify(entry));
  arg = argBytes;
  reply = [];
  replied = false;
  f();
  return Buffer.concat(reply);
}

const entry = 'canister_query ' + method;
const queryArg = Buffer.from(argHex, 'hex');
let out = Buffer.alloc(0);
for (let i = 0; i < warmup; i++) {
  fresh();
  out = call(entry, queryArg);
}
const times = [];
for (let i = 0; i < runs; i++) {
  fresh();
  const t0 = process.hrtime.bigint();
  out = call(entry, queryArg);
  times.push(Number(process.hrtime.bigint() - t0));
  if (!replied) throw new Error(entry + ' did not reply');
}
console.log(JSON.stringify({ times_ns: times, reply_hex: out.toString('hex') }));
