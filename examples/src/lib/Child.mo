// Child: the actor class that factory64 instantiates. It lives in src/lib/ so
// build.js does not compile it on its own; factory64.wasm embeds its Wasm.
// Promises (per instance):
//   Child(start) : the counter starts at `start` (the Candid init argument, a nat).
//   inc()        : update, n += 1, returns the new n.
//   get()        : query, returns n.
persistent actor class Child(start : Nat) {
  var n = start; // implicitly stable

  public func inc() : async Nat {
    n += 1;
    n
  };

  public query func get() : async Nat { n };
};
