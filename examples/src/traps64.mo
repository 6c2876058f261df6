// traps64: ways a message can fail (64-bit Wasm, enhanced orthogonal persistence).
// Every failing call must leave the canister's state as it was (value stays as
// before the call; 1 on a fresh install).
// Promises:
//   setThenTrap(v) : update, writes value := v, then traps ("trapped after write").
//   assertFalse()  : update, writes value := 99, then fails `assert false`.
//   outOfBounds(i) : update, writes value := 98, then indexes a 3-element array
//                    with i: traps for i >= 3; otherwise returns [1, 2, 3][i]
//                    and the write commits.
//   divZero(d)     : update, writes value := 97, returns 10 / d (traps for d = 0;
//                    otherwise the write commits).
//   get()          : query, the current value.
import Runtime "mo:core/Runtime";

persistent actor Traps {
  var value : Nat = 1; // implicitly stable

  public func setThenTrap(v : Nat) : async () {
    value := v;
    Runtime.trap("trapped after write");
  };

  public func assertFalse() : async () { value := 99; assert false };

  public func outOfBounds(i : Nat) : async Nat {
    value := 98;
    let a = [1, 2, 3];
    a[i]
  };

  public func divZero(d : Nat) : async Nat { value := 97; 10 / d };

  public query func get() : async Nat { value };
};
