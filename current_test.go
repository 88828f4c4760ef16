package vmsnap_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/fakeqemu"
	"github.com/vmsnap/vmsnap/store"
)

func TestCurrent(t *testing.T) {
	f := startFake(t, fakeqemu.QEMU72)
	ctx := testCtx(t)
	if _, err := f.dom.Current(ctx); !errors.Is(err, vmsnap.ErrNotFound) {
		t.Fatalf("Current without snapshots: %v, want ErrNotFound", err)
	}
	for _, n := range []string{"a", "b"} {
		if _, err := f.dom.Create(ctx, vmsnap.CreateSpec{Name: n}, vmsnap.DiskOnly).Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	s, err := f.dom.Current(ctx)
	if err != nil || s.Name != "b" || !s.Current || s.Parent != "a" || len(s.Problems) != 0 || len(s.Disks) != 2 {
		t.Fatalf("Current: %+v %v", s, err)
	}
	// Checked against QEMU like Get: a disk that lost it is a problem.
	if err := f.mon.Execute(ctx, "blockdev-snapshot-delete-internal-sync", map[string]string{"device": "disk1", "name": "b"}, nil); err != nil {
		t.Fatal(err)
	}
	s, err = f.dom.Current(ctx)
	if err != nil || len(s.Problems) != 1 || s.Problems[0].Kind != vmsnap.ProblemDiskMissingSnapshot || s.Problems[0].Disk != "dev1" {
		t.Fatalf("Current after a disk lost it: %+v %v", s, err)
	}
}

// TestReadsDoNotWait holds the domain's lock as a running operation does:
// List, Get, Current and Disks answer all the same, and a record with an
// operation's intent on it is shown as in progress, not checked against
// the disks (which do not hold it yet).
func TestReadsDoNotWait(t *testing.T) {
	f := startFake(t, fakeqemu.QEMU72)
	ctx := testCtx(t)
	if _, err := f.dom.Create(ctx, vmsnap.CreateSpec{Name: "done"}, vmsnap.DiskOnly).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	intents := map[string]func(r *store.Record){
		"creating": func(r *store.Record) { r.Status = store.StatusCreating },
		"deleting": func(r *store.Record) { r.Status = store.StatusDeleting },
		"reverting": func(r *store.Record) {
			r.Labels = map[string]string{"vmsnap.revert-want-running": "true"}
		},
		"relaunching": func(r *store.Record) { r.Labels = map[string]string{"vmsnap.relaunch": "{}"} },
	}
	for name, set := range intents {
		r := &store.Record{Name: name, CreationTime: time.Now(), State: "disk-only", Parent: "done",
			Disks: []store.Disk{{Device: "dev0", Node: "disk0", File: "/images/d0.qcow2", Kind: "internal", Tag: name}}}
		set(r)
		if err := f.fs.Put(ctx, fakeUUID, r); err != nil {
			t.Fatal(err)
		}
	}
	unlock, err := f.fs.Lock(ctx, fakeUUID)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	op := f.dom.List(ctx, 0)
	select {
	case <-op.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("List waits for the domain's lock")
	}
	l, err := op.Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range l.Snapshots {
		var kinds []vmsnap.ProblemKind
		for _, p := range s.Problems {
			kinds = append(kinds, p.Kind)
		}
		want := []vmsnap.ProblemKind{vmsnap.ProblemInProgress}
		if s.Name == "done" {
			want = nil
		}
		if !slices.Equal(kinds, want) {
			t.Errorf("%s: problems %v, want %v", s.Name, s.Problems, want)
		}
	}
	if len(l.Snapshots) != 1+len(intents) || l.Current != "done" {
		t.Fatalf("listing %+v", l)
	}
	if s, err := f.dom.Get(ctx, "creating"); err != nil || !s.HasProblem(vmsnap.ProblemInProgress) {
		t.Fatalf("Get: %+v %v", s, err)
	}
	if s, err := f.dom.Current(ctx); err != nil || s.Name != "done" {
		t.Fatalf("Current: %+v %v", s, err)
	}
	if d, err := f.dom.Disks(ctx); err != nil || len(d) != 2 {
		t.Fatalf("Disks: %+v %v", d, err)
	}
	// The lock is still ours: nothing was reconciled.
	if r, err := f.fs.Get(ctx, fakeUUID, "creating"); err != nil || r.Status != store.StatusCreating {
		t.Fatalf("record changed by a read: %+v %v", r, err)
	}
}

// TestListUnreadable damages one record: List lists the others without an
// error and names the damaged one in Unreadable; a child of it has a
// ProblemParentUnreadable.
func TestListUnreadable(t *testing.T) {
	f := startFake(t, fakeqemu.QEMU72)
	ctx := testCtx(t)
	for _, n := range []string{"a", "b", "c"} {
		if _, err := f.dom.Create(ctx, vmsnap.CreateSpec{Name: n}, vmsnap.DiskOnly).Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(f.fs.Root(), fakeUUID, store.RecordFileName("b"))
	if err := os.WriteFile(path, []byte("name = \"b\"\nthis is not xl\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := f.dom.List(ctx, 0).Wait(ctx)
	if err != nil {
		t.Fatalf("List failed for one damaged record: %v", err)
	}
	var names []string
	for _, s := range l.Snapshots {
		names = append(names, s.Name)
	}
	if !slices.Equal(names, []string{"a", "c"}) || len(l.Unreadable) != 1 || l.Unreadable[0].Name != "b" || l.Unreadable[0].Path != path || l.Unreadable[0].Err == nil {
		t.Fatalf("listing %v, unreadable %+v", names, l.Unreadable)
	}
	// b's disk snapshots are not untracked: a record claims them.
	if len(l.Untracked) != 0 {
		t.Fatalf("untracked %+v", l.Untracked)
	}
	c := l.Snapshots[1]
	if len(c.Problems) != 1 || c.Problems[0].Kind != vmsnap.ProblemParentUnreadable {
		t.Fatalf("c's problems %v", c.Problems)
	}
}

// TestAlreadyCanceled starts every call with a ctx cancelled before the
// call: each fails with ErrCanceled and changes nothing.
func TestAlreadyCanceled(t *testing.T) {
	f := startFake(t, fakeqemu.QEMU72)
	ctx := testCtx(t)
	if _, err := f.dom.Create(ctx, vmsnap.CreateSpec{Name: "s"}, 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	done, cancel := context.WithCancel(ctx)
	cancel()
	calls := map[string]func() error{
		"create": func() error {
			_, err := f.dom.Create(done, vmsnap.CreateSpec{Name: "t"}, 0).Wait(ctx)
			return err
		},
		"revert": func() error { _, err := f.dom.Revert(done, "s", 0).Wait(ctx); return err },
		"delete": func() error { _, err := f.dom.Delete(done, "s", 0).Wait(ctx); return err },
		"list":   func() error { _, err := f.dom.List(done, 0).Wait(ctx); return err },
		"get":    func() error { _, err := f.dom.Get(done, "s"); return err },
		"current": func() error {
			_, err := f.dom.Current(done)
			return err
		},
		"disks":      func() error { _, err := f.dom.Disks(done); return err },
		"rename":     func() error { return f.dom.Rename(done, "s", "u") },
		"set-labels": func() error { return f.dom.SetLabels(done, "s", map[string]string{"k": "v"}) },
	}
	for name, call := range calls {
		err := call()
		if !errors.Is(err, vmsnap.ErrCanceled) {
			t.Errorf("%s: %v, want ErrCanceled", name, err)
		}
		var e *vmsnap.Error
		if !errors.As(err, &e) || e.Op != name || e.Domain != fakeUUID {
			t.Errorf("%s: %v is not an *Error naming it", name, err)
		}
	}
	l, err := f.dom.List(ctx, 0).Wait(ctx)
	if err != nil || len(l.Snapshots) != 1 || l.Snapshots[0].Name != "s" || l.Snapshots[0].Labels != nil {
		t.Fatalf("after the cancelled calls: %+v %v", l, err)
	}
}

func TestLabels(t *testing.T) {
	f := startFake(t, fakeqemu.QEMU72)
	ctx := testCtx(t)
	if _, err := f.dom.Create(ctx, vmsnap.CreateSpec{Name: "s"}, vmsnap.DiskOnly).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	// An engine label on the record (as an operation's bookkeeping).
	r, err := f.fs.Get(ctx, fakeUUID, "s")
	if err != nil {
		t.Fatal(err)
	}
	r.Labels = map[string]string{"vmsnap.revert-overlay.0": "/images/ov.qcow2"}
	if err := f.fs.Put(ctx, fakeUUID, r); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"owner": "ops", "ticket": "T-42"}
	if err := f.dom.SetLabels(ctx, "s", want); err != nil {
		t.Fatal(err)
	}
	s, err := f.dom.Get(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, s.Labels); diff != "" {
		t.Fatalf("labels (-want +got):\n%s", diff)
	}
	for _, bad := range []map[string]string{{"vmsnap.mine": "x"}, {"": "x"}, {"a=b": "x"}} {
		if err := f.dom.SetLabels(ctx, "s", bad); !errors.Is(err, vmsnap.ErrInvalidSpec) {
			t.Errorf("SetLabels(%v): %v, want ErrInvalidSpec", bad, err)
		}
	}
	if err := f.dom.SetLabels(ctx, "nope", want); !errors.Is(err, vmsnap.ErrNotFound) {
		t.Errorf("SetLabels of a missing snapshot: %v", err)
	}
	if err := f.dom.SetLabels(ctx, "s", nil); err != nil {
		t.Fatal(err)
	}
	r, err = f.fs.Get(ctx, fakeUUID, "s")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{"vmsnap.revert-overlay.0": "/images/ov.qcow2"}, r.Labels); diff != "" {
		t.Fatalf("record labels after clearing the user's (-want +got):\n%s", diff)
	}
	if l, err := f.dom.List(ctx, 0).Wait(ctx); err != nil || l.Snapshots[0].Labels != nil {
		t.Fatalf("listed labels: %+v %v", l.Snapshots[0].Labels, err)
	}
}

func TestRename(t *testing.T) {
	_, dom, fs, _ := startFakeFiles(t, nil)
	ctx := testCtx(t)
	for _, n := range []string{"a", "b"} {
		if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: n}, vmsnap.External|vmsnap.DiskOnly).Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := dom.SetLabels(ctx, "a", map[string]string{"k": "v"}); err != nil {
		t.Fatal(err)
	}
	before, err := dom.Get(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if err := dom.Rename(ctx, "a", "base"); err != nil {
		t.Fatal(err)
	}
	if err := dom.Rename(ctx, "b", "top"); err != nil {
		t.Fatal(err)
	}
	l, err := dom.List(ctx, 0).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Snapshots) != 2 || l.Current != "top" {
		t.Fatalf("listing %+v", l)
	}
	base, top := l.Snapshots[0], l.Snapshots[1]
	if base.Name != "base" || top.Name != "top" || top.Parent != "base" || !top.Current || len(base.Problems)+len(top.Problems) != 0 {
		t.Fatalf("after renames: %+v %+v", base, top)
	}
	if diff := cmp.Diff(before.Disks, base.Disks); diff != "" || base.Labels["k"] != "v" {
		t.Fatalf("the renamed record changed (-want +got):\n%s labels %v", diff, base.Labels)
	}
	if _, err := fs.Get(ctx, fakeUUID, "a"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("old record: %v", err)
	}
	for _, c := range []struct {
		from, to string
		want     error
	}{
		{"base", "top", vmsnap.ErrExists},
		{"gone", "x", vmsnap.ErrNotFound},
		{"base", "-x/", vmsnap.ErrInvalidName},
	} {
		if err := dom.Rename(ctx, c.from, c.to); !errors.Is(err, c.want) {
			t.Errorf("Rename(%q, %q): %v, want %v", c.from, c.to, err, c.want)
		}
	}
	// An internal snapshot keeps the name QEMU knows it by.
	if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "in"}, vmsnap.DiskOnly).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if err := dom.Rename(ctx, "in", "out"); !errors.Is(err, vmsnap.ErrUnsupported) {
		t.Fatalf("rename of an internal snapshot: %v, want ErrUnsupported", err)
	}
	// A tag a disk holds is taken.
	if err := dom.Rename(ctx, "top", "in"); !errors.Is(err, vmsnap.ErrExists) {
		t.Fatalf("rename onto a disk's tag: %v, want ErrExists", err)
	}
	// A rename cut short after its first write is finished by Rename.
	r, err := fs.Get(ctx, fakeUUID, "top")
	if err != nil {
		t.Fatal(err)
	}
	r.Name = "last"
	r.Labels = map[string]string{"vmsnap.rename-from": "top"}
	if err := fs.Put(ctx, fakeUUID, r); err != nil {
		t.Fatal(err)
	}
	if s, err := dom.Get(ctx, "last"); err != nil || !s.HasProblem(vmsnap.ProblemInProgress) {
		t.Fatalf("half-renamed record: %+v %v", s, err)
	}
	if err := dom.Rename(ctx, "top", "last"); err != nil {
		t.Fatal(err)
	}
	if s, err := dom.Get(ctx, "last"); err != nil || len(s.Problems) != 0 {
		t.Fatalf("after finishing the rename: %+v %v", s, err)
	}
	if s, err := dom.Get(ctx, "in"); err != nil || s.Parent != "last" {
		t.Fatalf("child of the renamed snapshot: %+v %v", s, err)
	}
}

// TestListEvents checks the events and log lines of a List.
func TestListEvents(t *testing.T) {
	f := startFake(t, fakeqemu.QEMU72)
	ctx := testCtx(t)
	var evs []vmsnap.Event
	dom, err := vmsnap.Open(ctx, f.mon, vmsnap.Options{Store: f.fs, Events: func(ev vmsnap.Event) { evs = append(evs, ev) }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dom.List(ctx, 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ev := range evs {
		if ev.Op != "list" || ev.Domain != fakeUUID {
			t.Errorf("event %+v", ev)
		}
		got = append(got, string(ev.Kind)+":"+string(ev.Phase))
	}
	if want := []string{"phase:queued", "phase:listing", "done:done"}; !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
}
