// composite64: a composite query that calls queries on other canisters
// (64-bit Wasm, enhanced orthogonal persistence).
// Exercises: `canister_composite_query` export, query-to-query inter-canister
// calls (ic0.call_new from a composite query), calls to itself.
// Promises:
//   get()          : query, returns 7.
//   sumOf(targets) : composite query, calls get : () -> (nat) query on each
//                    target in order and returns the sum of the replies (0 for
//                    an empty vector). A target may be this canister itself or
//                    another composite64 (each contributes 7). It fails if a
//                    target's get traps, rejects or does not exist. As a
//                    composite query it can only be called as a query, not as
//                    an update or from another canister's update.
import Principal "mo:core/Principal";

persistent actor Composite {
  type Target = actor { get : shared query () -> async Nat };

  public composite query func sumOf(targets : [Principal]) : async Nat {
    var sum = 0;
    for (p in targets.vals()) {
      let target : Target = actor (Principal.toText(p));
      sum += await target.get();
    };
    sum
  };

  public query func get() : async Nat { 7 };
};
