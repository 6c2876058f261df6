package worker

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/boundary"
	"github.com/cordon-dev/cordon/internal/faultinject"
)

// exeMapping is one mapping of this process's executable in
// /proc/self/smaps.
type exeMapping struct {
	perms  string
	rss    uint64 // bytes
	noHuge bool   // VmFlags "nh": MADV_NOHUGEPAGE
	anon   uint64 // Anonymous: copied-on-write pages, bytes
}

// exeMappings reads /proc/<pid>/smaps (pid 0: self) for the mappings of
// file exe.
func exeMappings(t *testing.T, pid int, exe string) []exeMapping {
	t.Helper()
	p := "/proc/self/smaps"
	if pid != 0 {
		p = "/proc/" + strconv.Itoa(pid) + "/smaps"
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []exeMapping
	var cur *exeMapping
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if strings.Contains(fields[0], "-") && len(fields) >= 5 && !strings.HasSuffix(fields[0], ":") {
			cur = nil
			if len(fields) >= 6 && fields[5] == exe {
				out = append(out, exeMapping{perms: fields[1]})
				cur = &out[len(out)-1]
			}
			continue
		}
		if cur == nil {
			continue
		}
		kb := func() uint64 { n, _ := strconv.ParseUint(fields[1], 10, 64); return n << 10 }
		switch fields[0] {
		case "Rss:":
			cur.rss = kb()
		case "Anonymous:":
			cur.anon = kb()
		case "VmFlags:":
			for _, fl := range fields[1:] {
				cur.noHuge = cur.noHuge || fl == "nh"
			}
		}
	}
	return out
}

func sumRSS(ms []exeMapping, keep func(exeMapping) bool) (n uint64) {
	for _, m := range ms {
		if keep(m) {
			n += m.rss
		}
	}
	return n
}

// relocated is written at run time into the executable's writable
// segment; dropText must leave that segment (and its private pages) alone.
var relocated = []string{"written", "at", "run time"}

// dropText takes this process's mappings of its executable's read-only
// segments out of its page tables (the code faults back in as it runs) and
// never touches a writable segment: the data written at run time, and the
// private pages holding it, survive.
func TestDropTextKeepsWritableSegments(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	relocated = append(relocated, strconv.Itoa(os.Getpid()))
	readOnly := func(m exeMapping) bool { return !strings.Contains(m.perms, "w") }
	writable := func(m exeMapping) bool { return strings.Contains(m.perms, "w") }
	before := exeMappings(t, 0, exe)
	roBefore, rwBefore := sumRSS(before, readOnly), sumRSS(before, writable)
	if roBefore == 0 || rwBefore == 0 {
		t.Fatalf("no resident mappings of %s: %+v", exe, before)
	}
	n := dropText()
	if n <= 0 {
		t.Fatalf("dropText advised %d bytes", n)
	}
	after := exeMappings(t, 0, exe)
	roAfter := sumRSS(after, readOnly)
	// What the code since the drop ran (reading smaps) came back, not more.
	if roAfter >= roBefore {
		t.Fatalf("read-only mappings of the executable: %d bytes resident before, %d after", roBefore, roAfter)
	}
	var privBefore, privAfter uint64
	marked := false
	for _, m := range before {
		privBefore += m.anon
	}
	for _, m := range after {
		privAfter += m.anon
		marked = marked || readOnly(m) && m.noHuge
		if writable(m) && m.noHuge {
			t.Errorf("a writable mapping (%s) was advised", m.perms)
		}
	}
	if !marked {
		t.Errorf("no read-only mapping of the executable is marked MADV_NOHUGEPAGE: %+v", after)
	}
	if privAfter < privBefore {
		t.Fatalf("copied-on-write pages of the executable went from %d to %d bytes: a written page was dropped", privBefore, privAfter)
	}
	if got := strings.Join(relocated, " "); got != "written at run time "+strconv.Itoa(os.Getpid()) {
		t.Fatalf("data after the drop: %q", got)
	}
	t.Logf("read-only segments: %d KiB resident before, %d KiB after (%d KiB advised)", roBefore>>10, roAfter>>10, n>>10)
}

// A primed sandbox (warmed: its module loaded, an instance ready) keeps
// cordon's code mapped through its idle trims until its first execution,
// which would otherwise fault it back in (about 5 ms on a VM where a page
// fault is dear, twice what a primed message costs). From that execution on
// it trims as any canister sandbox does; one never warmed drops the code at
// its first trim. dropText marks the segments it drops MADV_NOHUGEPAGE
// ("nh" in smaps), and the mark stays: the test runs in a child process, whose
// executable no trim has touched yet.
func TestPrimedTrimKeepsCodeUntilTheFirstExecution(t *testing.T) {
	if os.Getenv("CORDON_TEST_TRIM_KEEPS_CODE") == "" {
		if out, err := faultinject.Child(t.Name(), "CORDON_TEST_TRIM_KEEPS_CODE=1").Output(); err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		return
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dropped := func() bool {
		for _, m := range exeMappings(t, 0, exe) {
			if !strings.Contains(m.perms, "w") && m.noHuge {
				return true
			}
		}
		return false
	}
	if dropped() {
		t.Fatal("the executable's code was dropped before any trim")
	}
	w := &trimmer{}
	w.busy() // the Warm request
	w.warmed()
	w.trim()
	w.busy() // a request that is not an execution
	w.trim()
	if dropped() {
		t.Fatal("a primed sandbox's idle trim before its first execution dropped its code")
	}
	w.busy()
	w.executing()
	w.trim()
	if !dropped() {
		t.Fatal("after an execution, the idle trim kept the code")
	}
}

var garbageSink [][]byte

// After a message that left garbage (here 16 MiB of it), the idle trim
// collects it and gives the pages back; the resident Go heap falls by at
// least that much.
func TestTrimIdleReturnsGarbage(t *testing.T) {
	for i := 0; i < 16; i++ {
		b := make([]byte, 1<<20)
		for j := 0; j < len(b); j += 4096 {
			b[j] = 1
		}
		garbageSink = append(garbageSink, b)
	}
	garbageSink = nil
	before := goHeapResident()
	if before <= heapTrimAbove {
		t.Fatalf("resident Go heap %d bytes after 16 MiB of garbage", before)
	}
	trimIdle(false)
	after := goHeapResident()
	t.Logf("resident Go heap: %d KiB before the trim, %d KiB after", before>>10, after>>10)
	if after+12<<20 > before {
		t.Fatalf("resident Go heap: %d bytes before the trim, %d after", before, after)
	}
}

// A canister worker maps the artifact file the host passes instead of
// reading it into its heap; an empty file, a file of junk and a pipe (no
// size, nothing mapped) are refused as bad artifacts, and the worker goes
// on serving.
func TestLoadMapsArtifact(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	junk := filepath.Join(dir, "junk")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(junk, bytes.Repeat([]byte("junk"), 50000), 0o600); err != nil {
		t.Fatal(err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	pw.Write([]byte("not a file"))
	pw.Close()
	defer pr.Close()
	cw, _ := startWorker(t, "canister")
	for i, name := range []string{empty, junk, ""} {
		f := pr
		if name != "" {
			if f, err = os.Open(name); err != nil {
				t.Fatal(err)
			}
		}
		errc := make(chan error, 1)
		id := uint64(100 + i)
		go func() {
			errc <- cw.Send(&boundary.Msg{Kind: boundary.KindLoad, ID: id, Body: boundary.EncodeHash([32]byte{1}), Files: []*os.File{f}})
		}()
		err := cw.AwaitLoaded(id, [32]byte{1}, nil)
		if re, ok := err.(*boundary.RemoteError); !ok || re.Code != boundary.ErrArtifact {
			t.Fatalf("artifact %d: %v", i, err)
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		t.Logf("artifact %d: %v", i, err)
	}
	errc := make(chan error, 1)
	go func() { errc <- cw.Send(&boundary.Msg{Kind: boundary.KindPing, ID: 200}) }()
	if err := cw.AwaitPong(200, nil); err != nil || <-errc != nil {
		t.Fatalf("the worker stopped serving: %v", err)
	}
}

// An idle trim first drops the engine's kept query instances (their pages
// would otherwise stay resident while the sandbox idles).
func TestTrimDropsKeptInstances(t *testing.T) {
	dropped := 0
	tr := &trimmer{drop: func() { dropped++ }}
	tr.trim()
	if dropped != 1 {
		t.Fatalf("drop ran %d times, want 1", dropped)
	}
}

// A trim undone by a request soon after it sets the wait before the next
// one to twice the idle time that request ended, up to maxIdleTrimAfter: a
// sandbox whose requests come a second or so apart stops paying a trim (and
// the faults after it) on every one. One that stayed trimmed that long
// trims early again; requests that come before the trim change nothing.
func TestTrimBacksOffWhenUndone(t *testing.T) {
	now := time.Unix(1000, 0)
	tr := &trimmer{now: func() time.Time { return now }}
	wait := func() time.Duration {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		return tr.wait()
	}
	if w := wait(); w != idleTrimAfter {
		t.Fatalf("first wait %v, want %v", w, idleTrimAfter)
	}
	// Requests that come before a trim leave the wait alone.
	tr.busy()
	now = now.Add(time.Hour)
	tr.busy()
	if w := wait(); w != idleTrimAfter {
		t.Fatalf("wait %v after requests without a trim, want %v", w, idleTrimAfter)
	}
	// Requests 1.5 s apart: the first trim, at 0.5 s, is undone 1 s later;
	// the wait becomes 3 s, so the next requests find the sandbox untrimmed.
	now = now.Add(wait())
	tr.trim()
	now = now.Add(time.Second)
	tr.busy()
	if w, want := wait(), 3*time.Second; w != want {
		t.Fatalf("trim undone 1 s after a 0.5 s wait: wait %v, want %v", w, want)
	}
	// Longer idle times raise it up to the bound, not beyond.
	for i := 0; i < 3; i++ {
		now = now.Add(wait())
		tr.trim()
		now = now.Add(maxIdleTrimAfter / 2)
		tr.busy()
	}
	if w := wait(); w != maxIdleTrimAfter {
		t.Fatalf("wait %v after trims undone %v later, want %v", w, maxIdleTrimAfter/2, maxIdleTrimAfter)
	}
	// A trim that lasted the bound was worth it: back to the first wait.
	now = now.Add(wait())
	tr.trim()
	now = now.Add(maxIdleTrimAfter)
	tr.busy()
	if w := wait(); w != idleTrimAfter {
		t.Fatalf("wait %v after a trim that lasted %v, want %v", w, maxIdleTrimAfter, idleTrimAfter)
	}
}
