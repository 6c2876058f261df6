//go:build race

package state_test

// The race detector slows the property tests about five times; they run
// fewer histories under it.
const propScale = 4
