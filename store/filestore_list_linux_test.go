package store_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vmsnap/vmsnap/store"
	"github.com/vmsnap/vmsnap/store/storetest"
)

// TestListBatches lists enough records for several batches per reader,
// and few enough for one batch read without the readers, some of them
// too large for a reader's buffer and some damaged, and checks that List
// returns what Get returns for each record, in order, and one error per
// damaged file, in directory order.
func TestListBatches(t *testing.T) {
	for _, tc := range []struct {
		n       int
		damaged []int
	}{{700, []int{3, 333, 600}}, {5, []int{3}}} {
		t.Run(fmt.Sprint(tc.n), func(t *testing.T) { testListBatches(t, tc.n, tc.damaged) })
	}
}

func testListBatches(t *testing.T, n int, damagedAt []int) {
	s, root := newFileStore(t)
	ctx := context.Background()
	dir := filepath.Join(root, dom)
	var want []string
	for i := 0; i < n; i++ {
		r := storetest.Sample(fmt.Sprintf("snap-%04d", i), t0.Add(time.Duration(n-i)*time.Second))
		if i%97 == 0 {
			// Larger than what is left of a reader's buffer, or than all of it.
			r.Config = bytes.Repeat([]byte("x = 1\n"), 5000*(1+i%3))
		}
		if i%50 == 7 {
			r.Labels, r.Extra = nil, nil
		}
		put(t, s, r)
		want = append([]string{r.Name}, want...) // newest first in time: listed last
	}
	damaged := map[string]bool{}
	for _, i := range damagedAt {
		name := fmt.Sprintf("snap-%04d", i)
		if err := os.WriteFile(filepath.Join(dir, store.RecordFileName(name)), []byte("name = \"other\"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		damaged[name] = true
	}
	got, err := s.List(ctx, dom)
	bad := store.RecordErrors(err)
	if len(bad) != len(damaged) || !store.OnlyRecordErrors(err) {
		t.Fatalf("List error = %v, want %d record errors", err, len(damaged))
	}
	for _, e := range bad {
		if !damaged[e.Name] {
			t.Errorf("record error for %q, not damaged", e.Name)
		}
	}
	var names []string
	for _, r := range got {
		names = append(names, r.Name)
		one, err := s.Get(ctx, dom, r.Name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(one.Config, r.Config) {
			t.Errorf("%s: config differs from Get's", r.Name)
		}
		a, b := *one, *r
		a.Config, b.Config = nil, nil
		if d := cmp.Diff(&a, &b); d != "" {
			t.Errorf("%s: List and Get differ (-Get +List):\n%s", r.Name, d)
		}
	}
	var wantOK []string
	for _, name := range want {
		if !damaged[name] {
			wantOK = append(wantOK, name)
		}
	}
	if d := cmp.Diff(wantOK, names); d != "" {
		t.Errorf("List order (-want +got):\n%s", d)
	}
}
