package vmsnap

import (
	"context"
	"fmt"
)

// Disks returns the domain's block devices as QEMU reports them now (for a
// domain bound with OpenOffline, as qemu-img reports its images): each
// disk's device, node, format, top image and backing chain, and the
// internal snapshots its images hold. Like List it takes no lock and never
// waits for a running operation; while a revert restarts QEMU it fails.
func (d *Domain) Disks(ctx context.Context) ([]Disk, error) {
	if err := ctx.Err(); err != nil {
		return nil, &Error{Op: "disks", Domain: d.uuid, Err: fmt.Errorf("%w: %w", ErrCanceled, err)}
	}
	disks, err := d.imagesNow().disks(ctx)
	if err != nil {
		return nil, d.wrap("disks", "", err)
	}
	return disks, nil
}

// imagesNow returns the images seam bound now. Calls that run without the
// store lock (List, Get, Current, Disks) read it under d.mu, since a
// relaunch revert may be replacing it.
func (d *Domain) imagesNow() images {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.images
}
