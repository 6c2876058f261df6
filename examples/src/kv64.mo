// kv64: a key-value store (Text -> Text) in a persistent actor (64-bit Wasm,
// enhanced orthogonal persistence).
// Exercises: a mo:core/Map B-tree kept in a stable variable (no pre/post upgrade
// hooks, no serialisation), certified data, debug output, the caller's principal.
// Promises:
//   put(k, v)   : update, stores v under k (replacing any old value), sets the
//                 certified data to the UTF-8 bytes of "<k>=<v>", and prints
//                 "put <k>" with Debug.print.
//   get(k)      : query, ?v, or null if k is absent.
//   delete(k)   : update, removes k and returns its old value (null if absent).
//   size()      : query, number of keys.
//   keys()      : query, all keys in ascending (Text.compare) order.
//   whoami()    : query, the caller's principal.
//   The map survives an upgrade with this same Wasm.
import Map "mo:core/Map";
import Text "mo:core/Text";
import Iter "mo:core/Iter";
import Debug "mo:core/Debug";
import CertifiedData "mo:core/CertifiedData";

persistent actor KV {
  let map = Map.empty<Text, Text>(); // implicitly stable

  public func put(k : Text, v : Text) : async () {
    Map.add(map, Text.compare, k, v);
    CertifiedData.set(Text.encodeUtf8(k # "=" # v));
    Debug.print("put " # k);
  };

  public func delete(k : Text) : async ?Text {
    Map.take(map, Text.compare, k)
  };

  public query func get(k : Text) : async ?Text {
    Map.get(map, Text.compare, k)
  };

  public query func size() : async Nat {
    Map.size(map)
  };

  public query func keys() : async [Text] {
    Iter.toArray(Map.keys(map))
  };

  public query (msg) func whoami() : async Principal {
    msg.caller
  };
};
