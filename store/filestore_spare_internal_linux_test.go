package store

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestSpareWriteHoldsTheLock fills a spare taken under the lock while the
// lock is being released: the unlock waits until the spare is renamed, so
// the next holder (another FileStore, as another process would be) cannot
// adopt the file that is becoming a record and write over it.
func TestSpareWriteHoldsTheLock(t *testing.T) {
	root := filepath.Join(t.TempDir(), "snapshots")
	a, err := NewFileStore(root)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const domain = "6f1d3a52-8c4e-4b8a-9d2e-1a2b3c4d5e6f"
	if err := a.Put(ctx, domain, &Record{Name: "zero"}); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, domain)
	if err := os.WriteFile(filepath.Join(dir, sparePrefix+"only"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	unlock, err := a.Lock(ctx, domain)
	if err != nil {
		t.Fatal(err)
	}
	dirfd, _, err := a.openDir(domain, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(dirfd) })
	data, err := Marshal(&Record{Name: "a", Description: "written by the first holder"})
	if err != nil {
		t.Fatal(err)
	}
	tmp, done, err := a.writeTemp(domain, dirfd, dir, RecordFileName("a"), data, true)
	if err != nil {
		t.Fatal(err)
	}
	if tmp != sparePrefix+"only" {
		t.Fatalf("the write went to %s, not to the spare", tmp)
	}
	unlocked := make(chan struct{})
	go func() {
		unlock()
		close(unlocked)
	}()
	select {
	case <-unlocked:
		t.Fatal("unlock returned while a write had not renamed its spare")
	case <-time.After(100 * time.Millisecond):
	}
	if err := renameAt(dirfd, dir, tmp, RecordFileName("a")); err != nil {
		t.Fatal(err)
	}
	done()
	<-unlocked

	b, err := NewFileStore(root)
	if err != nil {
		t.Fatal(err)
	}
	unlockB, err := b.Lock(ctx, domain)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Put(ctx, domain, &Record{Name: "b", Description: "written by the next holder"}); err != nil {
		t.Fatal(err)
	}
	unlockB()
	for name, want := range map[string]string{"a": "written by the first holder", "b": "written by the next holder"} {
		r, err := b.Get(ctx, domain, name)
		if err != nil || r.Description != want {
			t.Errorf("Get(%s) = %+v, %v; want description %q", name, r, err, want)
		}
	}
}
