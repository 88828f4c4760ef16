package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vmsnap/vmsnap/store"
	"github.com/vmsnap/vmsnap/store/storetest"
)

// nobody is the uid the foreign-owner tests give files (nobody on Debian
// and most distributions).
const nobody = 65534

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown files to another user")
	}
}

// TestFileStoreForeignOwner gives one part of a populated store to another
// user: every operation that would trust it refuses, naming the path and
// the owner, and changes nothing; a foreign record is still removable.
func TestFileStoreForeignOwner(t *testing.T) {
	requireRoot(t)
	owner := fmt.Sprintf("uid %d", nobody)
	refused := func(t *testing.T, what string, err error, path string) {
		t.Helper()
		if !errors.Is(err, store.ErrForeignOwner) || !errors.Is(err, store.ErrUnsafePermissions) ||
			!strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), owner) {
			t.Errorf("%s = %v, want ErrForeignOwner (and ErrUnsafePermissions) naming %s and %s", what, err, path, owner)
		}
	}
	setup := func(t *testing.T) (*store.FileStore, string, string) {
		s, root := newFileStore(t)
		ctx := context.Background()
		put(t, s, storetest.Sample("bystander", t0))
		put(t, s, storetest.Sample("victim", t0.Add(time.Second)))
		must(t, s.SetCurrent(ctx, dom, "bystander"))
		u, err := s.Lock(ctx, dom)
		must(t, err)
		must(t, u())
		return s, root, filepath.Join(root, dom)
	}
	ctx := context.Background()

	t.Run("root", func(t *testing.T) {
		_, root, dir := setup(t)
		must(t, os.Chown(root, nobody, nobody))
		before := snapshotDir(t, dir)
		_, err := store.NewFileStore(root)
		refused(t, "NewFileStore", err, root)
		if diff := cmp.Diff(before, snapshotDir(t, dir)); diff != "" {
			t.Errorf("files changed (-before +after):\n%s", diff)
		}
	})

	t.Run("domain directory", func(t *testing.T) {
		s, _, dir := setup(t)
		must(t, os.Chown(dir, nobody, nobody))
		before := snapshotDir(t, dir)
		_, err := s.Get(ctx, dom, "bystander")
		refused(t, "Get", err, dir)
		_, err = s.List(ctx, dom)
		refused(t, "List", err, dir)
		if len(store.RecordErrors(err)) != 0 {
			t.Errorf("List reported a domain-wide refusal as a record error: %v", err)
		}
		_, err = s.Current(ctx, dom)
		refused(t, "Current", err, dir)
		refused(t, "Put", s.Put(ctx, dom, &store.Record{Name: "new"}), dir)
		refused(t, "Delete", s.Delete(ctx, dom, "victim"), dir)
		refused(t, "SetCurrent", s.SetCurrent(ctx, dom, "victim"), dir)
		u, err := s.Lock(ctx, dom)
		if u != nil {
			u()
		}
		refused(t, "Lock", err, dir)
		refused(t, "RemoveAndReparent", store.RemoveAndReparent(ctx, s, dom, "victim"), dir)
		if diff := cmp.Diff(before, snapshotDir(t, dir)); diff != "" {
			t.Errorf("files changed in a refused directory (-before +after):\n%s", diff)
		}
	})

	t.Run("record", func(t *testing.T) {
		s, _, dir := setup(t)
		path := filepath.Join(dir, store.RecordFileName("victim"))
		must(t, os.Chown(path, nobody, nobody))
		_, err := s.Get(ctx, dom, "victim")
		refused(t, "Get", err, path)
		rs, err := s.List(ctx, dom)
		refused(t, "List", err, path)
		if diff := cmp.Diff([]string{"bystander"}, recordNames(rs)); diff != "" {
			t.Errorf("List records (-want +got):\n%s", diff)
		}
		res := store.RecordErrors(err)
		if len(res) != 1 || res[0].Name != "victim" || res[0].Path != path || res[0].Domain != dom {
			t.Errorf("RecordErrors = %+v, want one for victim at %s", res, path)
		}
		// The bystander is unaffected, and the foreign record can be
		// removed from our own directory.
		if _, err := s.Get(ctx, dom, "bystander"); err != nil {
			t.Errorf("Get(bystander): %v", err)
		}
		must(t, s.Delete(ctx, dom, "victim"))
		if _, err := s.List(ctx, dom); err != nil {
			t.Errorf("List after deleting the foreign record: %v", err)
		}
	})

	t.Run("current", func(t *testing.T) {
		s, _, dir := setup(t)
		path := filepath.Join(dir, "current.xl")
		must(t, os.Chown(path, nobody, nobody))
		_, err := s.Current(ctx, dom)
		refused(t, "Current", err, path)
		// Delete does not trust it either: bystander's record goes, the
		// foreign current file stays for the administrator.
		must(t, s.Delete(ctx, dom, "bystander"))
		if _, err := os.Lstat(path); err != nil {
			t.Errorf("the foreign current file was removed: %v", err)
		}
	})

	t.Run("lock", func(t *testing.T) {
		s, _, dir := setup(t)
		path := filepath.Join(dir, ".lock")
		must(t, os.Chown(path, nobody, nobody))
		u, err := s.Lock(ctx, dom)
		if u != nil {
			u()
		}
		refused(t, "Lock", err, path)
	})
}

func recordNames(rs []*store.Record) []string {
	out := []string{}
	for _, r := range rs {
		out = append(out, r.Name)
	}
	return out
}

// TestFileStoreDamagedRecordNextToHealthy damages one record in each way a
// file can be damaged or planted, next to a healthy tree: the healthy
// records list, read, re-parent and delete as before, the bad one is
// reported as a *RecordError naming it, and Delete removes it (a symbolic
// link itself, never its target).
func TestFileStoreDamagedRecordNextToHealthy(t *testing.T) {
	outsideContent := []byte("precious, outside the store\n")
	tests := []struct {
		name   string
		damage func(t *testing.T, path string) (outside string)
		want   error
	}{
		{"truncated", func(t *testing.T, path string) string {
			b, err := os.ReadFile(path)
			must(t, err)
			must(t, os.WriteFile(path, b[:len(b)/2], 0o600))
			return ""
		}, store.ErrCorrupt},
		{"garbage", func(t *testing.T, path string) string {
			must(t, os.WriteFile(path, []byte("\x89PNG\r\n\x1a\n{{{ not a record ]]]"), 0o600))
			return ""
		}, store.ErrCorrupt},
		{"NUL bytes", func(t *testing.T, path string) string {
			must(t, os.WriteFile(path, make([]byte, 4096), 0o600))
			return ""
		}, store.ErrCorrupt},
		{"50 MB", func(t *testing.T, path string) string {
			b := bytes.Repeat([]byte("description = \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"\n"), (50<<20)/64)
			must(t, os.WriteFile(path, b, 0o600))
			return ""
		}, store.ErrCorrupt},
		{"empty", func(t *testing.T, path string) string {
			must(t, os.Truncate(path, 0))
			return ""
		}, store.ErrCorrupt},
		{"symlink", func(t *testing.T, path string) string {
			outside := filepath.Join(t.TempDir(), "outside.xl")
			must(t, os.WriteFile(outside, outsideContent, 0o600))
			must(t, os.Remove(path))
			must(t, os.Symlink(outside, path))
			return outside
		}, store.ErrUnsafePermissions},
		{"symlink to a valid record", func(t *testing.T, path string) string {
			outside := filepath.Join(t.TempDir(), "outside.xl")
			b, err := os.ReadFile(path)
			must(t, err)
			must(t, os.WriteFile(outside, b, 0o600))
			must(t, os.Remove(path))
			must(t, os.Symlink(outside, path))
			return outside
		}, store.ErrUnsafePermissions},
		{"world writable", func(t *testing.T, path string) string {
			must(t, os.Chmod(path, 0o666))
			return ""
		}, store.ErrUnsafePermissions},
		{"fifo", func(t *testing.T, path string) string {
			must(t, os.Remove(path))
			must(t, syscall.Mkfifo(path, 0o600))
			return ""
		}, store.ErrUnsafePermissions},
		{"foreign owner", func(t *testing.T, path string) string {
			requireRoot(t)
			must(t, os.Chown(path, nobody, nobody))
			return ""
		}, store.ErrForeignOwner},
	}
	ctx := context.Background()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, root := newFileStore(t)
			dir := filepath.Join(root, dom)
			// root -> mid -> {leaf, bad}; mid is current.
			for i, r := range []*store.Record{
				{Name: "root"}, {Name: "mid", Parent: "root"}, {Name: "leaf", Parent: "mid"}, {Name: "bad", Parent: "mid"},
			} {
				r.CreationTime = t0.Add(time.Duration(i) * time.Second)
				put(t, s, r)
			}
			must(t, s.SetCurrent(ctx, dom, "mid"))
			path := filepath.Join(dir, store.RecordFileName("bad"))
			outside := tc.damage(t, path)
			var outsideBefore []byte
			if outside != "" {
				var err error
				outsideBefore, err = os.ReadFile(outside)
				must(t, err)
			}

			rs, err := s.List(ctx, dom)
			if diff := cmp.Diff([]string{"root", "mid", "leaf"}, recordNames(rs)); diff != "" {
				t.Errorf("List records (-want +got):\n%s", diff)
			}
			res := store.RecordErrors(err)
			if len(res) != 1 {
				t.Fatalf("List error %v holds %d record errors, want 1", err, len(res))
			}
			if re := res[0]; re.Domain != dom || re.Name != "bad" || re.Path != path || !errors.Is(re, tc.want) ||
				!strings.Contains(re.Error(), path) {
				t.Errorf("record error = %+v (%v), want domain %s, name bad, path %s, wrapping %v", re, re, dom, path, tc.want)
			}
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), path) {
				t.Errorf("List error = %v, want %v naming %s", err, tc.want, path)
			}
			var re *store.RecordError
			if _, err := s.Get(ctx, dom, "bad"); !errors.As(err, &re) || re.Name != "bad" || !errors.Is(err, tc.want) {
				t.Errorf("Get(bad) = %v, want a *RecordError wrapping %v", err, tc.want)
			}
			if r, err := s.Get(ctx, dom, "leaf"); err != nil || r.Parent != "mid" {
				t.Errorf("Get(leaf) = %v, %v", r, err)
			}

			// A healthy snapshot is removed and its readable child
			// re-parented; the damaged one is left as it is.
			if err := store.RemoveAndReparent(ctx, s, dom, "mid"); err != nil {
				t.Fatalf("RemoveAndReparent(mid) next to a damaged record: %v", err)
			}
			rs, _ = s.List(ctx, dom)
			parents := map[string]string{}
			for _, r := range rs {
				parents[r.Name] = r.Parent
			}
			if diff := cmp.Diff(map[string]string{"root": "", "leaf": "root"}, parents); diff != "" {
				t.Errorf("parents after removing mid (-want +got):\n%s", diff)
			}
			if cur, err := s.Current(ctx, dom); err != nil || cur != "root" {
				t.Errorf("Current = %q, %v; want root", cur, err)
			}

			// The damaged record is removed without being read.
			if err := s.Delete(ctx, dom, "bad"); err != nil {
				t.Fatalf("Delete(bad): %v", err)
			}
			if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("damaged record still there: %v", err)
			}
			if outside != "" {
				b, err := os.ReadFile(outside)
				if err != nil || !bytes.Equal(b, outsideBefore) {
					t.Errorf("the symbolic link's target changed: %q, %v", b, err)
				}
			}
			rs, err = s.List(ctx, dom)
			if err != nil || len(rs) != 2 {
				t.Errorf("List after deleting the damaged record = %v, %v", recordNames(rs), err)
			}
			if err := store.RemoveAndReparent(ctx, s, dom, "root"); err != nil {
				t.Errorf("RemoveAndReparent(root): %v", err)
			}
		})
	}
}

// TestFileStoreUnmappableRecordFile: a record file whose name maps to no
// valid snapshot name is reported with an empty Name and its path.
func TestFileStoreUnmappableRecordFile(t *testing.T) {
	s, root := newFileStore(t)
	put(t, s, storetest.Sample("good", t0))
	path := filepath.Join(root, dom, "snapshotdata-%2F.xl")
	must(t, os.WriteFile(path, []byte("name = \"/\"\n"), 0o600))
	rs, err := s.List(context.Background(), dom)
	res := store.RecordErrors(err)
	if len(rs) != 1 || len(res) != 1 || res[0].Name != "" || res[0].Path != path {
		t.Errorf("List = %v, %+v; want the good record and one unnamed record error at %s", recordNames(rs), res, path)
	}
}
