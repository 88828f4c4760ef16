package vmsnap

import (
	"fmt"
	"slices"
)

// The disk part of the plan: every block device is classified once per
// operation, and each class is taken, left out because the caller said so
// (recorded with the snapshot), skipped because there is nothing to save,
// or refused with an error naming the disk and what to do. A snapshot that
// claims to cover the domain never silently leaves out a writable disk.

// diskClass is what a block device is to a snapshot.
type diskClass int

const (
	// classQcow2: a writable qcow2 image; internal and external snapshots.
	classQcow2 diskClass = iota
	// classOtherFormat: a writable image in a format without internal
	// snapshots (raw, ...); external snapshots only.
	classOtherFormat
	// classReadOnly: a read-only medium (CD-ROM, readonly=on, firmware
	// code): nothing to save, left alone.
	classReadOnly
	// classFirmwareVars: a writable pflash (UEFI variables); handled like
	// a disk of its format, but never holds the memory state.
	classFirmwareVars
	// classTemporary: writes go to a temporary overlay QEMU throws away
	// (-snapshot): refused, since the snapshot would vanish with QEMU.
	classTemporary
)

var classNames = [...]string{"writable qcow2", "writable non-qcow2", "read-only", "firmware variables", "temporary (-snapshot)"}

func (c diskClass) String() string { return classNames[c] }

// classify returns the class of d.
func classify(d Disk) diskClass {
	switch {
	case d.Temporary && !d.ReadOnly:
		return classTemporary
	case d.ReadOnly:
		return classReadOnly
	case d.Firmware:
		return classFirmwareVars
	case d.Format == "qcow2":
		return classQcow2
	}
	return classOtherFormat
}

// diskChoice is the disks a create takes and those it leaves out.
type diskChoice struct {
	// take are the disks snapped, in QEMU's order.
	take []Disk
	// excluded are the writable disks the caller left out.
	excluded []Disk
	// vmstate is the disk that holds an internal full snapshot's memory
	// state: the one named, else the first taken disk that is not
	// firmware (the memory state never goes into the UEFI variables).
	vmstate Disk
}

// matches reports whether name names d (device, node or file).
func (d Disk) matches(name string) bool {
	return name != "" && (name == d.Device || name == d.Node || name == d.File)
}

// chooseDisks decides, for a create planned as p, what happens to each of
// the domain's disks: want (CreateSpec.Disks, all writable disks when
// empty) and exclude (CreateSpec.Exclude) name disks by device, node or
// file; vmstateDisk names the disk for an internal memory state.
func (p createPlan) chooseDisks(all []Disk, want, exclude []string, vmstateDisk string) (diskChoice, error) {
	var c diskChoice
	for _, name := range append(append([]string(nil), want...), exclude...) {
		if !slices.ContainsFunc(all, func(d Disk) bool { return d.matches(name) }) {
			return c, &DiskError{Disk: name, Err: fmt.Errorf("%w: no such disk", ErrInvalidSpec)}
		}
	}
	for _, d := range all {
		named := slices.ContainsFunc(want, d.matches)
		left := slices.ContainsFunc(exclude, d.matches) || (len(want) > 0 && !named)
		cls := classify(d)
		switch {
		case cls == classReadOnly:
			if named {
				return c, &DiskError{Disk: d.name(), Err: fmt.Errorf("%w: the disk is read-only: there is nothing to snapshot", ErrUnsupported)}
			}
			continue
		case left:
			c.excluded = append(c.excluded, d)
			continue
		case cls == classTemporary:
			return c, &DiskError{Disk: d.name(), Err: fmt.Errorf("%w: the disk writes to a temporary overlay QEMU throws away when it exits (-snapshot or snapshot=on): a snapshot of it would vanish with QEMU; restart the domain without -snapshot, or leave the disk out (CreateSpec.Exclude)", ErrUnsupported)}
		case !p.kind.external() && cls == classFirmwareVars && d.Format != "qcow2":
			return c, &DiskError{Disk: d.name(), Err: fmt.Errorf("%w: the UEFI variables are in a %s pflash image, which cannot hold internal snapshots: take an External snapshot (the variables get an overlay like any disk), keep the variables in a qcow2 image, or leave the disk out (CreateSpec.Exclude) knowing that a revert will not restore them", ErrUnsupported, d.Format)}
		case !p.kind.external() && cls == classOtherFormat:
			return c, &DiskError{Disk: d.name(), Err: fmt.Errorf("%w: the disk is a %s image, which cannot hold internal snapshots: take an External snapshot, or leave the disk out (CreateSpec.Exclude) knowing that a revert will not restore it", ErrUnsupported, d.Format)}
		case p.kind.external() && (d.File == "" || d.Node == ""):
			return c, &DiskError{Disk: d.name(), Err: fmt.Errorf("%w: QEMU reports no image file or node for the disk, so no overlay can be put on it; leave it out (CreateSpec.Exclude)", ErrUnsupported)}
		}
		c.take = append(c.take, d)
	}
	if len(c.take) == 0 {
		return c, ErrNoDisks
	}
	if p.vmstate == vmstateHMP && len(c.excluded) > 0 {
		return c, fmt.Errorf("%w: this QEMU has no snapshot-save; its HMP savevm snaps every writable disk, so disks %v cannot be left out", ErrUnsupported, diskNames(c.excluded))
	}
	if p.kind == kindInternalFull && p.vmstate == vmstateHMP {
		// HMP savevm puts the memory state on the first disk that can
		// hold it, in QEMU's order, whatever we would choose.
		first := c.take[0]
		switch {
		case first.Firmware:
			return c, &DiskError{Disk: first.name(), Err: fmt.Errorf("%w: this QEMU has no snapshot-save; its HMP savevm would put the memory state into the UEFI variables (the first disk in QEMU's order): take an External or a DiskOnly snapshot", ErrUnsupported)}
		case vmstateDisk != "" && !first.matches(vmstateDisk):
			return c, &DiskError{Disk: vmstateDisk, Err: fmt.Errorf("%w: this QEMU has no snapshot-save; its HMP savevm puts the memory state on the first disk in QEMU's order, %s", ErrUnsupported, first.name())}
		}
		c.vmstate = first
		return c, nil
	}
	if p.kind == kindInternalFull {
		for _, d := range c.take {
			if vmstateDisk != "" && d.matches(vmstateDisk) || vmstateDisk == "" && !d.Firmware {
				c.vmstate = d
				break
			}
		}
		if c.vmstate.Node == "" {
			if vmstateDisk != "" {
				return c, &DiskError{Disk: vmstateDisk, Err: fmt.Errorf("%w: the memory state disk must be one of the disks snapped", ErrInvalidSpec)}
			}
			return c, fmt.Errorf("%w: no disk other than the firmware variables can hold the memory state", ErrNoDisks)
		}
	}
	return c, nil
}

func diskNames(disks []Disk) []string {
	out := make([]string, len(disks))
	for i, d := range disks {
		out[i] = d.name()
	}
	return out
}
