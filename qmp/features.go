package qmp

import (
	"context"
	"fmt"
	"sync"
)

// Version is a QEMU version, as reported by query-version and the QMP
// greeting.
type Version struct {
	// Major, Minor and Micro are the version's numbers, e.g. 7, 2, 22.
	Major, Minor, Micro int
	// Package is the distribution's package string, e.g.
	// "Debian 1:7.2+dfsg-7"; often empty.
	Package string
}

// AtLeast reports whether v is major.minor or newer.
func (v Version) AtLeast(major, minor int) bool {
	if v.Major != major {
		return v.Major > major
	}
	return v.Minor >= minor
}

// String returns "major.minor.micro".
func (v Version) String() string {
	return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro)
}

// wireVersion is QAPI's VersionInfo.
type wireVersion struct {
	QEMU struct {
		Major int `json:"major"`
		Minor int `json:"minor"`
		Micro int `json:"micro"`
	} `json:"qemu"`
	Package string `json:"package"`
}

func (w wireVersion) version() Version {
	return Version{Major: w.QEMU.Major, Minor: w.QEMU.Minor, Micro: w.QEMU.Micro, Package: w.Package}
}

// Features is what a QEMU instance supports, as probed by Probe. Choose
// mechanisms by what is present rather than by version number.
type Features struct {
	// Version is QEMU's version.
	Version Version
	// Commands holds every QMP command QEMU accepts (query-commands).
	Commands map[string]bool
	// MigrationCapabilities maps each migration capability QEMU knows to
	// its current state (query-migrate-capabilities). Empty when QEMU
	// lacks that command.
	MigrationCapabilities map[string]bool
}

// Has reports whether QEMU accepts command.
func (f *Features) Has(command string) bool {
	return f.Commands[command]
}

// HasMigrationCapability reports whether QEMU knows the migration capability
// name (whatever its current state).
func (f *Features) HasMigrationCapability(name string) bool {
	_, ok := f.MigrationCapabilities[name]
	return ok
}

// Probe asks QEMU for its version, commands and migration capabilities.
// A QEMU without query-migrate-capabilities yields an empty
// MigrationCapabilities, not an error.
func Probe(ctx context.Context, m Monitor) (*Features, error) {
	// The three queries go out together (a Monitor is safe for concurrent
	// use, and a Client pipelines them on its connection): one round trip
	// instead of three. query-migrate-capabilities is asked for whether
	// or not QEMU has it; a QEMU without it answers CommandNotFound.
	var (
		v    wireVersion
		cmds []struct {
			Name string `json:"name"`
		}
		caps []struct {
			Capability string `json:"capability"`
			State      bool   `json:"state"`
		}
		errs [3]error
		wg   sync.WaitGroup
	)
	wg.Add(2)
	go func() { defer wg.Done(); errs[1] = m.Execute(ctx, "query-commands", nil, &cmds) }()
	go func() { defer wg.Done(); errs[2] = m.Execute(ctx, "query-migrate-capabilities", nil, &caps) }()
	errs[0] = m.Execute(ctx, "query-version", nil, &v)
	wg.Wait()
	for _, err := range errs[:2] {
		if err != nil {
			return nil, fmt.Errorf("qmp: probe features: %w", err)
		}
	}
	f := &Features{
		Version:               v.version(),
		Commands:              make(map[string]bool, len(cmds)),
		MigrationCapabilities: make(map[string]bool),
	}
	for _, c := range cmds {
		f.Commands[c.Name] = true
	}
	switch err := errs[2]; {
	case !f.Has("query-migrate-capabilities"), IsClass(err, "CommandNotFound"):
		return f, nil
	case err != nil:
		return nil, fmt.Errorf("qmp: probe features: %w", err)
	}
	for _, c := range caps {
		f.MigrationCapabilities[c.Capability] = c.State
	}
	return f, nil
}

// RunState is QEMU's run state (QAPI RunState), as reported by query-status
// and the STOP/RESUME family of events. Values this package does not know
// (newer QEMU versions add some) are kept as they are; decoding never fails
// on them.
type RunState string

// The run states QEMU 7.2 reports.
const (
	RunStateDebug         RunState = "debug"
	RunStateInMigrate     RunState = "inmigrate"
	RunStateInternalError RunState = "internal-error"
	RunStateIOError       RunState = "io-error"
	RunStatePaused        RunState = "paused"
	RunStatePostMigrate   RunState = "postmigrate"
	RunStatePrelaunch     RunState = "prelaunch"
	RunStateFinishMigrate RunState = "finish-migrate"
	RunStateRestoreVM     RunState = "restore-vm"
	RunStateRunning       RunState = "running"
	RunStateSaveVM        RunState = "save-vm"
	RunStateShutdown      RunState = "shutdown"
	RunStateSuspended     RunState = "suspended"
	RunStateWatchdog      RunState = "watchdog"
	RunStateGuestPanicked RunState = "guest-panicked"
	RunStateColo          RunState = "colo"
)

// Known reports whether s is one of the RunState constants above.
func (s RunState) Known() bool {
	switch s {
	case RunStateDebug, RunStateInMigrate, RunStateInternalError, RunStateIOError,
		RunStatePaused, RunStatePostMigrate, RunStatePrelaunch, RunStateFinishMigrate,
		RunStateRestoreVM, RunStateRunning, RunStateSaveVM, RunStateShutdown,
		RunStateSuspended, RunStateWatchdog, RunStateGuestPanicked, RunStateColo:
		return true
	}
	return false
}

// String returns the state as QEMU spells it.
func (s RunState) String() string { return string(s) }

// Status is the reply of query-status.
type Status struct {
	// Running reports whether the guest's vCPUs are running.
	Running bool `json:"running"`
	// Singlestep reports single-step mode (deprecated in QEMU 8.1 and
	// absent from newer replies, which decode as false).
	Singlestep bool `json:"singlestep"`
	// State is the run state.
	State RunState `json:"status"`
}

// QueryStatus runs query-status.
func QueryStatus(ctx context.Context, m Monitor) (Status, error) {
	var s Status
	if err := m.Execute(ctx, "query-status", nil, &s); err != nil {
		return Status{}, err
	}
	return s, nil
}
