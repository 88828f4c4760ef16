package store

import (
	"fmt"
	"strings"
	"time"
)

// CurrentFormatVersion is the format version this package writes for a
// Record whose FormatVersion is zero. Files with a higher version are read
// all the same: keys this version does not know are kept in Record.Extra and
// written back unchanged.
const CurrentFormatVersion = 1

// MaxDisks bounds the number of disks of one record.
const MaxDisks = 1024

// MaxRecordSize bounds the size of one record file (the domain config is
// stored inline).
const MaxRecordSize = 16 << 20

// Status is the lifecycle state of a record. An operation first stores its
// intent (StatusCreating or StatusDeleting), then acts, then commits
// (StatusOK, or deletes the record), so a crash leaves a record that says
// what may be half done. Values this package does not know are kept as they
// are.
type Status string

// Known statuses.
const (
	StatusCreating Status = "creating"
	StatusOK       Status = "ok"
	StatusDeleting Status = "deleting"
)

// String returns the status as stored.
func (s Status) String() string { return string(s) }

// Memory says where a snapshot's memory (device and RAM state) is.
type Memory struct {
	// Kind is "none" (disk-only snapshot), "internal" (vmstate inside a
	// qcow2 image) or "external" (a separate file). Free string.
	Kind string
	// Node is the block node holding an internal vmstate.
	Node string
	// File is the path of an external memory file.
	File string
}

// Disk is one disk's part of a snapshot, as QEMU reports it.
type Disk struct {
	// Device is the guest device or QMP device id (e.g. "virtio0").
	Device string
	// Node is the block node name.
	Node string
	// File is the image file that holds an internal snapshot, or the base
	// image of an external one.
	File string
	// Kind is "internal" or "external". Free string.
	Kind string
	// ID is QEMU's snapshot id within the image (internal snapshots).
	ID string
	// Tag is the snapshot's name within the image.
	Tag string
	// Overlay is the overlay file created by an external snapshot.
	Overlay string
	// VMStateSize is the size of the vmstate stored in this image.
	VMStateSize uint64
	// Date is when QEMU took the disk snapshot.
	Date time.Time
	// VMClock is the guest clock at the snapshot.
	VMClock time.Duration
	// Removed is true once the snapshot has been deleted from this disk
	// while others may still hold it (a partial delete). The zero value
	// means the disk holds the snapshot.
	Removed bool
}

// Record is the stored metadata of one snapshot of one domain. It mirrors
// libxl_vm_snapshot and adds what an engine needs to recover from a crash.
type Record struct {
	// FormatVersion of the file; 0 means CurrentFormatVersion when written.
	FormatVersion int
	// Name identifies the snapshot within its domain (see ValidateName).
	Name string
	// Description is free text.
	Description string
	// CreationTime is kept to the nanosecond and read back in UTC. Years
	// 0 to 9999 only.
	CreationTime time.Time
	// State is the domain's state when the snapshot was taken: "running",
	// "paused", "shutoff" or "disk-only"; the engine defines the values.
	State string
	// Parent is the name of the parent snapshot, "" for a root.
	Parent string
	// Status is the record's lifecycle state.
	Status Status
	// Memory says where the memory state is.
	Memory Memory
	// Disks are the per-disk snapshots.
	Disks []Disk
	// Downtime is the guest downtime the snapshot caused (live snapshots).
	Downtime time.Duration
	// Labels are user metadata. Keys must be non-empty and must not contain
	// '='.
	Labels map[string]string
	// Config is the domain configuration as recorded: opaque bytes (an xl
	// config, a QEMU argv, libvirt XML). Any byte string is kept exactly.
	Config []byte
	// Extra holds settings this version does not know (from a newer
	// version, or added by hand), key to raw value text exactly as in the
	// file, e.g. `"text"`, `42` or `[ "a", "b" ]`. They are written back
	// unchanged. Keys must be xl identifiers ([a-z][_0-9a-z]*) that this
	// version does not itself use.
	Extra map[string]string
}

// Validate reports whether r can be stored: a valid name and parent, label
// keys and Extra entries that can be written and read back unchanged,
// times within years 0 to 9999 and durations that are not negative. Every
// Store calls it before writing. The error wraps ErrInvalidRecord, or
// ErrInvalidName for a bad name or parent.
func (r *Record) Validate() error { return r.validate(true) }

// validate checks r; Unmarshal skips re-parsing the Extra values it has
// just parsed.
func (r *Record) validate(checkExtraValues bool) error {
	if r == nil {
		return fmt.Errorf("store: nil record: %w", ErrInvalidRecord)
	}
	if err := ValidateName(r.Name); err != nil {
		return err
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("store: snapshot %q: %s: %w", r.Name, fmt.Sprintf(format, args...), ErrInvalidRecord)
	}
	if r.Parent != "" {
		if err := ValidateName(r.Parent); err != nil {
			return fmt.Errorf("store: snapshot %q: parent: %w", r.Name, err)
		}
		if r.Parent == r.Name {
			return bad("is its own parent")
		}
	}
	if r.FormatVersion < 0 {
		return bad("negative format version %d", r.FormatVersion)
	}
	if !timeStorable(r.CreationTime) {
		return bad("creation time %v outside years 0-9999", r.CreationTime)
	}
	if r.Downtime < 0 {
		return bad("negative downtime %v", r.Downtime)
	}
	if len(r.Disks) > MaxDisks {
		return bad("%d disks, at most %d", len(r.Disks), MaxDisks)
	}
	for i, d := range r.Disks {
		if !timeStorable(d.Date) {
			return bad("disk %d (%q): date %v outside years 0-9999", i, d.Device, d.Date)
		}
		if d.VMClock < 0 {
			return bad("disk %d (%q): negative vm clock %v", i, d.Device, d.VMClock)
		}
	}
	for k := range r.Labels {
		if k == "" || strings.IndexByte(k, '=') >= 0 {
			return bad("label key %q is empty or contains '='", k)
		}
	}
	for k, v := range r.Extra {
		if !isIdent(k) {
			return bad("extra key %q is not an xl identifier [a-z][_0-9a-z]*", k)
		}
		if isKnownKey(k) {
			return bad("extra key %q is a key this version writes itself", k)
		}
		if !checkExtraValues {
			continue
		}
		if err := checkRawValue(v); err != nil {
			return bad("extra key %q: raw value %q: %v", k, v, err)
		}
	}
	return nil
}

func timeStorable(t time.Time) bool {
	if t.IsZero() {
		return true
	}
	y := t.UTC().Year()
	return y >= 0 && y <= 9999
}
