package fakeqemu

import "fmt"

// Profile describes the QEMU version the fake imitates.
type Profile struct {
	// Major, Minor and Micro are reported by the greeting and
	// query-version.
	Major, Minor, Micro int
	// Package is the version's package string.
	Package string
	// Jobs enables the snapshot-save, snapshot-load and snapshot-delete
	// job commands (QEMU 6.0 and later).
	Jobs bool
	// BackgroundSnapshot offers the "background-snapshot" migration
	// capability (QEMU 6.0 and later, with userfaultfd write-protect).
	BackgroundSnapshot bool
}

// QEMU72 imitates the qemu-system-x86_64 7.2 this package was checked
// against.
var QEMU72 = Profile{Major: 7, Minor: 2, Micro: 22, Package: "Debian 1:7.2+dfsg-7+deb12u18+b3", Jobs: true, BackgroundSnapshot: true}

// QEMU52 imitates QEMU 5.2: no snapshot jobs (so callers must fall back to
// HMP savevm/loadvm/delvm) and no background-snapshot migration capability.
var QEMU52 = Profile{Major: 5, Minor: 2, Micro: 0, Package: "Debian 1:5.2+dfsg-11+deb11u2", Jobs: false, BackgroundSnapshot: false}

func cmdQueryStatus(s *Server, x *call) (any, *qerr) {
	if e := x.decode(nil); e != nil {
		return nil, e
	}
	return map[string]any{"status": s.status, "singlestep": false, "running": s.status == "running"}, nil
}

func cmdStop(s *Server, x *call) (any, *qerr) {
	if e := x.decode(nil); e != nil {
		return nil, e
	}
	s.stopGuest("paused")
	return struct{}{}, nil
}

func cmdCont(s *Server, x *call) (any, *qerr) {
	if e := x.decode(nil); e != nil {
		return nil, e
	}
	s.startGuest()
	return struct{}{}, nil
}

// stopGuest stops a running guest, entering state; s.mu must be held.
func (s *Server) stopGuest(state string) {
	if s.status != "running" {
		return
	}
	s.status = state
	s.emit("STOP", nil)
}

// startGuest resumes a stopped guest; s.mu must be held.
func (s *Server) startGuest() {
	if s.status == "running" {
		return
	}
	s.status = "running"
	s.emit("RESUME", nil)
}

func cmdQueryVersion(s *Server, x *call) (any, *qerr) {
	if e := x.decode(nil); e != nil {
		return nil, e
	}
	return s.versionInfo(), nil
}

func cmdQueryCommands(s *Server, x *call) (any, *qerr) {
	if e := x.decode(nil); e != nil {
		return nil, e
	}
	var out []map[string]string
	for _, n := range s.commandNames() {
		out = append(out, map[string]string{"name": n})
	}
	return out, nil
}

func cmdQueryUUID(s *Server, x *call) (any, *qerr) {
	if e := x.decode(nil); e != nil {
		return nil, e
	}
	return map[string]string{"UUID": s.opts.UUID}, nil
}

// Counter returns the simulated guest counter. It advances by one for
// every QMP command received while the guest runs; snapshot-save and HMP
// savevm record it, snapshot-load and loadvm restore it, and HMP
// `xp /1gx <CounterAddr>` shows it.
func (s *Server) Counter() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counter
}

// SetCounter sets the guest counter.
func (s *Server) SetCounter(v uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.counter = v
}

// Status returns the guest run state as query-status reports it:
// "running", "paused", "prelaunch", "postmigrate", "restore-vm", ...
func (s *Server) Status() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// vmClockNsec is the guest's virtual clock: 10 ms per counter tick, so it
// is deterministic too.
func (s *Server) vmClockNsec() int64 { return int64(s.counter) * 10_000_000 }

// vmStateSize is the size recorded for a memory snapshot: like QEMU 7.2's
// state of an idle 64 MiB guest (816 KiB), scaled to the RAM size.
func (s *Server) vmStateSize() uint64 {
	return uint64(s.opts.MemoryBytes) * 51 / 4096
}

func (s *Server) String() string { return fmt.Sprintf("fakeqemu(%s)", s.path) }
