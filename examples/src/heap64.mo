// heap64: a persistent actor holding a large heap (64-bit Wasm, enhanced
// orthogonal persistence), for upgrades and commits of large heaps.
// Exercises: many MiB of heap kept across upgrades with no serialisation,
// system postupgrade, long-running updates and queries.
// Promises:
//   grow(mib)  : update, adds mib chunks of 1 MiB (131 072 Nat32, one per
//                8-byte word), each a function of its chunk and position;
//                returns the number of chunks held.
//   size()     : query, the number of chunks held.
//   checksum() : query, an FNV-1a-style checksum (Nat32) over every element
//                of every chunk, in order.
//   upgrades() : query, how many upgrades the actor has been through.
//   Every chunk survives an upgrade with this same Wasm.
import List "mo:core/List";
import VarArray "mo:core/VarArray";
import Nat32 "mo:core/Nat32";

persistent actor Heap {
  let chunks = List.empty<[var Nat32]>(); // implicitly stable
  var upgradeCount : Nat = 0;

  system func postupgrade() { upgradeCount += 1 };

  func word(c : Nat, i : Nat) : Nat32 {
    Nat32.fromNat((c * 131_072 + i) % 4_294_967_296) *% 2_654_435_761 +% 12_345
  };

  public func grow(mib : Nat) : async Nat {
    var k = 0;
    while (k < mib) {
      let c = List.size(chunks);
      List.add(chunks, VarArray.tabulate<Nat32>(131_072, func i = word(c, i)));
      k += 1;
    };
    List.size(chunks)
  };

  public query func size() : async Nat { List.size(chunks) };

  public query func checksum() : async Nat32 {
    var h : Nat32 = 2_166_136_261;
    for (chunk in List.values(chunks)) {
      for (w in chunk.vals()) { h := (h ^ w) *% 16_777_619 };
    };
    h
  };

  public query func upgrades() : async Nat { upgradeCount };
};
