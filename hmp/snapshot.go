package hmp

import (
	"context"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/vmsnap/vmsnap/qmp"
)

// Snapshot is one row of HMP's `info snapshots`.
type Snapshot struct {
	// ID is the snapshot's ID on its disk. HMP prints "--" for snapshots
	// present on all disks (their IDs may differ from disk to disk); ID is
	// empty then.
	ID string
	// Tag is the snapshot's name.
	Tag string
	// VMStateSize is the size of the saved VM state, 0 for a disk-only
	// snapshot. HMP prints it rounded to three significant digits
	// ("712 KiB", "1.2 MiB"), so it is approximate.
	VMStateSize uint64
	// Date is when the snapshot was taken, to the second, in QEMU's local
	// time (parsed in time.Local).
	Date time.Time
	// VMClock is the guest's clock when the snapshot was taken, to the
	// millisecond.
	VMClock time.Duration
	// ICount is the guest's instruction count when recorded (QEMU run
	// with -icount), -1 otherwise.
	ICount int64
	// Partial is true for snapshots missing from some disk, which loadvm
	// cannot load (HMP's "List of partial (non-loadable) snapshots").
	Partial bool
	// Device is, for a partial snapshot, the device whose list it is in, as
	// HMP names it; empty for disks attached with -blockdev and -device,
	// which have no device name.
	Device string
}

// SaveVM takes a snapshot of the whole VM named name (HMP savevm): VM
// state and every writable disk. An existing snapshot with the same tag is
// replaced, as savevm does. The guest is paused while the state is saved.
func SaveVM(ctx context.Context, m qmp.Monitor, name string) error {
	if err := ValidateName(name); err != nil {
		return fmt.Errorf("hmp: savevm: %w", err)
	}
	_, err := Run(ctx, m, "savevm "+name)
	return err
}

// LoadVM reverts the VM to the snapshot name (HMP loadvm). The guest's run
// state is kept: a running guest runs again after the load.
//
// QEMU 7.2 stops the guest before it checks the snapshot and leaves it
// stopped when loadvm fails. When the failure happened before anything was
// changed (ErrSnapshotNotFound, ErrDiskOnlySnapshot, ErrNoSnapshotDevice)
// and the guest was running, LoadVM resumes it; after other failures the
// disks may be partly reverted and the guest stays stopped.
func LoadVM(ctx context.Context, m qmp.Monitor, name string) error {
	if err := ValidateName(name); err != nil {
		return fmt.Errorf("hmp: loadvm: %w", err)
	}
	var status struct {
		Running bool `json:"running"`
	}
	if err := m.Execute(ctx, "query-status", nil, &status); err != nil {
		return fmt.Errorf("hmp: loadvm %s: query run state: %w", name, err)
	}
	_, err := Run(ctx, m, "loadvm "+name)
	if err == nil || !status.Running {
		return err
	}
	if errors.Is(err, ErrSnapshotNotFound) || errors.Is(err, ErrDiskOnlySnapshot) || errors.Is(err, ErrNoSnapshotDevice) {
		if cerr := m.Execute(ctx, "cont", nil, nil); cerr != nil {
			return fmt.Errorf("%w (and resuming the guest failed: %w)", err, cerr)
		}
	}
	return err
}

// DelVM deletes the snapshot name from every disk that has it (HMP delvm).
// delvm (QEMU 5.2 to 10.0) reports nothing when no disk has the
// snapshot; DelVM checks `info snapshots` first and returns an error
// wrapping ErrSnapshotNotFound then.
func DelVM(ctx context.Context, m qmp.Monitor, name string) error {
	if err := ValidateName(name); err != nil {
		return fmt.Errorf("hmp: delvm: %w", err)
	}
	snaps, err := Snapshots(ctx, m)
	if err != nil {
		return fmt.Errorf("hmp: delvm %s: %w", name, err)
	}
	found := false
	for _, s := range snaps {
		found = found || s.Tag == name
	}
	if !found {
		return fmt.Errorf("hmp: delvm %s: %w", name, ErrSnapshotNotFound)
	}
	_, err = Run(ctx, m, "delvm "+name)
	return err
}

// Snapshots returns the VM's snapshots as HMP `info snapshots` lists them:
// first those present on all disks, then the partial ones of each disk.
// It returns an empty slice when there are none.
func Snapshots(ctx context.Context, m qmp.Monitor) ([]Snapshot, error) {
	const cmd = "info snapshots"
	out, err := Run(ctx, m, cmd)
	if err != nil {
		return nil, err
	}
	snaps, err := parseSnapshots(out, time.Local)
	if err != nil {
		return nil, fmt.Errorf("hmp: %s: %w", cmd, err)
	}
	return snaps, nil
}

// Lines of `info snapshots` other than table rows.
const (
	noSnapshots   = "There is no snapshot available."
	allDisksTitle = "List of snapshots present on all disks:"
	partialTitle  = "List of partial (non-loadable) snapshots on '"
	noneLine      = "None"
)

// snapshotRow matches a table row after its ID column. QEMU up to 7.2
// prints rows with "%-9s %-16s %8s%20s%13s%11s" (ID, tag, VM size, date,
// VM clock as H:MM:SS.mmm, icount or blanks); QEMU 10.0 with
// "%-7s %-16s %8s %19s %15s %10s" (a four-digit hour in the VM clock, "--"
// for no icount). Tags may contain spaces, so the fields are taken from the
// end and the tag is what remains.
var snapshotRow = regexp.MustCompile(`^(.*) +([0-9]+(?:\.[0-9]+)?) (B|KiB|MiB|GiB|TiB|PiB|EiB) +` +
	`([0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}) +` +
	`([0-9]+):([0-9]{2}):([0-9]{2})\.([0-9]{3})(?: +([0-9]+|--))? *$`)

// unitShift gives the power of two of each size unit HMP prints.
var unitShift = map[string]uint{"B": 0, "KiB": 10, "MiB": 20, "GiB": 30, "TiB": 40, "PiB": 50, "EiB": 60}

// parseSnapshots parses the output of `info snapshots`, reading dates in
// loc.
func parseSnapshots(out string, loc *time.Location) ([]Snapshot, error) {
	snaps := []Snapshot{}
	inTable, partial, device := false, false, ""
	tagCol := 0 // where the header puts TAG; 0 before the table's header
	for _, line := range strings.Split(strings.ReplaceAll(out, "\r\n", "\n"), "\n") {
		line = strings.TrimRight(line, " ")
		switch {
		case line == "":
			inTable = false
		case line == noSnapshots:
		case line == allDisksTitle:
			inTable, partial, device, tagCol = true, false, "", 0
		case strings.HasPrefix(line, partialTitle) && strings.HasSuffix(line, "':"):
			inTable, partial, tagCol = true, true, 0
			device = strings.TrimSuffix(strings.TrimPrefix(line, partialTitle), "':")
		case !inTable:
			return nil, fmt.Errorf("unexpected line %q", line)
		case line == noneLine:
		case isHeader(line):
			tagCol = strings.Index(line, "TAG")
		case tagCol == 0:
			return nil, fmt.Errorf("snapshot row %q before the table's header", line)
		default:
			s, err := parseSnapshotRow(line, tagCol, loc)
			if err != nil {
				return nil, err
			}
			s.Partial, s.Device = partial, device
			snaps = append(snaps, s)
		}
	}
	return snaps, nil
}

// isHeader reports whether line is a table's header line ("ID", spaces,
// "TAG", then the other headings, which differ between QEMU versions).
func isHeader(line string) bool {
	f := strings.Fields(line)
	return strings.HasPrefix(line, "ID ") && len(f) >= 2 && f[0] == "ID" && f[1] == "TAG"
}

// parseSnapshotRow parses one table row whose header line put the TAG
// heading at tagCol (10 up to QEMU 7.2, 8 in QEMU 10.0).
func parseSnapshotRow(line string, tagCol int, loc *time.Location) (Snapshot, error) {
	bad := func(why string) (Snapshot, error) {
		return Snapshot{}, fmt.Errorf("snapshot row %q: %s", line, why)
	}
	id, _, ok := strings.Cut(line, " ")
	if !ok || id == "" {
		return bad("no ID column")
	}
	// The ID is left-aligned in its column, then a space; the tag starts
	// under the TAG heading (later when a long ID pushed it).
	start := max(len(id)+1, tagCol)
	if start > len(line) || strings.TrimSpace(line[len(id):start]) != "" {
		return bad("ID column malformed")
	}
	m := snapshotRow.FindStringSubmatch(line[start:])
	if m == nil {
		return bad("fields do not match ID TAG VM-SIZE DATE VM-CLOCK [ICOUNT]")
	}
	s := Snapshot{ID: id, Tag: strings.TrimRight(m[1], " "), ICount: -1}
	if id == "--" {
		s.ID = ""
	}
	size, err := strconv.ParseFloat(m[2], 64)
	if err != nil {
		return bad("VM size: " + err.Error())
	}
	s.VMStateSize = uint64(math.Round(size * float64(uint64(1)<<unitShift[m[3]])))
	if s.Date, err = time.ParseInLocation(time.DateTime, m[4], loc); err != nil {
		return bad("date: " + err.Error())
	}
	var clock [4]int64
	for i := range clock {
		if clock[i], err = strconv.ParseInt(m[5+i], 10, 64); err != nil {
			return bad("VM clock: " + err.Error())
		}
	}
	s.VMClock = time.Duration(clock[0])*time.Hour + time.Duration(clock[1])*time.Minute +
		time.Duration(clock[2])*time.Second + time.Duration(clock[3])*time.Millisecond
	if m[9] != "" && m[9] != "--" {
		if s.ICount, err = strconv.ParseInt(m[9], 10, 64); err != nil {
			return bad("icount: " + err.Error())
		}
	}
	return s, nil
}
