// stable64: stable memory through a Region (64-bit Wasm, enhanced orthogonal persistence).
// Exercises: ic0.stable64_* through mo:core/Region, blobs larger than a page,
// data that survives upgrades.
// Promises:
//   append(data)        : update, writes data at the end of the used bytes (growing
//                         the region in 64 KiB pages as needed) and returns the
//                         offset it was written at (0 for the first append).
//   read(offset, size)  : query, the `size` bytes at `offset` (traps if out of range).
//   usedBytes()         : query, total bytes appended so far.
//   pages()             : query, current size of the region in 64 KiB pages.
//   The region and the used-byte count survive an upgrade with this same Wasm.
import Region "mo:core/Region";
import Nat64 "mo:core/Nat64";
import Runtime "mo:core/Runtime";

persistent actor Stable {
  let region = Region.new(); // implicitly stable
  var used : Nat64 = 0;

  public func append(data : Blob) : async Nat64 {
    let need = used + Nat64.fromNat(data.size());
    let pages = Region.size(region);
    if (need > pages * 65536) {
      let more = (need - pages * 65536 + 65535) / 65536;
      if (Region.grow(region, more) == 0xFFFF_FFFF_FFFF_FFFF) {
        Runtime.trap("Region.grow failed");
      };
    };
    let at = used;
    Region.storeBlob(region, at, data);
    used := need;
    at
  };

  public query func read(offset : Nat64, size : Nat) : async Blob {
    Region.loadBlob(region, offset, size)
  };

  public query func usedBytes() : async Nat64 { used };
  public query func pages() : async Nat64 { Region.size(region) };
};
