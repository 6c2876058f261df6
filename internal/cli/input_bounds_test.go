package cli

import (
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// fifoWithWriter makes a FIFO that a writer fills with up to n bytes once
// a reader opens it; the returned function says how many it wrote.
func fifoWithWriter(t *testing.T, name string, n int64) (string, func() int64) {
	t.Helper()
	fifo := filepath.Join(t.TempDir(), name)
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	written := make(chan int64, 1)
	go func() {
		var total int64
		defer func() { written <- total }()
		f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
		if err != nil {
			return
		}
		defer f.Close()
		buf := make([]byte, 64<<10)
		for total < n {
			m, err := f.Write(buf)
			total += int64(m)
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { // unblocks a writer still waiting for a reader
		if f, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0); err == nil {
			f.Close()
		}
	})
	return fifo, func() int64 { return <-written }
}

// install reads at most limits.module_bytes of its FILE, and only a
// regular file: a FIFO, /dev/zero or a huge file named by mistake is
// refused, not read into memory without end or waited on; a gzip'd module
// is held to the limit once decompressed too.
func TestInstallReadIsBounded(t *testing.T) {
	home := t.TempDir()
	limit := []string{"--set", "limits.module_bytes=1MiB"}
	install := func(file string) run {
		return cordon(t, home, append(limit, "install", file)...)
	}
	// First a FIFO with a writer: read to its end (64 MiB) before this fix.
	fifo, written := fifoWithWriter(t, "module.wasm", 64<<20)
	if r := install(fifo); r.code != ExitError || !strings.Contains(r.stderr, "not a regular file (a FIFO)") {
		t.Fatalf("a FIFO (%d MiB written): exit %d: %s", written()>>20, r.code, r.stderr)
	}
	for _, tc := range []struct{ what, file, want string }{
		{"a device", "/dev/zero", "not a regular file (a character device)"},
		{"a directory", t.TempDir(), "not a regular file (a directory)"},
	} {
		if r := install(tc.file); r.code != ExitError || !strings.Contains(r.stderr, tc.want) {
			t.Fatalf("%s: exit %d: %s", tc.what, r.code, r.stderr)
		}
	}
	// A FIFO nobody writes to: opening it does not wait for a writer.
	lonely := filepath.Join(t.TempDir(), "lonely.wasm")
	if err := syscall.Mkfifo(lonely, 0o600); err != nil {
		t.Fatal(err)
	}
	if r := install(lonely); r.code != ExitError || !strings.Contains(r.stderr, "not a regular file") {
		t.Fatalf("a FIFO without a writer: exit %d: %s", r.code, r.stderr)
	}
	// A file beyond the limit, and a gzip'd one beyond it once inflated.
	big := filepath.Join(t.TempDir(), "big.wasm")
	if err := os.WriteFile(big, append([]byte("\x00asm\x01\x00\x00\x00"), make([]byte, 1<<20)...), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := install(big); r.code != ExitError || !strings.Contains(r.stderr, big) || !strings.Contains(r.stderr, "larger than limits.module_bytes") {
		t.Fatalf("a module beyond the limit: exit %d: %s", r.code, r.stderr)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(append([]byte("\x00asm\x01\x00\x00\x00"), make([]byte, 4<<20)...))
	zw.Close()
	bomb := filepath.Join(t.TempDir(), "bomb.wasm.gz")
	if err := os.WriteFile(bomb, gz.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := install(bomb); r.code != ExitError || !strings.Contains(r.stderr, "larger than limits.module_bytes (1048576 bytes) once decompressed") {
		t.Fatalf("a gzip'd module beyond the limit once inflated: exit %d: %s", r.code, r.stderr)
	}
	if got := must(t, cordon(t, home, "status")); strings.Contains(got, "-cai") {
		t.Fatalf("a refused install left a canister:\n%s", got)
	}
}

// --candid FILE is read as install's FILE is.
func TestCandidFileReadIsBounded(t *testing.T) {
	home := t.TempDir()
	id := must(t, cordon(t, home, "install", filepath.Join(corpus, "counter.wasm")))
	fifo, written := fifoWithWriter(t, "counter.did", 64<<20)
	r := cordon(t, home, "--set", "limits.module_bytes=1MiB", "query", "--candid", fifo, id, "get")
	if r.code != ExitError || !strings.Contains(r.stderr, "read Candid interface "+fifo+": not a regular file") {
		t.Fatalf("--candid FIFO (%d MiB written): exit %d: %s", written()>>20, r.code, r.stderr)
	}
	did := filepath.Join(t.TempDir(), "counter.did")
	if err := os.WriteFile(did, []byte("service : { get : () -> (nat) query }\n"+strings.Repeat(" ", 1<<20)), 0o600); err != nil {
		t.Fatal(err)
	}
	r = cordon(t, home, "--set", "limits.module_bytes=1MiB", "query", "--candid", did, id, "get")
	if r.code != ExitError || !strings.Contains(r.stderr, "larger than limits.module_bytes") {
		t.Fatalf("--candid beyond the limit: exit %d: %s", r.code, r.stderr)
	}
	if got := must(t, cordon(t, home, "query", "--candid", did, id, "get")); got != "(0 : nat)" {
		t.Fatalf("--candid within the default limit: %s", got)
	}
}

// initArgModule traps in canister_init unless its argument is
// (42 : nat), which its candid:args metadata declares: (nat).
func initArgModule(t *testing.T) []byte {
	t.Helper()
	wasm, err := wasmtime.Wat2Wasm(`(module
  (import "ic0" "msg_arg_data_size" (func $size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $copy (param i32 i32 i32)))
  (import "ic0" "trap" (func $trap (param i32 i32)))
  (memory 1)
  (data (i32.const 0) "DIDL\00\01\7d\2a")
  (data (i32.const 16) "init argument is not (42 : nat)")
  (func (export "canister_init")
    (if (i32.ne (call $size) (i32.const 8)) (then (call $trap (i32.const 16) (i32.const 31))))
    (call $copy (i32.const 100) (i32.const 0) (i32.const 8))
    (if (i64.ne (i64.load (i32.const 0)) (i64.load (i32.const 100))) (then (call $trap (i32.const 16) (i32.const 31))))))`)
	if err != nil {
		t.Fatal(err)
	}
	return appendCustomSection(wasm, "icp:public candid:args", []byte("(nat)"))
}

// The init argument is typed by the module's candid:args whether the module
// is given as FILE.wasm or FILE.wasm.gz (install's help offers both).
func TestInstallGzipTypesInitArg(t *testing.T) {
	wasm := initArgModule(t)
	dir := t.TempDir()
	plain := filepath.Join(dir, "init.wasm")
	if err := os.WriteFile(plain, wasm, 0o600); err != nil {
		t.Fatal(err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(wasm)
	zw.Close()
	zipped := filepath.Join(dir, "init.wasm.gz")
	if err := os.WriteFile(zipped, gz.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	must(t, cordon(t, home, "install", "--arg", "(42)", plain))
	if r := cordon(t, home, "install", "--arg", "(42)", zipped); r.code != 0 {
		t.Fatalf("the same module gzip'd, same --arg: exit %d: %s", r.code, r.stderr)
	}
}
