package worker

/*
#define _GNU_SOURCE
#include <elf.h>
#include <link.h>
#include <malloc.h>
#include <stdint.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <unistd.h>

// cordon_drop_text unmaps, from this process's page tables only, the pages
// of the executable's read-only segments (code, read-only data): they stay
// in the page cache, shared with the host and every other sandbox, and the
// next message faults back those it runs. Segments that are or were
// writable (data, RELRO: relocated at start, their pages are private
// copies) are left alone, and so is everything that is not the executable
// (wasmtime's compiled code is anonymous memory, which MADV_DONTNEED would
// discard). Only whole pages inside a segment are dropped. Returns the bytes
// advised, or -1.
static long cordon_drop_text(void) {
	const ElfW(Phdr) *ph = (const ElfW(Phdr) *)getauxval(AT_PHDR);
	unsigned long n = getauxval(AT_PHNUM);
	long page = sysconf(_SC_PAGESIZE);
	if (ph == NULL || n == 0 || page <= 0) return -1;
	// The load bias: AT_PHDR is where PT_PHDR's p_vaddr was loaded.
	uintptr_t bias = 0, relro_lo = 0, relro_hi = 0;
	for (unsigned long i = 0; i < n; i++) {
		if (ph[i].p_type == PT_PHDR) bias = (uintptr_t)ph - ph[i].p_vaddr;
	}
	for (unsigned long i = 0; i < n; i++) {
		if (ph[i].p_type == PT_GNU_RELRO) {
			relro_lo = bias + ph[i].p_vaddr;
			relro_hi = relro_lo + ph[i].p_memsz;
		}
	}
	long total = 0;
	for (unsigned long i = 0; i < n; i++) {
		if (ph[i].p_type != PT_LOAD || (ph[i].p_flags & PF_W) != 0) continue;
		uintptr_t lo = bias + ph[i].p_vaddr, hi = lo + ph[i].p_filesz;
		lo = (lo + page - 1) & ~(uintptr_t)(page - 1);
		hi &= ~(uintptr_t)(page - 1);
		if (hi <= lo) continue;
		if (relro_hi > relro_lo && lo < relro_hi && relro_lo < hi) continue;
		// No huge-page mappings here from now on: the page cache holds
		// cordon's code in 2 MiB folios, and one fault would map a whole
		// folio back (PMD), megabytes of code the sandbox never runs.
		(void)madvise((void *)lo, hi - lo, MADV_NOHUGEPAGE);
		if (madvise((void *)lo, hi - lo, MADV_DONTNEED) == 0) total += (long)(hi - lo);
	}
	return total;
}

static void cordon_malloc_trim(void) { malloc_trim(0); }
*/
import "C"

import (
	"runtime"
	"runtime/debug"
	"sync"
	"time"
)

// idleTrimAfter is how long a canister sandbox waits for its next request
// before it gives memory back (trimIdle), unless its trims were undone soon
// (nextTrimAfter). Under steady traffic it never trims; an idle sandbox pays
// it once. The CPU it takes (one small garbage collection) is far below what
// the host's idle-CPU watchdog tolerates.
const idleTrimAfter = 500 * time.Millisecond

// maxIdleTrimAfter bounds the wait before a trim, and is how long a trim
// must last to count as worth its cost (nextTrimAfter).
const maxIdleTrimAfter = 32 * time.Second

// nextTrimAfter is the idle time before the next trim of a sandbox that
// waited after before its last trim and got its next request undone after
// that trim. A trim is not free once undone: the next message faults back
// the code it runs and instantiates afresh, about 8 ms of CPU on a virtual
// machine where a page fault is dear, against 0.2–0.5 ms for a query
// (BENCHMARKS.md, "Sandboxed queries under CPU contention"). A sandbox whose
// requests come a second or so apart would pay it on every one, and on a
// loaded machine, where every canister's requests come further apart
// because each takes longer, that made 100 canisters' queries 20 times
// dearer and their throughput collapse. So a trim undone within
// maxIdleTrimAfter sets the wait to twice the idle time it ended (up to
// maxIdleTrimAfter): requests that keep coming as far apart find the
// sandbox as they left it, and it trims once they stop. A trim that lasted
// longer was worth its cost: the wait goes back to idleTrimAfter.
func nextTrimAfter(after, undone time.Duration) time.Duration {
	if undone >= maxIdleTrimAfter {
		return idleTrimAfter
	}
	return min(max(2*(after+undone), idleTrimAfter), maxIdleTrimAfter)
}

// trimmer runs trimIdle once a sandbox has been idle for its wait (after).
type trimmer struct {
	mu    sync.Mutex
	timer *time.Timer
	// drop, if set, runs first: it closes the engine's kept query
	// instances (engine.DropKept), whose pages an idle sandbox must not hold.
	drop func()
	// after is the idle time before the next trim (0: idleTrimAfter);
	// trimmed, when the last trim began, if one did since the last request.
	after   time.Duration
	trimmed time.Time
	// keepText: the sandbox is primed (warmed) and no execution has run
	// since, so cordon's code stays mapped. A primed sandbox waits for its
	// canister's next message, which comes after the idle timeout
	// (minutes): had it dropped the code, that message would fault back
	// what it runs, about 5 ms on a VM where a page fault is dear, twice
	// what priming saved (BENCHMARKS.md, "Primed sandboxes keep their
	// code mapped"). The code is shared and charged where it was written
	// (the sealed executable), so keeping it costs the primed sandbox's
	// RSS and page tables, not node memory. Blank sandboxes still drop it:
	// they are more, and their first message loads a module anyway.
	keepText bool
	// now is time.Now (tests set it).
	now func() time.Time
}

func (t *trimmer) clock() time.Time {
	if t.now != nil {
		return t.now()
	}
	return time.Now()
}

// busy cancels a pending trim (a request is being served) and, if one ran
// since the last request, sets the next wait from how long it lasted.
func (t *trimmer) busy() {
	if t == nil {
		return
	}
	t.mu.Lock()
	if t.timer != nil {
		t.timer.Stop()
	}
	if !t.trimmed.IsZero() {
		t.after = nextTrimAfter(t.wait(), t.clock().Sub(t.trimmed))
		t.trimmed = time.Time{}
	}
	t.mu.Unlock()
}

// warmed: the sandbox is primed; idle trims keep cordon's code mapped
// until its first execution.
func (t *trimmer) warmed() {
	if t == nil {
		return
	}
	t.mu.Lock()
	t.keepText = true
	t.mu.Unlock()
}

// executing: an execution begins; from its end, idle trims drop cordon's
// code as well.
func (t *trimmer) executing() {
	if t == nil {
		return
	}
	t.mu.Lock()
	t.keepText = false
	t.mu.Unlock()
}

// wait is the idle time before the next trim (t.mu held).
func (t *trimmer) wait() time.Duration {
	if t.after == 0 {
		return idleTrimAfter
	}
	return t.after
}

// idle schedules a trim.
func (t *trimmer) idle() {
	if t == nil {
		return
	}
	t.mu.Lock()
	if t.timer == nil {
		t.timer = time.AfterFunc(t.wait(), t.trim)
	} else {
		t.timer.Reset(t.wait())
	}
	t.mu.Unlock()
}

// trim drops the kept instances, then trims.
func (t *trimmer) trim() {
	t.mu.Lock()
	t.trimmed = t.clock()
	keepText := t.keepText
	t.mu.Unlock()
	if t.drop != nil {
		t.drop()
	}
	trimIdle(keepText)
}

// heapTrimAbove: an idle worker collects and returns its Go heap only when
// that much of it is resident. A canister worker's steady heap is under
// 1 MiB (the artifact is mapped, not read: mapArtifact); a collection costs
// about 0.5 MiB of the runtime's own metadata the first time, so it pays
// only after a message left garbage (large arguments, replies, heaps).
const heapTrimAbove = 2 << 20

// goHeapResident is the Go heap's resident bytes: objects (garbage
// included until collected), the unused parts of their spans (together, the
// in-use spans), and free pages not yet returned. runtime.ReadMemStats, not
// runtime/metrics: that package's initialisation (its table of every
// metric, ~0.2 ms) would run in every sandbox at start, and this runs only
// when an idle sandbox trims.
func goHeapResident() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.HeapIdle - m.HeapReleased
}

// trimIdle returns what an idle canister sandbox does not need: the Go
// heap's garbage and free pages if there is enough of it (heapTrimAbove),
// glibc's free arena memory (wasmtime's Rust allocations), and this
// process's mappings of cordon's read-only segments (see cordon_drop_text).
// The first two are the sandbox's own memory, charged to its cgroup; the
// last is shared (the sealed executable), so it lowers RSS and page tables,
// not the node's memory. Running concurrently with an execution would be
// correct, only wasted: each step is safe at any time.
func trimIdle(keepText bool) {
	if goHeapResident() > heapTrimAbove {
		debug.FreeOSMemory()
	}
	C.cordon_malloc_trim()
	if !keepText {
		dropText()
	}
}

// dropText is cordon_drop_text: the bytes advised, or -1.
func dropText() int64 { return int64(C.cordon_drop_text()) }
