package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestListRingMatchesSystemCalls lists a domain whose record files
// include every kind of damage List reports, in batches large enough for
// io_uring, and again with io_uring switched off: the records and the
// errors must be the same, and each damaged file reported once, as what
// it is.
func TestListRingMatchesSystemCalls(t *testing.T) {
	root := filepath.Join(t.TempDir(), "snapshots")
	s, err := NewFileStore(root)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const domain = "6f1d3a52-8c4e-4b8a-9d2e-1a2b3c4d5e6f"
	at := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	const n = 300 // three batches: the readers start, each with its ring
	for i := 0; i < n; i++ {
		r := &Record{Name: fmt.Sprintf("snap-%03d", i), CreationTime: at.Add(time.Duration(i) * time.Second),
			Description: "d", Disks: []Disk{{Device: "dev0", Node: "disk0", File: "/images/a.qcow2", Kind: "internal"}}}
		if i%40 == 5 {
			r.Config = bytes.Repeat([]byte("x = 1\n"), 20000) // larger than a reader's buffer
		}
		if err := s.Put(ctx, domain, r); err != nil {
			t.Fatal(err)
		}
	}
	dir := filepath.Join(root, domain)
	path := func(i int) string { return filepath.Join(dir, RecordFileName(fmt.Sprintf("snap-%03d", i))) }
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	damage := map[int]error{
		3:   ErrUnsafePermissions, // mode 0666
		17:  ErrUnsafePermissions, // mode 0620
		50:  ErrCorrupt,           // garbage
		51:  ErrCorrupt,           // empty
		99:  ErrCorrupt,           // another record's content
		130: ErrUnsafePermissions, // symlink
		160: ErrUnsafePermissions, // fifo
		161: ErrUnsafePermissions, // directory
		200: ErrCorrupt,           // larger than MaxRecordSize
	}
	must(os.Chmod(path(3), 0o666))
	must(os.Chmod(path(17), 0o620))
	must(os.WriteFile(path(50), []byte("name = \"snap-050\"\n\x89PNG\n"), 0o600))
	must(os.Truncate(path(51), 0))
	other, err := os.ReadFile(path(98))
	must(err)
	must(os.WriteFile(path(99), other, 0o600))
	must(os.Remove(path(130)))
	must(os.Symlink(path(131), path(130)))
	must(os.Remove(path(160)))
	must(syscall.Mkfifo(path(160), 0o600))
	must(os.Remove(path(161)))
	must(os.Mkdir(path(161), 0o700))
	must(os.Truncate(path(200), MaxRecordSize+1))
	if os.Geteuid() == 0 {
		must(os.Chown(path(230), 12345, 12345))
		damage[230] = ErrForeignOwner
	}

	list := func(ring bool) ([]*Record, error) {
		uringMu.Lock()
		was := uringUsable
		uringUsable = ring && was
		uringMu.Unlock()
		defer func() {
			uringMu.Lock()
			uringUsable = was
			uringMu.Unlock()
		}()
		return s.List(ctx, domain)
	}
	before := ringBatches.Load()
	withRing, ringErr := list(true)
	if ringBatches.Load() == before {
		t.Skip("io_uring cannot be used here: both listings would make their system calls one by one")
	}
	without, err := list(false)
	if diff := cmp.Diff(without, withRing); diff != "" {
		t.Errorf("records with io_uring differ from those without (-without +with):\n%s", diff)
	}
	if len(withRing) != n-len(damage) {
		t.Errorf("listed %d records, want %d", len(withRing), n-len(damage))
	}
	if ringErr == nil || err == nil || ringErr.Error() != err.Error() {
		t.Errorf("errors differ:\nwith io_uring: %v\nwithout: %v", ringErr, err)
	}
	bad := RecordErrors(ringErr)
	if len(bad) != len(damage) {
		t.Fatalf("%d record errors, want %d: %v", len(bad), len(damage), ringErr)
	}
	for _, re := range bad {
		var i int
		if _, err := fmt.Sscanf(re.Name, "snap-%03d", &i); err != nil || damage[i] == nil {
			t.Errorf("unexpected record error %v", re)
			continue
		}
		if !errors.Is(re, damage[i]) {
			t.Errorf("record %s: %v, want %v", re.Name, re, damage[i])
		}
	}
}
