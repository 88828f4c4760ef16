package vmsnap

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/go-multierror"

	"github.com/vmsnap/vmsnap/qmp"
)

// Disk is one of the domain's block devices as QEMU reports it.
type Disk struct {
	// Device is the guest device: the block backend name for -drive disks,
	// the qdev id for -blockdev disks.
	Device string
	// Node is the node name of the top format node; QMP commands address the
	// disk by it.
	Node string
	// Format is the top image's format driver ("qcow2", "raw", ...).
	Format string
	// File is the top image's file name.
	File string
	// ReadOnly is true for read-only media.
	ReadOnly bool
	// Backing is the chain of backing files below File, nearest first.
	Backing []string
	// VirtualSize is the disk's size as the guest sees it, in bytes.
	VirtualSize uint64
	// Snapshots are the internal snapshots in the top image.
	Snapshots []DiskSnapshot
	// Buried maps the tags of internal snapshots in the backing images
	// (under an external snapshot's overlay) to the image holding them.
	Buried map[string]string
}

// name is how errors and records name the disk.
func (d Disk) name() string {
	if d.Device != "" {
		return d.Device
	}
	return d.Node
}

// snapshot returns the internal snapshot named tag, if the disk has one.
func (d Disk) snapshot(tag string) (DiskSnapshot, bool) {
	for _, s := range d.Snapshots {
		if s.Name == tag {
			return s, true
		}
	}
	return DiskSnapshot{}, false
}

// canSnapshotInternally reports whether the disk can hold internal snapshots.
func (d Disk) canSnapshotInternally() bool { return d.Format == "qcow2" && !d.ReadOnly }

// canSnapshotExternally reports whether a qcow2 overlay can be put on the
// disk: any writable image QEMU reports a file name for.
func (d Disk) canSnapshotExternally() bool { return !d.ReadOnly && d.File != "" && d.Node != "" }

type qmpImageInfo struct {
	Filename    string `json:"filename"`
	Format      string `json:"format"`
	VirtualSize uint64 `json:"virtual-size"`
	Snapshots   []struct {
		ID          string `json:"id"`
		Name        string `json:"name"`
		VMStateSize uint64 `json:"vm-state-size"`
		DateSec     int64  `json:"date-sec"`
		DateNsec    int64  `json:"date-nsec"`
		VMClockSec  int64  `json:"vm-clock-sec"`
		VMClockNsec int64  `json:"vm-clock-nsec"`
	} `json:"snapshots"`
	BackingImage *qmpImageInfo `json:"backing-image"`
}

type qmpBlockInfo struct {
	Device   string `json:"device"`
	QDev     string `json:"qdev"`
	Inserted *struct {
		NodeName string       `json:"node-name"`
		Drv      string       `json:"drv"`
		File     string       `json:"file"`
		RO       bool         `json:"ro"`
		Image    qmpImageInfo `json:"image"`
	} `json:"inserted"`
}

// qdevName turns "/machine/peripheral/dev0/virtio-backend" into "dev0".
func qdevName(qdev string) string {
	if !strings.HasPrefix(qdev, "/") {
		return qdev
	}
	parts := strings.Split(strings.Trim(qdev, "/"), "/")
	for i, p := range parts {
		if (p == "peripheral" || p == "peripheral-anon") && i+1 < len(parts) {
			return parts[i+1]
		}
	}
	return parts[len(parts)-1]
}

// queryDisks returns the domain's block devices with media, from one
// query-block.
func queryDisks(ctx context.Context, mon qmp.Monitor) ([]Disk, error) {
	var blocks []qmpBlockInfo
	if err := mon.Execute(ctx, "query-block", nil, &blocks); err != nil {
		return nil, err
	}
	var disks []Disk
	for _, b := range blocks {
		if b.Inserted == nil {
			continue
		}
		in := b.Inserted
		d := Disk{
			Device:   b.Device,
			Node:     in.NodeName,
			Format:   in.Drv,
			File:     in.File,
			ReadOnly: in.RO,
		}
		if d.Device == "" {
			d.Device = qdevName(b.QDev)
		}
		if in.Image.Filename != "" {
			d.File = in.Image.Filename
		}
		d.VirtualSize = in.Image.VirtualSize
		for bi := in.Image.BackingImage; bi != nil; bi = bi.BackingImage {
			d.Backing = append(d.Backing, bi.Filename)
			for _, s := range bi.Snapshots {
				if d.Buried == nil {
					d.Buried = map[string]string{}
				}
				if _, seen := d.Buried[s.Name]; !seen {
					d.Buried[s.Name] = bi.Filename
				}
			}
		}
		for _, s := range in.Image.Snapshots {
			d.Snapshots = append(d.Snapshots, DiskSnapshot{
				Device:      d.Device,
				Node:        d.Node,
				File:        d.File,
				Kind:        DiskInternal,
				ID:          s.ID,
				Name:        s.Name,
				VMStateSize: s.VMStateSize,
				Date:        time.Unix(s.DateSec, s.DateNsec),
				VMClock:     time.Duration(s.VMClockSec)*time.Second + time.Duration(s.VMClockNsec),
			})
		}
		disks = append(disks, d)
	}
	return disks, nil
}

// buried returns, for each of snaps whose internal snapshot tag is not in
// its disk's top image but in a backing image (an external snapshot was
// taken on top since), a description naming the disk and the image.
func buried(disks []Disk, snaps []DiskSnapshot, tag string) []string {
	var out []string
	for _, ds := range snaps {
		if dk, ok := matchDisk(disks, ds); ok {
			if _, top := dk.snapshot(tag); !top {
				if f, ok := dk.Buried[tag]; ok {
					out = append(out, fmt.Sprintf("%s (in %s)", diskLabel(ds), f))
				}
			}
		}
	}
	return out
}

// errBuried explains why an internal snapshot under an overlay cannot be
// used.
func errBuried(where []string) error {
	return fmt.Errorf("%w: the snapshot is inside backing images under an external snapshot's overlay on disks %v; QEMU can neither load nor delete it there until that overlay is merged (delete the external snapshot taken after it)", ErrUnsupported, where)
}

// holding returns those of snaps whose disk (matched in disks) still holds
// internal snapshot tag, with the node names QEMU uses now.
func holding(disks []Disk, snaps []DiskSnapshot, tag string) []DiskSnapshot {
	var out []DiskSnapshot
	for _, ds := range snaps {
		if dk, ok := matchDisk(disks, ds); ok {
			if _, has := dk.snapshot(tag); has {
				ds.Node = dk.Node
				out = append(out, ds)
			}
		}
	}
	return out
}

// snapshotNodes returns the node names of snaps.
func snapshotNodes(snaps []DiskSnapshot) []string {
	nodes := make([]string, len(snaps))
	for i, ds := range snaps {
		nodes[i] = ds.Node
	}
	return nodes
}

// selectDisks picks the disks named in want (by device, node or file), or
// every disk that keep accepts when want is empty.
func selectDisks(all []Disk, want []string, keep func(Disk) bool) ([]Disk, error) {
	if len(want) == 0 {
		var out []Disk
		for _, d := range all {
			if keep(d) {
				out = append(out, d)
			}
		}
		if len(out) == 0 {
			return nil, ErrNoDisks
		}
		return out, nil
	}
	var out []Disk
	seen := map[string]bool{}
	for _, w := range want {
		found := false
		for _, d := range all {
			if w == d.Device || w == d.Node || w == d.File {
				if !keep(d) {
					return nil, &DiskError{Disk: w, Err: fmt.Errorf("%w: %s image cannot hold this snapshot", ErrUnsupported, d.Format)}
				}
				if !seen[d.Node] {
					seen[d.Node] = true
					out = append(out, d)
				}
				found = true
				break
			}
		}
		if !found {
			return nil, &DiskError{Disk: w, Err: fmt.Errorf("%w: no such disk", ErrNotFound)}
		}
	}
	return out, nil
}

// snapInternalDisks takes an internal snapshot named tag of every disk in
// one transaction: all or none.
func snapInternalDisks(ctx context.Context, mon qmp.Monitor, disks []Disk, tag string) error {
	type action struct {
		Type string         `json:"type"`
		Data map[string]any `json:"data"`
	}
	actions := make([]action, len(disks))
	for i, d := range disks {
		actions[i] = action{Type: "blockdev-snapshot-internal-sync", Data: map[string]any{"device": d.Node, "name": tag}}
	}
	return mon.Execute(ctx, "transaction", map[string]any{"actions": actions}, nil)
}

// deleteInternalDisks removes the internal snapshot tag from each disk, one
// command per disk (QEMU cannot do this in a transaction). It returns the
// disks that still hold the snapshot and the per-disk errors combined.
func deleteInternalDisks(ctx context.Context, mon qmp.Monitor, disks []DiskSnapshot, tag string) ([]DiskSnapshot, error) {
	var left []DiskSnapshot
	var errs *multierror.Error
	for _, d := range disks {
		err := mon.Execute(ctx, "blockdev-snapshot-delete-internal-sync", map[string]any{"device": d.Node, "name": tag}, nil)
		if err != nil && !isSnapshotMissing(err) {
			left = append(left, d)
			errs = multierror.Append(errs, &DiskError{Disk: diskLabel(d), Err: err})
		}
	}
	return left, errs.ErrorOrNil()
}

func diskLabel(d DiskSnapshot) string {
	if d.Device != "" {
		return d.Device
	}
	return d.Node
}

// isSnapshotMissing reports whether err says the snapshot is not on the disk
// (so deleting it is already done).
func isSnapshotMissing(err error) bool {
	var qe *qmp.Error
	if !errors.As(err, &qe) {
		return false
	}
	d := strings.ToLower(qe.Desc)
	return strings.Contains(d, "not found") && strings.Contains(d, "snapshot")
}
