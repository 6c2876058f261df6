// lowmem64: the low Wasm memory hook (64-bit Wasm, enhanced orthogonal
// persistence), as in dfinity/examples' low_wasm_memory.
// Promises:
//   system func lowmemory : runs when the canister's remaining Wasm memory
//                  (wasm_memory_limit - heap) falls below wasm_memory_threshold;
//                  counts its runs and prints "low memory hook <n>".
//   grow(mib)    : update, allocates and keeps about mib MiB of heap; returns
//                  how many allocations are kept (at most 64; more traps).
//   runs()       : query, how often the hook ran.
import Debug "mo:core/Debug";
import VarArray "mo:core/VarArray";

persistent actor LowMemory {
  var hookRuns : Nat = 0;
  var kept : Nat = 0;
  let chunks : [var [var Nat64]] = VarArray.repeat<[var Nat64]>([var], 64);

  system func lowmemory() : async* () {
    hookRuns += 1;
    Debug.print("low memory hook " # debug_show (hookRuns));
  };

  public func grow(mib : Nat) : async Nat {
    // A Nat64 element takes 8 bytes: 131_072 of them make a MiB.
    chunks[kept] := VarArray.repeat<Nat64>(1, mib * 131_072);
    kept += 1;
    kept
  };

  public query func runs() : async Nat { hookRuns };
};
