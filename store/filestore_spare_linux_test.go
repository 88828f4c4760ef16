package store_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/vmsnap/vmsnap/store"
	"github.com/vmsnap/vmsnap/store/storetest"
)

// spareNames returns the spare files of dir.
func spareNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".spare-") {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestFileStoreSparesUsed checks that the writes of a lock hold fill the
// spares the Lock made (the records come out whole), that writes beyond
// them create their own temporary files, and that the next Lock adopts
// what is left and makes up the rest.
func TestFileStoreSparesUsed(t *testing.T) {
	s, root := newFileStore(t)
	ctx := context.Background()
	dir := filepath.Join(root, dom)
	unlock, err := s.Lock(ctx, dom)
	must(t, err)
	unlock()
	made := spareNames(t, dir)
	if len(made) != 3 {
		t.Fatalf("spares after the first Lock: %v, want 3", made)
	}

	unlock, err = s.Lock(ctx, dom)
	must(t, err)
	if got := spareNames(t, dir); len(got) != 3 || strings.Join(got, ",") != strings.Join(made, ",") {
		t.Fatalf("the second Lock did not adopt the spares: %v, had %v", got, made)
	}
	var want []*store.Record
	for _, n := range []string{"one", "two"} {
		r := storetest.Sample(n, t0)
		put(t, s, r)
		want = append(want, r)
	}
	// The Commit's two files take the last spare and a temporary file.
	r := storetest.Sample("three", t0)
	must(t, s.Commit(ctx, dom, r, true))
	want = append(want, r)
	if got := spareNames(t, dir); len(got) != 0 {
		t.Errorf("spares after three records and a current: %v, want none", got)
	}
	unlock()
	for _, w := range want {
		got, err := s.Get(ctx, dom, w.Name)
		if err != nil {
			t.Fatalf("Get(%s): %v", w.Name, err)
		}
		if got.Name != w.Name || got.Description != w.Description || len(got.Disks) != len(w.Disks) {
			t.Errorf("record %s read back as %+v", w.Name, got)
		}
	}
	if cur, err := s.Current(ctx, dom); err != nil || cur != "three" {
		t.Errorf("Current = %q, %v; want three", cur, err)
	}

	unlock, err = s.Lock(ctx, dom)
	must(t, err)
	unlock()
	if got := spareNames(t, dir); len(got) != 3 {
		t.Errorf("spares after the third Lock: %v, want 3", got)
	}
}

// TestFileStoreHostileSpares plants files under the spare prefix that the
// store would not have made: Lock removes each of them (a link, never its
// target) and no write ever fills one.
func TestFileStoreHostileSpares(t *testing.T) {
	s, root := newFileStore(t)
	ctx := context.Background()
	put(t, s, storetest.Sample("a", t0))
	dir := filepath.Join(root, dom)
	outside := filepath.Join(t.TempDir(), "victim")
	must(t, os.WriteFile(outside, nil, 0o600))
	linked := filepath.Join(t.TempDir(), "linked")
	must(t, os.WriteFile(linked, nil, 0o600))
	must(t, os.WriteFile(filepath.Join(dir, ".spare-full"), []byte("name = \"x\"\n"), 0o600))
	must(t, os.WriteFile(filepath.Join(dir, ".spare-open"), nil, 0o644))
	must(t, os.Chmod(filepath.Join(dir, ".spare-open"), 0o644))
	must(t, os.Symlink(outside, filepath.Join(dir, ".spare-symlink")))
	must(t, os.Link(linked, filepath.Join(dir, ".spare-hardlink")))
	must(t, syscall.Mkfifo(filepath.Join(dir, ".spare-fifo"), 0o600))
	planted := []string{".spare-fifo", ".spare-full", ".spare-hardlink", ".spare-open", ".spare-symlink"}

	for i := 0; i < 2; i++ {
		unlock, err := s.Lock(ctx, dom)
		must(t, err)
		for _, n := range spareNames(t, dir) {
			for _, p := range planted {
				if n == p {
					t.Errorf("planted %s survived Lock", n)
				}
			}
		}
		for _, n := range []string{"b", "c", "d", "e"} {
			put(t, s, storetest.Sample(n+string(rune('0'+i)), t0))
		}
		unlock()
	}
	for _, p := range []string{outside, linked} {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(b, nil) {
			t.Errorf("%s changed: %q, %v", p, b, err)
		}
	}
	if fi, err := os.Stat(linked); err != nil || fi.Sys().(*syscall.Stat_t).Nlink != 1 {
		t.Errorf("the planted hard link's other name: %v", err)
	}
	rs, err := s.List(ctx, dom)
	if err != nil || len(rs) != 9 {
		t.Errorf("List = %d records, %v; want 9", len(rs), err)
	}
}
