//go:build race

package store

// The race detector slows the long store tests several times; they run
// fewer commits under it.
const raceScale = 3
