package qemu

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/vmsnap/vmsnap/hmp"
	"github.com/vmsnap/vmsnap/internal/sentinel"
	"github.com/vmsnap/vmsnap/qmp"
)

// Backend is the mechanism VMState uses for full internal snapshots.
type Backend int

const (
	// BackendJobs is QEMU's snapshot-save, snapshot-load and
	// snapshot-delete jobs (QEMU 6.0 and later): they take the disks to
	// use and report progress and errors through query-jobs.
	BackendJobs Backend = iota + 1
	// BackendHMP is HMP savevm, loadvm and delvm over QMP (older QEMU):
	// they act on every writable disk that can hold a snapshot, whatever
	// the caller chose, and block the monitor while they run.
	BackendHMP
)

// String names the backend.
func (b Backend) String() string {
	switch b {
	case BackendJobs:
		return "snapshot jobs"
	case BackendHMP:
		return "HMP savevm/loadvm/delvm"
	}
	return fmt.Sprintf("Backend(%d)", int(b))
}

// ChoosesDevices reports whether the backend snaps, loads and deletes
// only the devices it is given. HMP's commands act on every disk that can
// hold a snapshot, so with BackendHMP a subset of disks cannot be chosen.
func (b Backend) ChoosesDevices() bool { return b == BackendJobs }

// VMState saves, loads and deletes full internal snapshots: the guest's
// memory and device state in one qcow2 image plus an internal snapshot of
// each disk, all under one tag. It is the one place that chooses between
// QEMU's snapshot jobs and HMP (see Backend).
type VMState struct {
	mon     qmp.Monitor
	backend Backend
}

// NewVMState binds mon, choosing the backend from f: the snapshot jobs
// when QEMU has all three commands, else HMP. A nil f means HMP.
func NewVMState(mon qmp.Monitor, f *qmp.Features) *VMState {
	b := BackendHMP
	if f != nil && f.Has("snapshot-save") && f.Has("snapshot-load") && f.Has("snapshot-delete") {
		b = BackendJobs
	}
	return &VMState{mon: mon, backend: b}
}

// Backend reports the mechanism v uses.
func (v *VMState) Backend() Backend { return v.backend }

// SaveSpec describes a full internal snapshot for Save.
type SaveSpec struct {
	// Tag names the snapshot in every image.
	Tag string
	// VMStateNode is the node whose image gets the memory and device
	// state; it must be one of Devices. HMP chooses the first writable
	// qcow2 disk itself.
	VMStateNode string
	// Devices are the nodes to snapshot (jobs only; HMP snaps every disk
	// that can hold a snapshot).
	Devices []string
	// WasRunning says the guest ran before Save: HMP savevm then resumes
	// it, and Save waits for that RESUME to measure the downtime. The
	// snapshot-save job resumes a running guest by itself.
	WasRunning bool
	// Progress, if not nil, receives the job's progress in bytes (jobs
	// only).
	Progress func(cur, total uint64)
	// Concluded, if not nil, is called once QEMU has finished the save
	// (well or not), before Save returns; not when the wait for QEMU
	// failed. With jobs it runs before the job's last commands (see
	// Job.Concluded), so queries started from it are pipelined with them.
	Concluded func()
}

// Save takes a full internal snapshot and returns how long the guest was
// stopped, as QEMU's STOP and RESUME events tell. QEMU stops a running
// guest while it writes the state and resumes it afterwards.
//
// Neither backend can be interrupted: when ctx ends, Save waits for QEMU
// to finish. With jobs it then returns an error wrapping
// sentinel.ErrCanceled if the snapshot was taken (see RunJob), with HMP
// it returns savevm's outcome; in both cases the caller decides whether to
// delete the snapshot again. A tag HMP cannot carry gives an error
// wrapping sentinel.ErrInvalidName.
func (v *VMState) Save(ctx context.Context, spec SaveSpec) (time.Duration, error) {
	var dt Downtime
	var err error
	if v.backend == BackendJobs {
		err = RunJob(ctx, v.mon, Job{
			ID: NewJobID("save"), Command: "snapshot-save",
			Args:     map[string]any{"tag": spec.Tag, "vmstate": spec.VMStateNode, "devices": spec.Devices},
			Progress: spec.Progress, Observe: dt.Observe, Concluded: spec.Concluded,
		})
	} else {
		err = RunHMPObserved(ctx, v.mon, &dt, spec.WasRunning, func() error {
			return hmpErr(hmp.SaveVM(context.WithoutCancel(ctx), v.mon, spec.Tag))
		})
		if spec.Concluded != nil && !errors.Is(err, qmp.ErrClosed) {
			spec.Concluded()
		}
	}
	return dt.Total(), err
}

// LoadSpec describes the snapshot Load loads.
type LoadSpec struct {
	// Tag names the snapshot.
	Tag string
	// VMStateNode is the node whose image holds the state: the disk whose
	// snapshot has a non-zero VM state size (jobs only).
	VMStateNode string
	// Devices are the nodes to revert (jobs only; HMP reverts every disk).
	Devices []string
	// KeepJobID, when not empty, is the id the snapshot-load job runs
	// under (see NewJobID); the job is then kept concluded after success,
	// as evidence of the load, until the caller calls Dismiss. Reconciling
	// a crash reads it with WaitJob. Ignored with HMP.
	KeepJobID string
	// Progress, if not nil, receives the job's progress in bytes (jobs
	// only).
	Progress func(cur, total uint64)
}

// Load reverts the guest to a full internal snapshot: the disks first,
// then the memory and device state. Afterwards the guest runs if it ran
// before (both backends resume it), so callers that want it paused stop
// it first.
//
// A failure that left everything as it was satisfies LoadTouchedNothing;
// any other failed load may have reverted the disks but not the memory,
// and the guest must not run. With HMP, a guest that ran is resumed after
// a failure that touched nothing (see hmp.LoadVM).
//
// Neither backend can be interrupted: when ctx ends, Load waits for QEMU
// to finish, and with jobs returns an error wrapping sentinel.ErrCanceled
// if the load happened (see RunJob). A tag HMP cannot carry gives an
// error wrapping sentinel.ErrInvalidName.
func (v *VMState) Load(ctx context.Context, spec LoadSpec) error {
	if v.backend != BackendJobs {
		return hmpErr(hmp.LoadVM(context.WithoutCancel(ctx), v.mon, spec.Tag))
	}
	id, keep := spec.KeepJobID, spec.KeepJobID != ""
	if id == "" {
		id = NewJobID("load")
	}
	return RunJob(ctx, v.mon, Job{
		ID: id, Command: "snapshot-load",
		Args:     map[string]any{"tag": spec.Tag, "vmstate": spec.VMStateNode, "devices": spec.Devices},
		Progress: spec.Progress, Keep: keep,
	})
}

// Delete deletes the full internal snapshot tag from devices (jobs) or
// from every disk that holds it (HMP delvm). With HMP a snapshot on no
// disk gives an error wrapping hmp.ErrSnapshotNotFound.
//
// The job cannot be interrupted: when ctx ends, Delete waits for it (see
// RunJob). HMP's delvm runs under ctx: if ctx ends first, Delete returns
// while QEMU may still be deleting. A tag HMP cannot carry gives an error
// wrapping sentinel.ErrInvalidName.
func (v *VMState) Delete(ctx context.Context, tag string, devices []string) error {
	if v.backend != BackendJobs {
		return hmpErr(hmp.DelVM(ctx, v.mon, tag))
	}
	return RunJob(ctx, v.mon, Job{
		ID: NewJobID("delete"), Command: "snapshot-delete",
		Args: map[string]any{"tag": tag, "devices": devices},
	})
}

// LoadTouchedNothing reports whether err, a failed Load, failed before
// QEMU changed anything: the snapshot is missing, disk-only, or names no
// usable device. Any other failure may have come after QEMU reverted the
// disks (it reverts them before it loads the memory state).
func LoadTouchedNothing(err error) bool {
	if errors.Is(err, hmp.ErrSnapshotNotFound) || errors.Is(err, hmp.ErrDiskOnlySnapshot) || errors.Is(err, hmp.ErrNoSnapshotDevice) {
		return true
	}
	var je *JobError
	if !errors.As(err, &je) {
		return false
	}
	for _, s := range []string{"does not exist", "disk-only snapshot", "No block device", "is required"} {
		if strings.Contains(je.Msg, s) {
			return true
		}
	}
	return false
}

// IsLoadFailure reports whether err is QEMU's verdict on a Load (a
// failed job, or an HMP error loadvm reported) rather than a failure to
// learn it (a lost monitor, a cancelled wait): after a verdict the outcome
// is known, otherwise the caller must find it out (WaitJob on the kept
// job).
func IsLoadFailure(err error) bool {
	var je *JobError
	return errors.As(err, &je) || errors.Is(err, hmp.ErrSnapshotNotFound) || errors.Is(err, hmp.ErrDiskOnlySnapshot) || errors.Is(err, hmp.ErrNoSnapshotDevice)
}

// hmpErr maps the name check the HMP helpers apply onto
// sentinel.ErrInvalidName.
func hmpErr(err error) error {
	if errors.Is(err, hmp.ErrUnsafeName) {
		return fmt.Errorf("%w: %w", sentinel.ErrInvalidName, err)
	}
	return err
}
