package store

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// TestMergeKeys: records sorted in any number of runs and merged come out
// in the order of one sort (creation time, then name), ties included.
func TestMergeKeys(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	t0 := time.Date(2026, 11, 26, 7, 0, 0, 0, time.UTC)
	for _, n := range []int{0, 1, 2, 7, 100, 1000} {
		var rs []*Record
		for i := 0; i < n; i++ {
			rs = append(rs, &Record{Name: fmt.Sprintf("s%d", rng.IntN(n+1)*1000+i), CreationTime: t0.Add(time.Duration(rng.IntN(5)) * time.Nanosecond)})
		}
		want := slices.Clone(rs)
		slices.SortFunc(want, func(a, b *Record) int {
			if c := a.CreationTime.Compare(b.CreationTime); c != 0 {
				return c
			}
			return compareKeys(recordKey{name: a.Name}, recordKey{name: b.Name})
		})
		for runs := 1; runs <= 5; runs++ {
			parts := make([][]*Record, runs)
			for i, r := range rs {
				parts[i%runs] = append(parts[i%runs], r)
			}
			var keys [][]recordKey
			for _, p := range parts {
				keys = append(keys, sortedKeys(p))
			}
			got := mergeKeys(keys)
			if got == nil || !slices.Equal(got, want) {
				t.Fatalf("%d records in %d runs: merged order differs from one sort", n, runs)
			}
		}
		got := slices.Clone(rs)
		sortRecords(got)
		if !slices.Equal(got, want) {
			t.Fatalf("sortRecords of %d records differs from sorting by CreationTime.Compare", n)
		}
	}
}
