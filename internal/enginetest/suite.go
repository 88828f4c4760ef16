package enginetest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/store"
)

// Skip is a scenario Run skipped because the target lacks a capability.
type Skip struct {
	// Scenario is the subtest's name.
	Scenario string
	// Missing are the capabilities it needs that the target lacks.
	Missing []Capability
}

// String returns the scenario's name and what it missed.
func (s Skip) String() string { return fmt.Sprintf("%s (needs %v)", s.Scenario, s.Missing) }

// scenario is one subtest of the suite.
type scenario struct {
	name  string
	needs []Capability
	run   func(t *testing.T, tg Target)
}

// scenarios are the suite, in the order Run runs them.
var scenarios = []scenario{
	{"internal-full-paused", nil, internalFullPaused},
	{"internal-full-running", nil, internalFullRunning},
	{"internal-disk-only", nil, internalDiskOnly},
	{"internal-disk-only-relaunch", []Capability{Relaunch}, internalDiskOnlyRelaunch},
	{"internal-disk-only-offline", []Capability{Offline, Images}, internalDiskOnlyOffline},
	{"disk-subset", nil, diskSubset},
	{"name-collisions", nil, nameCollisions},
	{"untracked-adopt", nil, untrackedAdopt},
	{"delete-children", nil, deleteChildren},
	{"current-moves", nil, currentMoves},
	{"list-filters", nil, listFilters},
	{"delete-metadata-only", nil, deleteMetadataOnly},
	{"external-disk-only", []Capability{Images}, externalDiskOnly},
}

// Scenarios returns the names of the suite's subtests, in the order Run
// runs them.
func Scenarios() []string {
	var names []string
	for _, sc := range scenarios {
		names = append(names, sc.name)
	}
	return names
}

// Run runs every scenario as a subtest of t, each on a fresh target from
// newTarget. A scenario that needs a capability the target lacks is skipped
// (t.Skip, so it shows as SKIP, never as PASS), logged, and returned; a
// caller whose target must support everything fails on a non-empty result.
func Run(t *testing.T, newTarget NewTarget) []Skip {
	t.Helper()
	var (
		mu      sync.Mutex
		skipped []Skip
	)
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			tg := newTarget(t)
			var missing []Capability
			for _, c := range sc.needs {
				if !Supports(tg, c) {
					missing = append(missing, c)
				}
			}
			if len(missing) > 0 {
				mu.Lock()
				skipped = append(skipped, Skip{Scenario: sc.name, Missing: missing})
				mu.Unlock()
				t.Skipf("enginetest: the target lacks %v", missing)
			}
			sc.run(t, tg)
		})
	}
	if len(skipped) > 0 {
		t.Logf("enginetest: %d of %d scenarios skipped: %v", len(skipped), len(scenarios), skipped)
	}
	return skipped
}

// ctxFor returns a context that ends with the test, or after two minutes.
func ctxFor(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// internalFullPaused: a full internal snapshot of a paused guest, reverted
// paused, by default and running, then deleted; the engine uses the
// snapshot jobs, or HMP savevm/loadvm/delvm without them.
func internalFullPaused(t *testing.T, tg Target) {
	ctx := ctxFor(t)
	dom, disks := tg.Domain(), tg.Disks()
	d1 := disks[1]

	tg.Pause(t)
	tg.Write(t, d1, 0x11)
	at := tg.Counter(t)
	mark := len(tg.Sent(t))
	s, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "s1", Description: "before the pattern"}, 0).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.State != vmsnap.StatePaused || s.Memory.Kind != vmsnap.MemoryInternal || len(s.Disks) != len(disks) || !s.Current || s.Description != "before the pattern" {
		t.Fatalf("snapshot %+v", s)
	}
	if tg.Running(t) {
		t.Fatal("a paused guest runs after the snapshot")
	}
	usedVM(t, tg, mark, "save", "s1")
	for _, d := range disks {
		if tags := tg.Tags(t, d); !slices.Contains(tags, "s1") {
			t.Fatalf("%s holds %v, want s1", d.Device, tags)
		}
	}
	agree(t, tg, dom)

	tg.Resume(t)
	runsOn(t, tg, at)
	tg.Write(t, d1, 0x22)
	mark = len(tg.Sent(t))
	r, err := dom.Revert(ctx, "s1", vmsnap.RevertPaused).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Current || tg.Running(t) {
		t.Fatalf("after revert with RevertPaused: current %v, running %v", r.Current, tg.Running(t))
	}
	usedVM(t, tg, mark, "load", "s1")
	if got := tg.Counter(t); got != at {
		t.Fatalf("counter after revert %d, want exactly %d", got, at)
	}
	if !tg.Holds(t, d1, 0x11) || tg.Holds(t, d1, 0x22) {
		t.Fatal("revert did not bring back the disk content of the snapshot")
	}

	// The default is the recorded state (paused); RevertRunning runs.
	tg.Resume(t)
	if _, err := dom.Revert(ctx, "s1", 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if tg.Running(t) {
		t.Fatal("revert to a paused snapshot left the guest running")
	}
	if _, err := dom.Revert(ctx, "s1", vmsnap.RevertRunning).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if !tg.Running(t) {
		t.Fatal("RevertRunning left the guest paused")
	}

	mark = len(tg.Sent(t))
	if _, err := dom.Delete(ctx, "s1", 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	usedVM(t, tg, mark, "delete", "s1")
	noTags(t, tg)
	if recs, err := tg.Store().List(ctx, dom.UUID()); err != nil || len(recs) != 0 {
		t.Fatalf("store after delete: %v %v", recs, err)
	}
	if !tg.Running(t) {
		t.Fatal("delete stopped the guest")
	}
	agree(t, tg, dom)
}

// internalFullRunning: a full internal snapshot of a running guest records
// it running and its downtime; the revert brings back the counter of the
// moment it was taken and, by default, resumes the guest.
func internalFullRunning(t *testing.T, tg Target) {
	ctx := ctxFor(t)
	dom := tg.Domain()
	before := tg.Counter(t)
	s, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "live-guest"}, 0).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	after := tg.Counter(t)
	if s.State != vmsnap.StateRunning || !tg.Running(t) {
		t.Fatalf("state %s, running %v", s.State, tg.Running(t))
	}
	if s.Downtime <= 0 {
		t.Errorf("downtime %v, want > 0 (QEMU stops the guest to save it)", s.Downtime)
	}
	later := runsOn(t, tg, after)
	if _, err := dom.Revert(ctx, "live-guest", vmsnap.RevertPaused).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if got := tg.Counter(t); got < before || got > after {
		t.Fatalf("counter after revert %d, want within [%d, %d] (read around the snapshot); it had reached %d", got, before, after, later)
	}
	if tg.Running(t) {
		t.Fatal("RevertPaused left the guest running")
	}
	if _, err := dom.Revert(ctx, "live-guest", 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if !tg.Running(t) {
		t.Fatal("revert to a running snapshot left the guest paused")
	}
	agree(t, tg, dom)
}

// internalDiskOnly: a disk-only internal snapshot is one transaction on
// every disk while the guest runs; reverting it while QEMU runs, without a
// Launcher, is refused before QEMU is touched; delete removes it
// everywhere.
func internalDiskOnly(t *testing.T, tg Target) {
	ctx := ctxFor(t)
	dom, disks := tg.Domain(), tg.Disks()
	mark := len(tg.Sent(t))
	s, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "disks"}, vmsnap.DiskOnly).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.State != vmsnap.StateDiskOnly || s.Memory.Kind != vmsnap.MemoryNone || s.Downtime != 0 || len(s.Disks) != len(disks) || !s.Current {
		t.Fatalf("snapshot %+v", s)
	}
	sent := tg.Sent(t)[mark:]
	if !slices.Contains(sent, "transaction") || slices.Contains(sent, "stop") || usesVMState(sent) {
		t.Fatalf("disk-only create sent %v: want one transaction, no stop, no vmstate", sent)
	}
	if !tg.Running(t) {
		t.Fatal("a disk-only snapshot paused the guest")
	}
	for _, d := range disks {
		if tags := tg.Tags(t, d); !slices.Contains(tags, "disks") {
			t.Fatalf("%s holds %v, want disks", d.Device, tags)
		}
	}
	agree(t, tg, dom)

	mark = len(tg.Sent(t))
	_, err = dom.Revert(ctx, "disks", 0).Wait(ctx)
	if !errors.Is(err, vmsnap.ErrUnsupported) || !strings.Contains(err.Error(), "offline") {
		t.Fatalf("revert of a disk-only snapshot of a running domain without a Launcher: %v, want ErrUnsupported saying how", err)
	}
	onlyQueries(t, tg, mark, "the refused revert")
	if !tg.Running(t) {
		t.Fatal("the refused revert paused the guest")
	}

	if _, err := dom.Delete(ctx, "disks", 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	noTags(t, tg)
	if !tg.Running(t) {
		t.Fatal("delete paused the guest")
	}
	agree(t, tg, dom)
}

// internalDiskOnlyRelaunch: through a Launcher, a disk-only internal
// snapshot of a running domain is reverted while no QEMU holds the
// images; the guest boots again by default, stays paused with
// RevertPaused.
func internalDiskOnlyRelaunch(t *testing.T, tg Target) {
	ctx := ctxFor(t)
	dom := tg.(Relauncher).WithLauncher(t)
	d1 := tg.Disks()[1]
	tg.Write(t, d1, 0x5a)
	if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "id"}, vmsnap.DiskOnly).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	tg.Write(t, d1, 0x77)
	// Without RevertForce the cold boot is refused and nothing changes.
	if _, err := dom.Revert(ctx, "id", 0).Wait(ctx); !errors.Is(err, vmsnap.ErrRevertRisky) {
		t.Fatalf("disk-only revert of a running guest without RevertForce: %v, want ErrRevertRisky", err)
	}
	if !tg.Running(t) || !tg.Holds(t, d1, 0x77) {
		t.Fatal("the refused risky revert changed the guest or its disk")
	}
	r, err := dom.Revert(ctx, "id", vmsnap.RevertForce).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Current || !tg.Running(t) {
		t.Fatalf("after the revert: current %v, running %v; a disk-only revert boots the guest by default", r.Current, tg.Running(t))
	}
	if !tg.Holds(t, d1, 0x5a) || tg.Holds(t, d1, 0x77) {
		t.Fatal("the revert through the Launcher did not restore the disk")
	}
	tg.Write(t, d1, 0x78)
	if _, err := dom.Revert(ctx, "id", vmsnap.RevertPaused|vmsnap.RevertForce).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if tg.Running(t) || !tg.Holds(t, d1, 0x5a) {
		t.Fatalf("after RevertPaused: running %v, disk restored %v", tg.Running(t), tg.Holds(t, d1, 0x5a))
	}
	agree(t, tg, dom)
	if _, err := dom.Delete(ctx, "id", 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	noTags(t, tg)
	agree(t, tg, dom)
}

// internalDiskOnlyOffline: once QEMU is gone, a disk-only snapshot is
// reverted, created and deleted with qemu-img on the image files.
func internalDiskOnlyOffline(t *testing.T, tg Target) {
	ctx := ctxFor(t)
	d1 := tg.Disks()[1]
	if _, err := tg.Domain().Create(ctx, vmsnap.CreateSpec{Name: "clean"}, vmsnap.DiskOnly).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	tg.Write(t, d1, 0xcd)
	off := tg.(OfflineTarget).Offline(t)
	img := tg.(ImageTarget)
	if !tg.Holds(t, d1, 0xcd) {
		t.Fatal("the pattern is not in the image after QEMU quit")
	}
	if _, err := off.Revert(ctx, "clean", 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if tg.Holds(t, d1, 0xcd) {
		t.Fatal("the offline revert left the pattern written after the snapshot")
	}
	img.CheckImages(t)
	c, err := off.Create(ctx, vmsnap.CreateSpec{Name: "cold"}, vmsnap.DiskOnly).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c.Parent != "clean" || !c.Current || c.State != vmsnap.StateDiskOnly {
		t.Fatalf("offline snapshot %+v", c)
	}
	for _, d := range tg.Disks() {
		if tags := tg.Tags(t, d); !slices.Equal(tags, []string{"clean", "cold"}) {
			t.Fatalf("%s holds %v after the offline create, want [clean cold]", d.Device, tags)
		}
	}
	agree(t, tg, off)
	for _, n := range []string{"cold", "clean"} {
		if _, err := off.Delete(ctx, n, 0).Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	noTags(t, tg)
	img.CheckImages(t)
	agree(t, tg, off)
}

// diskSubset: a disk-only snapshot of chosen disks touches only them; a
// full snapshot of a subset needs the snapshot jobs (HMP savevm snaps
// every disk) and is refused up front without them.
func diskSubset(t *testing.T, tg Target) {
	ctx := ctxFor(t)
	dom, disks := tg.Domain(), tg.Disks()
	s, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "one", Disks: []string{disks[1].Device}}, vmsnap.DiskOnly).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Disks) != 1 || s.Disks[0].Device != disks[1].Device {
		t.Fatalf("disk-only snapshot of %s holds %+v", disks[1].Device, s.Disks)
	}
	if tags := tg.Tags(t, disks[0]); len(tags) != 0 {
		t.Fatalf("%s was not chosen and holds %v", disks[0].Device, tags)
	}
	if tags := tg.Tags(t, disks[1]); !slices.Equal(tags, []string{"one"}) {
		t.Fatalf("%s holds %v, want [one]", disks[1].Device, tags)
	}

	mark := len(tg.Sent(t))
	f, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "part", Disks: []string{disks[0].Device}}, 0).Wait(ctx)
	if !tg.SnapshotJobs() {
		if !errors.Is(err, vmsnap.ErrUnsupported) {
			t.Fatalf("a full snapshot of a subset with HMP savevm: %v, want ErrUnsupported", err)
		}
		onlyQueries(t, tg, mark, "the refused subset")
		for _, d := range disks {
			if slices.Contains(tg.Tags(t, d), "part") {
				t.Fatalf("the refused snapshot is on %s", d.Device)
			}
		}
	} else {
		if err != nil {
			t.Fatalf("a full snapshot of a subset with snapshot jobs: %v", err)
		}
		if len(f.Disks) != 1 || f.Disks[0].Device != disks[0].Device || f.Memory.Kind != vmsnap.MemoryInternal {
			t.Fatalf("full snapshot of %s: %+v", disks[0].Device, f)
		}
		if !slices.Contains(tg.Tags(t, disks[0]), "part") || slices.Contains(tg.Tags(t, disks[1]), "part") {
			t.Fatalf("full snapshot of %s: tags %v and %v", disks[0].Device, tg.Tags(t, disks[0]), tg.Tags(t, disks[1]))
		}
	}
	if !tg.Running(t) {
		t.Fatal("guest not running")
	}
	agree(t, tg, dom)
}

// nameCollisions: a name recorded in the store or held by a disk is
// refused with ErrExists before QEMU acts, and nothing on the disks
// changes (HMP savevm would replace a tag).
func nameCollisions(t *testing.T, tg Target) {
	ctx := ctxFor(t)
	dom, disks := tg.Domain(), tg.Disks()
	if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "full"}, 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "disks"}, vmsnap.DiskOnly).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	tg.SnapshotBehind(t, disks[0], "foreign")
	want := map[string][]string{}
	for _, d := range disks {
		want[d.Device] = tg.Tags(t, d)
	}
	mark := len(tg.Sent(t))
	for _, name := range []string{"full", "disks", "foreign"} {
		for _, flags := range []vmsnap.CreateFlags{0, vmsnap.DiskOnly} {
			_, err := dom.Create(ctx, vmsnap.CreateSpec{Name: name}, flags).Wait(ctx)
			if !errors.Is(err, vmsnap.ErrExists) {
				t.Errorf("create %q with flags %v: %v, want ErrExists", name, flags, err)
			}
		}
	}
	if _, err := dom.Adopt(ctx, "full", ""); !errors.Is(err, vmsnap.ErrExists) {
		t.Errorf("adopt of a recorded name: %v, want ErrExists", err)
	}
	onlyQueries(t, tg, mark, "the refused creates")
	for _, d := range disks {
		if got := tg.Tags(t, d); !slices.Equal(got, want[d.Device]) {
			t.Errorf("%s holds %v after the refused creates, want %v", d.Device, got, want[d.Device])
		}
	}
	if !tg.Running(t) {
		t.Fatal("guest not running")
	}
	l, err := dom.List(ctx, 0).Wait(ctx)
	if err != nil || len(l.Snapshots) != 2 || l.Current != "disks" {
		t.Fatalf("listing %+v %v", l, err)
	}
}

// untrackedAdopt: List shows a snapshot made behind vmsnap's back as
// untracked, says which disk lost a recorded one, and Adopt records the
// untracked one.
func untrackedAdopt(t *testing.T, tg Target) {
	ctx := ctxFor(t)
	dom, disks := tg.Domain(), tg.Disks()
	tg.SnapshotBehind(t, disks[0], "foreign")
	if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "mine"}, vmsnap.DiskOnly).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	l, err := dom.List(ctx, 0).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Snapshots) != 1 || l.Snapshots[0].Name != "mine" || len(l.Snapshots[0].Problems) != 0 ||
		len(l.Untracked) != 1 || l.Untracked[0].Name != "foreign" ||
		len(l.Untracked[0].Disks) != 1 || l.Untracked[0].Disks[0].Device != disks[0].Device {
		t.Fatalf("listing %+v", l)
	}
	tg.DeleteBehind(t, disks[1], "mine")
	l, err = dom.List(ctx, 0).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if p := l.Snapshots[0].Problems; len(p) != 1 || p[0].Disk != disks[1].Device {
		t.Fatalf("problems %q, want one naming %s", p, disks[1].Device)
	}
	a, err := dom.Adopt(ctx, "foreign", "made elsewhere")
	if err != nil {
		t.Fatal(err)
	}
	if a.State != vmsnap.StateDiskOnly || len(a.Disks) != 1 || a.Disks[0].Device != disks[0].Device || a.Description != "made elsewhere" {
		t.Fatalf("adopted %+v", a)
	}
	l, err = dom.List(ctx, 0).Wait(ctx)
	if err != nil || len(l.Snapshots) != 2 || len(l.Untracked) != 0 {
		t.Fatalf("after adopt: %+v %v", l, err)
	}
}

// deleteChildren: deleting a snapshot gives its children its parent and
// passes "current" on; DeleteChildren deletes a subtree, leaves first.
func deleteChildren(t *testing.T, tg Target) {
	ctx := ctxFor(t)
	dom := tg.Domain()
	for _, n := range []string{"a", "b", "c"} {
		if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: n}, vmsnap.DiskOnly).Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// a <- b <- c; deleting b gives c the parent a.
	if _, err := dom.Delete(ctx, "b", 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := dom.Get(ctx, "c")
	if err != nil || c.Parent != "a" || !c.Current {
		t.Fatalf("c after deleting b: %+v %v", c, err)
	}
	for _, d := range tg.Disks() {
		if tags := tg.Tags(t, d); !slices.Equal(tags, []string{"a", "c"}) {
			t.Fatalf("%s holds %v after deleting b, want [a c]", d.Device, tags)
		}
	}
	done, err := dom.Delete(ctx, "a", vmsnap.DeleteChildren).Wait(ctx)
	if err != nil || !slices.Equal(done, []string{"c", "a"}) {
		t.Fatalf("subtree delete: %v %v", done, err)
	}
	noTags(t, tg)
	l, err := dom.List(ctx, 0).Wait(ctx)
	if err != nil || len(l.Snapshots) != 0 || l.Current != "" {
		t.Fatalf("after the subtree delete: %+v %v", l, err)
	}
	agree(t, tg, dom)
}

// tree makes a (full) <- b (disk-only), reverts to a and makes c
// (disk-only) there: a has the children b and c, and c is current.
func tree(t *testing.T, tg Target) *vmsnap.Domain {
	t.Helper()
	ctx := ctxFor(t)
	dom := tg.Domain()
	current := func(want string) {
		t.Helper()
		l, err := dom.List(ctx, 0).Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var flagged []string
		for _, s := range l.Snapshots {
			if s.Current {
				flagged = append(flagged, s.Name)
			}
		}
		if l.Current != want || !slices.Equal(flagged, []string{want}) {
			t.Fatalf("current %q, flagged %v; want %q", l.Current, flagged, want)
		}
	}
	a, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "a"}, 0).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if a.Parent != "" || !a.Current {
		t.Fatalf("a: %+v", a)
	}
	current("a")
	b, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "b"}, vmsnap.DiskOnly).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if b.Parent != "a" || !b.Current {
		t.Fatalf("b: %+v", b)
	}
	current("b")
	if _, err := dom.Revert(ctx, "a", 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	current("a")
	c, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "c"}, vmsnap.DiskOnly).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c.Parent != "a" || !c.Current {
		t.Fatalf("c: %+v", c)
	}
	current("c")
	return dom
}

// currentMoves: "current" follows creates and reverts, the tree shows the
// branch, and deleting the current snapshot makes its parent current.
func currentMoves(t *testing.T, tg Target) {
	ctx := ctxFor(t)
	dom := tree(t, tg)
	l, err := dom.List(ctx, 0).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	roots := l.Tree()
	if len(roots) != 1 || roots[0].Snapshot.Name != "a" || len(roots[0].Children) != 2 ||
		roots[0].Children[0].Snapshot.Name != "b" || roots[0].Children[1].Snapshot.Name != "c" {
		t.Fatalf("tree: want a with children b and c, got %s", treeString(roots))
	}
	if _, err := dom.Delete(ctx, "c", 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if l, err := dom.List(ctx, 0).Wait(ctx); err != nil || l.Current != "a" {
		t.Fatalf("after deleting the current snapshot c: current %q %v, want a", l.Current, err)
	}
	if _, err := dom.Revert(ctx, "a", 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := dom.Delete(ctx, "a", 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	b, err := dom.Get(ctx, "b")
	if err != nil || b.Parent != "" || b.Current {
		t.Fatalf("b after deleting its parent, the current snapshot: %+v %v", b, err)
	}
	if l, err := dom.List(ctx, 0).Wait(ctx); err != nil || l.Current != "" {
		t.Fatalf("after deleting the current root: current %q %v, want none", l.Current, err)
	}
	agree(t, tg, dom)
}

func treeString(nodes []*vmsnap.TreeNode) string {
	var parts []string
	for _, n := range nodes {
		s := n.Snapshot.Name
		if len(n.Children) > 0 {
			s += "(" + treeString(n.Children) + ")"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " ")
}

// listFilters: each List flag, and flags together, keep the snapshots
// that pass all of them; an unknown flag is refused.
func listFilters(t *testing.T, tg Target) {
	ctx := ctxFor(t)
	dom := tree(t, tg)
	for _, c := range []struct {
		flags vmsnap.ListFlags
		want  []string
	}{
		{0, []string{"a", "b", "c"}},
		{vmsnap.ListRoots, []string{"a"}},
		{vmsnap.ListLeaves, []string{"b", "c"}},
		{vmsnap.ListCurrent, []string{"c"}},
		{vmsnap.ListDiskOnly, []string{"b", "c"}},
		{vmsnap.ListFull, []string{"a"}},
		{vmsnap.ListInternal, []string{"a", "b", "c"}},
		{vmsnap.ListExternal, nil},
		{vmsnap.ListLeaves | vmsnap.ListCurrent, []string{"c"}},
		{vmsnap.ListRoots | vmsnap.ListFull, []string{"a"}},
		{vmsnap.ListRoots | vmsnap.ListDiskOnly, nil},
		{vmsnap.ListCurrent | vmsnap.ListFull, nil},
	} {
		l, err := dom.List(ctx, c.flags).Wait(ctx)
		if err != nil {
			t.Fatalf("list %v: %v", c.flags, err)
		}
		var got []string
		for _, s := range l.Snapshots {
			got = append(got, s.Name)
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("list %v: %v, want %v", c.flags, got, c.want)
		}
		if l.Current != "c" {
			t.Errorf("list %v: current %q, want c whatever the filter", c.flags, l.Current)
		}
	}
	if _, err := dom.List(ctx, vmsnap.ListFlags(1<<20)).Wait(ctx); !errors.Is(err, vmsnap.ErrInvalidFlags) {
		t.Fatalf("list with an unknown flag: %v, want ErrInvalidFlags", err)
	}
	agree(t, tg, dom)
}

// deleteMetadataOnly: DeleteMetadataOnly drops the record and sends QEMU
// nothing but queries; the snapshot stays on the disks, shows as untracked
// and can be adopted back.
func deleteMetadataOnly(t *testing.T, tg Target) {
	ctx := ctxFor(t)
	dom, disks := tg.Domain(), tg.Disks()
	if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "m"}, vmsnap.DiskOnly).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	mark := len(tg.Sent(t))
	if _, err := dom.Delete(ctx, "m", vmsnap.DeleteMetadataOnly).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	onlyQueries(t, tg, mark, "the metadata-only delete")
	for _, d := range disks {
		if !slices.Contains(tg.Tags(t, d), "m") {
			t.Fatalf("the metadata-only delete removed the snapshot from %s", d.Device)
		}
	}
	if recs, err := tg.Store().List(ctx, dom.UUID()); err != nil || len(recs) != 0 {
		t.Fatalf("records after the metadata-only delete: %v %v", recs, err)
	}
	l, err := dom.List(ctx, 0).Wait(ctx)
	if err != nil || len(l.Snapshots) != 0 || len(l.Untracked) != 1 || l.Untracked[0].Name != "m" || len(l.Untracked[0].Disks) != len(disks) {
		t.Fatalf("after the metadata-only delete: %+v %v", l, err)
	}
	a, err := dom.Adopt(ctx, "m", "back")
	if err != nil || a.State != vmsnap.StateDiskOnly || len(a.Disks) != len(disks) || a.Parent != "" {
		t.Fatalf("adopt: %+v %v", a, err)
	}
	agree(t, tg, dom)
}

// externalDiskOnly: an external disk-only snapshot puts an overlay on
// every disk while the guest runs; delete merges what was written since
// back into the image and removes the overlays.
func externalDiskOnly(t *testing.T, tg Target) {
	ctx := ctxFor(t)
	img := tg.(ImageTarget)
	dom, disks := tg.Domain(), tg.Disks()
	d1 := disks[1]
	base := map[string][]string{}
	for _, d := range disks {
		base[d.Device] = img.Chain(t, d)
		if len(base[d.Device]) != 1 {
			t.Fatalf("%s starts with the chain %v, want one image", d.Device, base[d.Device])
		}
	}
	tg.Write(t, d1, 0x5a)
	s, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "xd"}, vmsnap.External|vmsnap.DiskOnly).Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.State != vmsnap.StateDiskOnly || s.Memory.Kind != vmsnap.MemoryNone || !s.IsExternal() || len(s.Disks) != len(disks) || !s.Current {
		t.Fatalf("snapshot %+v", s)
	}
	if !tg.Running(t) {
		t.Fatal("an external disk-only snapshot paused the guest")
	}
	for i, d := range disks {
		ds := s.Disks[i]
		if ds.Device != d.Device || ds.Kind != vmsnap.DiskExternal || ds.File != base[d.Device][0] || ds.Overlay == "" {
			t.Fatalf("disk snapshot %+v", ds)
		}
		if chain := img.Chain(t, d); !slices.Equal(chain, []string{ds.Overlay, ds.File}) {
			t.Fatalf("%s runs on %v, want the overlay over %s", d.Device, chain, ds.File)
		}
		if tags := tg.Tags(t, d); len(tags) != 0 {
			t.Fatalf("an external snapshot left internal tags on %s: %v", d.Device, tags)
		}
	}
	img.CheckImages(t)
	tg.Write(t, d1, 0xa5)
	if l, err := dom.List(ctx, vmsnap.ListExternal).Wait(ctx); err != nil || len(l.Snapshots) != 1 || l.Snapshots[0].Name != "xd" || len(l.Snapshots[0].Problems) != 0 {
		t.Fatalf("list external: %+v %v", l, err)
	}
	agree(t, tg, dom)

	if _, err := dom.Delete(ctx, "xd", 0).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	for i, d := range disks {
		if chain := img.Chain(t, d); !slices.Equal(chain, base[d.Device]) {
			t.Fatalf("after delete %s runs on %v, want %v", d.Device, chain, base[d.Device])
		}
		if _, err := os.Stat(s.Disks[i].Overlay); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("overlay %s after delete: %v", s.Disks[i].Overlay, err)
		}
	}
	if !tg.Holds(t, d1, 0xa5) {
		t.Fatal("the data written after the snapshot was lost by its delete")
	}
	if !tg.Running(t) {
		t.Fatal("delete stopped the guest")
	}
	img.CheckImages(t)
	if recs, err := tg.Store().List(ctx, dom.UUID()); err != nil || len(recs) != 0 {
		t.Fatalf("store after delete: %v %v", recs, err)
	}
	agree(t, tg, dom)
}

// runsOn waits until the guest's counter passes from; it returns the
// counter then.
func runsOn(t *testing.T, tg Target, from uint64) uint64 {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c := tg.Counter(t)
		if c > from {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guest's counter does not run on from %d", from)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// vmCommands are the commands that save, load and delete a full internal
// snapshot, with snapshot jobs and over HMP.
var vmCommands = map[string][2]string{
	"save":   {"snapshot-save", "savevm"},
	"load":   {"snapshot-load", "loadvm"},
	"delete": {"snapshot-delete", "delvm"},
}

// usedVM checks that the engine's commands since mark did op to the
// snapshot tag through the snapshot job when the target has jobs, else
// through HMP, and not through the other way.
func usedVM(t *testing.T, tg Target, mark int, op, tag string) {
	t.Helper()
	sent := tg.Sent(t)[mark:]
	job, verb := vmCommands[op][0], "hmp:"+vmCommands[op][1]+" "+tag
	hmpUsed := slices.ContainsFunc(sent, func(c string) bool {
		return strings.HasPrefix(c, "hmp:savevm") || strings.HasPrefix(c, "hmp:loadvm") || strings.HasPrefix(c, "hmp:delvm")
	})
	jobUsed := slices.ContainsFunc(sent, func(c string) bool { return slices.Contains(SnapshotJobCommands, c) })
	if tg.SnapshotJobs() {
		if !slices.Contains(sent, job) || hmpUsed {
			t.Fatalf("%s with snapshot jobs: want %s and no HMP savevm/loadvm/delvm, QEMU got %v", op, job, sent)
		}
		return
	}
	if !slices.Contains(sent, verb) || jobUsed {
		t.Fatalf("%s without snapshot jobs: want %q and no snapshot job, QEMU got %v", op, verb, sent)
	}
}

// usesVMState reports whether sent saves or loads a vmstate.
func usesVMState(sent []string) bool {
	return slices.ContainsFunc(sent, func(c string) bool {
		return c == "snapshot-save" || c == "snapshot-load" || strings.HasPrefix(c, "hmp:savevm") || strings.HasPrefix(c, "hmp:loadvm") || c == "migrate"
	})
}

// onlyQueries checks that the engine sent QEMU nothing since mark but
// queries (query-* and HMP info).
func onlyQueries(t *testing.T, tg Target, mark int, what string) {
	t.Helper()
	for _, c := range tg.Sent(t)[mark:] {
		if !strings.HasPrefix(c, "query-") && !strings.HasPrefix(c, "hmp:info ") {
			t.Fatalf("%s sent %s to QEMU", what, c)
		}
	}
}

// noTags checks that no disk holds an internal snapshot.
func noTags(t *testing.T, tg Target) {
	t.Helper()
	for _, d := range tg.Disks() {
		if tags := tg.Tags(t, d); len(tags) != 0 {
			t.Fatalf("%s still holds %v", d.Device, tags)
		}
	}
}

// agree checks that the store, the engine and the witnesses tell the same
// story: every record is committed and every internal snapshot it names is
// on its disk, every tag on a disk has a record, and List reports no
// problem and nothing untracked.
func agree(t *testing.T, tg Target, dom *vmsnap.Domain) {
	t.Helper()
	ctx := ctxFor(t)
	l, err := dom.List(ctx, 0).Wait(ctx)
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	if len(l.Untracked) != 0 {
		t.Errorf("QEMU holds snapshots no record knows: %+v", l.Untracked)
	}
	for _, s := range l.Snapshots {
		if len(s.Problems) != 0 {
			t.Errorf("snapshot %q: problems %q", s.Name, s.Problems)
		}
	}
	recs, err := tg.Store().List(ctx, dom.UUID())
	if err != nil {
		t.Fatal(err)
	}
	byDevice := map[string]Disk{}
	for _, d := range tg.Disks() {
		byDevice[d.Device] = d
	}
	recorded := map[string]bool{}
	for _, r := range recs {
		recorded[r.Name] = true
		if r.Status != store.StatusOK {
			t.Errorf("record %q left with status %s", r.Name, r.Status)
		}
		for _, rd := range r.Disks {
			if rd.Removed || rd.Kind == string(vmsnap.DiskExternal) {
				continue
			}
			d, ok := byDevice[rd.Device]
			if !ok {
				t.Errorf("record %q names disk %s, which the guest does not have", r.Name, rd.Device)
				continue
			}
			if !slices.Contains(tg.Tags(t, d), r.Name) {
				t.Errorf("record %q says %s holds it; the image disagrees", r.Name, d.Device)
			}
		}
	}
	for _, d := range tg.Disks() {
		for _, tag := range tg.Tags(t, d) {
			if !recorded[tag] {
				t.Errorf("%s holds %q, which no record knows", d.Device, tag)
			}
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}
