package vmsnap

import (
	"context"
	"fmt"

	"github.com/hashicorp/go-multierror"

	"github.com/vmsnap/vmsnap/internal/qemu"
	"github.com/vmsnap/vmsnap/internal/qemuimg"
	"github.com/vmsnap/vmsnap/qmp"
)

// images is how the engine reads and changes the internal snapshots of
// the domain's disks: through the running QEMU (qmpImages), or with
// qemu-img on the image files when no QEMU runs (fileImages). The Domain
// chooses one when it is bound and again when a relaunch binds a new QEMU;
// the operations never ask which.
type images interface {
	// disks returns the domain's disks with their internal snapshots.
	disks(ctx context.Context) ([]Disk, error)
	// snapInternal takes internal snapshot tag of every disk, all or none.
	snapInternal(ctx context.Context, disks []Disk, tag string) error
	// deleteInternal removes internal snapshot tag from each disk; it
	// returns the disks that still hold it and the per-disk errors
	// (*DiskError, combined with go-multierror). A disk that no longer
	// holds it counts as done.
	deleteInternal(ctx context.Context, snaps []DiskSnapshot, tag string) ([]DiskSnapshot, error)
}

// qmpImages works through a running QEMU.
type qmpImages struct{ mon qmp.Monitor }

func (q qmpImages) disks(ctx context.Context) ([]Disk, error) {
	blocks, err := qemu.BlockDevices(ctx, q.mon)
	if err != nil {
		return nil, err
	}
	return disksFromBlock(blocks), nil
}

// snapInternal is one QMP transaction: all disks or none.
func (q qmpImages) snapInternal(ctx context.Context, disks []Disk, tag string) error {
	return qemu.SnapInternal(ctx, q.mon, nodeNames(disks), tag)
}

// deleteInternal is one command per disk (QEMU cannot do it in a
// transaction).
func (q qmpImages) deleteInternal(ctx context.Context, snaps []DiskSnapshot, tag string) ([]DiskSnapshot, error) {
	var left []DiskSnapshot
	var errs *multierror.Error
	for _, ds := range snaps {
		if err := qemu.DeleteInternal(ctx, q.mon, ds.Node, tag); err != nil && !qemu.IsSnapshotMissing(err) {
			left = append(left, ds)
			errs = multierror.Append(errs, &DiskError{Disk: diskLabel(ds), Err: err})
		}
	}
	return left, errs.ErrorOrNil()
}

// fileImages works on the image files of a shut-off domain with qemu-img.
type fileImages struct {
	img   qemuimg.Runner
	files []OfflineDisk
}

func (f fileImages) disks(ctx context.Context) ([]Disk, error) {
	var out []Disk
	for _, od := range f.files {
		info, err := f.img.Info(ctx, od.File)
		if err != nil {
			return nil, &DiskError{Disk: od.Device, Err: err}
		}
		out = append(out, diskFromImage(od.Device, od.Device, info.Format, od.File, false, info))
	}
	return out, nil
}

// snapInternal snaps one disk after another with qemu-img, undoing the
// ones already done if a later one fails.
func (f fileImages) snapInternal(ctx context.Context, disks []Disk, tag string) error {
	for i, dk := range disks {
		if err := f.img.SnapshotCreate(ctx, dk.File, tag); err != nil {
			for _, done := range disks[:i] {
				_ = f.img.SnapshotDelete(context.WithoutCancel(ctx), done.File, tag)
			}
			return &DiskError{Disk: dk.name(), Err: err}
		}
	}
	return nil
}

func (f fileImages) deleteInternal(ctx context.Context, snaps []DiskSnapshot, tag string) ([]DiskSnapshot, error) {
	var left []DiskSnapshot
	var errs *multierror.Error
	for _, ds := range snaps {
		if err := f.img.SnapshotDelete(ctx, ds.File, tag); err != nil {
			left = append(left, ds)
			errs = multierror.Append(errs, &DiskError{Disk: diskLabel(ds), Err: err})
		}
	}
	return left, errs.ErrorOrNil()
}

// applyInternal applies internal snapshot tag to every disk with qemu-img
// snapshot -a; no QEMU may hold the images. It is not interrupted by ctx:
// stopping after some disks would leave them at different points in time.
// It returns the disks reverted before a failure.
func applyInternal(ctx context.Context, img qemuimg.Runner, disks []DiskSnapshot, tag string) error {
	ctx = context.WithoutCancel(ctx)
	var errs *multierror.Error
	var applied []string
	for _, ds := range disks {
		if err := img.SnapshotApply(ctx, ds.File, tag); err != nil {
			if len(applied) > 0 {
				err = fmt.Errorf("%w (disks %v were already reverted: the disks now hold different points in time; revert again once the cause is fixed)", err, applied)
			}
			errs = multierror.Append(errs, &DiskError{Disk: diskLabel(ds), Err: err})
			continue
		}
		applied = append(applied, diskLabel(ds))
	}
	return errs.ErrorOrNil()
}
