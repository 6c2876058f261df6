package sandbox

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
)

// IDPool hands out host user ids (each also the group id) to sandboxes,
// one per live sandbox, when the host is root. The kernel keeps some limits
// per user: RLIMIT_NPROC, descriptors in flight in SCM_RIGHTS messages
// (bounded by the sender's RLIMIT_NOFILE), inotify watches, user namespaces.
// Sandboxes that shared one uid would share those: one could exhaust them
// for every other (e.g. keep descriptors in flight until no new sandbox can
// send its seccomp listener at start). With a pool, each live sandbox is its
// own user. The range must belong to no one else on the host.
type IDPool struct {
	mu          sync.Mutex
	first, last uint32
	next        uint32
	used        map[uint32]bool
}

// NewIDPool makes a pool of the ids first..last (inclusive).
func NewIDPool(first, last uint32) (*IDPool, error) {
	switch {
	case first == 0:
		return nil, errors.New("sandbox ids: the range must not include 0 (root)")
	case last < first:
		return nil, fmt.Errorf("sandbox ids: empty range %d-%d", first, last)
	case last >= 1<<32-1:
		return nil, errors.New("sandbox ids: 4294967295 is not a valid id")
	}
	return &IDPool{first: first, last: last, next: first, used: map[uint32]bool{}}, nil
}

// ParseIDRange parses "FIRST-LAST" (the sandbox.host_ids setting).
func ParseIDRange(s string) (*IDPool, error) {
	a, b, ok := strings.Cut(strings.TrimSpace(s), "-")
	if !ok {
		return nil, fmt.Errorf("sandbox ids: want FIRST-LAST, got %q", s)
	}
	first, err1 := strconv.ParseUint(strings.TrimSpace(a), 10, 32)
	last, err2 := strconv.ParseUint(strings.TrimSpace(b), 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("sandbox ids: want FIRST-LAST, got %q", s)
	}
	return NewIDPool(uint32(first), uint32(last))
}

// String is the range, FIRST-LAST.
func (p *IDPool) String() string { return fmt.Sprintf("%d-%d", p.first, p.last) }

// take returns a free id, round-robin so that a released id is reused last.
func (p *IDPool) take() (uint32, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := uint64(p.last-p.first) + 1
	for i := uint64(0); i < n; i++ {
		id := p.next
		if p.next == p.last {
			p.next = p.first
		} else {
			p.next++
		}
		if !p.used[id] {
			p.used[id] = true
			return id, true
		}
	}
	return 0, false
}

func (p *IDPool) put(id uint32) {
	p.mu.Lock()
	delete(p.used, id)
	p.mu.Unlock()
}

// InUse is how many ids are held by live sandboxes.
func (p *IDPool) InUse() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.used)
}
