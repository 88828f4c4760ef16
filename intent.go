package vmsnap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/vmsnap/vmsnap/internal/merge"
	"github.com/vmsnap/vmsnap/store"
)

// Labels this package keeps on intent records; they are removed when the
// intent is committed.
const labelGuestWasRunning = "vmsnap.guest-was-running"

// labelExcluded lists (JSON) the writable disks the caller left out of a
// snapshot; it stays with the committed record.
const labelExcluded = "vmsnap.excluded"

// labelMemoryFormat records the format of an external memory file.
const labelMemoryFormat = "vmsnap.memory-format"

type intent store.Status

// intentCreating marks a record whose snapshot is being taken.
const intentCreating = intent(store.StatusCreating)

// lock takes the domain's store lock under ctx.
func (d *Domain) lock(ctx context.Context) (func(), error) {
	unlock, err := d.store.Lock(ctx, d.uuid)
	if err != nil {
		if errors.Is(err, store.ErrBusy) {
			return nil, fmt.Errorf("%w: %w", ErrBusy, err)
		}
		return nil, err
	}
	return func() { _ = unlock() }, nil
}

func isStoreNotFound(err error) bool { return errors.Is(err, store.ErrNotFound) }

// get reads one snapshot from the store.
func (d *Domain) get(ctx context.Context, name string) (*DomainSnapshot, error) {
	r, err := d.store.Get(ctx, d.uuid, name)
	if err != nil {
		if isStoreNotFound(err) {
			return nil, fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return nil, err
	}
	return fromRecord(r), nil
}

// The record writers. Every change to the store goes through the
// functions of this file, so the intent/commit discipline is kept in one
// place: an operation records its intent (a record whose status or labels
// say what may be half done) before it touches QEMU or a file, marks its
// progress on the record as it goes, and commits or drops the record at the
// end; reconcile reads what was left.

// putRecord stores r. It is the one call of Store.Put (putIntent makes
// the one call of store.Stage).
func (d *Domain) putRecord(ctx context.Context, r *store.Record) error {
	return d.store.Put(ctx, d.uuid, r)
}

// dropRecord removes the record of name, if there is one: the intent of an
// operation rolled back. It is the one call of Store.Delete.
func (d *Domain) dropRecord(ctx context.Context, name string) error {
	if err := d.store.Delete(ctx, d.uuid, name); err != nil && !isStoreNotFound(err) {
		return err
	}
	return nil
}

// setCurrent makes name the current snapshot ("" for none).
func (d *Domain) setCurrent(ctx context.Context, name string) error {
	return d.store.SetCurrent(ctx, d.uuid, name)
}

// putIntent stores s with an intent status before QEMU is touched;
// staged, it is not flushed (store.Stage: see Options.SyncIntents).
func (d *Domain) putIntent(ctx context.Context, s *DomainSnapshot, in intent, guestWasRunning bool, labels map[string]string, staged bool) error {
	r := toRecord(s)
	r.Status = store.Status(in)
	if r.Labels == nil {
		r.Labels = map[string]string{}
	}
	for k, v := range labels {
		r.Labels[k] = v
	}
	if guestWasRunning {
		r.Labels[labelGuestWasRunning] = "true"
	}
	if staged {
		return store.Stage(ctx, d.store, d.uuid, r)
	}
	return d.putRecord(ctx, r)
}

// commit stores s as done and makes it the current snapshot.
//
// Stores that can (store.Committer) write both in one durable step; a
// crash leaves the record committed with current not moved at worst.
func (d *Domain) commit(ctx context.Context, s *DomainSnapshot) error {
	return store.Commit(ctx, d.store, d.uuid, toRecord(s), true)
}

func toRecord(s *DomainSnapshot) *store.Record {
	r := &store.Record{
		Name:         s.Name,
		Description:  s.Description,
		CreationTime: s.CreationTime,
		State:        string(s.State),
		Parent:       s.Parent,
		Status:       store.StatusOK,
		Memory:       store.Memory{Kind: string(s.Memory.Kind), Node: s.Memory.Node, File: s.Memory.File},
		Downtime:     s.Downtime,
		Config:       s.Config,
	}
	if len(s.Excluded) > 0 || len(s.owns) > 0 || len(s.Labels) > 0 || s.Memory.Format != "" {
		r.Labels = map[string]string{}
	}
	for k, v := range s.Labels {
		r.Labels[k] = v
	}
	if len(s.Excluded) > 0 {
		b, _ := json.Marshal(s.Excluded)
		r.Labels[labelExcluded] = string(b)
	}
	putOwnTokens(r.Labels, s.owns)
	if s.Memory.Format != "" {
		r.Labels[labelMemoryFormat] = s.Memory.Format
	}
	for _, ds := range s.Disks {
		r.Disks = append(r.Disks, store.Disk{
			Device: ds.Device, Node: ds.Node, File: ds.File, Kind: string(ds.Kind), ID: ds.ID, Tag: ds.Name,
			Overlay: ds.Overlay, VMStateSize: ds.VMStateSize, Date: ds.Date, VMClock: ds.VMClock,
		})
	}
	return r
}

func fromRecord(r *store.Record) *DomainSnapshot {
	s := new(DomainSnapshot)
	fillFromRecord(s, r, nil)
	return s
}

// fillFromRecord sets s, a zero snapshot, from r. The snapshot's disks are
// carved from slab when it has room for them (List converts many records
// with one allocation of disks); each snapshot's slice is capped, so an
// append to it never reaches its neighbour's.
func fillFromRecord(s *DomainSnapshot, r *store.Record, slab *[]DiskSnapshot) {
	*s = DomainSnapshot{
		Name:         r.Name,
		Description:  r.Description,
		CreationTime: r.CreationTime,
		State:        State(r.State),
		Parent:       r.Parent,
		Memory:       Memory{Kind: MemoryKind(r.Memory.Kind), Node: r.Memory.Node, File: r.Memory.File},
		Downtime:     r.Downtime,
		Config:       r.Config,
	}
	if s.Memory.Kind == "" {
		s.Memory.Kind = MemoryNone
	}
	if v := r.Labels[labelExcluded]; v != "" {
		_ = json.Unmarshal([]byte(v), &s.Excluded)
	}
	s.owns = ownTokens(r.Labels)
	s.Memory.Format = r.Labels[labelMemoryFormat]
	for _, dd := range r.Disks {
		if dd.Removed {
			s.partial = append(s.partial, dd.Device)
			continue
		}
		if s.Disks == nil {
			if slab != nil && cap(*slab)-len(*slab) >= len(r.Disks) {
				at := len(*slab)
				*slab = (*slab)[:at+len(r.Disks)]
				s.Disks = (*slab)[at : at : at+len(r.Disks)]
			} else {
				s.Disks = make([]DiskSnapshot, 0, len(r.Disks))
			}
		}
		s.Disks = append(s.Disks, DiskSnapshot{
			Device: dd.Device, Node: dd.Node, File: dd.File, Kind: DiskKind(dd.Kind), ID: dd.ID, Name: dd.Tag,
			Overlay: dd.Overlay, VMStateSize: dd.VMStateSize, Date: dd.Date, VMClock: dd.VMClock,
		})
	}
	for _, dev := range s.partial {
		s.addProblem(ProblemPartialDelete, dev, "an unfinished delete removed the snapshot from this disk; the other disks still hold it (delete it again to finish)")
	}
	if what := inFlight(r); what != "" {
		s.addProblem(ProblemInProgress, "", what+" is in progress or was interrupted (the next operation on the domain, or Reconcile, settles it)")
	}
	s.Labels = userLabels(r.Labels)
}

// SetDescription changes a snapshot's description.
func (d *Domain) SetDescription(ctx context.Context, name, description string) error {
	unlock, err := d.lock(ctx)
	if err != nil {
		return d.wrap("set-description", name, err)
	}
	defer unlock()
	r, err := d.store.Get(ctx, d.uuid, name)
	if err != nil {
		if isStoreNotFound(err) {
			err = fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return d.wrap("set-description", name, err)
	}
	r.Description = description
	if err := d.putRecord(ctx, r); err != nil {
		return d.wrap("set-description", name, err)
	}
	return nil
}

// setRelaunchIntent records in (nil clears it) on the record of name.
func (d *Domain) setRelaunchIntent(ctx context.Context, name string, in *relaunchIntent) error {
	ctx = context.WithoutCancel(ctx)
	r, err := d.store.Get(ctx, d.uuid, name)
	if err != nil {
		return err
	}
	if in == nil {
		delete(r.Labels, labelRelaunch)
	} else {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		if r.Labels == nil {
			r.Labels = map[string]string{}
		}
		r.Labels[labelRelaunch] = string(b)
	}
	return d.putRecord(ctx, r)
}

// commitRelaunch ends a relaunch revert that brought the guest back: the
// snapshot becomes current, the overlays the revert created are recorded
// as its revert overlays, older ones nothing uses are removed when the
// revert was forced, and the intent is cleared, in that order, so a crash
// in between is finished by running it again.
func (d *Domain) commitRelaunch(ctx context.Context, name string, in *relaunchIntent) error {
	if err := d.setCurrent(ctx, name); err != nil {
		return err
	}
	return d.retireRevertOverlays(ctx, name, in.Created, in.Owns, in.Force)
}

// Revert overlays (the new top images a revert puts over a snapshot's
// images) are recorded in the labels of the snapshot reverted to. When a
// later revert leaves one behind, it holds the only copy of the state the
// guest reached since that revert: it is kept, unless the revert is made
// with RevertPruneOverlays, which removes every recorded revert overlay nothing
// uses any more; deleting the snapshot removes its own. Images vmsnap did
// not create are never removed.
const labelRevertOverlay = "vmsnap.revert-overlay."

// retireRevertOverlays records the overlays this revert created on the
// record of name, clears its relaunch intent and, with force, removes the
// recorded revert overlays that nothing uses any more.
func (d *Domain) retireRevertOverlays(ctx context.Context, name string, created, owns []string, force bool) error {
	recs, used, err := d.usedImages(ctx, "")
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range recs {
		changed := false
		for k, f := range r.Labels {
			if !force || !strings.HasPrefix(k, labelRevertOverlay) || used[f] {
				continue
			}
			if _, err := os.Lstat(f); err == nil && !d.provenBy(ownTokens(r.Labels), f) {
				errs = append(errs, errUnproven("a revert overlay label", []string{f}))
				continue
			}
			if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("remove revert overlay left behind: %w", err))
				continue
			}
			delete(r.Labels, k)
			changed = true
		}
		if r.Name == name {
			if r.Labels == nil {
				r.Labels = map[string]string{}
			}
			recorded := map[string]bool{}
			for k, f := range r.Labels {
				if strings.HasPrefix(k, labelRevertOverlay) {
					recorded[f] = true
				}
			}
			for _, f := range created {
				if !recorded[f] {
					r.Labels[labelRevertOverlay+strconv.Itoa(nextLabelIndex(r.Labels))] = f
				}
			}
			putOwnTokens(r.Labels, owns)
			delete(r.Labels, labelRelaunch)
			changed = true
		}
		if changed {
			if err := d.putRecord(ctx, r); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// nextLabelIndex returns the first free index for a revert-overlay label.
func nextLabelIndex(labels map[string]string) int {
	for i := 0; ; i++ {
		if _, ok := labels[labelRevertOverlay+strconv.Itoa(i)]; !ok {
			return i
		}
	}
}

// usedImages returns the records and the images in use (imagesInUse)
// with QEMU's chains as they are now.
func (d *Domain) usedImages(ctx context.Context, skip string) ([]*store.Record, map[string]bool, error) {
	recs, err := d.records(ctx)
	if err != nil {
		return nil, nil, err
	}
	now, err := d.disks(ctx)
	if err != nil {
		return nil, nil, err
	}
	return recs, imagesInUse(now, recs, skip), nil
}

// markMerging records on r, before disk idx's merge starts, the child
// being merged into its frozen image and the QEMU job doing it ("" for a
// qemu-img merge), so a rerun knows what an interrupted merge was.
func (d *Domain) markMerging(ctx context.Context, r *store.Record, idx int, child, jobID string) error {
	if r.Labels == nil {
		r.Labels = map[string]string{}
	}
	r.Labels[labelMerging+strconv.Itoa(idx)] = child
	if jobID != "" {
		r.Labels[labelMergingJob+strconv.Itoa(idx)] = jobID
	} else {
		delete(r.Labels, labelMergingJob+strconv.Itoa(idx))
	}
	return d.putRecord(ctx, r)
}

// markPivot records on r that disk idx's active commit is about to be
// completed (see merge.Disk.Pivoting).
func (d *Domain) markPivot(ctx context.Context, r *store.Record, idx int) error {
	if r.Labels == nil {
		r.Labels = map[string]string{}
	}
	r.Labels[labelMergingPivot+strconv.Itoa(idx)] = "true"
	return d.putRecord(ctx, r)
}

// markDiskDeleted records that the delete of r is done on disk idx (a
// rerun must not merge it again) and drops its progress marks.
func (d *Domain) markDiskDeleted(ctx context.Context, r *store.Record, idx int) error {
	r.Disks[idx].Removed = true
	delete(r.Labels, labelMerging+strconv.Itoa(idx))
	delete(r.Labels, labelMergingJob+strconv.Itoa(idx))
	delete(r.Labels, labelMergingPivot+strconv.Itoa(idx))
	return d.putRecord(ctx, r)
}

// repointDisks makes the disks refs name find their frozen image in to:
// a merge moved the content of their old frozen image there.
func (d *Domain) repointDisks(ctx context.Context, refs []merge.Ref, to string) error {
	for _, ref := range refs {
		r, err := d.store.Get(ctx, d.uuid, ref.Record)
		if err != nil {
			return err
		}
		if ref.Disk < 0 || ref.Disk >= len(r.Disks) {
			return fmt.Errorf("%w: snapshot %q has no disk %d", ErrInconsistent, ref.Record, ref.Disk)
		}
		if r.Disks[ref.Disk].File == to {
			continue
		}
		r.Disks[ref.Disk].File = to
		if err := d.putRecord(ctx, r); err != nil {
			return err
		}
	}
	return nil
}
