package vmsnap

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"time"

	"github.com/hashicorp/go-multierror"
)

// disks returns the domain's disks: from QEMU when it runs, from qemu-img
// when it is shut off.
func (d *Domain) disks(ctx context.Context) ([]Disk, error) {
	if d.online() {
		return queryDisks(ctx, d.mon)
	}
	var out []Disk
	for _, od := range d.opts.Disks {
		dk, err := d.imageInfo(ctx, od)
		if err != nil {
			return nil, &DiskError{Disk: od.Device, Err: err}
		}
		out = append(out, dk)
	}
	return out, nil
}

// snapInternal takes internal snapshot tag of disks: one QMP transaction
// when the domain runs; with qemu-img, one disk after another, undoing the
// ones already done if a later one fails, when it is shut off.
func (d *Domain) snapInternal(ctx context.Context, disks []Disk, tag string) error {
	if d.online() {
		return snapInternalDisks(ctx, d.mon, disks, tag)
	}
	for i, dk := range disks {
		if err := d.qemuImg(ctx, "snapshot", "-c", tag, "--", dk.File); err != nil {
			for _, done := range disks[:i] {
				_ = d.qemuImg(context.WithoutCancel(ctx), "snapshot", "-d", tag, "--", done.File)
			}
			return &DiskError{Disk: dk.name(), Err: err}
		}
	}
	return nil
}

// deleteInternal removes internal snapshot tag from each disk; it returns the
// disks that still hold it and the per-disk errors.
func (d *Domain) deleteInternal(ctx context.Context, disks []DiskSnapshot, tag string) ([]DiskSnapshot, error) {
	if d.online() {
		return deleteInternalDisks(ctx, d.mon, disks, tag)
	}
	var left []DiskSnapshot
	var errs *multierror.Error
	for _, ds := range disks {
		if err := d.qemuImg(ctx, "snapshot", "-d", tag, "--", ds.File); err != nil {
			left = append(left, ds)
			errs = multierror.Append(errs, &DiskError{Disk: diskLabel(ds), Err: err})
		}
	}
	return left, errs.ErrorOrNil()
}

// revertOffline applies internal snapshot tag to every disk of a shut-off
// domain with qemu-img snapshot -a. It is not interrupted by ctx: stopping
// after some disks would leave them at different points in time.
func (d *Domain) revertOffline(ctx context.Context, disks []DiskSnapshot, tag string) error {
	ctx = context.WithoutCancel(ctx)
	var errs *multierror.Error
	for _, ds := range disks {
		if err := d.qemuImg(ctx, "snapshot", "-a", tag, "--", ds.File); err != nil {
			errs = multierror.Append(errs, &DiskError{Disk: diskLabel(ds), Err: err})
		}
	}
	return errs.ErrorOrNil()
}

// imageInfo reads one image's snapshots with qemu-img info.
func (d *Domain) imageInfo(ctx context.Context, od OfflineDisk) (Disk, error) {
	out, err := d.qemuImgOutput(ctx, "info", "--output=json", "-U", "--", od.File)
	if err != nil {
		return Disk{}, err
	}
	var info struct {
		qmpImageInfo
		BackingFilename string `json:"backing-filename"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return Disk{}, fmt.Errorf("qemu-img info %s: %w", od.File, err)
	}
	dk := Disk{Device: od.Device, Node: od.Device, Format: info.Format, File: od.File, VirtualSize: info.VirtualSize}
	if info.BackingFilename != "" {
		dk.Backing = []string{info.BackingFilename}
	}
	for _, s := range info.Snapshots {
		dk.Snapshots = append(dk.Snapshots, DiskSnapshot{
			Device: od.Device, Node: od.Device, File: od.File, Kind: DiskInternal,
			ID: s.ID, Name: s.Name, VMStateSize: s.VMStateSize,
			Date:    time.Unix(s.DateSec, s.DateNsec),
			VMClock: time.Duration(s.VMClockSec)*time.Second + time.Duration(s.VMClockNsec),
		})
	}
	return dk, nil
}

// qemuImg runs qemu-img with args as separate argv words (never a shell).
func (d *Domain) qemuImg(ctx context.Context, args ...string) error {
	_, err := d.qemuImgOutput(ctx, args...)
	return err
}

func (d *Domain) qemuImgOutput(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, d.opts.QemuImg, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return nil, fmt.Errorf("%w: %s is not installed: %w", ErrUnsupported, d.opts.QemuImg, err)
		}
		msg := bytes.TrimSpace(stderr.Bytes())
		return nil, fmt.Errorf("qemu-img %s: %w: %s", args[0], err, msg)
	}
	return stdout.Bytes(), nil
}
