package host

import (
	"container/list"
	"sync"
)

// defaultMemoryImages is how many canisters keep their memory images when
// Config.MemoryImages is 0.
const defaultMemoryImages = 1024

// imageLRU bounds how many canisters keep the memory images of their heap
// and stable memory (memfds the host keeps in step with the page maps, so
// that executions map the committed memory instead of copying it). Each
// image holds two descriptors and a copy of the memory; keeping one for
// every canister that ever ran would, with 10,000 canisters, take 20,000
// descriptors (the host's limit here is 20,000) and a second copy of every
// heap. Beyond the bound the least recently executed canisters give theirs
// back; their next execution builds them again, one pass over the stored
// pages.
type imageLRU struct {
	mu    sync.Mutex
	limit int
	order *list.List // of *canister, most recent first
	at    map[*canister]*list.Element
}

func newImageLRU(limit int) *imageLRU {
	if limit <= 0 {
		limit = defaultMemoryImages
	}
	return &imageLRU{limit: limit, order: list.New(), at: map[*canister]*list.Element{}}
}

// used records that c just executed (c.mu held, shared or exclusive), and
// releases the images of the coldest canisters beyond the bound. A
// canister whose lock is taken is executing or changing, and one whose
// images something shares cannot give them back yet: it keeps its images
// and counts as recent.
func (l *imageLRU) used(c *canister) {
	l.mu.Lock()
	if e, ok := l.at[c]; ok {
		l.order.MoveToFront(e)
	} else {
		l.at[c] = l.order.PushFront(c)
	}
	var cold []*canister
	for l.order.Len() > l.limit {
		e := l.order.Back()
		v := e.Value.(*canister)
		l.order.Remove(e)
		delete(l.at, v)
		cold = append(cold, v)
	}
	l.mu.Unlock()
	for _, v := range cold {
		if v.mu.TryLock() {
			// Held exclusively: nothing executes on its memories. A backed
			// memory's pages are its image's (one host copy): they are
			// copied out before the image goes (state.PageMap.Unback),
			// never dropped with it.
			heap, stable := v.heap.Unback(), v.stable.Unback()
			v.mu.Unlock()
			if heap && stable {
				continue
			}
			// Shared (a composite query's frame still running): it
			// keeps its images for now, and its place in the order, so
			// that a later turn gives them back; dropped from the order it
			// kept them, outside the bound, until it next executed.
		}
		l.mu.Lock()
		if _, ok := l.at[v]; !ok {
			l.at[v] = l.order.PushFront(v)
		}
		l.mu.Unlock()
	}
}

// forget drops c (deleted: its images are released with its state).
func (l *imageLRU) forget(c *canister) {
	l.mu.Lock()
	if e, ok := l.at[c]; ok {
		l.order.Remove(e)
		delete(l.at, c)
	}
	l.mu.Unlock()
}
