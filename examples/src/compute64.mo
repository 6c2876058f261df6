// compute64: CPU-bound work for execution speed and instruction metering
// (64-bit Wasm, enhanced orthogonal persistence).
// Promises:
//   primes(n) : query, the number of primes < n (sieve); primes(100) = 25.
//   fib(n)    : query, the n-th Fibonacci number by naive recursion; fib(20) = 6765.
//   spin()    : update that never returns: it loops until the instruction limit
//               stops it (the call fails, no state changes).
import VarArray "mo:core/VarArray";

persistent actor Compute {
  public query func primes(n : Nat) : async Nat {
    if (n < 2) return 0;
    let sieve = VarArray.repeat<Bool>(true, n);
    sieve[0] := false;
    sieve[1] := false;
    var i = 2;
    while (i * i < n) {
      if (sieve[i]) {
        var j = i * i;
        while (j < n) { sieve[j] := false; j += i };
      };
      i += 1;
    };
    var count = 0;
    for (b in sieve.vals()) { if (b) count += 1 };
    count
  };

  public query func fib(n : Nat) : async Nat {
    func go(k : Nat) : Nat { if (k < 2) k else go(k - 1) + go(k - 2) };
    go(n)
  };

  // Never returns: must be stopped by the instruction limit.
  public func spin() : async () {
    var x = 0;
    loop { x += 1 };
  };
};
