package vmsnap

import (
	"context"
	"fmt"
	"sort"
	"sync"

	"github.com/vmsnap/vmsnap/store"
)

// Listing is the result of List: the store merged with what QEMU reports.
type Listing struct {
	// Snapshots are the recorded snapshots that pass the filter, oldest
	// first. Each carries Problems where QEMU disagrees with its record or
	// an operation on it is running or was interrupted.
	Snapshots []*DomainSnapshot
	// Untracked are internal snapshots QEMU reports that no record knows
	// (made by qemu-img snapshot -c, virsh, HMP savevm, or NoMetadata), by
	// tag. Adopt records them.
	Untracked []Untracked
	// Unreadable are the records the store holds but cannot read (a
	// damaged, unsafe or foreign file). They are listed here and nowhere
	// else; the readable records are listed as usual and List does not
	// fail because of them. Domain.Delete with DeleteMetadataOnly, or
	// Store.Delete, removes one.
	Unreadable []UnreadableRecord
	// Current is the name of the current snapshot, "" when none.
	Current string
}

// UnreadableRecord is a snapshot record the store cannot read.
type UnreadableRecord struct {
	// Name is the snapshot name the record stands for, "" when even that
	// is unknown (then only an administrator can remove it, at Path).
	Name string
	// Path is the record's file (or key, for a store that keeps records
	// elsewhere).
	Path string
	// Err says why it cannot be read (a *store.CorruptError, an error
	// wrapping store.ErrUnsafePermissions, ...).
	Err error
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
//
// List never waits for another operation and changes nothing: it takes no
// lock and does not reconcile. It reads the committed records as they are,
// so a snapshot being created, deleted, reverted to or renamed right now,
// or left half done by a crash, is listed with a ProblemInProgress (and is
// not checked against the disks, which are expected to disagree with it
// until the operation ends). The next mutating operation on the domain, or
// Domain.Reconcile, settles what a crash left. Records the store cannot
// read are listed in Listing.Unreadable. When QEMU cannot be asked (it is
// being restarted by a revert, or its connection is lost), List returns
// the records unchecked together with the error.
//
// A ctx that is already done gives an error wrapping ErrCanceled.
func (d *Domain) List(ctx context.Context, flags ListFlags) *Op[*Listing] {
	if flags.unknown() != 0 {
		return failed[*Listing](&Error{Op: "list", Domain: d.uuid, Err: fmt.Errorf("%w: %s not valid for list", ErrInvalidFlags, flags.unknown())})
	}
	if err := ctx.Err(); err != nil {
		return failed[*Listing](&Error{Op: "list", Domain: d.uuid, Err: fmt.Errorf("%w: %w", ErrCanceled, err)})
	}
	return start(ctx, func(ctx context.Context, op *Op[*Listing]) (*Listing, error) {
		ctx = op.observe(ctx, d, "list", "")
		l, err := d.list(ctx, op, flags)
		if err != nil {
			return l, d.wrap("list", "", err)
		}
		return l, nil
	})
}

// Get returns one snapshot, checked against QEMU like List does. Like
// List it neither waits for a running operation nor reconciles.
func (d *Domain) Get(ctx context.Context, name string) (*DomainSnapshot, error) {
	if err := ctx.Err(); err != nil {
		return nil, &Error{Op: "get", Domain: d.uuid, Snapshot: name, Err: fmt.Errorf("%w: %w", ErrCanceled, err)}
	}
	s, err := d.inspect(ctx, name)
	if err != nil {
		return s, d.wrap("get", name, err)
	}
	return s, nil
}

// inspect reads one record, without the lock, and checks it like list.
func (d *Domain) inspect(ctx context.Context, name string) (*DomainSnapshot, error) {
	r, err := d.store.Get(ctx, d.uuid, name)
	if err != nil {
		if isStoreNotFound(err) {
			return nil, fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return nil, err
	}
	current, err := d.store.Current(ctx, d.uuid)
	if err != nil {
		return nil, err
	}
	s := fromRecord(r)
	s.Current = s.Name == current
	if s.Parent != "" {
		_, perr := d.store.Get(ctx, d.uuid, s.Parent)
		switch {
		case isStoreNotFound(perr):
			s.addProblem(ProblemParentMissing, "", fmt.Sprintf("parent %q has no record", s.Parent))
		case len(store.RecordErrors(perr)) > 0:
			s.addProblem(ProblemParentUnreadable, "", fmt.Sprintf("the record of parent %q cannot be read", s.Parent))
		case perr != nil:
			return nil, perr
		}
	}
	if s.HasProblem(ProblemInProgress) {
		return s, nil
	}
	disks, err := d.imagesNow().disks(ctx)
	if err != nil {
		return s, err
	}
	checkAgainstQEMU(s, disks)
	return s, nil
}

func (d *Domain) list(ctx context.Context, op *Op[*Listing], flags ListFlags) (*Listing, error) {
	op.setPhase(PhaseListing)
	// The current snapshot and QEMU's view of the disks are read while the
	// store lists the records: neither depends on the other.
	var (
		wg      sync.WaitGroup
		current string
		curErr  error
		disks   []Disk
		qemuErr error
	)
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Add(2)
	go func() {
		defer wg.Done()
		current, curErr = d.store.Current(ctx, d.uuid)
	}()
	go func() {
		defer wg.Done()
		disks, qemuErr = d.imagesNow().disks(ctx)
	}()
	recs, listErr := d.store.List(ctx, d.uuid)
	l := &Listing{}
	if listErr != nil {
		bad := store.RecordErrors(listErr)
		if !store.OnlyRecordErrors(listErr) {
			return nil, listErr
		}
		for _, e := range bad {
			l.Unreadable = append(l.Unreadable, UnreadableRecord{Name: e.Name, Path: e.Path, Err: e.Err})
		}
	}
	unreadable := map[string]bool{}
	for _, u := range l.Unreadable {
		if u.Name != "" {
			unreadable[u.Name] = true
		}
	}
	wg.Wait()
	if curErr != nil {
		return nil, curErr
	}
	l.Current = current
	var tree *store.Tree
	l.Snapshots, tree = listSnapshots(recs, listView{current: current, disks: disks, qemuOK: qemuErr == nil,
		unreadable: unreadable, flags: flags})
	if qemuErr != nil {
		return l, fmt.Errorf("the disks could not be checked: %w", qemuErr)
	}
	byTag := map[string][]DiskSnapshot{}
	var tags []string
	for _, dk := range disks {
		for _, sn := range dk.Snapshots {
			if tree.Record(sn.Name) != nil || unreadable[sn.Name] {
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
	return l, nil
}

// checkAgainstQEMU adds a problem for every disk that no longer holds the
// snapshot s says it holds.
func checkAgainstQEMU(s *DomainSnapshot, disks []Disk) {
	for i, ds := range s.Disks {
		if ds.Kind == DiskExternal {
			if dk, ok := findDevice(disks, ds); ok && dk.File == ds.File {
				s.addProblem(ProblemFrozenInUse, diskLabel(ds), fmt.Sprintf("the domain runs directly on the snapshot's frozen image %s, not on the overlay %s above it", ds.File, ds.Overlay))
			}
			continue
		}
		if ds.Kind != DiskInternal {
			continue
		}
		dk, ok := matchDisk(disks, ds)
		if !ok {
			s.addProblem(ProblemDiskDetached, diskLabel(ds), fmt.Sprintf("not attached (image %s)", ds.File))
			continue
		}
		if got, has := dk.snapshot(s.Name); has {
			s.Disks[i].Node = dk.Node
			s.Disks[i].VMStateSize = got.VMStateSize
		} else if f, ok := dk.Buried[s.Name]; ok {
			s.addProblem(ProblemBuried, diskLabel(ds), fmt.Sprintf("holds the snapshot in backing image %s, under an external snapshot's overlay: it cannot be loaded or deleted there", f))
		} else {
			s.addProblem(ProblemDiskMissingSnapshot, diskLabel(ds), "no longer holds the snapshot")
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
