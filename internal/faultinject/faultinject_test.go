package faultinject

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// lastTxid follows bbolt's commits: each Update is one more transaction.
func TestLastTxidCountsCommits(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	start := lastTxid(f)
	for i := range uint64(5) {
		if err := db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte("b"))
			if err != nil {
				return err
			}
			return b.Put([]byte{byte(i)}, []byte("v"))
		}); err != nil {
			t.Fatal(err)
		}
		if got := lastTxid(f); got != start+i+1 {
			t.Fatalf("after %d commits: txid %d, want %d", i+1, got, start+i+1)
		}
	}
	empty, err := os.Create(filepath.Join(t.TempDir(), "empty"))
	if err != nil {
		t.Fatal(err)
	}
	defer empty.Close()
	if got := lastTxid(empty); got != 0 {
		t.Fatalf("a file without meta pages: txid %d", got)
	}
}

// A child that KillAfterTx watches dies of SIGKILL once that many
// transactions committed: it acknowledged at least the ones before the
// last, and the file holds them all.
func TestKillAfterTxKillsChild(t *testing.T) {
	const killTx = 3
	if path := os.Getenv("CORDON_FAULTINJECT_DB"); path != "" {
		db, err := bolt.Open(path, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		KillAfterTx(path, killTx, 0)
		for i := 1; i <= 10_000; i++ {
			if err := db.Update(func(tx *bolt.Tx) error {
				b, err := tx.CreateBucketIfNotExists([]byte("b"))
				if err != nil {
					return err
				}
				return b.Put([]byte(fmt.Sprint(i)), []byte("v"))
			}); err != nil {
				t.Fatal(err)
			}
			fmt.Printf("ACK %d\n", i)
		}
		fmt.Println("NOT KILLED")
		os.Exit(4)
	}
	path := filepath.Join(t.TempDir(), "t.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	start := lastTxid(f)
	acked := 0
	RunUntilKilled(t, Child("TestKillAfterTxKillsChild", "CORDON_FAULTINJECT_DB="+path), 0, func(line string) bool {
		_, err := fmt.Sscanf(line, "ACK %d", &acked)
		return err == nil
	})
	if acked < killTx-1 {
		t.Fatalf("the child acknowledged %d commits before its kill, want at least %d", acked, killTx-1)
	}
	if got := lastTxid(f); got < start+killTx {
		t.Fatalf("the child was killed at txid %d, before %d", got, start+killTx)
	}
	t.Logf("killed after %d acknowledged commits, txid %d (started at %d)", acked, lastTxid(f), start)
}

// A child that does not die of SIGKILL fails RunUntilKilled: here one
// that exits 0 (checked on a recording testing.TB).
func TestRunUntilKilledNeedsSIGKILL(t *testing.T) {
	if os.Getenv("CORDON_FAULTINJECT_EXIT") != "" {
		fmt.Println("hello")
		os.Exit(0)
	}
	rec := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() { // Fatalf ends the goroutine it is called from
		defer close(done)
		RunUntilKilled(rec, Child("TestRunUntilKilledNeedsSIGKILL", "CORDON_FAULTINJECT_EXIT=1"), 0, func(string) bool { return false })
	}()
	<-done
	if !strings.Contains(rec.msg, "did not die of SIGKILL") || !strings.Contains(rec.msg, "hello") {
		t.Fatalf("a child that exited 0: %q", rec.msg)
	}
}

// KillAt SIGKILLs the child at the first line at takes, having shown it
// every line before; one that never gets there is killed at the timeout.
func TestKillAtKillsAtTheLine(t *testing.T) {
	switch os.Getenv("CORDON_FAULTINJECT_KILLAT") {
	case "lines":
		for i := 0; ; i++ {
			fmt.Printf("LINE %d\n", i)
		}
	case "wait":
		fmt.Println("WAITING")
		time.Sleep(time.Hour) // until the parent's timeout kills it
		os.Exit(0)
	}
	var seen []string
	reached := KillAt(t, Child("TestKillAtKillsAtTheLine", "CORDON_FAULTINJECT_KILLAT=lines"), 0, func(line string) bool {
		seen = append(seen, line)
		return line == "LINE 3"
	})
	if !reached || strings.Join(seen, ",") != "LINE 0,LINE 1,LINE 2,LINE 3" {
		t.Fatalf("reached %v after the lines %q, want LINE 0 to LINE 3", reached, seen)
	}
	if KillAt(t, Child("TestKillAtKillsAtTheLine", "CORDON_FAULTINJECT_KILLAT=wait"), time.Second, func(string) bool { return false }) {
		t.Fatal("a child that never printed the line got there")
	}
}

type fatalRecorder struct {
	testing.TB
	msg string
}

func (r *fatalRecorder) Fatal(args ...any) {
	r.msg = fmt.Sprint(args...)
	runtime.Goexit()
}

func (r *fatalRecorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// In a child (the filter stays), arm(2) fails the second fdatasync from
// then on with EIO, and only that one.
func TestSyncFaultsFailsTheArmedSync(t *testing.T) {
	if os.Getenv("CORDON_FAULTINJECT_SYNC") != "" {
		f, err := os.Create(filepath.Join(t.TempDir(), "f"))
		if err != nil {
			t.Fatal(err)
		}
		arm := SyncFaults(t)
		arm(2)
		for i := range 4 {
			fmt.Printf("SYNC %d %v\n", i+1, unix.Fdatasync(int(f.Fd())))
		}
		return
	}
	checkChildSyncs(t, "TestSyncFaultsFailsTheArmedSync", "CORDON_FAULTINJECT_SYNC=1",
		fmt.Sprintf("SYNC 1 <nil>\nSYNC 2 %v\nSYNC 3 <nil>\nSYNC 4 <nil>\n", unix.EIO))
}

// In a child, DirSyncFaults fails the fsync and fdatasync of a directory
// with EIO and counts them; a regular file's run.
func TestDirSyncFaultsFailsDirectorySyncs(t *testing.T) {
	if os.Getenv("CORDON_FAULTINJECT_DIRSYNC") != "" {
		dir := t.TempDir()
		f, err := os.Create(filepath.Join(dir, "f"))
		if err != nil {
			t.Fatal(err)
		}
		d, err := os.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		failed := DirSyncFaults(t)
		fmt.Printf("SYNC file fsync %v\n", unix.Fsync(int(f.Fd())))
		fmt.Printf("SYNC dir fsync %v\n", unix.Fsync(int(d.Fd())))
		fmt.Printf("SYNC file fdatasync %v\n", unix.Fdatasync(int(f.Fd())))
		fmt.Printf("SYNC dir fdatasync %v\n", unix.Fdatasync(int(d.Fd())))
		fmt.Printf("SYNC failed %d\n", failed.Load())
		return
	}
	checkChildSyncs(t, "TestDirSyncFaultsFailsDirectorySyncs", "CORDON_FAULTINJECT_DIRSYNC=1",
		fmt.Sprintf("SYNC file fsync <nil>\nSYNC dir fsync %v\nSYNC file fdatasync <nil>\nSYNC dir fdatasync %v\nSYNC failed 2\n", unix.EIO, unix.EIO))
}

// checkChildSyncs runs test again in a Child, with env, and checks the
// lines it printed that begin with SYNC are want.
func checkChildSyncs(t *testing.T, test, env, want string) {
	t.Helper()
	if runtime.GOARCH != "amd64" {
		t.Skip("the filter checks the x86-64 syscall numbers")
	}
	out, err := Child(test, env).Output()
	if strings.Contains(string(out), "--- SKIP") {
		t.Skipf("child skipped:\n%s", out)
	}
	if err != nil {
		t.Fatalf("child: %v; output:\n%s", err, out)
	}
	var got strings.Builder
	for line := range strings.Lines(string(out)) {
		if strings.HasPrefix(line, "SYNC ") {
			got.WriteString(line)
		}
	}
	if got.String() != want {
		t.Fatalf("child's syncs:\n%s\nwant:\n%s", got.String(), want)
	}
}

// No package's non-test code imports this one: it imports testing, and
// what it does (seccomp filters, SIGKILL) has no place outside a test.
func TestOnlyTestsImportIt(t *testing.T) {
	gobin, err := exec.LookPath("go") // go test puts its own first in PATH
	if err != nil {
		t.Skip("no go command to list the packages with")
	}
	cmd := exec.Command(gobin, "list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, "github.com/cordon-dev/cordon/...")
	out, err := cmd.Output()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		t.Fatalf("go list: %v\n%s", err, ee.Stderr)
	} else if err != nil {
		t.Fatal(err)
	}
	const self = "github.com/cordon-dev/cordon/internal/faultinject"
	n := 0
	for line := range strings.Lines(string(out)) {
		n++
		fields := strings.Fields(line)
		for _, imp := range fields[1:] {
			if imp == self {
				t.Errorf("%s imports %s outside its tests", fields[0], self)
			}
		}
	}
	if n < 10 {
		t.Fatalf("go list named %d packages:\n%s", n, out)
	}
}
