//go:build !race

package state_test

const propScale = 1
