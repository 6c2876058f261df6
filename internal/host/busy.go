package host

import "sync"

// busyCounter counts the node's work in flight: queue drainers and
// management calls. Unlike a sync.WaitGroup it may go up from zero while
// someone waits for it to reach zero — a drainer starting as another ends,
// while Quiesce or Close waits — which a WaitGroup forbids ("WaitGroup is
// reused before previous Wait has returned"). Waiting means: until the count
// is zero at some moment.
type busyCounter struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed while n == 0; nil until first used
}

func (b *busyCounter) idleLocked() chan struct{} {
	if b.idle == nil {
		b.idle = make(chan struct{})
		if b.n == 0 {
			close(b.idle)
		}
	}
	return b.idle
}

// Add adds d (which may be negative) to the count.
func (b *busyCounter) Add(d int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	idle := b.idleLocked()
	was := b.n
	b.n += d
	if b.n < 0 {
		// A Done without its Add is a bug in this package; counting from
		// zero again keeps Close and Quiesce from waiting forever.
		b.n = 0
	}
	switch {
	case was == 0 && b.n > 0:
		b.idle = make(chan struct{})
	case was > 0 && b.n == 0:
		close(idle)
	}
}

// Done ends one unit of work.
func (b *busyCounter) Done() { b.Add(-1) }

// Idle returns a channel that is closed once the count is zero.
func (b *busyCounter) Idle() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.idleLocked()
}

// Wait waits until the count is zero.
func (b *busyCounter) Wait() { <-b.Idle() }
