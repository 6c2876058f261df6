// factory64: a canister that creates canisters from a Motoko actor class
// (64-bit Wasm, enhanced orthogonal persistence).
// Exercises: actor class instantiation, i.e. the management canister aaaaa-aa
// (create_canister with cycles attached, then install_code with the embedded
// Wasm of src/lib/Child.mo and the Candid init argument `(start : nat)`),
// inter-canister update calls, actor references kept in stable state.
// Promises:
//   spawn(start) : update, creates a new canister running Child(start), attaching
//                  1_000_000_000_000 cycles to the creation (the creation fee comes
//                  out of them), remembers it as child number count() (0-based)
//                  and returns its principal; a new, distinct principal on every
//                  call. The factory is the child's controller. Fails (and stores
//                  nothing) if the factory cannot afford the cycles.
//   incChild(i)  : update, calls inc() on child i and returns its reply (start + 1
//                  on the first call, etc.); traps with "no child <i>" if i >= count().
//   count()      : query, the number of children spawned (0 on a fresh install).
//   The list of children survives an upgrade with this same Wasm.
import Child "lib/Child";
import List "mo:core/List";
import Nat "mo:core/Nat";
import Principal "mo:core/Principal";
import Runtime "mo:core/Runtime";

persistent actor Factory {
  let children = List.empty<Child.Child>(); // implicitly stable

  public func spawn(start : Nat) : async Principal {
    let child = await (with cycles = 1_000_000_000_000) Child.Child(start);
    List.add(children, child);
    Principal.fromActor(child)
  };

  public func incChild(i : Nat) : async Nat {
    switch (List.get(children, i)) {
      case (?child) await child.inc();
      case null Runtime.trap("no child " # Nat.toText(i));
    }
  };

  public query func count() : async Nat { List.size(children) };
};
