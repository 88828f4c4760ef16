package vmsnap

import (
	"fmt"
	"slices"
	"strings"

	"github.com/vmsnap/vmsnap/internal/qemu"
	"github.com/vmsnap/vmsnap/internal/qemuimg"
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
	// Firmware is true for a pflash device (UEFI code or variables).
	Firmware bool
	// Temporary is true for a disk whose writes go to a temporary overlay
	// QEMU throws away when it exits (-snapshot, snapshot=on).
	Temporary bool
}

// diskFromImage builds a Disk from what QEMU or qemu-img says of its top
// image (one parser for both: qemuimg.Info).
func diskFromImage(device, node, format, file string, ro bool, img *qemuimg.Info) Disk {
	d := Disk{Device: device, Node: node, Format: format, File: file, ReadOnly: ro}
	if img.Filename != "" {
		d.File = img.Filename
	}
	if d.Format == "" {
		d.Format = img.Format
	}
	d.VirtualSize = img.VirtualSize
	d.Backing = img.BackingFiles()
	chain := img.Chain()
	for _, bi := range chain[1:] {
		for _, s := range bi.Snapshots {
			if d.Buried == nil {
				d.Buried = map[string]string{}
			}
			if _, seen := d.Buried[s.Name]; !seen {
				d.Buried[s.Name] = bi.Filename
			}
		}
	}
	for _, s := range img.Snapshots {
		d.Snapshots = append(d.Snapshots, DiskSnapshot{
			Device: d.Device, Node: d.Node, File: d.File, Kind: DiskInternal,
			ID: s.ID, Name: s.Name, VMStateSize: s.VMStateSize, Date: s.Date(), VMClock: s.VMClock(),
		})
	}
	return d
}

// disksFromBlock turns query-block's devices with a medium into Disks.
func disksFromBlock(blocks []qemu.BlockDevice) []Disk {
	var disks []Disk
	for _, b := range blocks {
		in := b.Inserted
		if in == nil {
			continue
		}
		dk := diskFromImage(b.Name(), in.Node, in.Driver, in.File, in.ReadOnly, &in.Image)
		dk.Firmware = strings.HasPrefix(b.Device, "pflash") || strings.HasPrefix(b.QDev, "/machine/system.flash")
		dk.Temporary = in.Temporary()
		disks = append(disks, dk)
	}
	return disks
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

// nodeNames returns the node names of disks.
func nodeNames(disks []Disk) []string {
	nodes := make([]string, len(disks))
	for i, dk := range disks {
		nodes[i] = dk.Node
	}
	return nodes
}

// matchDisk finds the disk that ds was taken of: same node and file, else
// same device on that image or a chain above it, else same image file
// (node names change when QEMU restarts).
func matchDisk(disks []Disk, ds DiskSnapshot) (Disk, bool) {
	for _, by := range []func(Disk) bool{
		func(d Disk) bool { return ds.Node != "" && d.Node == ds.Node && d.File == ds.File },
		// Same device on the same image or on a chain above it (an
		// overlay was put on it since); a device of that name on other
		// images is another disk.
		func(d Disk) bool {
			return ds.Device != "" && d.Device == ds.Device && (ds.File == "" || d.File == ds.File || slices.Contains(d.Backing, ds.File))
		},
		func(d Disk) bool { return ds.File != "" && d.File == ds.File },
	} {
		for _, d := range disks {
			if by(d) {
				return d, true
			}
		}
	}
	return Disk{}, false
}

func diskLabel(d DiskSnapshot) string {
	if d.Device != "" {
		return d.Device
	}
	return d.Node
}

// findDevice finds the attached disk that plays ds's part, whatever image
// it runs on now: same node, else same device, else same image file. A
// relaunch uses it to know which disk to put new images on.
func findDevice(disks []Disk, ds DiskSnapshot) (Disk, bool) {
	for _, by := range []func(Disk) bool{
		func(d Disk) bool { return ds.Node != "" && d.Node == ds.Node },
		func(d Disk) bool { return ds.Device != "" && d.Device == ds.Device },
		func(d Disk) bool { return ds.File != "" && d.File == ds.File },
	} {
		for _, d := range disks {
			if by(d) {
				return d, true
			}
		}
	}
	return Disk{}, false
}
