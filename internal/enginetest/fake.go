package enginetest

import (
	"context"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/fakeqemu"
	"github.com/vmsnap/vmsnap/internal/qemutest"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

// FakeUUID is the UUID of the fake targets' domain.
const FakeUUID = "5c84adcc-bd59-788a-96d2-195f9b599cfe"

// witnessTimeout bounds each witness's exchange with QEMU or qemu-img.
const witnessTimeout = 30 * time.Second

// NewFake returns a NewTarget that starts a fake QEMU of profile with two
// disks (fakeqemu.QEMU52 lacks the snapshot jobs: the engine falls back to
// HMP). The fake has no image files and no process to restart: it offers
// none of the Capabilities.
func NewFake(profile fakeqemu.Profile) NewTarget {
	return func(t *testing.T) Target {
		t.Helper()
		srv, err := fakeqemu.Start(fakeqemu.Options{
			Profile:     profile,
			UUID:        FakeUUID,
			CounterAddr: qemutest.CounterAddr,
			Disks: []fakeqemu.Disk{
				{Node: "disk0", Device: "dev0", File: "/images/d0.qcow2"},
				{Node: "disk1", Device: "dev1", File: "/images/d1.qcow2"},
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Close() })
		ctx, cancel := context.WithTimeout(context.Background(), witnessTimeout)
		defer cancel()
		raw, err := qmp.Dial(ctx, srv.Addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { raw.Close() })
		fs, err := store.NewFileStore(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		f := &fakeTarget{srv: srv, raw: raw, fs: fs, log: &commandLog{}, jobs: profile.Jobs}
		// The fake serves one client at a time: the engine and the
		// witnesses share the connection, and only the engine's commands
		// are logged.
		dom, err := vmsnap.Open(ctx, &monitor{Monitor: raw, log: f.log}, vmsnap.Options{Store: fs})
		if err != nil {
			t.Fatal(err)
		}
		f.dom = dom
		return f
	}
}

// fakeTarget is a Target on internal/fakeqemu.
type fakeTarget struct {
	srv  *fakeqemu.Server
	raw  *qmp.Client
	fs   *store.FileStore
	dom  *vmsnap.Domain
	log  *commandLog
	jobs bool
}

func (f *fakeTarget) Domain() *vmsnap.Domain { return f.dom }
func (f *fakeTarget) Store() store.Store     { return f.fs }
func (f *fakeTarget) SnapshotJobs() bool     { return f.jobs }

func (f *fakeTarget) Disks() []Disk {
	return []Disk{{Device: "dev0", Node: "disk0"}, {Device: "dev1", Node: "disk1"}}
}

func (f *fakeTarget) Tags(t testing.TB, d Disk) []string {
	t.Helper()
	snaps, err := f.srv.DiskSnapshots(d.Node)
	if err != nil {
		t.Fatal(err)
	}
	tags := []string{}
	for _, s := range snaps {
		tags = append(tags, s.Name)
	}
	return tags
}

// Counter reads the counter as a guest test would, with HMP xp: the fake's
// guest advances by one for every command it receives while it runs, so
// reading it is also what lets it run on.
func (f *fakeTarget) Counter(t testing.TB) uint64 {
	t.Helper()
	return counterXP(t, f.raw)
}

func (f *fakeTarget) Running(t testing.TB) bool { return f.srv.Status() == "running" }
func (f *fakeTarget) Pause(t testing.TB)        { t.Helper(); execute(t, f.raw, "stop", nil) }
func (f *fakeTarget) Resume(t testing.TB)       { t.Helper(); execute(t, f.raw, "cont", nil) }

func (f *fakeTarget) Write(t testing.TB, d Disk, pattern byte) {
	t.Helper()
	if err := f.srv.WriteDisk(d.Node, pattern); err != nil {
		t.Fatal(err)
	}
}

func (f *fakeTarget) Holds(t testing.TB, d Disk, pattern byte) bool {
	t.Helper()
	node, err := f.srv.ActiveNode(d.Node)
	if err != nil {
		t.Fatal(err)
	}
	b, err := f.srv.DiskContent(node)
	if err != nil {
		t.Fatal(err)
	}
	return b == pattern
}

func (f *fakeTarget) Sent(t testing.TB) []string { return f.log.list() }

func (f *fakeTarget) SnapshotBehind(t testing.TB, d Disk, name string) {
	t.Helper()
	execute(t, f.raw, "blockdev-snapshot-internal-sync", map[string]any{"device": d.Node, "name": name})
}

func (f *fakeTarget) DeleteBehind(t testing.TB, d Disk, name string) {
	t.Helper()
	execute(t, f.raw, "blockdev-snapshot-delete-internal-sync", map[string]any{"device": d.Node, "name": name})
}
