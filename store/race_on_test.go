//go:build race

package store_test

// raceEnabled: the race detector slows the child processes down, so the
// multi-process tests do fewer rounds.
const raceEnabled = true
