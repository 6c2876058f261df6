package host

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/pkg/candid"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// mgmtProxyWat calls the management canister on behalf of whoever calls
// its update mgmt: the argument is a length byte, a method name and the
// Candid argument; the reply is aaaaa-aa's reply, or "rejected:" with the
// reject code's digit and message. Its memory holds a 1 MiB chunk.
const mgmtProxyWat = `
(module
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reject_code" (func $reject_code (result i32)))
  (import "ic0" "msg_reject_msg_size" (func $rmsg_size (result i32)))
  (import "ic0" "msg_reject_msg_copy" (func $rmsg_copy (param i32 i32 i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_data_append" (func $call_data (param i32 i32)))
  (import "ic0" "call_perform" (func $call_perform (result i32)))
  (memory (export "memory") 40)
  (table (export "table") 2 funcref)
  (elem (i32.const 0) $on_reply $on_reject)
  (data (i32.const 0) "rejected:")
  (func $mgmt
    (local $n i32) (local $m i32)
    (local.set $n (call $arg_size))
    (call $arg_copy (i32.const 65536) (i32.const 0) (local.get $n))
    (local.set $m (i32.load8_u (i32.const 65536)))
    (call $call_new (i32.const 0) (i32.const 0) (i32.const 65537) (local.get $m)
      (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 0))
    (call $call_data (i32.add (i32.const 65537) (local.get $m))
      (i32.sub (i32.sub (local.get $n) (local.get $m)) (i32.const 1)))
    (drop (call $call_perform)))
  (func $on_reply (param i32)
    (local $n i32)
    (local.set $n (call $arg_size))
    (call $arg_copy (i32.const 65536) (i32.const 0) (local.get $n))
    (call $append (i32.const 65536) (local.get $n))
    (call $reply))
  (func $on_reject (param i32)
    (local $n i32)
    (i32.store8 (i32.const 100) (i32.add (i32.const 48) (call $reject_code)))
    (call $append (i32.const 0) (i32.const 9))
    (call $append (i32.const 100) (i32.const 1))
    (local.set $n (call $rmsg_size))
    (call $rmsg_copy (i32.const 65536) (i32.const 0) (local.get $n))
    (call $append (i32.const 65536) (local.get $n))
    (call $reply))
  (export "canister_update mgmt" (func $mgmt))
)`

// viaCanister has canister proxy (mgmtProxyWat) call aaaaa-aa.method(arg).
func (f *fixture) viaCanister(proxy principal.Principal, method string, arg []byte) []byte {
	f.t.Helper()
	return f.update(proxy, "mgmt", append(append([]byte{byte(len(method))}, method...), arg...))
}

// split cuts b into chunks of size bytes.
func split(b []byte, size int) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		n := min(size, len(b))
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

func uploadArg(t testing.TB, id principal.Principal, chunk []byte) []byte {
	t.Helper()
	b, err := candid.EncodeArgs(candid.Args{Types: mustArgTypes(t, "upload_chunk"), Values: []candid.Value{sortRecord(candid.Record{
		{ID: candid.Hash("canister_id"), Value: candid.Principal{Principal: id}},
		{ID: candid.Hash("chunk"), Value: candid.Blob(chunk)},
	})}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustArgTypes(t testing.TB, method string) []*candid.Type {
	t.Helper()
	m, ok := managementMethod(t, method)
	if !ok {
		t.Fatalf("no management method %s", method)
	}
	return m.Args()
}

// installChunkedArg is install_chunked_code's argument in Candid text.
func installChunkedArg(mode string, target principal.Principal, storeCanister *principal.Principal, hashes [][]byte, moduleHash []byte) string {
	var hs []string
	for _, h := range hashes {
		hs = append(hs, fmt.Sprintf(`record { hash = blob "%s" }`, blobText(h)))
	}
	st := "null"
	if storeCanister != nil {
		st = fmt.Sprintf(`opt principal "%s"`, storeCanister)
	}
	return fmt.Sprintf(`(record { mode = variant { %s }; target_canister = principal "%s"; store_canister = %s; chunk_hashes_list = vec { %s }; wasm_module_hash = blob "%s"; arg = blob "" })`,
		mode, target, st, strings.Join(hs, "; "), blobText(moduleHash))
}

// blobText writes bytes for a Candid text blob literal.
func blobText(b []byte) string {
	var sb strings.Builder
	for _, x := range b {
		fmt.Fprintf(&sb, "\\%02x", x)
	}
	return sb.String()
}

// chunkHashes decodes a vec chunk_hash (stored_chunks' reply).
func chunkHashes(t *testing.T, b []byte) [][]byte {
	t.Helper()
	a, err := candid.Decode(b)
	if err != nil {
		t.Fatalf("stored_chunks reply: %v", err)
	}
	var out [][]byte
	for _, e := range a.Values[0].(candid.Vec) {
		h, _ := blobField(e.(candid.Record), "hash")
		out = append(out, h)
	}
	return out
}

func sameHashes(got, want [][]byte) bool {
	key := func(hs [][]byte) []string {
		var s []string
		for _, h := range hs {
			s = append(s, fmt.Sprintf("%x", h))
		}
		slices.Sort(s)
		return s
	}
	return slices.Equal(key(got), key(want))
}

func (f *fixture) chunkStoreSize(id principal.Principal) uint64 {
	f.t.Helper()
	b, err := f.ingress(user, "canister_status", idArg(id))
	if err != nil {
		f.t.Fatalf("canister_status: %v", err)
	}
	return natOf(f.t, field(f.t, decodeStatus(f.t, b), "memory_metrics", "wasm_chunk_store_size"))
}

// A real canister (counter.wasm) uploaded in 64 KiB chunks by ingress,
// listed, counted as memory, kept across a restart, refused to
// non-controllers and with wrong hashes (the IC's message), then installed,
// upgraded from another canister's store, reinstalled gzipped; uninstall
// and delete clear the store.
func TestChunkedInstall(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	wasm := module(t, corpusDir, "counter")
	chunks := split(wasm, 64<<10)
	if len(chunks) < 3 {
		t.Fatalf("counter.wasm is only %d bytes", len(wasm))
	}
	target, err := f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{user}})
	if err != nil {
		t.Fatal(err)
	}
	usedBefore, _ := f.node.mem.inUse()
	var hashes [][]byte
	for _, c := range chunks {
		r, err := f.node.Update(ctx, Message{Canister: principal.Management(), Method: "upload_chunk", Arg: uploadArg(t, target, c), Caller: user})
		if err != nil {
			t.Fatalf("upload_chunk: %v", err)
		}
		a, err := candid.Decode(r.Data)
		if err != nil {
			t.Fatal(err)
		}
		h, _ := blobField(a.Values[0].(candid.Record), "hash")
		sum := sha256.Sum256(c)
		if !bytes.Equal(h, sum[:]) {
			t.Fatalf("upload_chunk returned %x, the chunk's SHA-256 is %x", h, sum)
		}
		hashes = append(hashes, h)
	}
	// The same chunk again is neither stored nor counted twice.
	if _, err := f.ingress(user, "upload_chunk", fmt.Sprintf(`(record { canister_id = principal "%s"; chunk = blob "%s" })`, target, blobText(chunks[0]))); err != nil {
		t.Fatal(err)
	}
	n := uint64(len(chunks))
	if got := f.chunkStoreSize(target); got != n*maxChunkBytes {
		t.Fatalf("wasm_chunk_store_size %d, want %d chunks of 1 MiB", got, n)
	}
	if used, _ := f.node.mem.inUse(); used != usedBefore+n*maxChunkBytes {
		t.Fatalf("node memory in use %d, want %d + %d chunks", used, usedBefore, n)
	}
	st, err := f.node.Status(ctx, target)
	if err != nil || st.MemorySize != n*maxChunkBytes {
		t.Fatalf("memory_size of an empty canister with %d chunks: %+v %v", n, st, err)
	}

	// Not a controller: every chunk store method is refused.
	mallory := principal.SelfAuthenticating([]byte("mallory's key"))
	for _, m := range []struct{ method, arg string }{
		{"upload_chunk", fmt.Sprintf(`(record { canister_id = principal "%s"; chunk = blob "evil" })`, target)},
		{"stored_chunks", idArg(target)},
		{"clear_chunk_store", idArg(target)},
		{"install_chunked_code", installChunkedArg("install", target, nil, hashes, sha(wasm))},
	} {
		_, err := f.ingress(mallory, m.method, m.arg)
		if r := f.reject(err); r.Code != CanisterError || !strings.Contains(r.Message, "Only controllers of canister "+target.String()) {
			t.Fatalf("%s by a non-controller: %v", m.method, err)
		}
	}
	// Too large a chunk.
	_, err = f.node.Update(ctx, Message{Canister: principal.Management(), Method: "upload_chunk", Arg: uploadArg(t, target, make([]byte, maxChunkBytes+1)), Caller: user})
	if r := f.reject(err); r.Message != "Error from Wasm chunk store: Wasm chunk size 1048577 exceeds the maximum chunk size of 1048576." {
		t.Fatalf("a chunk of 1 MiB + 1: %v", err)
	}

	// A restart keeps them.
	f.restart()
	b, err := f.ingress(user, "stored_chunks", idArg(target))
	if err != nil || !sameHashes(chunkHashes(t, b), hashes) {
		t.Fatalf("stored_chunks after restart: %x %v, want %x", b, err, hashes)
	}
	if got := f.chunkStoreSize(target); got != n*maxChunkBytes {
		t.Fatalf("wasm_chunk_store_size after restart %d", got)
	}
	if used, _ := f.node.mem.inUse(); used < n*maxChunkBytes {
		t.Fatalf("node memory in use after restart %d, the chunk store alone is %d", used, n*maxChunkBytes)
	}

	// The wrong module hash: the IC's message; a chunk not in the store.
	wrong := sha(wasm)
	wrong[0] ^= 1
	_, err = f.ingress(user, "install_chunked_code", installChunkedArg("install", target, nil, hashes, wrong))
	want := fmt.Sprintf("Error from Wasm chunk store: Wasm module hash %s does not match given hash WasmHash(%s).", rustBytes(sha(wasm)), rustBytes(wrong))
	if r := f.reject(err); r.Code != CanisterError || r.Message != want {
		t.Fatalf("wrong module hash: %v\nwant %q", err, want)
	}
	_, err = f.ingress(user, "install_chunked_code", installChunkedArg("install", target, nil, append(slices.Clone(hashes), sha([]byte("absent"))), sha(wasm)))
	if r := f.reject(err); !strings.Contains(r.Message, "Error from Wasm chunk store: Chunk with hash") {
		t.Fatalf("a missing chunk: %v", err)
	}
	// Chunks in the wrong order make another module, whose hash is not
	// the one given.
	swapped := slices.Clone(hashes)
	swapped[0], swapped[1] = swapped[1], swapped[0]
	_, err = f.ingress(user, "install_chunked_code", installChunkedArg("install", target, nil, swapped, sha(wasm)))
	if r := f.reject(err); !strings.Contains(r.Message, "does not match given hash") {
		t.Fatalf("chunks out of order: %v", err)
	}
	if st, _ := f.node.Status(ctx, target); st.ModuleHash != "" {
		t.Fatalf("a refused install_chunked_code installed %s", st.ModuleHash)
	}

	if _, err := f.ingress(user, "install_chunked_code", installChunkedArg("install", target, nil, hashes, sha(wasm))); err != nil {
		t.Fatalf("install_chunked_code: %v", err)
	}
	eq(t, "inc", f.update(target, "inc", noArgs), natReply(1))
	eq(t, "inc", f.update(target, "inc", noArgs), natReply(2))
	if st, _ := f.node.Status(ctx, target); st.ModuleHash != fmt.Sprintf("%x", sha(wasm)) || st.WasmChunkStoreBytes != n*maxChunkBytes {
		t.Fatalf("after install: module %s, chunk store %d bytes (installing does not clear it)", st.ModuleHash, st.WasmChunkStoreBytes)
	}

	// Upgrade from another canister's chunk store: the caller controls
	// both. The counter keeps its count (Motoko stable state).
	storeC, err := f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{user}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range chunks {
		if _, err := f.node.UploadChunk(ctx, storeC, user, c); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.ingress(user, "install_chunked_code", installChunkedArg("upgrade", target, &storeC, hashes, sha(wasm))); err != nil {
		t.Fatalf("upgrade from another store: %v", err)
	}
	eq(t, "get after upgrade", f.query(target, "get", noArgs), natReply(2))
	// A store canister the caller does not control: refused, even though
	// the caller controls the target.
	alien, err := f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{mallory}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range chunks {
		if _, err := f.node.UploadChunk(ctx, alien, mallory, c); err != nil {
			t.Fatal(err)
		}
	}
	_, err = f.ingress(user, "install_chunked_code", installChunkedArg("reinstall", target, &alien, hashes, sha(wasm)))
	if r := f.reject(err); !strings.Contains(r.Message, "Only controllers of canister "+alien.String()) {
		t.Fatalf("install from a store the caller does not control: %v", err)
	}
	// Nor can the store's controller install into a target it does not
	// control.
	_, err = f.ingress(mallory, "install_chunked_code", installChunkedArg("reinstall", target, &alien, hashes, sha(wasm)))
	if r := f.reject(err); !strings.Contains(r.Message, "Only controllers of canister "+target.String()+" can call install_code") {
		t.Fatalf("install into a target the caller does not control: %v", err)
	}
	eq(t, "get after refused reinstalls", f.query(target, "get", noArgs), natReply(2))

	// A gzipped module in chunks: reinstall, state reset.
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(wasm)
	zw.Close()
	var gzHashes [][]byte
	for _, c := range split(gz.Bytes(), 50<<10) {
		h, err := f.node.UploadChunk(ctx, storeC, user, c)
		if err != nil {
			t.Fatal(err)
		}
		gzHashes = append(gzHashes, h)
	}
	if _, err := f.ingress(user, "install_chunked_code", installChunkedArg("reinstall", target, &storeC, gzHashes, sha(gz.Bytes()))); err != nil {
		t.Fatalf("reinstall of a gzipped module from chunks: %v", err)
	}
	eq(t, "get after reinstall", f.query(target, "get", noArgs), natReply(0))

	// clear_chunk_store empties the store and gives its memory back.
	usedBefore, _ = f.node.mem.inUse()
	if _, err := f.ingress(user, "clear_chunk_store", idArg(storeC)); err != nil {
		t.Fatal(err)
	}
	if b, err := f.ingress(user, "stored_chunks", idArg(storeC)); err != nil || len(chunkHashes(t, b)) != 0 {
		t.Fatalf("stored_chunks after clear_chunk_store: %x %v", b, err)
	}
	storeChunks := uint64(len(chunks) + len(gzHashes))
	if used, _ := f.node.mem.inUse(); used != usedBefore-storeChunks*maxChunkBytes {
		t.Fatalf("memory in use after clear_chunk_store %d, want %d", used, usedBefore-storeChunks*maxChunkBytes)
	}
	// uninstall_code clears it too.
	if _, err := f.ingress(user, "uninstall_code", idArg(target)); err != nil {
		t.Fatal(err)
	}
	if b, err := f.ingress(user, "stored_chunks", idArg(target)); err != nil || len(chunkHashes(t, b)) != 0 || f.chunkStoreSize(target) != 0 {
		t.Fatalf("stored_chunks after uninstall_code: %x %v", b, err)
	}
	// delete_canister drops the store with the canister, and its memory.
	usedBefore, _ = f.node.mem.inUse()
	if _, err := f.ingress(mallory, "stop_canister", idArg(alien)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ingress(mallory, "delete_canister", idArg(alien)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.node.store.ChunkHashes(alien.Bytes()); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("chunk store of a deleted canister: %v", err)
	}
	if used, _ := f.node.mem.inUse(); used != usedBefore-n*maxChunkBytes {
		t.Fatalf("memory in use after delete %d, want %d", used, usedBefore-n*maxChunkBytes)
	}
	f.restart()
	if used, _ := f.node.mem.inUse(); used != usedBefore-n*maxChunkBytes {
		t.Fatalf("memory in use after delete and restart %d, want %d", used, usedBefore-n*maxChunkBytes)
	}
}

func sha(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

// The chunk store from a canister's side, in a live sandbox: a canister
// uses its own store (the canister itself may), installs a real module
// from it into a canister it controls; it cannot upload into, read or
// install from the store of a canister it does not control, and nothing
// changes there.
func TestChunkStoreFromCanister(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "sandbox")
	cfg.Sandbox.Strict = true
	f := openFixture(t, cfg)
	ctx := context.Background()
	proxy := f.install(mustWat(t, mgmtProxyWat), nil)
	target, err := f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{user, proxy}})
	if err != nil {
		t.Fatal(err)
	}
	victim, err := f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{user}})
	if err != nil {
		t.Fatal(err)
	}
	wasm := module(t, corpusDir, "counter")
	var hashes [][]byte
	for _, c := range split(wasm, 64<<10) {
		b := f.viaCanister(proxy, "upload_chunk", uploadArg(t, proxy, c)) // its own store
		if bytes.HasPrefix(b, []byte("rejected:")) {
			t.Fatalf("upload_chunk into its own store: %s", b)
		}
		a, err := candid.Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		h, _ := blobField(a.Values[0].(candid.Record), "hash")
		hashes = append(hashes, h)
	}
	if b := f.viaCanister(proxy, "stored_chunks", encodeTyped(t, "stored_chunks", idArg(proxy))); !sameHashes(chunkHashes(t, b), hashes) {
		t.Fatalf("stored_chunks of its own store: %q", b)
	}
	// The victim's store holds a chunk of its controller's.
	secret := []byte("the victim's chunk")
	if _, err := f.node.UploadChunk(ctx, victim, user, secret); err != nil {
		t.Fatal(err)
	}
	// The attacks: each is refused with CANISTER_ERROR (5) and says why.
	for _, a := range []struct {
		method string
		arg    []byte
		who    principal.Principal
	}{
		{"upload_chunk", uploadArg(t, victim, []byte("planted")), victim},
		{"stored_chunks", encodeTyped(t, "stored_chunks", idArg(victim)), victim},
		{"clear_chunk_store", encodeTyped(t, "clear_chunk_store", idArg(victim)), victim},
		// Its own target, the victim's chunks.
		{"install_chunked_code", encodeTyped(t, "install_chunked_code", installChunkedArg("install", target, &victim, [][]byte{sha(secret)}, sha(secret))), victim},
		// The victim as target, its own chunks.
		{"install_chunked_code", encodeTyped(t, "install_chunked_code", installChunkedArg("install", victim, &proxy, hashes, sha(wasm))), victim},
	} {
		b := f.viaCanister(proxy, a.method, a.arg)
		if !bytes.HasPrefix(b, []byte("rejected:5")) || !strings.Contains(string(b), "Only controllers of canister "+a.who.String()) {
			t.Fatalf("%s against the victim from a canister: %q", a.method, b)
		}
	}
	hs, err := f.node.StoredChunks(ctx, victim, user)
	if err != nil || len(hs) != 1 || !bytes.Equal(hs[0], sha(secret)) {
		t.Fatalf("the victim's store after the attacks: %x %v", hs, err)
	}
	if st, _ := f.node.Status(ctx, victim); st.ModuleHash != "" {
		t.Fatalf("the victim got a module: %s", st.ModuleHash)
	}
	// What it may do: install from its own store into its target.
	b := f.viaCanister(proxy, "install_chunked_code", encodeTyped(t, "install_chunked_code", installChunkedArg("install", target, nil, nil, nil)))
	if !bytes.HasPrefix(b, []byte("rejected:5")) {
		t.Fatalf("install_chunked_code of the target's (empty) store: %q", b)
	}
	b = f.viaCanister(proxy, "install_chunked_code", encodeTyped(t, "install_chunked_code", installChunkedArg("install", target, &proxy, hashes, sha(wasm))))
	if bytes.HasPrefix(b, []byte("rejected:")) {
		t.Fatalf("install_chunked_code from its own store: %s", b)
	}
	eq(t, "inc on the canister installed by a canister", f.update(target, "inc", noArgs), natReply(1))
}

// The chunk store's bounds: at most 100 chunks; each counts as 1 MiB
// against memory_allocation, the freezing threshold and the node's memory
// capacity.
func TestChunkStoreLimits(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "")
	cfg.MemoryCapacity = 150 * maxChunkBytes
	f := openFixture(t, cfg)
	ctx := context.Background()
	create := func(c *cycles.Amount) principal.Principal {
		id, err := f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{user}, Cycles: c})
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	full := create(nil)
	for i := range maxChunks {
		if _, err := f.node.UploadChunk(ctx, full, user, []byte(fmt.Sprintf("chunk %d", i))); err != nil {
			t.Fatalf("chunk %d: %v", i, err)
		}
	}
	_, err := f.node.UploadChunk(ctx, full, user, []byte("one more"))
	if r := f.reject(err); !strings.Contains(r.Message, "Error from Wasm chunk store: Wasm chunk store has already reached maximum capacity") {
		t.Fatalf("chunk 101: %v", err)
	}
	// A chunk already there is still accepted: it takes nothing.
	if _, err := f.node.UploadChunk(ctx, full, user, []byte("chunk 7")); err != nil {
		t.Fatalf("a chunk already stored, in a full store: %v", err)
	}
	// More than 100 hashes in one install_chunked_code.
	many := make([][]byte, maxChunks+1)
	for i := range many {
		many[i] = sha([]byte(fmt.Sprintf("chunk %d", i%maxChunks)))
	}
	_, err = f.ingress(user, "install_chunked_code", installChunkedArg("install", full, nil, many, sha(nil)))
	if r := f.reject(err); !strings.Contains(r.Message, "at most 100") {
		t.Fatalf("101 chunk hashes: %v", err)
	}

	// memory_allocation of 2 MiB holds two chunks.
	alloc := create(nil)
	if _, err := f.ingress(user, "update_settings", fmt.Sprintf(`(record { canister_id = principal "%s"; settings = record { memory_allocation = opt %d } })`, alloc, 2*maxChunkBytes)); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if _, err := f.node.UploadChunk(ctx, alloc, user, []byte{byte(i)}); err != nil {
			t.Fatalf("chunk %d within the allocation: %v", i, err)
		}
	}
	_, err = f.node.UploadChunk(ctx, alloc, user, []byte{2})
	if r := f.reject(err); !strings.Contains(r.Message, "beyond its memory allocation of 2097152 bytes") {
		t.Fatalf("a chunk beyond memory_allocation: %v", err)
	}

	// A balance that cannot keep another MiB above the freezing threshold.
	poor := create(&cycles.Amount{Lo: 1000})
	_, err = f.node.UploadChunk(ctx, poor, user, []byte("x"))
	if r := f.reject(err); !strings.Contains(r.Message, "Error from Wasm chunk store: Cannot upload chunk. At least") {
		t.Fatalf("an upload the balance cannot sustain: %v", err)
	}

	// The node's capacity: 150 MiB, 100 + 2 held; the rest fills, then no more.
	greedy := create(nil)
	used, capacity := f.node.mem.inUse()
	room := (capacity - used) / maxChunkBytes
	for i := range room {
		if _, err := f.node.UploadChunk(ctx, greedy, user, []byte(fmt.Sprintf("greedy %d", i))); err != nil {
			t.Fatalf("chunk %d of %d that fit the node: %v", i, room, err)
		}
	}
	_, err = f.node.UploadChunk(ctx, greedy, user, []byte("too much"))
	if r := f.reject(err); !strings.Contains(r.Message, "the node's memory capacity of") {
		t.Fatalf("a chunk beyond the node's capacity: %v", err)
	}
	if st, _ := f.node.Status(ctx, greedy); st.WasmChunkStoreBytes != room*maxChunkBytes {
		t.Fatalf("refused uploads were counted: %d bytes", st.WasmChunkStoreBytes)
	}
}

// growWat grows its heap by the number of pages in its (raw, 4-byte
// little-endian) argument, and traps when memory.grow fails.
const growWat = `
(module
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "trap" (func $trap (param i32 i32)))
  (memory 1)
  (data (i32.const 16) "grow failed")
  (func (export "canister_update grow")
    (call $arg_copy (i32.const 0) (i32.const 0) (i32.const 4))
    (if (i32.eq (memory.grow (i32.load (i32.const 0))) (i32.const -1))
      (then (call $trap (i32.const 16) (i32.const 11))))
    (call $reply))
)`

// The chunk store takes its share of memory_allocation from the heap: with
// 2 MiB of chunks under a 4 MiB allocation the heap cannot grow past
// about 2 MiB, though it could without them.
func TestChunkStoreCountsAgainstAllocation(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	id := f.install(mustWat(t, growWat), nil)
	if _, err := f.ingress(user, "update_settings", fmt.Sprintf(`(record { canister_id = principal "%s"; settings = record { memory_allocation = opt %d } })`, id, 4<<20)); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if _, err := f.node.UploadChunk(ctx, id, user, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	pages := func(n uint32) []byte { return binary.LittleEndian.AppendUint32(nil, n) }
	_, err := f.node.Update(ctx, Message{Canister: id, Method: "grow", Arg: pages(40), Caller: user}) // 2.5 MiB
	if r := f.reject(err); !strings.Contains(r.Message, "grow failed") && !strings.Contains(r.Message, "memory allocation") {
		t.Fatalf("growing the heap into the chunk store's share of the allocation: %v", err)
	}
	f.update(id, "grow", pages(16)) // 1 MiB still fits
	if st, _ := f.node.Status(ctx, id); st.MemorySize > 4<<20 || st.WasmChunkStoreBytes != 2<<20 {
		t.Fatalf("memory %d bytes (chunk store %d) under a 4 MiB allocation", st.MemorySize, st.WasmChunkStoreBytes)
	}
}
