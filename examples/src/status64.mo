// status64: a canister that asks the management canister for its own status
// with the complete canister_status_result of the IC interface specification
// (ic.did: version, ready_for_migration, memory_metrics, query_stats, settings
// with log_visibility, wasm_memory_threshold and environment_variables), the way
// dfinity/examples' query_stats example declares it (64-bit Wasm, enhanced
// orthogonal persistence).
// Exercises: Motoko's Candid decoding of the management canister's reply (a
// missing or mistyped field traps the call), a canister calling aaaaa-aa about
// itself.
// Promises:
//   status() : update, calls canister_status on itself and returns the decoded
//              fields as text, in this order and format:
//              "status=<running|stopping|stopped> version=<n> ready=<true|false>
//              log=<controllers|public|allowed_viewers> threshold=<n> env=<NAME=VALUE;...>
//              binary=<wasm_binary_size> heap=<wasm_memory_size> calls=<num_calls_total>
//              in=<request_payload_bytes_total> out=<response_payload_bytes_total>
//              instructions=<0|>0> controllers=<n>"
//              (one line, fields separated by single spaces).
//   ping()   : query, returns 42; every call counts in query_stats.
import Nat "mo:core/Nat";
import Nat64 "mo:core/Nat64";
import Principal "mo:core/Principal";

persistent actor Self {
  type LogVisibility = { #controllers; #public_; #allowed_viewers : [Principal] };
  type EnvironmentVariable = { name : Text; value : Text };
  type DefiniteCanisterSettings = {
    controllers : [Principal];
    compute_allocation : Nat;
    memory_allocation : Nat;
    freezing_threshold : Nat;
    reserved_cycles_limit : Nat;
    log_visibility : LogVisibility;
    wasm_memory_limit : Nat;
    wasm_memory_threshold : Nat;
    environment_variables : [EnvironmentVariable];
  };
  type CanisterStatusResult = {
    status : { #running; #stopping; #stopped };
    ready_for_migration : Bool;
    version : Nat64;
    settings : DefiniteCanisterSettings;
    module_hash : ?Blob;
    memory_size : Nat;
    memory_metrics : {
      wasm_memory_size : Nat;
      stable_memory_size : Nat;
      global_memory_size : Nat;
      wasm_binary_size : Nat;
      custom_sections_size : Nat;
      canister_history_size : Nat;
      wasm_chunk_store_size : Nat;
      snapshots_size : Nat;
    };
    cycles : Nat;
    reserved_cycles : Nat;
    idle_cycles_burned_per_day : Nat;
    query_stats : {
      num_calls_total : Nat;
      num_instructions_total : Nat;
      request_payload_bytes_total : Nat;
      response_payload_bytes_total : Nat;
    };
  };

  transient let ic = actor "aaaaa-aa" : actor {
    canister_status : { canister_id : Principal } -> async CanisterStatusResult;
  };

  public func status() : async Text {
    let s = await ic.canister_status({ canister_id = Principal.fromActor(Self) });
    let st = switch (s.status) {
      case (#running) "running";
      case (#stopping) "stopping";
      case (#stopped) "stopped";
    };
    let log = switch (s.settings.log_visibility) {
      case (#controllers) "controllers";
      case (#public_) "public";
      case (#allowed_viewers _) "allowed_viewers";
    };
    var env = "";
    for (v in s.settings.environment_variables.vals()) {
      env #= v.name # "=" # v.value # ";";
    };
    let q = s.query_stats;
    "status=" # st # " version=" # Nat64.toText(s.version) # " ready=" # (if (s.ready_for_migration) "true" else "false")
    # " log=" # log # " threshold=" # Nat.toText(s.settings.wasm_memory_threshold) # " env=" # env
    # " binary=" # Nat.toText(s.memory_metrics.wasm_binary_size) # " heap=" # Nat.toText(s.memory_metrics.wasm_memory_size)
    # " calls=" # Nat.toText(q.num_calls_total) # " in=" # Nat.toText(q.request_payload_bytes_total)
    # " out=" # Nat.toText(q.response_payload_bytes_total) # " instructions=" # (if (q.num_instructions_total > 0) ">0" else "0")
    # " controllers=" # Nat.toText(s.settings.controllers.size());
  };

  public query func ping() : async Nat { 42 };
};
