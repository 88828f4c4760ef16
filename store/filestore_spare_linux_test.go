package store_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

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

// inode returns path's inode number.
func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// checkSpares fails unless dir holds at most three spares, each an empty
// 0600 regular file.
func checkSpares(t *testing.T, dir string) {
	t.Helper()
	names := spareNames(t, dir)
	if len(names) > 3 {
		t.Errorf("%d spares: %v, want at most 3", len(names), names)
	}
	for _, n := range names {
		fi, err := os.Lstat(filepath.Join(dir, n))
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 || fi.Size() != 0 {
			t.Errorf("spare %s: %v, %v; want an empty 0600 file", n, fi.Mode(), err)
		}
	}
}

// TestFileStoreSparesUsed checks that the writes of a lock hold fill the
// spares an earlier holder left (the records come out whole, in the
// spares' own inodes), that writes beyond them create their own
// temporary files, that the first write starts making spares up, and that
// nothing but empty spares is left.
func TestFileStoreSparesUsed(t *testing.T) {
	s, root := newFileStore(t)
	ctx := context.Background()
	dir := filepath.Join(root, dom)
	put(t, s, storetest.Sample("zero", t0)) // creates the directory
	if got := spareNames(t, dir); len(got) != 0 {
		t.Fatalf("a Put without the lock made spares: %v", got)
	}
	// Three spares as an earlier holder leaves them.
	left := map[uint64]string{}
	for _, n := range []string{".spare-a", ".spare-b", ".spare-c"} {
		must(t, os.WriteFile(filepath.Join(dir, n), nil, 0o600))
		left[inode(t, filepath.Join(dir, n))] = n
	}
	unlock, err := s.Lock(ctx, dom)
	must(t, err)
	var want []*store.Record
	used := map[string]bool{}
	for _, n := range []string{"one", "two"} {
		r := storetest.Sample(n, t0)
		put(t, s, r)
		want = append(want, r)
		if sp, ok := left[inode(t, filepath.Join(dir, store.RecordFileName(n)))]; ok {
			used[sp] = true
		}
	}
	// The Commit's two files take the rest.
	r := storetest.Sample("three", t0)
	must(t, s.Commit(ctx, dom, r, true))
	want = append(want, r)
	for _, f := range []string{store.RecordFileName("three"), "current.xl"} {
		if sp, ok := left[inode(t, filepath.Join(dir, f))]; ok {
			used[sp] = true
		}
	}
	if len(used) != 3 {
		t.Errorf("the writes filled the spares %v, want all three of %v", used, left)
	}
	// More writes than spares: the others create temporary files.
	for _, n := range []string{"four", "five", "six", "seven"} {
		r := storetest.Sample(n, t0)
		put(t, s, r)
		want = append(want, r)
	}
	unlock()
	checkSpares(t, dir)
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
	// A hold whose writes took long enough leaves three spares for the
	// next one.
	unlock, err = s.Lock(ctx, dom)
	must(t, err)
	put(t, s, storetest.Sample("eight", t0))
	for i := 0; i < 500 && len(spareNames(t, dir)) < 3; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	unlock()
	if got := spareNames(t, dir); len(got) != 3 {
		t.Errorf("spares after a write and a wait: %v, want 3", got)
	}
	checkSpares(t, dir)
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
