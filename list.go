package vmsnap

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/vmsnap/vmsnap/store"
)

// Listing is the result of List: the store merged with what QEMU reports.
type Listing struct {
	// Snapshots are the recorded snapshots that pass the filter, oldest
	// first. Each carries Problems where QEMU disagrees with its record.
	Snapshots []*DomainSnapshot
	// Untracked are internal snapshots QEMU reports that no record knows
	// (made by qemu-img snapshot -c, virsh, HMP savevm, or NoMetadata), by
	// tag. Adopt records them.
	Untracked []Untracked
	// Current is the name of the current snapshot, "" when none.
	Current string
}

// Untracked is a snapshot found on the disks with no record.
type Untracked struct {
	// Name is the tag in the images.
	Name string
	// Disks are the disks that hold it.
	Disks []DiskSnapshot
}

// TreeNode is one snapshot in the tree view.
type TreeNode struct {
	// Snapshot is the snapshot at this node.
	Snapshot *DomainSnapshot
	// Children are the snapshots whose parent it is, oldest first.
	Children []*TreeNode
}

// Tree arranges the listed snapshots by parent. A snapshot whose parent is
// not in the listing (filtered out, or a dangling parent) is a root.
func (l *Listing) Tree() []*TreeNode {
	nodes := map[string]*TreeNode{}
	for _, s := range l.Snapshots {
		nodes[s.Name] = &TreeNode{Snapshot: s}
	}
	var roots []*TreeNode
	for _, s := range l.Snapshots {
		n := nodes[s.Name]
		if p, ok := nodes[s.Parent]; ok && s.Parent != "" {
			p.Children = append(p.Children, n)
		} else {
			roots = append(roots, n)
		}
	}
	return roots
}

// List lists the domain's snapshots: the records in the store, checked
// against QEMU's view of the disks, plus the snapshots QEMU holds that no
// record knows. The List* flags filter the recorded snapshots; several
// flags keep a snapshot that passes every one of them.
func (d *Domain) List(ctx context.Context, flags ListFlags) *Op[*Listing] {
	if flags.unknown() != 0 {
		return failed[*Listing](&Error{Op: "list", Domain: d.uuid, Err: fmt.Errorf("%w: %s not valid for list", ErrInvalidFlags, flags.unknown())})
	}
	return run(ctx, d, "list", "", func(ctx context.Context, op *Op[*Listing], reconcileErr error) (*Listing, error) {
		return d.list(ctx, op, flags, reconcileErr)
	})
}

// Get returns one snapshot, checked against QEMU like List does.
func (d *Domain) Get(ctx context.Context, name string) (*DomainSnapshot, error) {
	l, err := d.List(ctx, 0).Wait(ctx)
	if err != nil {
		return nil, err
	}
	for _, s := range l.Snapshots {
		if s.Name == name {
			return s, nil
		}
	}
	return nil, &Error{Op: "get", Domain: d.uuid, Snapshot: name, Err: ErrNotFound}
}

// An intent that cannot be settled (reconcileErr) does not hide the
// listing: it shows as a problem of its snapshot and the error says why.
func (d *Domain) list(ctx context.Context, op *Op[*Listing], flags ListFlags, reconcileErr error) (*Listing, error) {
	op.setPhase(PhaseListing)
	recs, listErr := d.store.List(ctx, d.uuid)
	if listErr != nil && len(recs) == 0 {
		return nil, listErr
	}
	current, err := d.store.Current(ctx, d.uuid)
	if err != nil {
		return nil, err
	}
	disks, err := d.disks(ctx)
	if err != nil {
		return nil, err
	}
	tree := store.BuildTree(recs)
	l := &Listing{Current: current}
	known := map[string]bool{}
	for _, r := range recs {
		known[r.Name] = true
		s := fromRecord(r)
		s.Current = s.Name == current
		checkAgainstQEMU(s, disks)
		if s.Parent != "" && tree.Record(s.Parent) == nil {
			s.Problems = append(s.Problems, fmt.Sprintf("parent %q has no record", s.Parent))
		}
		if keep(s, flags, tree) {
			l.Snapshots = append(l.Snapshots, s)
		}
	}
	byTag := map[string][]DiskSnapshot{}
	var tags []string
	for _, dk := range disks {
		for _, sn := range dk.Snapshots {
			if known[sn.Name] {
				continue
			}
			if _, seen := byTag[sn.Name]; !seen {
				tags = append(tags, sn.Name)
			}
			byTag[sn.Name] = append(byTag[sn.Name], sn)
		}
	}
	sort.Strings(tags)
	for _, t := range tags {
		l.Untracked = append(l.Untracked, Untracked{Name: t, Disks: byTag[t]})
	}
	// A corrupt record file is reported, with the good records listed.
	return l, errors.Join(reconcileErr, listErr)
}

// checkAgainstQEMU adds a problem for every disk that no longer holds the
// snapshot s says it holds.
func checkAgainstQEMU(s *DomainSnapshot, disks []Disk) {
	for i, ds := range s.Disks {
		if ds.Kind != DiskInternal {
			continue
		}
		dk, ok := matchDisk(disks, ds)
		if !ok {
			s.Problems = append(s.Problems, fmt.Sprintf("disk %s (%s) is not attached", diskLabel(ds), ds.File))
			continue
		}
		if got, has := dk.snapshot(s.Name); has {
			s.Disks[i].Node = dk.Node
			s.Disks[i].VMStateSize = got.VMStateSize
		} else if f, ok := dk.Buried[s.Name]; ok {
			s.Problems = append(s.Problems, fmt.Sprintf("disk %s holds the snapshot in backing image %s, under an external snapshot's overlay: it cannot be loaded or deleted there", diskLabel(ds), f))
		} else {
			s.Problems = append(s.Problems, fmt.Sprintf("disk %s no longer holds the snapshot", diskLabel(ds)))
		}
	}
}

func keep(s *DomainSnapshot, flags ListFlags, tree *store.Tree) bool {
	if flags&ListRoots != 0 && s.Parent != "" && tree.Record(s.Parent) != nil {
		return false
	}
	if flags&ListLeaves != 0 && len(tree.Children(s.Name)) > 0 {
		return false
	}
	if flags&ListCurrent != 0 && !s.Current {
		return false
	}
	if flags&ListDiskOnly != 0 && !s.IsDiskOnly() {
		return false
	}
	if flags&ListFull != 0 && s.IsDiskOnly() {
		return false
	}
	if flags&ListInternal != 0 && s.IsExternal() {
		return false
	}
	if flags&ListExternal != 0 && !s.IsExternal() {
		return false
	}
	return true
}

// Adopt records an untracked internal snapshot (one QEMU holds that no
// record knows) in the store, as a root snapshot. It is a full snapshot if
// one of its disks holds a vmstate, else disk-only.
func (d *Domain) Adopt(ctx context.Context, name, description string) (*DomainSnapshot, error) {
	if err := ValidateName(name); err != nil {
		return nil, &Error{Op: "adopt", Domain: d.uuid, Snapshot: name, Err: err}
	}
	s, err := d.adopt(ctx, name, description)
	if err != nil {
		return nil, d.wrap("adopt", name, err)
	}
	return s, nil
}

func (d *Domain) adopt(ctx context.Context, name, description string) (*DomainSnapshot, error) {
	unlock, err := d.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, err := d.store.Get(ctx, d.uuid, name); err == nil {
		return nil, fmt.Errorf("%w: already recorded", ErrExists)
	}
	disks, err := d.disks(ctx)
	if err != nil {
		return nil, err
	}
	s := &DomainSnapshot{Name: name, Description: description, State: StateDiskOnly, Memory: Memory{Kind: MemoryNone}, Config: d.opts.Config}
	for _, dk := range disks {
		sn, ok := dk.snapshot(name)
		if !ok {
			continue
		}
		s.Disks = append(s.Disks, sn)
		if s.CreationTime.IsZero() || sn.Date.Before(s.CreationTime) {
			s.CreationTime = sn.Date
		}
		if sn.VMStateSize > 0 {
			// QEMU's vmstate does not say whether the guest ran; loadvm
			// resumes a guest that ran, so running is the closer guess.
			s.State = StateRunning
			s.Memory = Memory{Kind: MemoryInternal, Node: dk.Node}
		}
	}
	if len(s.Disks) == 0 {
		return nil, fmt.Errorf("%w: no disk holds a snapshot of that name", ErrNotFound)
	}
	if err := d.putRecord(ctx, toRecord(s)); err != nil {
		return nil, err
	}
	return s, nil
}
