package vmsnap

import (
	"context"
	"errors"
	"fmt"

	"github.com/vmsnap/vmsnap/store"
)

// Labels this package keeps on intent records; they are removed when the
// intent is committed.
const labelGuestWasRunning = "vmsnap.guest-was-running"

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

// putIntent stores s with an intent status before QEMU is touched.
func (d *Domain) putIntent(ctx context.Context, s *DomainSnapshot, in intent, guestWasRunning bool, labels map[string]string) error {
	r := toRecord(s)
	r.Status = store.Status(in)
	r.Labels = map[string]string{}
	for k, v := range labels {
		r.Labels[k] = v
	}
	if guestWasRunning {
		r.Labels[labelGuestWasRunning] = "true"
	}
	return d.store.Put(ctx, d.uuid, r)
}

// commit stores s as done and makes it the current snapshot.
func (d *Domain) commit(ctx context.Context, s *DomainSnapshot) error {
	if err := d.store.Put(ctx, d.uuid, toRecord(s)); err != nil {
		return err
	}
	return d.store.SetCurrent(ctx, d.uuid, s.Name)
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
	for _, ds := range s.Disks {
		r.Disks = append(r.Disks, store.Disk{
			Device: ds.Device, Node: ds.Node, File: ds.File, Kind: string(ds.Kind), ID: ds.ID, Tag: ds.Name,
			Overlay: ds.Overlay, VMStateSize: ds.VMStateSize, Date: ds.Date, VMClock: ds.VMClock,
		})
	}
	return r
}

func fromRecord(r *store.Record) *DomainSnapshot {
	s := &DomainSnapshot{
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
	for _, dd := range r.Disks {
		if dd.Removed {
			s.partial = append(s.partial, dd.Device)
			continue
		}
		s.Disks = append(s.Disks, DiskSnapshot{
			Device: dd.Device, Node: dd.Node, File: dd.File, Kind: DiskKind(dd.Kind), ID: dd.ID, Name: dd.Tag,
			Overlay: dd.Overlay, VMStateSize: dd.VMStateSize, Date: dd.Date, VMClock: dd.VMClock,
		})
	}
	if len(s.partial) > 0 {
		s.Problems = append(s.Problems, fmt.Sprintf("an unfinished delete removed it from disks %v; it is on the others only (delete it again to finish)", s.partial))
	}
	if r.Status != store.StatusOK && r.Status != "" {
		s.Problems = append(s.Problems, fmt.Sprintf("an operation left this snapshot %s (interrupted)", r.Status))
	}
	return s
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
	if err := d.store.Put(ctx, d.uuid, r); err != nil {
		return d.wrap("set-description", name, err)
	}
	return nil
}
