package store_test

import (
	"context"
	"errors"
	"io/fs"
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

const dom = storetest.DomainA

var t0 = time.Date(2026, 11, 26, 7, 0, 0, 123456789, time.UTC)

func newFileStore(t *testing.T) (*store.FileStore, string) {
	t.Helper()
	root := filepath.Join(t.TempDir(), "snapshots")
	s, err := store.NewFileStore(root)
	if err != nil {
		t.Fatal(err)
	}
	return s, root
}

func put(t *testing.T, s store.Store, r *store.Record) {
	t.Helper()
	if err := s.Put(context.Background(), dom, r); err != nil {
		t.Fatalf("Put(%q): %v", r.Name, err)
	}
}

func mode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode()
}

func TestFileStoreConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := store.NewFileStore(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestFileStoreLayout(t *testing.T) {
	s, root := newFileStore(t)
	ctx := context.Background()
	put(t, s, storetest.Sample("before upgrade", t0))
	if err := s.SetCurrent(ctx, dom, "before upgrade"); err != nil {
		t.Fatal(err)
	}
	unlock, err := s.Lock(ctx, dom)
	if err != nil {
		t.Fatal(err)
	}
	unlock()
	dir := filepath.Join(root, dom)
	if d, _ := s.Dir(dom); d != dir {
		t.Errorf("Dir = %q, want %q", d, dir)
	}
	want := map[string]fs.FileMode{
		"":                                 fs.ModeDir | 0o700,
		"snapshotdata-before%20upgrade.xl": 0o600,
		"current.xl":                       0o600,
		".lock":                            0o600,
	}
	got := map[string]fs.FileMode{"": mode(t, dir)}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	spares := 0
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		if strings.HasPrefix(e.Name(), ".spare-") {
			// Spares are empty 0600 files; a hold that wrote
			// nothing makes none.
			spares++
			if fi, err := os.Lstat(path); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 || fi.Size() != 0 {
				t.Errorf("spare %s: %v, %v; want an empty 0600 file", e.Name(), fi.Mode(), err)
			}
			continue
		}
		got[e.Name()] = mode(t, path)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("directory layout (-want +got):\n%s", diff)
	}
	if spares != 0 {
		t.Errorf("%d spare files after a Lock that wrote nothing, want none", spares)
	}
	cur, err := os.ReadFile(filepath.Join(dir, "current.xl"))
	if err != nil || !strings.Contains(string(cur), `current = "before upgrade"`) {
		t.Errorf("current.xl = %q, %v", cur, err)
	}
	if m := mode(t, root); m != fs.ModeDir|0o700 {
		t.Errorf("root mode = %v, want drwx------", m)
	}
}

func TestNewFileStoreRefusesUnsafeRoot(t *testing.T) {
	root := t.TempDir()
	if err := os.Chmod(root, 0o777); err != nil {
		t.Fatal(err)
	}
	_, err := store.NewFileStore(root)
	if !errors.Is(err, store.ErrUnsafePermissions) || !strings.Contains(err.Error(), root) {
		t.Errorf("NewFileStore(world-writable) = %v, want ErrUnsafePermissions naming %s", err, root)
	}
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := store.NewFileStore(file); err == nil {
		t.Errorf("NewFileStore(a regular file) succeeded")
	}
}

// snapshotDir returns every file's content (or type) under dir.
func snapshotDir(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := d.Info()
		key := strings.TrimPrefix(path, dir)
		if strings.HasPrefix(d.Name(), ".spare-") {
			// The store's spare files (see FileStore) come and go
			// with its locks; what they may hold is tested apart.
			return nil
		}
		switch {
		case d.Type().IsRegular():
			b, err := os.ReadFile(path)
			if err != nil {
				b = []byte("unreadable: " + err.Error())
			}
			out[key] = fi.Mode().String() + " " + string(b)
		default:
			out[key] = fi.Mode().String()
		}
		return nil
	})
	return out
}

// TestFileStoreDamage damages one file or directory in a populated store
// and checks that every operation reports it clearly, naming the path,
// and that nothing else is changed.
func TestFileStoreDamage(t *testing.T) {
	type result struct {
		get, list, current, lock, put error
	}
	tests := []struct {
		name    string
		damage  func(t *testing.T, dir string) string // returns the damaged path
		target  string                                // the snapshot Get is asked for
		want    error                                 // expected from Get (or Current for current.xl)
		line    int                                   // expected CorruptError line, if any
		listBad bool                                  // List must report the damaged record
		putBad  bool                                  // Put and Lock refuse (directory damage)
	}{
		{
			name: "record writable by others", target: "victim", want: store.ErrUnsafePermissions, listBad: true,
			damage: func(t *testing.T, dir string) string {
				p := filepath.Join(dir, store.RecordFileName("victim"))
				must(t, os.Chmod(p, 0o666))
				return p
			},
		},
		{
			name: "record group writable", target: "victim", want: store.ErrUnsafePermissions, listBad: true,
			damage: func(t *testing.T, dir string) string {
				p := filepath.Join(dir, store.RecordFileName("victim"))
				must(t, os.Chmod(p, 0o620))
				return p
			},
		},
		{
			name: "garbage content", target: "victim", want: store.ErrCorrupt, line: 3, listBad: true,
			damage: func(t *testing.T, dir string) string {
				p := filepath.Join(dir, store.RecordFileName("victim"))
				must(t, os.WriteFile(p, []byte("name = \"victim\"\n# ok\n\x89PNG garbage\n"), 0o600))
				return p
			},
		},
		{
			name: "empty file", target: "victim", want: store.ErrCorrupt, listBad: true,
			damage: func(t *testing.T, dir string) string {
				p := filepath.Join(dir, store.RecordFileName("victim"))
				must(t, os.Truncate(p, 0))
				return p
			},
		},
		{
			name: "torn file", target: "victim", want: store.ErrCorrupt, listBad: true,
			damage: func(t *testing.T, dir string) string {
				p := filepath.Join(dir, store.RecordFileName("victim"))
				b, err := os.ReadFile(p)
				must(t, err)
				i := strings.Index(string(b), "description = ") + 20
				must(t, os.WriteFile(p, b[:i], 0o600))
				return p
			},
		},
		{
			name: "record copied under another name", target: "victim", want: store.ErrCorrupt, listBad: true,
			damage: func(t *testing.T, dir string) string {
				p := filepath.Join(dir, store.RecordFileName("victim"))
				b, err := os.ReadFile(filepath.Join(dir, store.RecordFileName("bystander")))
				must(t, err)
				must(t, os.WriteFile(p, b, 0o600))
				return p
			},
		},
		{
			name: "record is a symlink", target: "victim", want: store.ErrUnsafePermissions, listBad: true,
			damage: func(t *testing.T, dir string) string {
				p := filepath.Join(dir, store.RecordFileName("victim"))
				outside := filepath.Join(t.TempDir(), "outside.xl")
				b, _ := os.ReadFile(p)
				must(t, os.WriteFile(outside, b, 0o600))
				must(t, os.Remove(p))
				must(t, os.Symlink(outside, p))
				return p
			},
		},
		{
			name: "record is a fifo", target: "victim", want: store.ErrUnsafePermissions, listBad: true,
			damage: func(t *testing.T, dir string) string {
				p := filepath.Join(dir, store.RecordFileName("victim"))
				must(t, os.Remove(p))
				must(t, syscall.Mkfifo(p, 0o600))
				return p
			},
		},
		{
			name: "record is a directory", target: "victim", want: store.ErrUnsafePermissions, listBad: true,
			damage: func(t *testing.T, dir string) string {
				p := filepath.Join(dir, store.RecordFileName("victim"))
				must(t, os.Remove(p))
				must(t, os.Mkdir(p, 0o700))
				return p
			},
		},
		{
			name: "domain directory writable by others", target: "bystander", want: store.ErrUnsafePermissions, putBad: true,
			damage: func(t *testing.T, dir string) string {
				must(t, os.Chmod(dir, 0o777))
				return dir
			},
		},
		{
			name: "domain directory is a symlink", target: "bystander", want: store.ErrUnsafePermissions, putBad: true,
			damage: func(t *testing.T, dir string) string {
				elsewhere := filepath.Join(t.TempDir(), "elsewhere")
				must(t, os.Rename(dir, elsewhere))
				must(t, os.Symlink(elsewhere, dir))
				return dir
			},
		},
		{
			name: "lock file writable by others", target: "bystander",
			damage: func(t *testing.T, dir string) string {
				p := filepath.Join(dir, ".lock")
				must(t, os.Chmod(p, 0o666))
				return p
			},
		},
		{
			name: "current file garbage", target: "bystander",
			damage: func(t *testing.T, dir string) string {
				p := filepath.Join(dir, "current.xl")
				must(t, os.WriteFile(p, []byte("current = \"unterminated\n"), 0o600))
				return p
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, root := newFileStore(t)
			ctx := context.Background()
			put(t, s, storetest.Sample("bystander", t0))
			put(t, s, storetest.Sample("victim", t0.Add(time.Second)))
			must(t, s.SetCurrent(ctx, dom, "bystander"))
			u, err := s.Lock(ctx, dom)
			must(t, err)
			u()
			dir := filepath.Join(root, dom)
			path := tc.damage(t, dir)
			realDir := dir
			if fi, err := os.Lstat(dir); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
				realDir, _ = filepath.EvalSymlinks(dir)
			}
			before := snapshotDir(t, realDir)

			var r result
			done := make(chan struct{})
			go func() {
				defer close(done)
				_, r.get = s.Get(ctx, dom, tc.target)
				var rs []*store.Record
				rs, r.list = s.List(ctx, dom)
				if tc.listBad {
					if len(rs) != 1 || rs[0].Name != "bystander" {
						t.Errorf("List kept %d records, want only the good one", len(rs))
					}
				}
				_, r.current = s.Current(ctx, dom)
				lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				defer cancel()
				var unlock func() error
				if unlock, r.lock = s.Lock(lctx, dom); r.lock == nil {
					unlock()
				}
				r.put = s.Put(ctx, dom, &store.Record{Name: "new"})
			}()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("an operation hung on the damaged store")
			}

			names := func(err error) bool { return err != nil && strings.Contains(err.Error(), path) }
			switch {
			case strings.HasPrefix(tc.name, "current"):
				var ce *store.CorruptError
				if !errors.As(r.current, &ce) || ce.Path != path || !names(r.current) {
					t.Errorf("Current = %v, want a *CorruptError naming %s", r.current, path)
				}
				if r.get != nil || r.list != nil || r.lock != nil || r.put != nil {
					t.Errorf("a bad current file broke other operations: %+v", r)
				}
				must(t, s.Delete(ctx, dom, "victim"))
				return
			case strings.HasPrefix(tc.name, "lock"):
				if !errors.Is(r.lock, store.ErrUnsafePermissions) || !names(r.lock) {
					t.Errorf("Lock = %v, want ErrUnsafePermissions naming %s", r.lock, path)
				}
				return
			}
			if !errors.Is(r.get, tc.want) || !names(r.get) {
				t.Errorf("Get = %v, want %v naming %s", r.get, tc.want, path)
			}
			if tc.line > 0 {
				var ce *store.CorruptError
				if !errors.As(r.get, &ce) || ce.Line != tc.line {
					t.Errorf("Get error line: %v, want line %d", r.get, tc.line)
				}
			}
			if tc.listBad && (!errors.Is(r.list, tc.want) || !names(r.list)) {
				t.Errorf("List error = %v, want %v naming %s", r.list, tc.want, path)
			}
			if tc.putBad {
				for what, err := range map[string]error{"List": r.list, "Current": r.current, "Lock": r.lock, "Put": r.put} {
					if !errors.Is(err, store.ErrUnsafePermissions) || !names(err) {
						t.Errorf("%s = %v, want ErrUnsafePermissions naming %s", what, err, path)
					}
				}
				if diff := cmp.Diff(before, snapshotDir(t, realDir)); diff != "" {
					t.Errorf("the store changed files in a directory it refused (-before +after):\n%s", diff)
				}
				return
			}
			if r.put != nil {
				t.Errorf("Put of an unrelated record failed: %v", r.put)
			}
			after := snapshotDir(t, realDir)
			delete(after, "/"+store.RecordFileName("new"))
			if diff := cmp.Diff(before, after); diff != "" {
				t.Errorf("files other than the new record changed (-before +after):\n%s", diff)
			}
			// The damaged record can be deleted to repair the store; a
			// directory in its place is left for the administrator.
			if strings.HasSuffix(tc.name, "directory") {
				if err := s.Delete(ctx, dom, "victim"); !names(err) {
					t.Errorf("Delete of a directory = %v, want an error naming it", err)
				}
				must(t, os.Remove(path))
			} else if err := s.Delete(ctx, dom, "victim"); err != nil {
				t.Errorf("Delete of the damaged record: %v", err)
			}
			if _, err := s.List(ctx, dom); err != nil {
				t.Errorf("List after removing the damaged record: %v", err)
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestFileStoreTempFiles(t *testing.T) {
	s, root := newFileStore(t)
	ctx := context.Background()
	put(t, s, storetest.Sample("a", t0))
	dir := filepath.Join(root, dom)
	stray := filepath.Join(dir, ".tmp-"+store.RecordFileName("a")+"-crash")
	must(t, os.WriteFile(stray, []byte("name = \"a\"\ndescription = \"torn"), 0o600))
	rs, err := s.List(ctx, dom)
	if err != nil || len(rs) != 1 {
		t.Fatalf("List with a stray temp file = %d records, %v", len(rs), err)
	}
	unlock, err := s.Lock(ctx, dom)
	must(t, err)
	defer unlock()
	if _, err := os.Stat(stray); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stray temp file still there after Lock: %v", err)
	}
	if _, err := s.Get(ctx, dom, "a"); err != nil {
		t.Errorf("record damaged by the cleanup: %v", err)
	}
}

// TestGetReadsOneFile fills a domain with unreadable records: Get of the
// good one must not touch them.
func TestGetReadsOneFile(t *testing.T) {
	s, root := newFileStore(t)
	put(t, s, storetest.Sample("good", t0))
	dir := filepath.Join(root, dom)
	for i := 0; i < 50; i++ {
		p := filepath.Join(dir, store.RecordFileName("bad"+strings.Repeat("x", i)))
		must(t, os.WriteFile(p, []byte("\x00garbage"), 0o666))
	}
	must(t, syscall.Mkfifo(filepath.Join(dir, store.RecordFileName("fifo")), 0o600))
	r, err := s.Get(context.Background(), dom, "good")
	if err != nil || r.Name != "good" {
		t.Errorf("Get among broken records = %v, %v", r, err)
	}
	rs, err := s.List(context.Background(), dom)
	if len(rs) != 1 || err == nil || strings.Count(err.Error(), "snapshotdata-bad") != 50 {
		t.Errorf("List = %d records, error %v; want the good record and 50 named errors", len(rs), err)
	}
}

// TestFlockBetweenStores checks that two FileStores of one process, which
// share no memory, still exclude each other through flock.
func TestFlockBetweenStores(t *testing.T) {
	s1, root := newFileStore(t)
	s2, err := store.NewFileStore(root)
	must(t, err)
	unlock, err := s1.Lock(context.Background(), dom)
	must(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Millisecond)
	defer cancel()
	if u, err := s2.Lock(ctx, dom); !errors.Is(err, store.ErrBusy) {
		if u != nil {
			u()
		}
		t.Fatalf("second store locked a held domain: %v", err)
	}
	must(t, unlock())
	u, err := s2.Lock(context.Background(), dom)
	must(t, err)
	u()
}
