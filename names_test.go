package vmsnap_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/fakeqemu"
)

// One name rule for every backend: a name the snapshot jobs of QEMU 7.2
// would take but HMP on 5.2 would not (or that reads as an option) is
// refused on both, before anything is written or sent.
func TestNameRuleSameOnJobsAndHMP(t *testing.T) {
	for _, profile := range []fakeqemu.Profile{fakeqemu.QEMU72, fakeqemu.QEMU52} {
		f := startFake(t, profile)
		ctx := testCtx(t)
		for _, name := range []string{"-rf", "--help", "a b", `a"b`, "a'b", `a\b`, "é", ".hidden", "a/b", strings.Repeat("x", 65)} {
			before := f.srv.Commands()
			_, err := f.dom.Create(ctx, vmsnap.CreateSpec{Name: name}, 0).Wait(ctx)
			if !errors.Is(err, vmsnap.ErrInvalidName) {
				t.Errorf("%v: create %q: %v, want ErrInvalidName", profile, name, err)
			}
			for _, cmd := range f.srv.Commands()[len(before):] {
				if !strings.HasPrefix(cmd, "query-") {
					t.Errorf("%v: refused name %q sent %s", profile, name, cmd)
				}
			}
			if recs, _ := f.fs.List(ctx, f.dom.UUID()); len(recs) != 0 {
				t.Errorf("%v: refused name %q left records %v", profile, name, recs)
			}
		}
		// Accepted names work on both backends, all the way.
		for _, name := range []string{"a;b", "x#1", "$HOME", "1,2", "0123"} {
			if _, err := f.dom.Create(ctx, vmsnap.CreateSpec{Name: name}, 0).Wait(ctx); err != nil {
				t.Errorf("%v: create %q: %v", profile, name, err)
				continue
			}
			if _, err := f.dom.Revert(ctx, name, 0).Wait(ctx); err != nil {
				t.Errorf("%v: revert %q: %v", profile, name, err)
			}
			if _, err := f.dom.Delete(ctx, name, 0).Wait(ctx); err != nil {
				t.Errorf("%v: delete %q: %v", profile, name, err)
			}
		}
		f.agree(t)
	}
}

// Snapshots taken without a name within one second get distinct names:
// the epoch seconds first, then with -2, -3 appended.
func TestDefaultNamesDoNotCollide(t *testing.T) {
	f := startFake(t, fakeqemu.QEMU72)
	ctx := testCtx(t)
	seen := map[string]bool{}
	for i := 0; i < 3; i++ {
		s, err := f.dom.Create(ctx, vmsnap.CreateSpec{}, vmsnap.DiskOnly).Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if seen[s.Name] {
			t.Fatalf("default name %q given twice", s.Name)
		}
		seen[s.Name] = true
		base, _, _ := strings.Cut(s.Name, "-")
		if len(base) < 10 || strings.Trim(base, "0123456789") != "" {
			t.Errorf("default name %q is not epoch seconds (with a suffix)", s.Name)
		}
	}
	f.agree(t)
}

// A nil Store is refused: no silent default directory.
func TestNilStoreRefused(t *testing.T) {
	_, err := vmsnap.OpenOffline(testCtx(t), fakeUUID, vmsnap.Options{Disks: []vmsnap.OfflineDisk{{Device: "d0", File: "/nonexistent.qcow2"}}})
	if !errors.Is(err, vmsnap.ErrInvalidSpec) {
		t.Fatalf("open without a store: %v, want ErrInvalidSpec", err)
	}
}
