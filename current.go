package vmsnap

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"

	"github.com/vmsnap/vmsnap/store"
)

// ReservedLabelPrefix starts the label keys the engine keeps on records for
// its own bookkeeping (an operation's intent, a revert's overlays).
// SetLabels refuses them and DomainSnapshot.Labels never shows them.
const ReservedLabelPrefix = "vmsnap."

// labelRenameFrom is the intent of a rename: kept on the new record, naming
// the old one, until the rename is complete.
const labelRenameFrom = ReservedLabelPrefix + "rename-from"

// userLabels returns the labels of a record that are the caller's, nil
// when there are none.
func userLabels(labels map[string]string) map[string]string {
	var out map[string]string
	for k, v := range labels {
		if strings.HasPrefix(k, ReservedLabelPrefix) {
			continue
		}
		if out == nil {
			out = map[string]string{}
		}
		out[k] = v
	}
	return out
}

// inFlight names the operation whose intent r carries ("" for none): an
// operation that is running now or was cut short.
func inFlight(r *store.Record) string {
	switch {
	case r.Status == store.StatusCreating:
		return "a create"
	case r.Status == store.StatusDeleting:
		return "a delete"
	case r.Status != store.StatusOK && r.Status != "":
		return fmt.Sprintf("an operation (record status %q)", r.Status)
	case r.Labels[labelRelaunch] != "":
		return "a revert that restarts QEMU"
	case r.Labels[labelRevertWant] != "":
		return "a revert"
	case r.Labels[labelRenameFrom] != "":
		return fmt.Sprintf("a rename from %q", r.Labels[labelRenameFrom])
	}
	return ""
}

// Current returns the domain's current snapshot (the last one taken or
// reverted to), checked against QEMU like Get. With no current snapshot it
// returns an error wrapping ErrNotFound. Like List it neither waits for a
// running operation nor reconciles.
func (d *Domain) Current(ctx context.Context) (*DomainSnapshot, error) {
	if err := ctx.Err(); err != nil {
		return nil, &Error{Op: "current", Domain: d.uuid, Err: fmt.Errorf("%w: %w", ErrCanceled, err)}
	}
	name, err := d.store.Current(ctx, d.uuid)
	if err != nil {
		return nil, d.wrap("current", "", err)
	}
	if name == "" {
		return nil, &Error{Op: "current", Domain: d.uuid, Err: fmt.Errorf("%w: the domain has no current snapshot", ErrNotFound)}
	}
	s, err := d.inspect(ctx, name)
	if err != nil {
		return s, d.wrap("current", name, err)
	}
	return s, nil
}

// SetLabels replaces the caller's labels on a snapshot with labels (nil or
// empty removes them all), like containerd's snapshot labels: free
// metadata vmsnap stores and returns in DomainSnapshot.Labels and never
// interprets. Keys must be non-empty, must not contain '=' and must not
// start with ReservedLabelPrefix; such a key fails with ErrInvalidSpec and
// nothing is changed. The engine's own labels on the record are kept.
//
// SetLabels takes the domain's lock: it waits for a running operation.
func (d *Domain) SetLabels(ctx context.Context, name string, labels map[string]string) error {
	for k := range labels {
		if k == "" || strings.ContainsRune(k, '=') || strings.HasPrefix(k, ReservedLabelPrefix) {
			return &Error{Op: "set-labels", Domain: d.uuid, Snapshot: name, Err: fmt.Errorf("%w: label key %q is empty, contains '=' or starts with the reserved %q", ErrInvalidSpec, k, ReservedLabelPrefix)}
		}
	}
	if err := ValidateName(name); err != nil {
		return &Error{Op: "set-labels", Domain: d.uuid, Snapshot: name, Err: err}
	}
	unlock, err := d.lock(ctx)
	if err != nil {
		return d.wrap("set-labels", name, lockErr(err))
	}
	defer unlock()
	r, err := d.store.Get(ctx, d.uuid, name)
	if err != nil {
		if isStoreNotFound(err) {
			err = fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return d.wrap("set-labels", name, err)
	}
	kept := map[string]string{}
	for k, v := range r.Labels {
		if strings.HasPrefix(k, ReservedLabelPrefix) {
			kept[k] = v
		}
	}
	maps.Copy(kept, labels)
	r.Labels = kept
	if err := d.putRecord(ctx, r); err != nil {
		return d.wrap("set-labels", name, err)
	}
	return nil
}

// lockErr maps a lock wait ended by a cancelled context to ErrCanceled.
func lockErr(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: %w", ErrCanceled, err)
	}
	return err
}

// Rename gives snapshot oldName the name newName. Its children get newName
// as their parent, and if it is the current snapshot it stays current.
// Like every mutating operation it takes the domain's lock and first
// reconciles what interrupted operations left.
//
// Only the record is renamed. An external snapshot's overlays and memory
// file keep the file names they were created with (the record names them
// explicitly), so a new external snapshot cannot reuse oldName while those
// files exist. A snapshot with any internal part (a disk snapshot or a
// vmstate inside a qcow2 image) is refused with ErrUnsupported: QEMU finds
// internal snapshots by the tag they were taken with, and that tag is the
// snapshot's name. A newName already recorded, or held as an internal
// snapshot tag by a disk, fails with ErrExists; a snapshot with an
// operation in progress or interrupted fails with ErrInconsistent.
//
// A rename cut short by a crash is finished by the next operation on the
// domain, by Reconcile, or by calling Rename again with the same names.
func (d *Domain) Rename(ctx context.Context, oldName, newName string) error {
	for _, n := range []string{oldName, newName} {
		if err := ValidateName(n); err != nil {
			return &Error{Op: "rename", Domain: d.uuid, Snapshot: oldName, Err: err}
		}
	}
	if oldName == newName {
		return nil
	}
	op := run(ctx, d, "rename", oldName, func(ctx context.Context, op *Op[struct{}], reconcileErr error) (struct{}, error) {
		if reconcileErr != nil {
			return struct{}{}, reconcileErr
		}
		op.setPhase(PhaseWritingMeta)
		return struct{}{}, d.rename(ctx, oldName, newName)
	})
	// The rename is short and must not be left half way by a cancel once
	// its first write is done: wait for its end.
	_, err := op.Wait(context.WithoutCancel(ctx))
	return err
}

func (d *Domain) rename(ctx context.Context, oldName, newName string) error {
	nr, err := d.store.Get(ctx, d.uuid, newName)
	switch {
	case err == nil && nr.Labels[labelRenameFrom] == oldName:
		return d.finishRename(context.WithoutCancel(ctx), nr) // a rename cut short
	case err == nil && nr.Labels[labelRenamedFrom] == oldName:
		// Reconcile (which every operation runs first) finished this very
		// rename that an earlier call left cut short.
		if _, oerr := d.store.Get(ctx, d.uuid, oldName); isStoreNotFound(oerr) {
			return nil
		}
		return fmt.Errorf("%w: snapshot %q exists", ErrExists, newName)
	case err == nil:
		return fmt.Errorf("%w: snapshot %q exists", ErrExists, newName)
	case !isStoreNotFound(err):
		return err
	}
	r, err := d.store.Get(ctx, d.uuid, oldName)
	if err != nil {
		if isStoreNotFound(err) {
			err = fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return err
	}
	if what := inFlight(r); what != "" {
		return fmt.Errorf("%w: %s of the snapshot is in progress or was interrupted", ErrInconsistent, what)
	}
	s := fromRecord(r)
	if len(s.partial) > 0 {
		return fmt.Errorf("%w: an unfinished delete removed the snapshot from disks %v; delete it again to finish", ErrInconsistent, s.partial)
	}
	if s.Memory.Kind == MemoryInternal {
		return fmt.Errorf("%w: rename of a snapshot whose memory state is inside a qcow2 image (QEMU knows it by its name)", ErrUnsupported)
	}
	for _, ds := range s.Disks {
		if ds.Kind == DiskInternal {
			return &DiskError{Disk: diskLabel(ds), Err: fmt.Errorf("%w: rename of a snapshot inside a qcow2 image (QEMU knows it by its name)", ErrUnsupported)}
		}
	}
	disks, err := d.disks(ctx)
	if err != nil {
		return err
	}
	for _, dk := range disks {
		if _, ok := dk.snapshot(newName); ok {
			return &DiskError{Disk: dk.name(), Err: fmt.Errorf("%w: the image holds an internal snapshot named %q", ErrExists, newName)}
		}
	}
	nr = &store.Record{}
	*nr = *r
	nr.Name = newName
	nr.Labels = maps.Clone(r.Labels)
	if nr.Labels == nil {
		nr.Labels = map[string]string{}
	}
	nr.Labels[labelRenameFrom] = oldName
	// From the first write on, the rename is finished whatever happens
	// to ctx: the intent on the new record says what is left to do.
	ctx = context.WithoutCancel(ctx)
	if err := d.putRecord(ctx, nr); err != nil {
		return err
	}
	return d.finishRename(ctx, nr)
}

// finishRename completes the rename whose intent nr (the new record)
// carries: "current" moves to it, the old record goes, the old record's
// children are given the new name as parent, and the intent is cleared.
// Each step can be run again, so a rename cut short is finished by calling
// it once more. (Children whose record cannot be read keep the old name as
// parent, which List then reports as ProblemParentMissing.)
func (d *Domain) finishRename(ctx context.Context, nr *store.Record) error {
	oldName := nr.Labels[labelRenameFrom]
	if oldName == "" {
		return nil
	}
	current, err := d.store.Current(ctx, d.uuid)
	if err != nil {
		return err
	}
	if current == oldName {
		if err := d.setCurrent(ctx, nr.Name); err != nil {
			return err
		}
	}
	if err := d.dropRecord(ctx, oldName); err != nil {
		return err
	}
	recs, err := d.store.List(ctx, d.uuid)
	if err != nil && !store.OnlyRecordErrors(err) {
		return err
	}
	for _, r := range recs {
		if r.Parent != oldName || r.Name == nr.Name {
			continue
		}
		r.Parent = nr.Name
		if err := d.putRecord(ctx, r); err != nil {
			return err
		}
	}
	delete(nr.Labels, labelRenameFrom)
	nr.Labels[labelRenamedFrom] = oldName
	return d.putRecord(ctx, nr)
}

// labelRenamedFrom keeps, on a renamed record, the name it had, so that a
// Rename call whose work a reconcile finished reports success.
const labelRenamedFrom = ReservedLabelPrefix + "renamed-from"
