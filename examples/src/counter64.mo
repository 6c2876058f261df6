// counter64: a counter in a persistent actor (64-bit Wasm, enhanced orthogonal persistence).
// Exercises: update calls, query calls, Candid Nat/Text, state that survives an upgrade.
// Promises:
//   inc()        : update, count += 1, returns the new count.
//   add(n)       : update, count += n, returns the new count.
//   get()        : query, returns count (0 on a fresh install).
//   greet(name)  : query, returns "Hello, <name>!".
//   `count` is stable: an upgrade with this same Wasm keeps its value.
persistent actor Counter {
  var count : Nat = 0; // implicitly stable in a persistent actor

  public func inc() : async Nat {
    count += 1;
    count
  };

  public func add(n : Nat) : async Nat {
    count += n;
    count
  };

  public query func get() : async Nat {
    count
  };

  public query func greet(name : Text) : async Text {
    "Hello, " # name # "!"
  };
};
