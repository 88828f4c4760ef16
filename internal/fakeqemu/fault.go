package fakeqemu

import (
	"slices"
	"time"
)

// Fault makes a command fail with an error reply of the given class.
type Fault struct {
	// Command is the QMP command to fail, e.g. "transaction" or
	// "snapshot-save"; a transaction action type (e.g.
	// "blockdev-snapshot-internal-sync") also matches that action inside
	// a transaction. An HMP command word ("savevm", "loadvm", "delvm",
	// "info") makes human-monitor-command return "Error: <Desc>\r\n" as a
	// successful reply, as HMP does.
	Command string
	// Nth fails only the Nth matching call (1-based); 0 fails every one.
	Nth int
	// Class is the QMP error class; empty means "GenericError".
	Class string
	// Desc is the error description.
	Desc string
	// ActionType, when set, limits the fault to transaction actions of
	// this type.
	ActionType string
	// Device, when set, limits the fault to transaction actions or HMP
	// commands naming this device or node.
	Device string
}

type faultState struct {
	Fault
	seen int
}

// Fail installs a fault. Faults are checked in the order installed; the
// first that fires wins.
func (s *Server) Fail(f Fault) {
	if f.Class == "" {
		f.Class = "GenericError"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, &faultState{Fault: f})
}

// ClearFaults removes every installed fault, job fault, drop and delay.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
	s.jobFaults = map[string]string{}
	s.drops = nil
	s.midJobDrop = map[string]bool{}
	s.delays = map[string]time.Duration{}
	s.evBefore = map[string][]scriptedEvent{}
}

// matchFault returns the error of the first fault that fires for a whole
// command (action empty) or for one action of it on a device (a
// transaction action, or a standalone command naming a device); s.mu must
// be held.
func (s *Server) matchFault(command, action, device string) *qerr {
	for _, f := range s.faults {
		if !f.matches(command, action, device) {
			continue
		}
		f.seen++
		if f.Nth == 0 || f.Nth == f.seen {
			return &qerr{class: f.Class, desc: f.Desc}
		}
	}
	return nil
}

func (f *faultState) matches(command, action, device string) bool {
	whole := f.ActionType == "" && f.Device == ""
	if action == "" {
		return whole && f.Command == command
	}
	// An action of a transaction, or a standalone command acting on a
	// device; whole-command faults were already checked.
	if whole && f.Command == command {
		return false
	}
	if f.Command != command && f.Command != action {
		return false
	}
	if f.ActionType != "" && f.ActionType != action {
		return false
	}
	return f.Device == "" || f.Device == device
}

// FailJob makes the next jobs started by command ("snapshot-save",
// "snapshot-load" or "snapshot-delete") conclude with desc as their error,
// visible in query-jobs, without changing guest or disk state.
func (s *Server) FailJob(command, desc string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.jobFaults[command] = desc
}

type dropRule struct {
	command string
	nth     int
	seen    int
}

// DropOn closes the client connection when the nth call of command
// arrives (1-based; 0 means every call), before anything is done or
// replied. The server then serves the next client.
func (s *Server) DropOn(command string, nth int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.drops = append(s.drops, &dropRule{command: command, nth: nth})
}

// shouldDrop reports whether a drop rule fires; s.mu must be held.
func (s *Server) shouldDrop(command string, _ int) bool {
	for _, d := range s.drops {
		if d.command != command {
			continue
		}
		d.seen++
		if d.nth == 0 || d.nth == d.seen {
			return true
		}
	}
	return false
}

// DropMidJob closes the client connection right after a job started by
// command has replied and emitted its "created" and "running" events. The
// job itself carries on and concludes, as in QEMU, so a new client can
// inspect it with query-jobs.
func (s *Server) DropMidJob(command string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.midJobDrop[command] = true
}

// Delay holds the reply to every call of command for d (the server reads
// no further command meanwhile, like QEMU's monitor).
func (s *Server) Delay(command string, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delays[command] = d
}

// EmitEvent sends an event to the current client now. It is dropped when
// no client has completed capabilities negotiation, as in QEMU.
func (s *Server) EmitEvent(name string, data any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.emit(name, data)
}

// EventBeforeReply makes the server send an event immediately before its
// reply to every call of command. With command "qmp_capabilities" the
// event arrives before the negotiation reply, which real QEMU never does.
func (s *Server) EventBeforeReply(command, name string, data any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.evBefore[command] = append(s.evBefore[command], scriptedEvent{name: name, data: data})
}

// Commands returns the names of the QMP commands received so far, in
// order, including failed and unknown ones.
func (s *Server) Commands() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.log)
}

// HMPCommands returns the command lines received through
// human-monitor-command, in order.
func (s *Server) HMPCommands() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.hmpLog)
}
