package vmsnap_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"

	"github.com/vmsnap/vmsnap"
	"github.com/vmsnap/vmsnap/internal/fakeqemu"
	"github.com/vmsnap/vmsnap/qmp"
	"github.com/vmsnap/vmsnap/store"
)

// exampleDomain starts a fake QEMU with two qcow2 disks, connects to it
// and binds it with a file store in a temporary directory. A real program
// dials its domain's QMP socket instead and keeps the store at
// store.DefaultRoot.
func exampleDomain(ctx context.Context) (dom *vmsnap.Domain, srv *fakeqemu.Server, cleanup func()) {
	return exampleDomainIn(ctx, "/images")
}

// exampleDomainIn is exampleDomain with the disk images in dir.
func exampleDomainIn(ctx context.Context, dir string) (dom *vmsnap.Domain, srv *fakeqemu.Server, cleanup func()) {
	srv, err := fakeqemu.Start(fakeqemu.Options{
		UUID: "5a0e1c9e-2b7d-4c3f-8e61-3f4b0a9d7c21",
		Disks: []fakeqemu.Disk{
			{Node: "disk0", Device: "dev0", File: filepath.Join(dir, "vm1-root.qcow2")},
			{Node: "disk1", Device: "dev1", File: filepath.Join(dir, "vm1-data.qcow2")},
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	// Monitor first, store lock second: connect before any operation.
	mon, err := qmp.Dial(ctx, "unix:"+srv.Addr())
	if err != nil {
		log.Fatal(err)
	}
	root, err := os.MkdirTemp("", "vmsnap-example")
	if err != nil {
		log.Fatal(err)
	}
	fs, err := store.NewFileStore(root)
	if err != nil {
		log.Fatal(err)
	}
	dom, err = vmsnap.Open(ctx, mon, vmsnap.Options{Store: fs}) // the UUID comes from query-uuid
	if err != nil {
		log.Fatal(err)
	}
	return dom, srv, func() {
		mon.Close()
		srv.Close()
		os.RemoveAll(root)
	}
}

func ExampleDomain_Create() {
	ctx := context.Background()
	dom, _, cleanup := exampleDomain(ctx)
	defer cleanup()

	// A full internal snapshot: memory, devices and every qcow2 disk.
	snap, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "before-upgrade", Description: "known good"}, 0).Wait(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(snap.Name, snap.State, snap.Memory.Kind, snap.Current)
	for _, d := range snap.Disks {
		fmt.Println(d.Device, d.File, d.Kind)
	}

	// A disk-only snapshot: one transaction over the disks, guest running.
	disks, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "disks"}, vmsnap.DiskOnly).Wait(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(disks.Name, disks.State, disks.Memory.Kind, "parent:", disks.Parent)
	// Output:
	// before-upgrade running internal true
	// dev0 /images/vm1-root.qcow2 internal
	// dev1 /images/vm1-data.qcow2 internal
	// disks disk-only none parent: before-upgrade
}

func ExampleDomain_Revert() {
	ctx := context.Background()
	dom, srv, cleanup := exampleDomain(ctx)
	defer cleanup()

	// The fake guest's counter stands for its memory: it grows while the
	// guest runs.
	atSnapshot := srv.Counter()
	if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "s1"}, 0).Wait(ctx); err != nil {
		log.Fatal(err)
	}
	srv.SetCounter(atSnapshot + 1000) // the guest runs on

	// Load the snapshot and leave the guest paused.
	snap, err := dom.Revert(ctx, "s1", vmsnap.RevertPaused).Wait(ctx)
	if err != nil {
		log.Fatal(err)
	}
	st, err := qmp.QueryStatus(ctx, dom.Monitor())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("reverted to", snap.Name, "current:", snap.Current)
	back := srv.Counter()
	fmt.Println("memory back to the snapshot:", back >= atSnapshot && back < atSnapshot+1000)
	fmt.Println("guest:", st.State)
	// Output:
	// reverted to s1 current: true
	// memory back to the snapshot: true
	// guest: paused
}

func ExampleDomain_List() {
	ctx := context.Background()
	dom, _, cleanup := exampleDomain(ctx)
	defer cleanup()

	for _, name := range []string{"base", "patched", "tested"} {
		if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: name}, vmsnap.DiskOnly).Wait(ctx); err != nil {
			log.Fatal(err)
		}
	}
	l, err := dom.List(ctx, 0).Wait(ctx)
	if err != nil {
		log.Fatal(err)
	}
	var draw func(n *vmsnap.TreeNode, depth int)
	draw = func(n *vmsnap.TreeNode, depth int) {
		s := n.Snapshot
		fmt.Printf("%s%s %s current=%v problems=%d\n", strings.Repeat("  ", depth), s.Name, s.State, s.Current, len(s.Problems))
		for _, c := range n.Children {
			draw(c, depth+1)
		}
	}
	for _, root := range l.Tree() {
		draw(root, 0)
	}
	fmt.Println("current:", l.Current, "untracked:", len(l.Untracked))
	// Output:
	// base disk-only current=false problems=0
	//   patched disk-only current=false problems=0
	//     tested disk-only current=true problems=0
	// current: tested untracked: 0
}

func ExampleDomain_Delete() {
	ctx := context.Background()
	dom, srv, cleanup := exampleDomain(ctx)
	defer cleanup()

	for _, name := range []string{"a", "b", "c"} {
		if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: name}, vmsnap.DiskOnly).Wait(ctx); err != nil {
			log.Fatal(err)
		}
	}
	// Delete b and its descendants, deepest first; a stays.
	deleted, err := dom.Delete(ctx, "b", vmsnap.DeleteChildren).Wait(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("deleted:", deleted)
	snaps, err := srv.DiskSnapshots("disk0")
	if err != nil {
		log.Fatal(err)
	}
	for _, s := range snaps {
		fmt.Println("disk0 still holds", s.Name)
	}
	// Output:
	// deleted: [c b]
	// disk0 still holds a
}

func ExampleOp_OnDone() {
	ctx := context.Background()
	dom, _, cleanup := exampleDomain(ctx)
	defer cleanup()

	op := dom.Create(ctx, vmsnap.CreateSpec{Name: "nightly"}, vmsnap.DiskOnly)
	finished := make(chan string, 1)
	op.OnDone(func(s *vmsnap.DomainSnapshot, err error) {
		if err != nil {
			finished <- err.Error()
			return
		}
		finished <- "took " + s.Name
	})
	<-op.Done()
	fmt.Println(<-finished)
	fmt.Println("phase:", op.Progress().Phase)

	// A second snapshot of the same name fails; errors name the snapshot.
	_, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "nightly"}, vmsnap.DiskOnly).Wait(ctx)
	fmt.Println(errors.Is(err, vmsnap.ErrExists))
	// Output:
	// took nightly
	// phase: done
	// true
}

func ExampleDomain_Current() {
	ctx := context.Background()
	dom, _, cleanup := exampleDomain(ctx)
	defer cleanup()

	if _, err := dom.Current(ctx); errors.Is(err, vmsnap.ErrNotFound) {
		fmt.Println("no current snapshot yet")
	}
	for _, name := range []string{"base", "patched"} {
		if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: name}, vmsnap.DiskOnly).Wait(ctx); err != nil {
			log.Fatal(err)
		}
	}
	// Current neither takes the domain's lock nor waits for a running
	// operation: it reads the committed record and checks it against QEMU.
	cur, err := dom.Current(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("current:", cur.Name, "parent:", cur.Parent, "problems:", len(cur.Problems))
	// Output:
	// no current snapshot yet
	// current: patched parent: base problems: 0
}

func ExampleDomain_Rename() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "vmsnap-example-images")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	dom, _, cleanup := exampleDomainIn(ctx, dir)
	defer cleanup()

	// External snapshots can be renamed: their records name their files.
	for _, name := range []string{"1700000000", "1700003600"} {
		if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: name}, vmsnap.External|vmsnap.DiskOnly).Wait(ctx); err != nil {
			log.Fatal(err)
		}
	}
	if err := dom.Rename(ctx, "1700000000", "installed"); err != nil {
		log.Fatal(err)
	}
	l, err := dom.List(ctx, 0).Wait(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, s := range l.Snapshots {
		fmt.Printf("%s parent=%q current=%v\n", s.Name, s.Parent, s.Current)
	}

	// An internal snapshot is known to QEMU by its name: refused.
	if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "inside"}, vmsnap.DiskOnly).Wait(ctx); err != nil {
		log.Fatal(err)
	}
	err = dom.Rename(ctx, "inside", "outside")
	fmt.Println("internal:", errors.Is(err, vmsnap.ErrUnsupported))
	// Output:
	// installed parent="" current=false
	// 1700003600 parent="installed" current=true
	// internal: true
}

func ExampleDomain_SetLabels() {
	ctx := context.Background()
	dom, _, cleanup := exampleDomain(ctx)
	defer cleanup()

	if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "nightly"}, vmsnap.DiskOnly).Wait(ctx); err != nil {
		log.Fatal(err)
	}
	// Labels are the caller's metadata; SetLabels replaces them.
	if err := dom.SetLabels(ctx, "nightly", map[string]string{"retain": "7d", "ticket": "OPS-12"}); err != nil {
		log.Fatal(err)
	}
	s, err := dom.Get(ctx, "nightly")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(s.Labels["retain"], s.Labels["ticket"])

	// Keys starting with "vmsnap." are the engine's.
	err = dom.SetLabels(ctx, "nightly", map[string]string{"vmsnap.relaunch": "x"})
	fmt.Println(errors.Is(err, vmsnap.ErrInvalidSpec))
	// Output:
	// 7d OPS-12
	// true
}

func ExampleDomain_Disks() {
	ctx := context.Background()
	dom, _, cleanup := exampleDomain(ctx)
	defer cleanup()

	if _, err := dom.Create(ctx, vmsnap.CreateSpec{Name: "s1"}, vmsnap.DiskOnly).Wait(ctx); err != nil {
		log.Fatal(err)
	}
	disks, err := dom.Disks(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, d := range disks {
		var tags []string
		for _, s := range d.Snapshots {
			tags = append(tags, s.Name)
		}
		fmt.Println(d.Device, d.Node, d.Format, d.File, tags)
	}
	// Output:
	// dev0 disk0 qcow2 /images/vm1-root.qcow2 [s1]
	// dev1 disk1 qcow2 /images/vm1-data.qcow2 [s1]
}

func ExampleOptions_events() {
	ctx := context.Background()
	dom, _, cleanup := exampleDomain(ctx)
	defer cleanup()

	// A toolstack passes Events to Open; here the fake domain is bound a
	// second time, with a store of its own.
	var seen []string
	events := func(ev vmsnap.Event) {
		seen = append(seen, fmt.Sprintf("%s %s %s", ev.Op, ev.Kind, ev.Phase))
	}
	root, err := os.MkdirTemp("", "vmsnap-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(root)
	fs, err := store.NewFileStore(root)
	if err != nil {
		log.Fatal(err)
	}
	dom2, err := vmsnap.Open(ctx, dom.Monitor(), vmsnap.Options{Store: fs, Events: events})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := dom2.List(ctx, 0).Wait(ctx); err != nil {
		log.Fatal(err)
	}
	for _, s := range seen {
		fmt.Println(s)
	}
	// Output:
	// list phase queued
	// list phase listing
	// list done done
}
