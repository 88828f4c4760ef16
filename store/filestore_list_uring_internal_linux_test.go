package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

// TestListRingMatchesSystemCalls lists a domain whose record files
// include every kind of damage List reports, in batches large enough for
// io_uring, and again with io_uring switched off: the records and the
// errors must be the same, each damaged file reported once, as what it is,
// every file that passes the checks read through the ring, no descriptor
// left open, and the same again when the process is short of descriptors.
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
	without, err := list(false)
	if len(without) != n-len(damage) {
		t.Fatalf("listed %d records without io_uring, want %d", len(without), n-len(damage))
	}
	check := func(t *testing.T, got []*Record, gotErr error) {
		t.Helper()
		if !reflect.DeepEqual(without, got) { // cmp.Diff takes a second on these
			t.Errorf("records with io_uring differ from those without (-without +with):\n%s", cmp.Diff(without, got))
		}
		if gotErr == nil || err == nil || gotErr.Error() != err.Error() {
			t.Errorf("errors differ:\nwith io_uring: %v\nwithout: %v", gotErr, err)
		}
		bad := RecordErrors(gotErr)
		if len(bad) != len(damage) {
			t.Fatalf("%d record errors, want %d: %v", len(bad), len(damage), gotErr)
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

	r := acquireRing()
	if r == nil {
		t.Skip("io_uring cannot be used here (refused by the kernel): both listings would make their system calls one by one")
	}
	releaseRing(r)
	before := ringFiles.Load()
	withRing, ringErr := list(true)
	check(t, withRing, ringErr)
	// Every file that passes the checks is read through the ring: the
	// good ones, and the two whose content is wrong.
	if got, want := ringFiles.Load()-before, int64(n-len(damage)+2); got != want {
		t.Errorf("%d files read through io_uring, want %d", got, want)
	}

	t.Run("descriptors", func(t *testing.T) {
		// The rings stay for the next listings; the record files do not.
		open0 := openFDs(t)
		for range 3 {
			list(true)
		}
		if open1 := openFDs(t); open1 != open0 {
			t.Errorf("%d descriptors open after three more listings, %d before", open1, open0)
		}
	})

	t.Run("few descriptors left", func(t *testing.T) {
		// Room for fewer files than a round opens: the ring's opens fail
		// with EMFILE and those files are opened again one by one.
		var lim unix.Rlimit
		if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			t.Fatal(err)
		}
		low := lim
		low.Cur = uint64(openFDs(t) + 20)
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
			t.Fatal(err)
		}
		defer unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
		for range 3 {
			got, gotErr := list(true)
			check(t, got, gotErr)
		}
	})
}

// openFDs counts the process's open descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
